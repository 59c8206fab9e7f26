// Bad manifests, images and options fail with messages naming what was expected.
#include <filesystem>
#include <fstream>

#include "mrdl/segmenter.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

const char* kValid = R"({
  "format": "mrdl-deploy/1", "name": "tiny", "fusion": "distribution", "n_classes": 1,
  "classes": ["background", "foreground"], "artifacts": {"fp32": "model.onnx"},
  "inputs": [{"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}],
  "outputs": [{"name": "probabilities", "shape": ["batch", 1, 64, 64], "dtype": "float32"}],
  "max_batch": 16,
  "preprocessing": {"size": [64, 64], "resize": "bilinear", "channel_order": "RGB", "layout": "NCHW",
                    "scale": 0.00392156862745098, "grayscale": "replicate"},
  "postprocessing": {"activation": "sigmoid", "activation_in_graph": true, "threshold": 0.5,
                     "resize_to_original": "bilinear"},
  "precision": "fp32", "versions": {"mrdl": "0.1.0", "opset": 20}
})";

std::string replaced(const std::string& from, const std::string& to) {
    std::string text = kValid;
    const size_t at = text.find(from);
    if (at == std::string::npos) throw std::logic_error("test bug: " + from + " not in the manifest");
    return text.replace(at, from.size(), to);
}

}  // namespace

int main() {
    run("a valid manifest parses", [] {
        const Manifest m = Manifest::parse(kValid, "model.json");
        check(m.preprocessing.height == 64 && m.preprocessing.width == 64, "size");
        check(m.inputs.front().shape.front() == TensorSpec::kDynamic, "batch axis is dynamic");
        check(m.versions.at("opset") == "20" && m.classes.at(1) == "foreground", "versions and classes");
    });
    run("manifest errors name what was expected", [] {
        expect_error<ManifestError>("not json", "not valid JSON", [] { Manifest::parse("{", "m.json"); });
        expect_error<ManifestError>("format", "format must be \"mrdl-deploy/1\"",
                                    [] { Manifest::parse(replaced("mrdl-deploy/1", "other/2"), "m.json"); });
        expect_error<ManifestError>("missing key", "missing key \"max_batch\"",
                                    [] { Manifest::parse(replaced("\"max_batch\": 16,", ""), "m.json"); });
        expect_error<ManifestError>("layout", "preprocessing.layout must be one of \"NCHW\"",
                                    [] { Manifest::parse(replaced("NCHW", "NHWC"), "m.json"); });
        expect_error<ManifestError>("shape", "inputs \"image\" must have shape [\"batch\", 3, 64, 64]",
                                    [] { Manifest::parse(replaced("\"batch\", 3, 64, 64", "\"batch\", 3, 32, 32"), "m"); });
        expect_error<ManifestError>("batch axis", "\"batch\" or a positive integer",
                                    [] { Manifest::parse(replaced("\"batch\", 1, 64", "\"n\", 1, 64"), "m"); });
        expect_error<ManifestError>("missing file", "expected the model.json written by mrdl-export",
                                    [] { Manifest::load("/nonexistent/model.json"); });
    });
    run("image errors name the accepted layouts", [] {
        const std::vector<uint8_t> pixels(2 * 2 * 2);
        Preprocessing spec;
        spec.height = spec.width = 4;
        spec.scale = 1.0 / 255;
        expect_error<InputError>("channels", "1 (gray), 3 (RGB) or 4 (RGBA) channels, got 2",
                                 [&] { preprocess(ImageView{pixels.data(), 2, 2, 2}, spec); });
        expect_error<InputError>("empty", "at least 1x1",
                                 [&] { preprocess(ImageView{pixels.data(), 0, 2, 3}, spec); });
        expect_error<InputError>("null", "no pixel data", [&] { preprocess(ImageView{nullptr, 2, 2, 3}, spec); });
    });
    run("segmenter errors name the missing piece", [] {
        const std::filesystem::path dir = std::filesystem::temp_directory_path() / "mrdl_cpp_test_errors";
        std::filesystem::create_directories(dir);
        expect_error<ManifestError>("no dir", "is not a directory", [] { Segmenter("/nonexistent/model"); });
        expect_error<ManifestError>("no manifest", "cannot open", [&] { Segmenter s(dir.string()); });
        std::ofstream(dir / "model.json") << kValid;
        expect_error<BackendError>("no artifact file", "is listed in model.json but does not exist",
                                   [&] { Segmenter s(dir.string()); });
        SegmenterOptions int8;
        int8.precision = "int8";
        expect_error<BackendError>("no int8", "lists no \"int8\" artifact (it has: fp32)",
                                   [&] { Segmenter s(dir.string(), int8); });
        std::filesystem::remove_all(dir);
    });
    return finish();
}
