// The deploy manifest (model.json) written by mrdl-export; docs/deploy-manifest.md is the contract.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mrdl {

/// Limits on model.json (and the copy embedded in each ONNX file), checked before parsing.
constexpr size_t kMaxManifestBytes = size_t(1) << 20;  // 1 MiB
constexpr int kMaxManifestDepth = 32;                    // nested objects/arrays

/// The range of model.json's source_size per axis (runtime/VECTORS.md, "source_size range"), as the
/// Python runtime's MIN_SOURCE_SIDE, MAX_SOURCE_SIDE and MAX_SOURCE_UPSCALE: each side in
/// [max(kMinSourceSide, ceil(model side / kMaxSourceUpscale)), kMaxSourceSide]. Below a quarter of
/// the model size the tiled path would enlarge every image more than 4 times per axis; above 65536
/// it shrinks any image to a meaningless few pixels.
constexpr int kMinSourceSide = 16;
constexpr int kMaxSourceSide = 1 << 16;
constexpr int kMaxSourceUpscale = 4;

/// The only manifest format this runtime reads.
constexpr const char* kManifestFormat = "mrdl-deploy/2";

/// One entry of model.json's "artifacts": a plain file name inside the model directory, its size
/// and SHA-256, and the precision the file holds ("fp32", "fp16" or "int8").
struct MRDL_API Artifact {
    std::string file;
    uint64_t bytes = 0;
    std::string sha256;  // 64 lower-case hex digits
    std::string precision;
};

/// One graph input or output: its name, shape (kDynamic for the "batch" axis) and dtype.
struct MRDL_API TensorSpec {
    static constexpr int64_t kDynamic = -1;
    std::string name;
    std::vector<int64_t> shape;
    std::string dtype;
};

/// How an image becomes the model's input tensor.
struct MRDL_API Preprocessing {
    int height = 0;  // size[0]
    int width = 0;   // size[1]
    std::string resize;         // "bilinear" (Pillow semantics)
    std::string channel_order;  // "RGB"
    std::string layout;         // "NCHW"
    double scale = 0.0;         // multiplier applied to uint8 values (1/255)
    std::string grayscale;      // "replicate"
};

/// How the model's probabilities become a mask.
struct MRDL_API Postprocessing {
    std::string activation;  // "sigmoid" (one class) or "softmax"
    bool activation_in_graph = true;
    double threshold = 0.5;
    std::string resize_to_original;  // "bilinear" (Pillow mode "F" semantics)
};

/// The parsed and validated model.json.
struct MRDL_API Manifest {
    std::string format;     // kManifestFormat
    std::string export_id;  // 32 lower-case hex digits, unique per export
    std::string name;
    std::string fusion;  // "distribution" or "addition"
    int n_classes = 0;
    std::vector<std::string> classes;
    std::map<std::string, Artifact> artifacts;  // "fp32", "int8", "fp16", "tensorrt" -> its record
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
    int max_batch = 1;
    Preprocessing preprocessing;
    Postprocessing postprocessing;
    std::string precision;
    std::map<std::string, std::string> versions;  // every value rendered as a string
    /// The training scale (docs/tiling.md): [height, width] of the training images before they were
    /// resized to preprocessing.size, two integers in the range above (kMinSourceSide); empty when model.json has
    /// no "source_size" (then TileMode::Auto never tiles and TileMode::On is refused).
    std::optional<std::array<int, 2>> source_size;
    /// The JSON text parsed (model.json as read): compared whole with the copy each ONNX file embeds
    /// (manifest_edits).
    std::string document;

    /// Read and validate `path` (a model.json, at most kMaxManifestBytes, nesting at most
    /// kMaxManifestDepth; every numeric field in its documented range); throws ManifestError naming
    /// what was expected.
    static Manifest load(const std::string& path);
    /// Parse and validate JSON text; `source` names it in error messages.
    static Manifest parse(const std::string& text, const std::string& source);

    /// The input spec called `name`; throws ManifestError when absent.
    const TensorSpec& input(const std::string& name) const;
    /// True when the graph takes precomputed text features (fusion "addition").
    bool needs_text_features() const { return fusion == "addition"; }
};

/// What the manifest embedded in an ONNX file (metadata "mrdl.manifest") says about that file.
struct MRDL_API EmbeddedIdentity {
    std::string export_id;  // must equal model.json's
    std::string precision;  // the precision the file holds
};

/// Parse an embedded manifest (same size and depth limits as model.json); `source` names it in
/// errors, which are IntegrityError.
MRDL_API EmbeddedIdentity parse_embedded_manifest(const std::string& text, const std::string& source);

/// Where model.json (`manifest.document`) differs from the manifest embedded in the ONNX file of an
/// artifact holding `precision` (`embedded_text`, parsed as parse_embedded_manifest does). mrdl-export
/// embeds model.json itself, with that precision and each artifact record reduced to its file and
/// precision (a file cannot hold its own size and hash), so any other difference is an edit made
/// after the export: no field vouches for itself. Up to `limit` entries in document order, in the
/// Python runtime's words (mrdl_runtime.integrity.manifest_differences), e.g. "source_size is
/// [1, 1], not [128, 128]", "max_batch was added"; empty when model.json is unedited.
MRDL_API std::vector<std::string> manifest_edits(const Manifest& manifest, const std::string& embedded_text,
                                                 const std::string& precision, const std::string& source,
                                                 size_t limit = 3);

}  // namespace mrdl
