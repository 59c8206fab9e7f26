// Tiled inference at the training scale; docs/tiling.md is the contract (the Python runtime,
// mrdl_runtime.tiling, follows the same steps, and the shared vectors tiling.json pin them down).
//
// An image much larger than the training images (model.json's source_size) is resampled to the
// training scale (model size / source size per axis, Pillow's bilinear rule, horizontal pass
// first), padded at the bottom and right to at least the model size, cut into overlapping
// model-size windows (the last one clamped to the edge), run in batches of max_batch, blended with
// gaussian or constant weights in float32, and mapped back to the input size.
#pragma once

#include "mrdl/export.hpp"

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "mrdl/image.hpp"

namespace mrdl {

/// Whether to tile: Auto tiles an image more than 1.5 times model.json's source_size along either
/// axis (2 * H > 3 * sh or 2 * W > 3 * sw) and never without a source_size; On tiles every image
/// (it needs source_size); Off never tiles (the whole image is resized to the model size).
enum class TileMode { Auto, On, Off };

/// How overlapping windows are blended: Gaussian (MONAI's importance map, sigma = 0.125 * side,
/// not clamped) or Constant (every window weighs 1).
enum class Blend { Gaussian, Constant };

/// The largest window overlap: each pixel is seen by about 1 / (1 - overlap)^2 windows (100 at 0.9).
inline constexpr double kMaxOverlap = 0.9;

/// The tile option of Segmenter::segment.
struct MRDL_API TileOptions {
    TileMode mode = TileMode::Auto;
    double overlap = 0.25;  // the fraction of a window shared with its neighbour, 0 <= overlap <= kMaxOverlap
    Blend blend = Blend::Gaussian;

    /// Throw InputError naming the accepted range when overlap is not a number in [0, kMaxOverlap].
    void validate() const;
};

/// The tile decision for one height x width image (throws InputError for TileMode::On without a
/// source size, naming mrdl-export --source-size).
MRDL_API bool should_tile(int64_t height, int64_t width, const std::optional<std::array<int, 2>>& source_size,
                          TileMode mode);

/// The image's size at the training scale: max(1, round_half_up(n * model / source)) per axis, in integers.
MRDL_API std::array<int, 2> resampled_size(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                                           const std::array<int, 2>& model_size);

/// Window starts along one axis of `length` >= `window` pixels: stride max(1, floor(window * (1 -
/// overlap))), the last start clamped to length - window.
MRDL_API std::vector<int> window_starts(int length, int window, double overlap);

/// The (model_height, model_width) float32 window weights, row-major.
MRDL_API std::vector<float> blend_weights(int model_height, int model_width, Blend blend);

/// The geometry of one tiled image.
struct MRDL_API TilePlan {
    std::array<int, 2> image_size{};      // H, W
    std::array<int, 2> resampled_size{};  // h, w
    std::array<int, 2> padded_size{};     // max(h, mh), max(w, mw)
    std::vector<std::array<int, 2>> windows;  // (row, column) starts, row-major, both ascending
};

/// How many times the tiled path may cover the image's resampled pixels with model windows
/// (windows x model height x model width): an overlap of 0.75 sees each pixel 16 times.
constexpr int kMaxWindowCoverage = 16;

/// The cost of tiling one height x width image, checked before anything is allocated
/// (runtime/VECTORS.md, "source_size range and the cost of the tiled path"): the resampled image at
/// most `max_pixels` pixels, and its windows at most kMaxWindowCoverage x `max_pixels` model pixels;
/// else InputError naming max_pixels (mrdl_segment --max-pixels). Segmenter calls it.
MRDL_API void check_tile_cost(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                              const std::array<int, 2>& model_size, double overlap, size_t max_pixels);

MRDL_API TilePlan plan_tiles(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                             const std::array<int, 2>& model_size, double overlap);

/// Runs a (count, 3, mh, mw) float32 batch of windows, returns (count, C, mh, mw) probabilities.
using WindowRunner = std::function<std::vector<float>(const std::vector<float>& batch, int64_t count)>;

/// Run every window of the resampled (h, w, 3) uint8 image in batches of `max_batch` and blend
/// them: -> (n_classes, h, w) float32, `num / den` accumulated in float32 (docs/tiling.md section 9).
MRDL_API std::vector<float> stitch(const ImageView& resampled, const TilePlan& plan, const WindowRunner& run,
                                   const std::array<int, 2>& model_size, int n_classes, int max_batch, double scale,
                                   Blend blend);

}  // namespace mrdl
