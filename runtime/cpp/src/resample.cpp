// Pillow-compatible separable bilinear resampling; see resample.hpp for the rules reproduced.
#include "mrdl/resample.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

constexpr int kPrecisionBits = 22;  // 32 bits - 8 for the value - 2 for overshoot headroom

/// For each output position: the first input index, how many inputs it reads, and their weights.
struct FilterTaps {
    int taps_per_output = 0;
    std::vector<int> first;
    std::vector<int> count;
    std::vector<double> weights;  // (out_size, taps_per_output), normalised to sum 1
    std::vector<int32_t> fixed;   // the same weights in 22-bit fixed point, for uint8 images
};

double triangle(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

FilterTaps bilinear_taps(int in_size, int out_size) {
    // Pillow takes the box edges as float and the scale as double; integer sizes are exact in both.
    const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
    const double filter_scale = std::max(scale, 1.0);  // widen the filter only when shrinking
    const double support = 1.0 * filter_scale;
    const double inverse_scale = 1.0 / filter_scale;  // Pillow multiplies by the reciprocal
    FilterTaps taps;
    taps.taps_per_output = static_cast<int>(std::ceil(support)) * 2 + 1;
    taps.first.resize(out_size);
    taps.count.resize(out_size);
    taps.weights.assign(static_cast<size_t>(out_size) * taps.taps_per_output, 0.0);
    for (int out = 0; out < out_size; ++out) {
        const double center = (out + 0.5) * scale;
        const int lo = std::max(static_cast<int>(center - support + 0.5), 0);  // truncation, as in C
        const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
        double* w = &taps.weights[static_cast<size_t>(out) * taps.taps_per_output];
        double total = 0.0;
        for (int i = 0; i < hi - lo; ++i) {
            w[i] = triangle((i + lo - center + 0.5) * inverse_scale);
            total += w[i];
        }
        if (total != 0.0)
            for (int i = 0; i < hi - lo; ++i) w[i] /= total;
        taps.first[out] = lo;
        taps.count[out] = hi - lo;
    }
    taps.fixed.resize(taps.weights.size());
    for (size_t i = 0; i < taps.fixed.size(); ++i) {
        const double scaled = taps.weights[i] * (1 << kPrecisionBits);
        taps.fixed[i] = static_cast<int32_t>(taps.weights[i] < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    return taps;
}

/// One output value from `count` inputs `stride` apart: uint8 in fixed point, float in double.
uint8_t filter_one(const uint8_t* in, size_t stride, const FilterTaps& taps, int out) {
    const int32_t* k = &taps.fixed[static_cast<size_t>(out) * taps.taps_per_output];
    int32_t acc = 1 << (kPrecisionBits - 1);
    for (int i = 0; i < taps.count[out]; ++i) acc += in[i * stride] * k[i];
    return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

float filter_one(const float* in, size_t stride, const FilterTaps& taps, int out) {
    const double* k = &taps.weights[static_cast<size_t>(out) * taps.taps_per_output];
    double acc = 0.0;
    for (int i = 0; i < taps.count[out]; ++i) acc += in[i * stride] * k[i];
    return static_cast<float>(acc);
}

/// Resize along the width: (H, W, C) -> (H, out_width, C).
template <typename T>
std::vector<T> horizontal_pass(const T* in, int height, int width, int channels, int out_width) {
    const FilterTaps taps = bilinear_taps(width, out_width);
    std::vector<T> out(static_cast<size_t>(height) * out_width * channels);
    for (int y = 0; y < height; ++y) {
        const T* row = &in[static_cast<size_t>(y) * width * channels];
        T* dst = &out[static_cast<size_t>(y) * out_width * channels];
        for (int x = 0; x < out_width; ++x)
            for (int ch = 0; ch < channels; ++ch)
                dst[x * channels + ch] = filter_one(row + taps.first[x] * channels + ch, channels, taps, x);
    }
    return out;
}

/// Resize along the height: (H, W, C) -> (out_height, W, C).
template <typename T>
std::vector<T> vertical_pass(const T* in, int height, int width, int channels, int out_height) {
    const FilterTaps taps = bilinear_taps(height, out_height);
    const size_t row = static_cast<size_t>(width) * channels;
    std::vector<T> out(out_height * row);
    for (int y = 0; y < out_height; ++y)
        for (size_t i = 0; i < row; ++i) out[y * row + i] = filter_one(&in[taps.first[y] * row + i], row, taps, y);
    return out;
}

/// `order` with PassOrder::Pillow replaced by the order Pillow 13 picks for these sizes.
PassOrder resolved(PassOrder order, int height, int width, int out_height, int out_width) {
    return order == PassOrder::Pillow ? pillow_pass_order(height, width, out_height, out_width) : order;
}

/// (H, W, C) -> (out_height, out_width, C), read from `pixels` without copying it first.
template <typename T>
std::vector<T> resize(const T* pixels, int height, int width, int channels, int out_height, int out_width,
                      PassOrder order) {
    if (height < 1 || width < 1 || out_height < 1 || out_width < 1)
        throw InputError("resize needs positive sizes, got " + std::to_string(height) + "x" + std::to_string(width) +
                         " -> " + std::to_string(out_height) + "x" + std::to_string(out_width));
    const bool horizontal = out_width != width;
    const bool vertical = out_height != height;
    if (!horizontal && !vertical) return std::vector<T>(pixels, pixels + static_cast<size_t>(height) * width * channels);
    if (resolved(order, height, width, out_height, out_width) == PassOrder::VerticalFirst && vertical) {
        std::vector<T> middle = vertical_pass(pixels, height, width, channels, out_height);
        return horizontal ? horizontal_pass(middle.data(), out_height, width, channels, out_width) : middle;
    }
    if (!horizontal) return vertical_pass(pixels, height, width, channels, out_height);
    std::vector<T> middle = horizontal_pass(pixels, height, width, channels, out_width);
    return vertical ? vertical_pass(middle.data(), height, out_width, channels, out_height) : middle;
}

}  // namespace

PassOrder pillow_pass_order(int height, int width, int out_height, int out_width) {
    const int64_t height_shrink = static_cast<int64_t>(height) - out_height;  // int64: no overflow in 2 * ...
    const int64_t width_shrink = static_cast<int64_t>(width) - out_width;
    return height_shrink > 0 && height_shrink > 2 * width_shrink ? PassOrder::VerticalFirst : PassOrder::HorizontalFirst;
}

std::vector<float> resize_bilinear_rows(const float* plane, int height, int width, int out_height, int out_width,
                                        int row_begin, int row_end, PassOrder order) {
    if (height < 1 || width < 1 || out_height < 1 || out_width < 1 || row_begin < 0 || row_end > out_height ||
        row_begin >= row_end)
        throw InputError("resize rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) + ") of " +
                         std::to_string(height) + "x" + std::to_string(width) + " -> " + std::to_string(out_height) +
                         "x" + std::to_string(out_width) + ": expected positive sizes and 0 <= begin < end <= " +
                         std::to_string(out_height));
    int low = row_begin, high = row_end;  // the input rows needed
    FilterTaps vertical;
    if (out_height != height) {
        vertical = bilinear_taps(height, out_height);
        low = vertical.first[row_begin];
        high = vertical.first[row_end - 1] + vertical.count[row_end - 1];
        if (resolved(order, height, width, out_height, out_width) == PassOrder::VerticalFirst) {
            std::vector<float> rows(static_cast<size_t>(row_end - row_begin) * width);  // the vertical pass's rows
            for (int y = row_begin; y < row_end; ++y)
                for (int x = 0; x < width; ++x)
                    rows[static_cast<size_t>(y - row_begin) * width + x] =
                        filter_one(&plane[static_cast<size_t>(vertical.first[y]) * width + x], width, vertical, y);
            return out_width != width ? horizontal_pass(rows.data(), row_end - row_begin, width, 1, out_width) : rows;
        }
    }
    std::vector<float> rows(plane + static_cast<size_t>(low) * width, plane + static_cast<size_t>(high) * width);
    if (out_width != width) rows = horizontal_pass(rows.data(), high - low, width, 1, out_width);
    if (out_height == height) return rows;
    std::vector<float> out(static_cast<size_t>(row_end - row_begin) * out_width);
    for (int y = row_begin; y < row_end; ++y)
        for (int x = 0; x < out_width; ++x)
            out[static_cast<size_t>(y - row_begin) * out_width + x] =
                filter_one(&rows[static_cast<size_t>(vertical.first[y] - low) * out_width + x], out_width, vertical, y);
    return out;
}

Image resize_bilinear(const ImageView& image, int out_height, int out_width, PassOrder order) {
    if (image.channels < 1 || image.channels > 4)
        throw InputError("resize expects 1 to 4 channels, got " + std::to_string(image.channels));
    return Image{out_height, out_width, image.channels,
                 resize(image.data, image.height, image.width, image.channels, out_height, out_width, order)};
}

std::vector<float> resize_bilinear(const float* plane, int height, int width, int out_height, int out_width,
                                   PassOrder order) {
    return resize(plane, height, width, 1, out_height, out_width, order);
}

}  // namespace mrdl
