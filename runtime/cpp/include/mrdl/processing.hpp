// Pre- and postprocessing shared by every backend; the same rules as the Python mrdl_runtime.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mrdl/image.hpp"
#include "mrdl/manifest.hpp"
#include "mrdl/resample.hpp"

namespace mrdl {

/// An image -> the model's input for one sample: (3, H, W) float32 = to_rgb8 (mrdl/decode.hpp),
/// then Pillow-bilinear-resized uint8 * scale, channels in RGB order. The resize runs its passes in
/// the order Pillow 13 picks (PassOrder::Pillow), so the tensor is the Python runtime's bit for bit.
MRDL_API std::vector<float> preprocess(const ImageView& image, const Preprocessing& spec,
                              size_t max_pixels = kDefaultMaxPixels);

/// The mask and probabilities of one image, both at the image's original size.
struct MRDL_API Segmentation {
    int height = 0;
    int width = 0;
    int n_classes = 0;
    std::vector<uint8_t> mask;          // (H, W): 0/1 for one class, else the argmax class index
    std::vector<float> probabilities;   // (n_classes, H, W); empty when SegmenterOptions::with_probabilities is false
    bool tiled = false;                 // segmented in windows at the training scale (mrdl/tiling.hpp)
};

/// (n_classes, h, w) probabilities at the model's size -> a Segmentation at (height, width):
/// each class plane resized like Pillow mode "F" bilinear (in `order`: Pillow 13's for the
/// whole-image path, HorizontalFirst for the tiled one, as the Python runtime), then thresholded
/// (one class, prob > threshold) or arg-maxed (first maximum wins on ties).
MRDL_API Segmentation postprocess(const float* probabilities, int n_classes, int model_height, int model_width,
                         int height, int width, const Postprocessing& spec, PassOrder order = PassOrder::Pillow);

/// The mask of postprocess() alone, computed in row strips of about 16 MB of float32 (one class
/// map's strip at a time, a running maximum over classes), so the n_classes x height x width
/// probabilities never exist at once; equal to postprocess(...).mask.
MRDL_API std::vector<uint8_t> mask_at_size(const float* probabilities, int n_classes, int model_height,
                                           int model_width, int height, int width, const Postprocessing& spec,
                                           PassOrder order = PassOrder::Pillow);

}  // namespace mrdl
