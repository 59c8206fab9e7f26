// Internal: constructors of the compiled-in backends. Each takes an artifact whose location, size
// and (unless the user turned it off) SHA-256 were already checked against model.json.
#pragma once

#include <memory>
#include <string>

#include "mrdl/backend.hpp"
#include "mrdl/integrity.hpp"

namespace mrdl::detail {

/// Also checks the ONNX file's embedded manifest (export_id, precision) and its graph's inputs and
/// outputs (names, element types, non-batch dims) against `manifest`; throws IntegrityError.
std::unique_ptr<Backend> make_onnxruntime_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                                  const SegmenterOptions& options);

#ifdef MRDL_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                               const SegmenterOptions& options);
#endif

}  // namespace mrdl::detail
