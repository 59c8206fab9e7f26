// Segmenter: manifest + preprocessing + backend + postprocessing, whole-image or tiled.
#include "mrdl/segmenter.hpp"

#include <algorithm>
#include <filesystem>

#include "mrdl/resample.hpp"

namespace mrdl {

Segmenter::Segmenter(const std::string& model_dir, const SegmenterOptions& options)
    : max_pixels_(options.max_pixels), with_probabilities_(options.with_probabilities) {
    options.validate();
    if (!std::filesystem::is_directory(model_dir))
        throw ManifestError(model_dir + " is not a directory (expected a model directory written by mrdl-export)");
    manifest_ = Manifest::load((std::filesystem::path(model_dir) / "model.json").string());
    backend_ = make_backend(model_dir, manifest_, options);
}

Segmenter::~Segmenter() = default;
Segmenter::Segmenter(Segmenter&&) noexcept = default;
Segmenter& Segmenter::operator=(Segmenter&&) noexcept = default;

std::string Segmenter::backend_description() const { return backend_->describe(); }

Segmentation Segmenter::segment(const ImageView& image, const std::vector<float>& text_features,
                                const TileOptions& tiling) const {
    std::vector<std::vector<float>> text;
    if (!text_features.empty()) text.push_back(text_features);
    return segment(std::vector<ImageView>{image}, text, tiling).front();
}

std::vector<Segmentation> Segmenter::segment(const std::vector<ImageView>& images,
                                             const std::vector<std::vector<float>>& text_features,
                                             const TileOptions& tiling) const {
    const Preprocessing& pre = manifest_.preprocessing;
    tiling.validate();
    size_t text_size = 0;
    if (manifest_.needs_text_features()) {
        const TensorSpec& spec = manifest_.input("text_features");
        text_size = static_cast<size_t>(spec.shape[1] * spec.shape[2]);
        if (text_features.size() != images.size())
            throw InputError("fusion \"addition\" needs text features for every image: got " +
                             std::to_string(text_features.size()) + " for " + std::to_string(images.size()) +
                             " images");
        for (const std::vector<float>& features : text_features)
            if (features.size() != text_size)
                throw InputError("text features must be (" + std::to_string(spec.shape[1]) + ", " +
                                 std::to_string(spec.shape[2]) + ") float32 = " + std::to_string(text_size) +
                                 " values, got " + std::to_string(features.size()));
    } else if (!text_features.empty()) {
        throw InputError("this model (fusion \"" + manifest_.fusion + "\") takes no text features; pass none");
    }

    std::vector<Segmentation> results(images.size());
    std::vector<size_t> whole;  // the images segmented by the whole-image path, batched together
    for (size_t i = 0; i < images.size(); ++i) {
        if (should_tile(images[i].height, images[i].width, manifest_.source_size, tiling.mode))
            results[i] = segment_tiled(images[i], text_size ? &text_features[i] : nullptr, tiling);
        else
            whole.push_back(i);
    }
    const size_t image_size = static_cast<size_t>(3) * pre.height * pre.width;
    const size_t out_plane = static_cast<size_t>(manifest_.n_classes) * pre.height * pre.width;
    for (size_t start = 0; start < whole.size(); start += manifest_.max_batch) {
        const size_t count = std::min(whole.size() - start, static_cast<size_t>(manifest_.max_batch));
        std::vector<float> batch;  // (B, 3, H, W)
        batch.reserve(count * image_size);
        std::vector<float> text;  // (B, L, D)
        for (size_t k = start; k < start + count; ++k) {
            const std::vector<float> tensor = preprocess(images[whole[k]], pre, max_pixels_);
            batch.insert(batch.end(), tensor.begin(), tensor.end());
            if (text_size) text.insert(text.end(), text_features[whole[k]].begin(), text_features[whole[k]].end());
        }
        const std::vector<float> probabilities =
            backend_->run(batch, text_size ? &text : nullptr, static_cast<int64_t>(count));  // (B, K, H, W)
        for (size_t k = 0; k < count; ++k) {
            const ImageView& image = images[whole[start + k]];
            results[whole[start + k]] =
                finish(probabilities.data() + k * out_plane, pre.height, pre.width, image.height, image.width,
                       PassOrder::Pillow);
        }
    }
    return results;
}

Segmentation Segmenter::finish(const float* probabilities, int model_height, int model_width, int height,
                               int width, PassOrder order) const {
    if (with_probabilities_)
        return postprocess(probabilities, manifest_.n_classes, model_height, model_width, height, width,
                           manifest_.postprocessing, order);
    return Segmentation{height, width, manifest_.n_classes,
                        mask_at_size(probabilities, manifest_.n_classes, model_height, model_width, height, width,
                                     manifest_.postprocessing, order),
                        {}};
}

Segmentation Segmenter::segment_tiled(const ImageView& image, const std::vector<float>* text_features,
                                      const TileOptions& tiling) const {
    const Preprocessing& pre = manifest_.preprocessing;
    const std::array<int, 2> model_size{pre.height, pre.width};
    check_image(image, max_pixels_);  // to_rgb8's checks first
    check_tile_cost(image.height, image.width, *manifest_.source_size, model_size, tiling.overlap, max_pixels_);
    const TilePlan plan = plan_tiles(image.height, image.width, *manifest_.source_size, model_size, tiling.overlap);
    Image resampled;  // (h, w, 3) uint8 at the training scale
    if (image.channels == 3) {  // already RGB: resampled straight from the caller's pixels, no copy
        resampled = resize_bilinear(image, plan.resampled_size[0], plan.resampled_size[1], PassOrder::HorizontalFirst);
    } else {
        const Image rgb = to_rgb8(image, max_pixels_);
        resampled = resize_bilinear(rgb.view(), plan.resampled_size[0], plan.resampled_size[1],
                                    PassOrder::HorizontalFirst);
    }
    const WindowRunner run = [&](const std::vector<float>& batch, int64_t count) {
        if (text_features == nullptr) return backend_->run(batch, nullptr, count);
        std::vector<float> text;  // every window gets the image's text features
        for (int64_t k = 0; k < count; ++k) text.insert(text.end(), text_features->begin(), text_features->end());
        return backend_->run(batch, &text, count);
    };
    const std::vector<float> stitched = stitch(resampled.view(), plan, run, model_size, manifest_.n_classes,
                                               manifest_.max_batch, pre.scale, tiling.blend);  // (C, h, w)
    Segmentation result = finish(stitched.data(), plan.resampled_size[0], plan.resampled_size[1], image.height,
                                 image.width, PassOrder::HorizontalFirst);
    result.tiled = true;
    return result;
}

}  // namespace mrdl
