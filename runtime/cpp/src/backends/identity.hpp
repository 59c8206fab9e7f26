// Internal: the checks every ONNX-reading backend makes once its engine has parsed the verified
// bytes: the embedded manifest (export_id, precision, model.json unedited) and the graph's inputs
// and outputs against model.json, and the shape each run returns. The engine-specific part is only how
// to get the metadata, ports and shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mrdl/integrity.hpp"
#include "mrdl/manifest.hpp"

namespace mrdl::detail {

constexpr const char* kEmbeddedKey = "mrdl.manifest";  // ONNX metadata_props key written by mrdl-export

/// One graph input or output as the engine reports it.
struct GraphPort {
    std::string name;
    std::string dtype;           // the manifest's spelling: "float32", "float16", "int64", ...
    std::vector<int64_t> shape;  // a dynamic dim is TensorSpec::kDynamic
    bool tensor = true;          // false: not a tensor at all
};

/// The embedded manifest (`embedded`, nullptr when the file has none) must come from the same
/// export as model.json and hold the precision model.json records for this file: catches another
/// export's file or a renamed variant. Throws IntegrityError; returns the embedded text.
std::string check_identity(const VerifiedArtifact& artifact, const Manifest& manifest, const char* embedded);

/// model.json must be the manifest embedded in this (verified) file, but for the records of the
/// artifacts' sizes and hashes: an edited field (source_size, threshold, ...) is refused, named.
void check_unedited(const VerifiedArtifact& artifact, const Manifest& manifest, const std::string& embedded);

/// The graph's inputs or outputs (`kind`) must be model.json's `specs`, in order: names, float32,
/// non-batch dims. Throws IntegrityError listing both.
void check_signature(const std::string& path, const std::string& kind, const std::vector<TensorSpec>& specs,
                     const std::vector<GraphPort>& ports);

/// The shape a run returned must be model.json's output shape at `batch`. Throws BackendError.
void check_output_shape(const Manifest& manifest, int64_t batch, const std::vector<int64_t>& shape);

}  // namespace mrdl::detail
