// Tiled inference: the steps of docs/tiling.md. Compiled with -ffp-contract=off: the float32
// accumulation rounds each product before the sum, as the Python runtime does.
#include "mrdl/tiling.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

constexpr double kSigmaScale = 0.125;  // sigma = 0.125 * window side (MONAI)

std::vector<double> gaussian(int side) {
    const double sigma = kSigmaScale * side;
    std::vector<double> g(side);
    for (int i = 0; i < side; ++i) {
        const double d = i - (side - 1) / 2.0;
        g[i] = std::exp(-(d * d) / (2.0 * sigma * sigma));
    }
    return g;
}

}  // namespace

void TileOptions::validate() const {
    if (!(overlap >= 0.0 && overlap <= kMaxOverlap))  // NaN fails both
        throw InputError("overlap must be a number with 0 <= overlap <= 0.9 (the fraction of a window shared with "
                         "its neighbour; default 0.25; 0.9 already runs each pixel about 100 times), got " +
                         std::to_string(overlap));
    if (blend != Blend::Gaussian && blend != Blend::Constant) throw InputError("blend must be Gaussian or Constant");
    if (mode != TileMode::Auto && mode != TileMode::On && mode != TileMode::Off)
        throw InputError("tile mode must be Auto, On or Off");
}

bool should_tile(int64_t height, int64_t width, const std::optional<std::array<int, 2>>& source_size, TileMode mode) {
    if (mode == TileMode::Off) return false;
    if (!source_size) {
        if (mode == TileMode::On)
            throw InputError("tiling needs the training source size, and model.json has no \"source_size\"; "
                             "re-export with mrdl-export --source-size HxW (e.g. 1000x1000 for MoNuSeg)");
        return false;
    }
    if (mode == TileMode::On) return true;
    return 2 * height > 3 * int64_t{(*source_size)[0]} || 2 * width > 3 * int64_t{(*source_size)[1]};
}

std::array<int, 2> resampled_size(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                                  const std::array<int, 2>& model_size) {
    const int64_t sizes[2] = {height, width};
    std::array<int, 2> out{};
    for (int a = 0; a < 2; ++a) {
        const int64_t s = source_size[a], m = model_size[a];
        out[a] = static_cast<int>(std::max<int64_t>(1, (2 * sizes[a] * m + s) / (2 * s)));
    }
    return out;
}

std::vector<int> window_starts(int length, int window, double overlap) {
    if (length < window)
        throw InputError("an axis of " + std::to_string(length) + " pixels is shorter than the window (" +
                         std::to_string(window) + "); pad it first");
    if (length == window) return {0};
    const int stride = std::max(1, static_cast<int>(std::floor(window * (1.0 - overlap))));
    const int count = (length - window + stride - 1) / stride + 1;
    std::vector<int> starts(count);
    for (int i = 0; i < count; ++i) starts[i] = static_cast<int>(std::min<int64_t>(int64_t{i} * stride, length - window));
    return starts;
}

std::vector<float> blend_weights(int model_height, int model_width, Blend blend) {
    const size_t size = static_cast<size_t>(model_height) * model_width;
    if (blend == Blend::Constant) return std::vector<float>(size, 1.0f);
    const std::vector<double> rows = gaussian(model_height), cols = gaussian(model_width);
    // No clamp: every weight is above exp(-16), so every pixel's weight sum is > 0 (docs/tiling.md section 8).
    std::vector<float> weights(size);
    for (int i = 0; i < model_height; ++i)
        for (int j = 0; j < model_width; ++j)
            weights[static_cast<size_t>(i) * model_width + j] = static_cast<float>(rows[i] * cols[j]);
    return weights;
}

void check_tile_cost(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                     const std::array<int, 2>& model_size, double overlap, size_t max_pixels) {
    const int64_t sizes[2] = {height, width};
    uint64_t resampled[2], across[2];
    for (int a = 0; a < 2; ++a) {  // resampled_size and window_starts' count, in 64-bit integers
        const int64_t s = source_size[a], m = model_size[a];
        const int64_t side = std::max<int64_t>(1, (2 * sizes[a] * m + s) / (2 * s)), padded = std::max(side, m);
        const int64_t stride = std::max<int64_t>(1, static_cast<int64_t>(std::floor(m * (1.0 - overlap))));
        resampled[a] = static_cast<uint64_t>(side);
        across[a] = padded == m ? 1 : static_cast<uint64_t>((padded - m + stride - 1) / stride + 1);
    }
    const auto product = [](uint64_t a, uint64_t b) {  // saturating: the limits compare, nothing wraps
        return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b;
    };
    const auto size = [](uint64_t h, uint64_t w) { return std::to_string(w) + "x" + std::to_string(h); };
    const std::string raise = "; raise max_pixels (SegmenterOptions::max_pixels, mrdl_segment --max-pixels)";
    const uint64_t pixels = product(resampled[0], resampled[1]);
    if (pixels > max_pixels)
        throw InputError("tiling resamples this " + size(static_cast<uint64_t>(height), static_cast<uint64_t>(width)) + " image to " +
                         size(resampled[0], resampled[1]) + " = " + std::to_string(pixels) +
                         " pixels at the training scale (source_size [" + std::to_string(source_size[0]) + ", " +
                         std::to_string(source_size[1]) + "]), more than the limit of " + std::to_string(max_pixels) +
                         " pixels" + raise + " or segment it whole (no tiling)");
    const uint64_t windows = product(across[0], across[1]);
    const uint64_t model_pixels = product(windows, product(model_size[0], model_size[1]));
    if (model_pixels > product(kMaxWindowCoverage, max_pixels))
        throw InputError("tiling this " + size(static_cast<uint64_t>(height), static_cast<uint64_t>(width)) + " image takes " + std::to_string(windows) +
                         " windows of " + size(model_size[0], model_size[1]) + " = " + std::to_string(model_pixels) +
                         " model pixels, more than " + std::to_string(kMaxWindowCoverage) + " x the limit of " +
                         std::to_string(max_pixels) + " pixels; lower the overlap (" + std::to_string(overlap) + ")" +
                         " or raise max_pixels (SegmenterOptions::max_pixels, mrdl_segment --max-pixels)");
}

TilePlan plan_tiles(int64_t height, int64_t width, const std::array<int, 2>& source_size,
                    const std::array<int, 2>& model_size, double overlap) {
    TilePlan plan;
    plan.image_size = {static_cast<int>(height), static_cast<int>(width)};
    plan.resampled_size = resampled_size(height, width, source_size, model_size);
    plan.padded_size = {std::max(plan.resampled_size[0], model_size[0]), std::max(plan.resampled_size[1], model_size[1])};
    for (int y : window_starts(plan.padded_size[0], model_size[0], overlap))
        for (int x : window_starts(plan.padded_size[1], model_size[1], overlap)) plan.windows.push_back({y, x});
    return plan;
}

std::vector<float> stitch(const ImageView& resampled, const TilePlan& plan, const WindowRunner& run,
                          const std::array<int, 2>& model_size, int n_classes, int max_batch, double scale,
                          Blend blend) {
    const int mh = model_size[0], mw = model_size[1];
    const int h = plan.resampled_size[0], w = plan.resampled_size[1];
    const int hp = plan.padded_size[0], wp = plan.padded_size[1];
    if (resampled.channels != 3 || resampled.height != h || resampled.width != w)
        throw InputError("stitch expects the resampled " + std::to_string(h) + "x" + std::to_string(w) +
                         "x3 image of its plan");
    const std::vector<float> weights = blend_weights(mh, mw, blend);  // (mh, mw)
    const size_t window_plane = static_cast<size_t>(mh) * mw;
    const size_t padded_plane = static_cast<size_t>(hp) * wp;
    std::vector<float> num(static_cast<size_t>(n_classes) * padded_plane, 0.0f);  // (C, hp, wp)
    std::vector<float> den(padded_plane, 0.0f);                                    // (hp, wp)
    const float factor = static_cast<float>(scale);
    for (size_t begin = 0; begin < plan.windows.size(); begin += max_batch) {
        const size_t count = std::min(plan.windows.size() - begin, static_cast<size_t>(max_batch));
        std::vector<float> batch(count * 3 * window_plane, 0.0f);  // (B, 3, mh, mw); padding stays 0
        for (size_t k = 0; k < count; ++k) {
            const auto [y, x] = plan.windows[begin + k];
            float* input = &batch[k * 3 * window_plane];
            for (int i = 0; i < mh && y + i < h; ++i)
                for (int j = 0; j < mw && x + j < w; ++j) {
                    const uint8_t* pixel = resampled.data + (static_cast<size_t>(y + i) * w + x + j) * 3;
                    for (int ch = 0; ch < 3; ++ch)
                        input[ch * window_plane + static_cast<size_t>(i) * mw + j] = static_cast<float>(pixel[ch]) * factor;
                }
        }
        const std::vector<float> probabilities = run(batch, static_cast<int64_t>(count));  // (B, C, mh, mw)
        if (probabilities.size() != count * n_classes * window_plane)
            throw BackendError("the model returned " + std::to_string(probabilities.size()) + " values for " +
                               std::to_string(count) + " windows; expected B x " + std::to_string(n_classes) +
                               " x " + std::to_string(mh) + " x " + std::to_string(mw));
        for (size_t k = 0; k < count; ++k) {
            const auto [y, x] = plan.windows[begin + k];
            for (int c = 0; c < n_classes; ++c) {
                const float* p = &probabilities[(k * n_classes + c) * window_plane];
                float* target = &num[c * padded_plane];
                for (int i = 0; i < mh; ++i)
                    for (int j = 0; j < mw; ++j) {
                        const float product = weights[static_cast<size_t>(i) * mw + j] * p[static_cast<size_t>(i) * mw + j];
                        target[static_cast<size_t>(y + i) * wp + x + j] += product;
                    }
            }
            for (int i = 0; i < mh; ++i)
                for (int j = 0; j < mw; ++j)
                    den[static_cast<size_t>(y + i) * wp + x + j] += weights[static_cast<size_t>(i) * mw + j];
        }
    }
    std::vector<float> out(static_cast<size_t>(n_classes) * h * w);  // (C, h, w): normalised, padding cropped
    for (int c = 0; c < n_classes; ++c)
        for (int r = 0; r < h; ++r)
            for (int s = 0; s < w; ++s)
                out[(static_cast<size_t>(c) * h + r) * w + s] =
                    num[c * padded_plane + static_cast<size_t>(r) * wp + s] / den[static_cast<size_t>(r) * wp + s];
    return out;
}

}  // namespace mrdl
