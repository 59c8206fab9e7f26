// The embedded-manifest and graph-signature checks shared by the ONNX Runtime and OpenVINO backends.
#include "identity.hpp"

#include <filesystem>

#include "mrdl/errors.hpp"

namespace mrdl::detail {
namespace {

std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
    return out;
}

std::string describe(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
    std::string dims;
    for (size_t d = 0; d < shape.size(); ++d)
        dims += (d ? ", " : "") + (d == 0 ? std::string("batch") : shape[d] < 0 ? "?" : std::to_string(shape[d]));
    return "\"" + name + "\" " + dtype + " [" + dims + "]";
}

}  // namespace

std::string check_identity(const VerifiedArtifact& artifact, const Manifest& manifest, const char* embedded) {
    const std::string& path = artifact.path;
    if (embedded == nullptr)
        throw IntegrityError(path + ": has no embedded manifest (ONNX metadata \"" + kEmbeddedKey +
                             "\"), so it was not written by mrdl-export with model.json (" + kManifestFormat +
                             "); re-export");
    const EmbeddedIdentity found = parse_embedded_manifest(embedded, path + " (embedded manifest)");
    if (found.export_id != manifest.export_id)
        throw IntegrityError(path + ": belongs to export " + found.export_id + ", but model.json is export " +
                             manifest.export_id +
                             " (a file from another export?); use the model directory of one export as written");
    if (found.precision != artifact.record.precision)
        throw IntegrityError(path + ": its embedded manifest says " + found.precision +
                             ", but model.json records the \"" + artifact.key + "\" artifact as " +
                             artifact.record.precision + " (a renamed file?); re-export");
    return embedded;
}

void check_unedited(const VerifiedArtifact& artifact, const Manifest& manifest, const std::string& embedded) {
    const std::vector<std::string> edits =
        manifest_edits(manifest, embedded, artifact.record.precision, artifact.path + " (embedded manifest)");
    if (edits.empty()) return;
    std::string listed;
    for (const std::string& edit : edits) listed += (listed.empty() ? "" : "; ") + edit;
    const std::string model_json = (std::filesystem::path(artifact.path).parent_path() / "model.json").string();
    throw IntegrityError(model_json + " was edited after export: " + listed + " (what mrdl-export embedded in " +
                         artifact.path + "); restore it, or re-export to change a field (e.g. mrdl-export "
                         "--source-size)");
}

void check_signature(const std::string& path, const std::string& kind, const std::vector<TensorSpec>& specs,
                     const std::vector<GraphPort>& ports) {
    std::vector<std::string> graph, declared;
    bool same = ports.size() == specs.size();
    for (size_t i = 0; i < ports.size(); ++i) {
        const GraphPort& port = ports[i];
        if (!port.tensor) {
            graph.push_back(port.name + " (not a tensor)");
            same = false;
            continue;
        }
        std::vector<int64_t> shape = port.shape;
        if (!shape.empty()) shape[0] = TensorSpec::kDynamic;  // any batch axis
        graph.push_back(describe(port.name, port.dtype, shape));
        same = same && port.name == specs[i].name && port.dtype == "float32" && shape == specs[i].shape;
    }
    for (const TensorSpec& spec : specs) declared.push_back(describe(spec.name, spec.dtype, spec.shape));
    if (!same)
        throw IntegrityError(path + ": graph " + kind + "s [" + join(graph) + "] differ from model.json's [" +
                             join(declared) + "]; re-export, or use the model.json written with this file");
}

void check_output_shape(const Manifest& manifest, int64_t batch, const std::vector<int64_t>& shape) {
    std::vector<int64_t> expected = manifest.outputs.front().shape;
    expected[0] = batch;
    if (shape != expected)
        throw BackendError("the model returned output of an unexpected shape (expected [" + std::to_string(batch) +
                           ", " + std::to_string(manifest.n_classes) + ", H, W] as model.json says)");
}

}  // namespace mrdl::detail
