// Pre- and postprocessing: the deploy-manifest rules, identical to mrdl_runtime's.
#include "mrdl/processing.hpp"

#include <algorithm>
#include <string>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/resample.hpp"

namespace mrdl {

std::vector<float> preprocess(const ImageView& image, const Preprocessing& spec, size_t max_pixels) {
    const Image resized =
        resize_bilinear(to_rgb8(image, max_pixels).view(), spec.height, spec.width, PassOrder::Pillow);  // (H, W, 3)
    const float scale = static_cast<float>(spec.scale);
    const size_t plane = static_cast<size_t>(spec.height) * spec.width;
    std::vector<float> tensor(3 * plane);  // (3, H, W)
    for (size_t p = 0; p < plane; ++p)
        for (int ch = 0; ch < 3; ++ch) tensor[ch * plane + p] = static_cast<float>(resized.pixels[p * 3 + ch]) * scale;
    return tensor;
}

Segmentation postprocess(const float* probabilities, int n_classes, int model_height, int model_width, int height,
                         int width, const Postprocessing& spec, PassOrder order) {
    if (n_classes < 1) throw InputError("postprocess needs n_classes >= 1, got " + std::to_string(n_classes));
    const size_t model_plane = static_cast<size_t>(model_height) * model_width;
    const size_t plane = static_cast<size_t>(height) * width;
    Segmentation result{height, width, n_classes, std::vector<uint8_t>(plane), {}};
    result.probabilities.reserve(n_classes * plane);
    for (int c = 0; c < n_classes; ++c) {
        const std::vector<float> resized =
            resize_bilinear(probabilities + c * model_plane, model_height, model_width, height, width, order);
        result.probabilities.insert(result.probabilities.end(), resized.begin(), resized.end());
    }
    const float* probs = result.probabilities.data();  // (n_classes, H, W)
    if (n_classes == 1) {
        const float threshold = static_cast<float>(spec.threshold);
        for (size_t p = 0; p < plane; ++p) result.mask[p] = probs[p] > threshold ? 1 : 0;
        return result;
    }
    for (size_t p = 0; p < plane; ++p) {
        int best = 0;
        for (int c = 1; c < n_classes; ++c)
            if (probs[c * plane + p] > probs[best * plane + p]) best = c;
        result.mask[p] = static_cast<uint8_t>(best);
    }
    return result;
}

std::vector<uint8_t> mask_at_size(const float* probabilities, int n_classes, int model_height, int model_width,
                                  int height, int width, const Postprocessing& spec, PassOrder order) {
    if (n_classes < 1) throw InputError("mask_at_size needs n_classes >= 1, got " + std::to_string(n_classes));
    constexpr size_t kStripBytes = size_t(1) << 24;
    const int strip = static_cast<int>(std::max<size_t>(1, kStripBytes / (sizeof(float) * std::max(width, 1))));
    const size_t model_plane = static_cast<size_t>(model_height) * model_width;
    const float threshold = static_cast<float>(spec.threshold);
    std::vector<uint8_t> mask(static_cast<size_t>(height) * width);
    for (int begin = 0; begin < height; begin += strip) {
        const int end = std::min(height, begin + strip);
        uint8_t* out = &mask[static_cast<size_t>(begin) * width];
        std::vector<float> best =
            resize_bilinear_rows(probabilities, model_height, model_width, height, width, begin, end, order);
        if (n_classes == 1) {
            for (size_t p = 0; p < best.size(); ++p) out[p] = best[p] > threshold ? 1 : 0;
            continue;
        }
        std::fill(out, out + best.size(), uint8_t{0});
        for (int c = 1; c < n_classes; ++c) {  // first maximum wins on ties, as postprocess
            const std::vector<float> rows = resize_bilinear_rows(probabilities + c * model_plane, model_height,
                                                                 model_width, height, width, begin, end, order);
            for (size_t p = 0; p < rows.size(); ++p)
                if (rows[p] > best[p]) {
                    best[p] = rows[p];
                    out[p] = static_cast<uint8_t>(c);
                }
        }
    }
    return mask;
}

}  // namespace mrdl
