// Pillow-compatible separable bilinear resampling; see resample.hpp for the rules reproduced.
#include "mrdl/resample.hpp"

#include <algorithm>
#include <cmath>

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
    return taps;
}

std::vector<int32_t> fixed_point(const FilterTaps& taps) {
    std::vector<int32_t> k(taps.weights.size());
    for (size_t i = 0; i < k.size(); ++i) {
        const double scaled = taps.weights[i] * (1 << kPrecisionBits);
        k[i] = static_cast<int32_t>(taps.weights[i] < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    return k;
}

uint8_t clip8(int32_t accumulator) {
    return static_cast<uint8_t>(std::clamp(accumulator >> kPrecisionBits, 0, 255));
}

void check_sizes(int height, int width, int out_height, int out_width) {
    if (height < 1 || width < 1 || out_height < 1 || out_width < 1)
        throw InputError("resize needs positive sizes, got " + std::to_string(height) + "x" + std::to_string(width) +
                         " -> " + std::to_string(out_height) + "x" + std::to_string(out_width));
}

}  // namespace

Image resize_bilinear(const ImageView& image, int out_height, int out_width) {
    check_sizes(image.height, image.width, out_height, out_width);
    const int c = image.channels;
    if (c < 1 || c > 4) throw InputError("resize expects 1 to 4 channels, got " + std::to_string(c));
    const FilterTaps vertical = bilinear_taps(image.height, out_height);
    const int rows_first = vertical.first.front();
    const int rows_end = vertical.first.back() + vertical.count.back();

    // Horizontal pass over the rows the vertical pass reads: (rows, out_width, C) uint8.
    Image horizontal{image.height, image.width, c, {}};
    const uint8_t* rows = image.data;
    int row_offset = 0;
    if (out_width != image.width) {
        const FilterTaps taps = bilinear_taps(image.width, out_width);
        const std::vector<int32_t> k = fixed_point(taps);
        horizontal = Image{rows_end - rows_first, out_width, c, {}};
        horizontal.pixels.resize(static_cast<size_t>(horizontal.height) * out_width * c);
        for (int y = 0; y < horizontal.height; ++y) {
            const uint8_t* src = image.data + static_cast<size_t>(y + rows_first) * image.width * c;
            uint8_t* dst = &horizontal.pixels[static_cast<size_t>(y) * out_width * c];
            for (int x = 0; x < out_width; ++x) {
                const int32_t* kx = &k[static_cast<size_t>(x) * taps.taps_per_output];
                for (int ch = 0; ch < c; ++ch) {
                    int32_t acc = 1 << (kPrecisionBits - 1);
                    for (int i = 0; i < taps.count[x]; ++i) acc += src[(taps.first[x] + i) * c + ch] * kx[i];
                    dst[x * c + ch] = clip8(acc);
                }
            }
        }
        rows = horizontal.pixels.data();
        row_offset = rows_first;
    }
    const int width = out_width;
    if (out_height == image.height) {
        if (out_width != image.width) return horizontal;
        return Image{image.height, image.width, c,
                     std::vector<uint8_t>(image.data, image.data + static_cast<size_t>(image.height) * image.width * c)};
    }

    // Vertical pass: (out_height, out_width, C) uint8.
    const std::vector<int32_t> k = fixed_point(vertical);
    Image out{out_height, width, c, std::vector<uint8_t>(static_cast<size_t>(out_height) * width * c)};
    for (int y = 0; y < out_height; ++y) {
        const int32_t* ky = &k[static_cast<size_t>(y) * vertical.taps_per_output];
        const int first = vertical.first[y] - row_offset;
        for (int x = 0; x < width * c; ++x) {
            int32_t acc = 1 << (kPrecisionBits - 1);
            for (int i = 0; i < vertical.count[y]; ++i) acc += rows[static_cast<size_t>(first + i) * width * c + x] * ky[i];
            out.pixels[static_cast<size_t>(y) * width * c + x] = clip8(acc);
        }
    }
    return out;
}

std::vector<float> resize_bilinear(const float* plane, int height, int width, int out_height, int out_width) {
    check_sizes(height, width, out_height, out_width);
    std::vector<float> horizontal(plane, plane + static_cast<size_t>(height) * width);  // (H, out_width)
    if (out_width != width) {
        const FilterTaps taps = bilinear_taps(width, out_width);
        std::vector<float> next(static_cast<size_t>(height) * out_width);
        for (int y = 0; y < height; ++y) {
            const float* src = plane + static_cast<size_t>(y) * width;
            for (int x = 0; x < out_width; ++x) {
                const double* kx = &taps.weights[static_cast<size_t>(x) * taps.taps_per_output];
                double acc = 0.0;
                for (int i = 0; i < taps.count[x]; ++i) acc += src[taps.first[x] + i] * kx[i];
                next[static_cast<size_t>(y) * out_width + x] = static_cast<float>(acc);
            }
        }
        horizontal.swap(next);
    }
    if (out_height == height) return horizontal;
    const FilterTaps taps = bilinear_taps(height, out_height);
    std::vector<float> out(static_cast<size_t>(out_height) * out_width);  // (out_height, out_width)
    for (int y = 0; y < out_height; ++y) {
        const double* ky = &taps.weights[static_cast<size_t>(y) * taps.taps_per_output];
        for (int x = 0; x < out_width; ++x) {
            double acc = 0.0;
            for (int i = 0; i < taps.count[y]; ++i)
                acc += horizontal[static_cast<size_t>(taps.first[y] + i) * out_width + x] * ky[i];
            out[static_cast<size_t>(y) * out_width + x] = static_cast<float>(acc);
        }
    }
    return out;
}

}  // namespace mrdl
