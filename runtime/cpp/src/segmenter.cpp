// Segmenter: manifest + preprocessing + backend + postprocessing.
#include "mrdl/segmenter.hpp"

#include <algorithm>
#include <filesystem>

namespace mrdl {

Segmenter::Segmenter(const std::string& model_dir, const SegmenterOptions& options)
    : max_pixels_(options.max_pixels) {
    if (!std::filesystem::is_directory(model_dir))
        throw ManifestError(model_dir + " is not a directory (expected a model directory written by mrdl-export)");
    manifest_ = Manifest::load((std::filesystem::path(model_dir) / "model.json").string());
    backend_ = make_backend(model_dir, manifest_, options);
}

Segmenter::~Segmenter() = default;
Segmenter::Segmenter(Segmenter&&) noexcept = default;
Segmenter& Segmenter::operator=(Segmenter&&) noexcept = default;

std::string Segmenter::backend_description() const { return backend_->describe(); }

Segmentation Segmenter::segment(const ImageView& image, const std::vector<float>& text_features) {
    std::vector<std::vector<float>> text;
    if (!text_features.empty()) text.push_back(text_features);
    return segment(std::vector<ImageView>{image}, text).front();
}

std::vector<Segmentation> Segmenter::segment(const std::vector<ImageView>& images,
                                             const std::vector<std::vector<float>>& text_features) {
    const Preprocessing& pre = manifest_.preprocessing;
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

    const size_t image_size = static_cast<size_t>(3) * pre.height * pre.width;
    const size_t out_plane = static_cast<size_t>(manifest_.n_classes) * pre.height * pre.width;
    std::vector<Segmentation> results;
    results.reserve(images.size());
    for (size_t start = 0; start < images.size(); start += manifest_.max_batch) {
        const size_t count = std::min(images.size() - start, static_cast<size_t>(manifest_.max_batch));
        std::vector<float> batch;  // (B, 3, H, W)
        batch.reserve(count * image_size);
        std::vector<float> text;  // (B, L, D)
        for (size_t i = start; i < start + count; ++i) {
            const std::vector<float> tensor = preprocess(images[i], pre, max_pixels_);
            batch.insert(batch.end(), tensor.begin(), tensor.end());
            if (text_size) text.insert(text.end(), text_features[i].begin(), text_features[i].end());
        }
        const std::vector<float> probabilities =
            backend_->run(batch, text_size ? &text : nullptr, static_cast<int64_t>(count));  // (B, K, H, W)
        for (size_t i = 0; i < count; ++i)
            results.push_back(postprocess(probabilities.data() + i * out_plane, manifest_.n_classes, pre.height,
                                          pre.width, images[start + i].height, images[start + i].width,
                                          manifest_.postprocessing));
    }
    return results;
}

}  // namespace mrdl
