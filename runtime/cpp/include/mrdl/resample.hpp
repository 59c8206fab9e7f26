// Pillow-compatible bilinear resizing (Image.resize(..., Image.BILINEAR)).
//
// Pillow resamples separably: one pass per axis whose size changes, each a convolution with the
// triangle filter max(0, 1 - |x|) whose support is stretched by the scale factor when shrinking
// (so downsampling averages, i.e. is antialiased). For uint8 images the weights are rounded to
// 22-bit fixed point and each pass rounds back to uint8; for float ("F") images the passes
// accumulate in double and store float32. These functions reproduce that arithmetic exactly, in
// the pass order asked for. The order matters (the intermediate image is rounded): Pillow before
// 13 always ran the horizontal pass first; Pillow 13 runs the vertical pass first when the height
// shrinks by more than twice as many pixels as the width (pillow_pass_order; runtime/VECTORS.md,
// "Pass order"). The whole-image path follows Pillow 13 (PassOrder::Pillow), the tiled path runs
// horizontal first in both runtimes.
#pragma once

#include "mrdl/export.hpp"

#include <cstdint>
#include <vector>

#include "mrdl/image.hpp"

namespace mrdl {

/// Which axis is resampled first. Pillow: the order Pillow 13 picks for the sizes at hand
/// (pillow_pass_order), what the Python runtime's whole-image path gets from Pillow itself.
enum class PassOrder { HorizontalFirst, VerticalFirst, Pillow };

/// The order Pillow 13's resize runs its passes in for (height, width) -> (out_height, out_width)
/// (libImaging/Resample.c, ImagingResampleInner): VerticalFirst when the height shrinks and by more
/// than twice as many pixels as the width, height - out_height > max(0, 2 * (width - out_width));
/// HorizontalFirst otherwise.
MRDL_API PassOrder pillow_pass_order(int height, int width, int out_height, int out_width);

/// (H, W, C) uint8 -> (out_height, out_width, C) uint8, every channel filtered independently.
MRDL_API Image resize_bilinear(const ImageView& image, int out_height, int out_width,
                      PassOrder order = PassOrder::HorizontalFirst);

/// (H, W) float32 -> (out_height, out_width) float32, as Pillow resizes a mode "F" image.
MRDL_API std::vector<float> resize_bilinear(const float* plane, int height, int width, int out_height, int out_width,
                                   PassOrder order = PassOrder::HorizontalFirst);

/// Output rows [row_begin, row_end) of the float resize above, (row_end - row_begin, out_width):
/// bit-identical to those rows of the whole resize in the same order (horizontal first: each
/// intermediate row depends on its input row alone; vertical first: each output row on its
/// vertical-pass row alone), computed from only the input rows the vertical taps read.
MRDL_API std::vector<float> resize_bilinear_rows(const float* plane, int height, int width, int out_height,
                                                 int out_width, int row_begin, int row_end,
                                                 PassOrder order = PassOrder::HorizontalFirst);

}  // namespace mrdl
