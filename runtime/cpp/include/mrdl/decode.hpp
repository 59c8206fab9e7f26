// The one image-decoding rule shared with the Python runtime (mrdl_runtime.imaging.to_rgb8 and
// docs/deploy-manifest.md): any supported pixel buffer -> HxWx3 RGB uint8, bit for bit the same.
//
// Per value:
//   uint8    unchanged
//   uint16   v >> 8 (the high byte, as libpng's png_set_strip_16 and Pillow's 16-bit RGB PNGs)
//   int32    as uint16 when every value is in [0, 65535], else InputError naming the range found
//   float    NaN/inf or a negative value -> InputError; if max <= 1: floor(double(v) * 255 + 0.5),
//   (32/64)  elif max <= 255: floor(double(v) + 0.5); else InputError ("expected [0, 1] or [0, 255]")
// Then channels: 1 gray replicated to RGB; 2 gray + alpha: gray replicated, alpha dropped; 3 RGB;
// 4 RGBA: alpha dropped. Anything else, an empty image or more than `max_pixels` pixels ->
// InputError naming the shape or the limit.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>

#include "mrdl/image.hpp"

namespace mrdl {

/// Element type of a pixel buffer.
enum class PixelType { UInt8, UInt16, Int32, Float32, Float64 };

/// A borrowed HxWxC image of any supported element type, rows packed (stride = width * channels),
/// in native byte order.
struct MRDL_API PixelView {
    const void* data = nullptr;
    PixelType type = PixelType::UInt8;
    int height = 0;
    int width = 0;
    int channels = 0;
};

/// Apply the decoding rule above: HxWxC pixels -> HxWx3 RGB uint8.
MRDL_API Image to_rgb8(const PixelView& image, size_t max_pixels = kDefaultMaxPixels);

/// Shorthands for the common element types.
MRDL_API Image to_rgb8(const ImageView& image, size_t max_pixels = kDefaultMaxPixels);
MRDL_API Image to_rgb8(const uint16_t* data, int height, int width, int channels, size_t max_pixels = kDefaultMaxPixels);
MRDL_API Image to_rgb8(const float* data, int height, int width, int channels, size_t max_pixels = kDefaultMaxPixels);
MRDL_API Image to_rgb8(const double* data, int height, int width, int channels, size_t max_pixels = kDefaultMaxPixels);

/// The checks to_rgb8 makes before decoding (pixel data present, at least 1x1, 1-4 channels, at most
/// `max_pixels`), for callers that read an RGB view in place; InputError names what was expected.
MRDL_API void check_image(const PixelView& image, size_t max_pixels = kDefaultMaxPixels);
MRDL_API void check_image(const ImageView& image, size_t max_pixels = kDefaultMaxPixels);

/// Throw InputError when a height x width image exceeds `max_pixels`, naming the limit and how to
/// raise it; decoders call it before allocating.
MRDL_API void check_pixel_count(int64_t height, int64_t width, size_t max_pixels);

}  // namespace mrdl
