// The image-decoding rule (mrdl/decode.hpp): pixel buffers of any supported type -> RGB uint8.
#include "mrdl/decode.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

/// As Python's format(value, "g"), so both runtimes word their errors alike.
std::string number(double value) {
    std::ostringstream out;
    out << value;
    return out.str();
}

std::string shape_of(const PixelView& image) {
    return "(" + std::to_string(image.height) + ", " + std::to_string(image.width) + ", " +
           std::to_string(image.channels) + ")";
}

/// Copy HxWxC values to HxWx3, mapping each through `convert`: gray replicated, alpha dropped.
template <typename T, typename Convert>
Image to_rgb(const PixelView& image, Convert convert) {
    const auto* data = static_cast<const T*>(image.data);
    const size_t pixels = static_cast<size_t>(image.height) * image.width;
    const int c = image.channels;
    Image rgb{image.height, image.width, 3, std::vector<uint8_t>(pixels * 3)};
    for (size_t p = 0; p < pixels; ++p) {
        const T* pixel = data + p * c;
        for (int ch = 0; ch < 3; ++ch) rgb.pixels[p * 3 + ch] = convert(pixel[c < 3 ? 0 : ch]);
    }
    return rgb;
}

template <typename T>
Image integer_to_rgb8(const PixelView& image) {
    const auto* data = static_cast<const T*>(image.data);
    const auto [low, high] = std::minmax_element(data, data + static_cast<size_t>(image.height) * image.width *
                                                                  image.channels);
    if (*low < 0 || *high > 65535)
        throw InputError("integer image values from " + std::to_string(*low) + " to " + std::to_string(*high) +
                         "; expected 8-bit (uint8) or 16-bit values in [0, 65535]");
    return to_rgb<T>(image, [](T v) { return static_cast<uint8_t>(v >> 8); });
}

template <typename T>
Image float_to_rgb8(const PixelView& image) {
    const auto* data = static_cast<const T*>(image.data);
    const size_t count = static_cast<size_t>(image.height) * image.width * image.channels;
    double low = INFINITY, high = -INFINITY;
    for (size_t i = 0; i < count; ++i) {
        const double v = static_cast<double>(data[i]);
        if (!std::isfinite(v))
            throw InputError("float image holds NaN or infinite values; expected finite values in [0, 1] or [0, 255]");
        low = std::min(low, v);
        high = std::max(high, v);
    }
    if (low < 0.0) throw InputError("float image values down to " + number(low) + "; expected [0, 1] or [0, 255]");
    if (high <= 1.0)
        return to_rgb<T>(image, [](T v) { return static_cast<uint8_t>(std::floor(double(v) * 255.0 + 0.5)); });
    if (high < 2.0)  // neither convention: a [0, 1] image that overshoots would be read as [0, 255], black
        throw InputError("float image values up to " + number(high) +
                         ": just over [0, 1], and read as [0, 255] the image would be black; clip it to [0, 1] (or "
                         "scale it to [0, 255])");
    if (high <= 255.0) return to_rgb<T>(image, [](T v) { return static_cast<uint8_t>(std::floor(double(v) + 0.5)); });
    throw InputError("float image values up to " + number(high) + "; expected [0, 1] or [0, 255]");
}

}  // namespace

void check_pixel_count(int64_t height, int64_t width, size_t max_pixels) {
    if (height < 0 || width < 0 || static_cast<uint64_t>(height) * static_cast<uint64_t>(width) > max_pixels)
        throw InputError("image of " + std::to_string(width) + "x" + std::to_string(height) + " = " +
                         std::to_string(static_cast<uint64_t>(height) * static_cast<uint64_t>(width)) +
                         " pixels exceeds the limit of " + std::to_string(max_pixels) +
                         " pixels; raise max_pixels (SegmenterOptions::max_pixels, the max_pixels argument, "
                         "mrdl_segment --max-pixels) to accept it");
}

void check_image(const PixelView& image, size_t max_pixels) {
    if (image.data == nullptr) throw InputError("image has no pixel data (expected an HxWxC buffer)");
    if (image.height < 1 || image.width < 1 || image.channels < 1 || image.channels > 4)
        throw InputError("image of shape " + shape_of(image) +
                         ": expected at least 1x1 pixels with 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) "
                         "channels");
    check_pixel_count(image.height, image.width, max_pixels);
}

void check_image(const ImageView& image, size_t max_pixels) {
    check_image(PixelView{image.data, PixelType::UInt8, image.height, image.width, image.channels}, max_pixels);
}

Image to_rgb8(const PixelView& image, size_t max_pixels) {
    check_image(image, max_pixels);
    switch (image.type) {
        case PixelType::UInt8: return to_rgb<uint8_t>(image, [](uint8_t v) { return v; });
        case PixelType::UInt16: return to_rgb<uint16_t>(image, [](uint16_t v) { return static_cast<uint8_t>(v >> 8); });
        case PixelType::Int32: return integer_to_rgb8<int32_t>(image);
        case PixelType::Float32: return float_to_rgb8<float>(image);
        case PixelType::Float64: return float_to_rgb8<double>(image);
    }
    throw InputError("unknown pixel type " + std::to_string(static_cast<int>(image.type)));
}

Image to_rgb8(const ImageView& image, size_t max_pixels) {
    return to_rgb8(PixelView{image.data, PixelType::UInt8, image.height, image.width, image.channels}, max_pixels);
}

Image to_rgb8(const uint16_t* data, int height, int width, int channels, size_t max_pixels) {
    return to_rgb8(PixelView{data, PixelType::UInt16, height, width, channels}, max_pixels);
}

Image to_rgb8(const float* data, int height, int width, int channels, size_t max_pixels) {
    return to_rgb8(PixelView{data, PixelType::Float32, height, width, channels}, max_pixels);
}

Image to_rgb8(const double* data, int height, int width, int channels, size_t max_pixels) {
    return to_rgb8(PixelView{data, PixelType::Float64, height, width, channels}, max_pixels);
}

}  // namespace mrdl
