// Non-owning and owning views of interleaved HxWxC images.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mrdl {

/// Images with more pixels (height * width) than this are refused unless the caller raises the
/// limit (`max_pixels` of to_rgb8, imageio::read_image and SegmenterOptions): 250 million, a 15811 x
/// 15811 image, the same default as the Python runtime's.
constexpr size_t kDefaultMaxPixels = 250'000'000;

/// A borrowed HxWxC uint8 image, rows packed (stride = width * channels). C is 1 (gray), 2 (gray +
/// alpha), 3 (RGB) or 4 (RGBA); see mrdl/decode.hpp for other element types.
struct MRDL_API ImageView {
    const uint8_t* data = nullptr;
    int height = 0;
    int width = 0;
    int channels = 0;
};

/// An owned HxWxC uint8 image.
struct MRDL_API Image {
    int height = 0;
    int width = 0;
    int channels = 0;
    std::vector<uint8_t> pixels;  // (H, W, C)

    ImageView view() const { return ImageView{pixels.data(), height, width, channels}; }
};

}  // namespace mrdl
