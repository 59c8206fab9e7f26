// Non-owning and owning views of interleaved HxWxC images.
#pragma once

#include <cstdint>
#include <vector>

namespace mrdl {

/// A borrowed HxWxC uint8 image, rows packed (stride = width * channels). C is 1, 3 or 4.
struct ImageView {
    const uint8_t* data = nullptr;
    int height = 0;
    int width = 0;
    int channels = 0;
};

/// An owned HxWxC uint8 image.
struct Image {
    int height = 0;
    int width = 0;
    int channels = 0;
    std::vector<uint8_t> pixels;  // (H, W, C)

    ImageView view() const { return ImageView{pixels.data(), height, width, channels}; }
};

}  // namespace mrdl
