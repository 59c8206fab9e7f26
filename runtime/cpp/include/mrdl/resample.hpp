// Pillow-compatible bilinear resizing (Image.resize(..., Image.BILINEAR)).
//
// Pillow resamples separably: a horizontal pass, then a vertical one, each a convolution with the
// triangle filter max(0, 1 - |x|) whose support is stretched by the scale factor when shrinking
// (so downsampling averages, i.e. is antialiased). For uint8 images the weights are rounded to
// 22-bit fixed point and each pass rounds back to uint8; for float ("F") images the passes
// accumulate in double and store float32. These functions reproduce that arithmetic exactly,
// horizontal pass first as Pillow always did. Pillow 13 runs the vertical pass first for some
// shapes whose height shrinks much more than their width (python-pillow/Pillow#9549); the
// intermediate rounding then differs, by at most one uint8 level (float: ~1e-7), which the deploy
// contract allows. Square-to-square resizes, the common case, are bit-identical.
#pragma once

#include "mrdl/export.hpp"

#include <cstdint>
#include <vector>

#include "mrdl/image.hpp"

namespace mrdl {

/// Which axis is resampled first. The runtime uses HorizontalFirst; VerticalFirst reproduces
/// Pillow 13 exactly on the shapes where it chose that order (the shared test vectors record it).
enum class PassOrder { HorizontalFirst, VerticalFirst };

/// (H, W, C) uint8 -> (out_height, out_width, C) uint8, every channel filtered independently.
MRDL_API Image resize_bilinear(const ImageView& image, int out_height, int out_width,
                      PassOrder order = PassOrder::HorizontalFirst);

/// (H, W) float32 -> (out_height, out_width) float32, as Pillow resizes a mode "F" image.
MRDL_API std::vector<float> resize_bilinear(const float* plane, int height, int width, int out_height, int out_width,
                                   PassOrder order = PassOrder::HorizontalFirst);

/// Output rows [row_begin, row_end) of the horizontal-first float resize above, (row_end -
/// row_begin, out_width): bit-identical to those rows of the whole resize (each intermediate row
/// depends on its input row alone), computed from only the input rows the vertical taps read.
MRDL_API std::vector<float> resize_bilinear_rows(const float* plane, int height, int width, int out_height,
                                                 int out_width, int row_begin, int row_end);

}  // namespace mrdl
