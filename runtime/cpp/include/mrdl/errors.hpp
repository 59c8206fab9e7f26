// Exceptions thrown by the mrdl C++ runtime. Every message names what was expected.
#pragma once

#include "mrdl/export.hpp"

#include <stdexcept>
#include <string>

namespace mrdl {

/// Base class of every error the runtime throws.
class MRDL_API Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// model.json is missing, unreadable, or breaks the deploy-manifest contract.
class MRDL_API ManifestError : public Error {
public:
    explicit ManifestError(const std::string& message) : Error(message) {}
};

/// An artifact whose name, size, SHA-256, embedded manifest or graph differs from what model.json
/// records (a corrupt, replaced or renamed file). The message names the file and what was expected.
class MRDL_API IntegrityError : public ManifestError {
public:
    explicit IntegrityError(const std::string& message) : ManifestError(message) {}
};

/// An input image (or text-feature buffer) whose shape, channel count or size is not accepted.
class MRDL_API InputError : public Error {
public:
    explicit InputError(const std::string& message) : Error(message) {}
};

/// A backend could not load or run the model (missing artifact, version mismatch, provider absent).
class MRDL_API BackendError : public Error {
public:
    explicit BackendError(const std::string& message) : Error(message) {}
};

}  // namespace mrdl
