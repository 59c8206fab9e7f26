// The entry point for applications: load an exported model directory, segment images.
#pragma once

#include "mrdl/export.hpp"

#include <memory>
#include <string>
#include <vector>

#include "mrdl/backend.hpp"
#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/image.hpp"
#include "mrdl/integrity.hpp"
#include "mrdl/manifest.hpp"
#include "mrdl/processing.hpp"
#include "mrdl/tiling.hpp"

namespace mrdl {

/// Segments images with a model exported by mrdl-export: reads model.json, preprocesses exactly
/// as the Python runtime does, runs the chosen backend and returns masks at the original size.
///
/// **Threads.** Once constructed, a Segmenter may be shared: any number of threads may call
/// segment() (both overloads) and the const accessors on the same object at the same time, with
/// the results they would get one after another. It holds no per-call state; ONNX Runtime
/// guarantees that concurrent Ort::Session::Run calls on one session are safe, and the TensorRT
/// backend serialises its calls (one execution context) with a mutex. Construction, move and
/// destruction must not overlap other calls. Each ONNX Runtime call itself runs on
/// SegmenterOptions::intra_op_threads threads (0: ONNX Runtime's default, one per physical core),
/// so with several calling threads set it so that callers x intra_op_threads fits the cores.
class MRDL_API Segmenter {
public:
    /// Load `model_dir` (holding model.json and the artifacts it lists). The chosen artifact is
    /// verified first (mrdl/integrity.hpp); a mismatch throws IntegrityError.
    explicit Segmenter(const std::string& model_dir, const SegmenterOptions& options = {});
    ~Segmenter();
    Segmenter(Segmenter&&) noexcept;
    Segmenter& operator=(Segmenter&&) noexcept;

    /// Segment one HxWxC uint8 image (C = 1, 2, 3 or 4; other element types: convert them with
    /// to_rgb8 from mrdl/decode.hpp first); more than options.max_pixels pixels is an InputError.
    /// Under fusion "addition" pass its text features, (77, D) float32 row-major; otherwise leave
    /// them empty. `tiling` chooses between the whole-image path and tiled inference at the
    /// training scale (mrdl/tiling.hpp, docs/tiling.md); the result's `tiled` says which ran.
    Segmentation segment(const ImageView& image, const std::vector<float>& text_features = {},
                         const TileOptions& tiling = {}) const;

    /// Segment several images: those not tiled run in batches of at most manifest().max_batch,
    /// a tiled image's windows in batches of max_batch. Results are in the order of `images` and
    /// equal segmenting each image alone.
    std::vector<Segmentation> segment(const std::vector<ImageView>& images,
                                      const std::vector<std::vector<float>>& text_features = {},
                                      const TileOptions& tiling = {}) const;

    const Manifest& manifest() const { return manifest_; }
    /// The backend in use, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider; threads 2)".
    std::string backend_description() const;

private:
    Segmentation segment_tiled(const ImageView& image, const std::vector<float>* text_features,
                               const TileOptions& tiling) const;

    Manifest manifest_;
    std::unique_ptr<Backend> backend_;
    /// The mask (and, with_probabilities_, the probabilities) at height x width from (C, h, w) maps,
    /// resized in `order` (the whole-image path: PassOrder::Pillow; the tiled one: HorizontalFirst).
    Segmentation finish(const float* probabilities, int model_height, int model_width, int height, int width,
                        PassOrder order) const;

    size_t max_pixels_ = kDefaultMaxPixels;
    bool with_probabilities_ = true;
};

}  // namespace mrdl
