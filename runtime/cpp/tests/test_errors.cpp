// Hostile and broken manifests, images and options fail with messages naming what was expected.
#include <filesystem>
#include <fstream>

#include "mrdl/segmenter.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

const char* kValid = R"({
  "format": "mrdl-deploy/2", "export_id": "0123456789abcdef0123456789abcdef",
  "name": "tiny", "fusion": "distribution", "n_classes": 1,
  "classes": ["background", "foreground"],
  "artifacts": {"fp32": {"file": "model.onnx", "bytes": 1234,
                         "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                         "precision": "fp32"}},
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

void refused(const std::string& name, const std::string& from, const std::string& to, const std::string& fragment) {
    expect_error<ManifestError>(name, fragment, [&] { Manifest::parse(replaced(from, to), "model.json"); });
}

}  // namespace

int main() {
    run("a valid manifest parses", [] {
        const Manifest m = Manifest::parse(kValid, "model.json");
        check(m.preprocessing.height == 64 && m.preprocessing.width == 64, "size");
        check(m.inputs.front().shape.front() == TensorSpec::kDynamic, "batch axis is dynamic");
        check(m.versions.at("opset") == "20" && m.classes.at(1) == "foreground", "versions and classes");
        check(m.export_id == "0123456789abcdef0123456789abcdef", "export_id");
        const Artifact& fp32 = m.artifacts.at("fp32");
        check(fp32.file == "model.onnx" && fp32.bytes == 1234 && fp32.precision == "fp32" &&
                  fp32.sha256.substr(0, 4) == "e3b0",
              "the fp32 artifact record");
    });
    run("source_size: optional, [height, width], each side in [max(16, ceil(model side / 4)), 65536]", [] {
        check(!Manifest::parse(kValid, "model.json").source_size, "absent: unknown");
        const auto with_source = [](const std::string& value) {
            return replaced("\"max_batch\": 16,", "\"max_batch\": 16, \"source_size\": " + value + ",");
        };
        const Manifest m = Manifest::parse(with_source("[1000, 900]"), "model.json");
        check(m.source_size && (*m.source_size)[0] == 1000 && (*m.source_size)[1] == 900, "[1000, 900]");
        const Manifest low = Manifest::parse(with_source("[16, 65536]"), "model.json");  // the 64x64 model's range
        check(low.source_size && (*low.source_size)[0] == 16 && (*low.source_size)[1] == 65536, "both ends accepted");
        for (const std::string bad : {"[1000]", "[0,10]", "[1,1]", "[15,100]", "[100,15]", "[65537,100]",
                                      "[100000,100000]", "[1048576,100]", "[10.5,10]", "[true,10]", "\"1000x1000\"",
                                      "[10,10,3]", "null"})
            refused("source_size " + bad, "\"max_batch\": 16,", "\"max_batch\": 16, \"source_size\": " + bad + ",",
                    "source_size is " + bad + "; expected [height, width] of the training images, each side in "
                    "[16, 65536] for a 64x64 model (below a quarter of the model size");
        // A 128x256 model: at least a quarter of its size per axis, 32 and 64.
        std::string big = with_source("[32, 64]");
        for (const auto& [from, to] : {std::pair<std::string, std::string>{"3, 64, 64]", "3, 128, 256]"},
                                       {"1, 64, 64]", "1, 128, 256]"}, {"\"size\": [64, 64]", "\"size\": [128, 256]"}})
            big.replace(big.find(from), from.size(), to);
        const Manifest wide = Manifest::parse(big, "model.json");
        check(wide.source_size && (*wide.source_size)[1] == 64, "[32, 64] for a 128x256 model");
        big.replace(big.find("[32, 64]"), 8, "[32, 63]");
        expect_error<ManifestError>("[32, 63] for a 128x256 model",
                                    "source_size is [32,63]; expected [height, width] of the training images, each side "
                                    "in [32, 65536] and [64, 65536] for a 128x256 model",
                                    [&] { Manifest::parse(big, "model.json"); });
    });
    run("manifest_edits: model.json against the copy embedded in an ONNX file", [] {
        // The embedded copy of kValid's fp32 file: the same document, the artifact record reduced to
        // its file and precision.
        nlohmann::json embedded = nlohmann::json::parse(kValid);
        embedded["artifacts"]["fp32"] = {{"file", "model.onnx"}, {"precision", "fp32"}};
        const auto edits = [&](const std::string& model_json, const nlohmann::json& copy, size_t limit = 3) {
            return manifest_edits(Manifest::parse(model_json, "model.json"), copy.dump(), "fp32", "embedded", limit);
        };
        check(edits(kValid, embedded).empty(), "unedited (sizes and hashes are not compared)");
        nlohmann::json other = embedded;
        other["max_batch"] = 16.0;  // 16 and 16.0 are different JSON (Python: int and float)
        other["versions"]["opset"] = "20";
        using Edits = std::vector<std::string>;
        check(edits(kValid, other) == Edits{"max_batch is 16, not 16.0", "versions.opset is 20, not \"20\""},
              "types count");
        check(edits(replaced("\"max_batch\": 16,", "\"max_batch\": 16, \"source_size\": [128, 64],"), embedded) ==
                  Edits{"source_size was added"},
              "added");
        other = embedded;
        other["source_size"] = {128, 128};
        check(edits(replaced("\"max_batch\": 16,", "\"max_batch\": 16, \"source_size\": [128, 64],"), other) ==
                  Edits{"source_size[1] is 64, not 128"},
              "a list item");
        check(edits(kValid, other) == Edits{"source_size was removed"}, "removed");
        other = embedded;
        other["name"] = std::string(100, 'x');
        other["precision"] = "int8";
        other["classes"] = {"background"};
        other["n_classes"] = true;
        const Edits many = edits(kValid, other);
        check(many == Edits{"classes is [\"background\", \"foreground\"], not [\"background\"]",
                            "n_classes is 1, not true",
                            "name is \"tiny\", not \"" + std::string(56, 'x') + "..."},
              "at most 3, in key order, long values cut to 60 characters");
        check(edits(kValid, other, 10).size() == 4, "the 4th (precision) with a larger limit");
        expect_error<IntegrityError>("bad embedded JSON", "embedded", [&] {
            manifest_edits(Manifest::parse(kValid, "model.json"), "{", "fp32", "embedded");
        });
    });
    run("tile decisions and options (docs/tiling.md)", [] {
        const std::optional<std::array<int, 2>> source = std::array<int, 2>{1000, 1000};
        check(!should_tile(1500, 1500, source, TileMode::Auto) && should_tile(1501, 1000, source, TileMode::Auto) &&
                  should_tile(1000, 1501, source, TileMode::Auto),
              "auto tiles above 1.5 x source_size on either axis");
        check(should_tile(10, 10, source, TileMode::On) && !should_tile(20000, 20000, source, TileMode::Off), "on / off");
        check(!should_tile(20000, 20000, std::nullopt, TileMode::Auto), "auto never tiles without source_size");
        expect_error<InputError>("on without source_size", "mrdl-export --source-size HxW",
                                 [] { should_tile(10, 10, std::nullopt, TileMode::On); });
        check(resampled_size(1000, 1001, {1000, 1000}, {224, 224}) == std::array<int, 2>{224, 224} &&
                  resampled_size(1003, 4000, {1000, 1000}, {224, 224}) == std::array<int, 2>{225, 896} &&
                  resampled_size(20000, 1, {1000, 1000}, {224, 224}) == std::array<int, 2>{4480, 1},
              "resampled sizes of the examples");
        check(window_starts(896, 224, 0.25) == std::vector<int>{0, 168, 336, 504, 672}, "896: 5 starts");
        // The cost check: 1000x1000 at source [16, 16] for a 64x64 model resamples to 4000x4000 =
        // 16 M pixels; at overlap 0.9 (stride 6) that is 657 x 657 windows = 1768 M model pixels.
        check_tile_cost(1000, 1000, {16, 16}, {64, 64}, 0.25, 16'000'000);
        expect_error<InputError>("resampled over max_pixels",
                                 "tiling resamples this 1000x1000 image to 4000x4000 = 16000000 pixels at the training "
                                 "scale (source_size [16, 16]), more than the limit of 15999999 pixels; raise max_pixels",
                                 [] { check_tile_cost(1000, 1000, {16, 16}, {64, 64}, 0.25, 15'999'999); });
        expect_error<InputError>("windows over 16 x max_pixels",
                                 "tiling this 1000x1000 image takes 431649 windows of 64x64 = 1768034304 model "
                                 "pixels, more than 16 x the limit of 110502143 pixels; lower the overlap",
                                 [] { check_tile_cost(1000, 1000, {16, 16}, {64, 64}, 0.9, 110'502'143); });
        check_tile_cost(1000, 1000, {16, 16}, {64, 64}, 0.9, 110'502'144);  // 16 x 110502144 = 1768034304: at the bound
        check_tile_cost(1 << 30, 1 << 30, {16, 16}, {64, 64}, 0.25, SIZE_MAX);  // products saturate, nothing wraps
        const std::vector<int> starts = window_starts(4480, 224, 0.25);
        check(starts.size() == 27 && starts[25] == 4200 && starts.back() == 4256, "4480: 27 starts, the last clamped");
        check(window_starts(224, 224, 0.9) == std::vector<int>{0}, "one window");
        expect_error<InputError>("short axis", "shorter than the window", [] { window_starts(100, 224, 0.25); });
    });
    run("descriptive fields the Python runtime defaults may be absent", [] {
        std::string text = kValid;
        for (const std::string field : {"\"resize\": \"bilinear\", ", "\"channel_order\": \"RGB\", ",
                                         "\"layout\": \"NCHW\",", ", \"grayscale\": \"replicate\"",
                                         "\"activation\": \"sigmoid\", ", ",\n                     \"resize_to_original\": \"bilinear\"",
                                         "\"name\": \"tiny\", "}) {
            const size_t at = text.find(field);
            check(at != std::string::npos, "test bug: " + field);
            if (at != std::string::npos) text.erase(at, field.size());
        }
        const Manifest m = Manifest::parse(text, "model.json");
        check(m.preprocessing.layout == "NCHW" && m.postprocessing.activation == "sigmoid" &&
                  m.postprocessing.resize_to_original == "bilinear" && m.name.empty(),
              "defaults");
    });
    run("manifest errors name what was expected", [] {
        expect_error<ManifestError>("not json", "not valid JSON", [] { Manifest::parse("{", "m.json"); });
        refused("format", "mrdl-deploy/2", "other/2", "format must be \"mrdl-deploy/2\", got \"other/2\"");
        refused("missing key", "\"max_batch\": 16,", "", "missing key \"max_batch\"");
        refused("layout", "NCHW", "NHWC", "preprocessing.layout must be one of \"NCHW\"");
        refused("shape", "\"batch\", 3, 64, 64", "\"batch\", 3, 32, 32", "inputs \"image\" must have shape [\"batch\", 3, 64, 64]");
        refused("batch axis", "\"batch\", 1, 64", "\"n\", 1, 64", "outputs[0].shape must be [\"batch\", positive integers...]");
        refused("zero dim", "\"batch\", 1, 64", "\"batch\", 0, 64", "outputs[0].shape[1] must be a positive integer, got 0");
        refused("export_id", "0123456789abcdef0123456789abcdef", "../x", "export_id must be 32 lower-case hex digits");
        expect_error<ManifestError>("missing file", "expected the model.json written by mrdl-export",
                                    [] { Manifest::load("/nonexistent/model.json"); });
    });
    run("an mrdl-deploy/1 manifest asks for a re-export", [] {
        refused("format 1", "mrdl-deploy/2", "mrdl-deploy/1", "written by an older mrdl-export; re-export");
    });
    run("numeric fields outside their range are refused", [] {
        refused("threshold 0", "\"threshold\": 0.5", "\"threshold\": 0",
                "postprocessing.threshold must be a finite number strictly between 0 and 1, got 0");
        refused("threshold 1", "\"threshold\": 0.5", "\"threshold\": 1.0", "strictly between 0 and 1, got 1.0");
        refused("negative threshold", "\"threshold\": 0.5", "\"threshold\": -0.5", "strictly between 0 and 1, got -0.5");
        refused("infinite threshold", "\"threshold\": 0.5", "\"threshold\": 1e999",
                "number overflow parsing '1e999'); every number in a manifest must be finite");
        refused("NaN threshold", "\"threshold\": 0.5", "\"threshold\": NaN",
                "NaN and Infinity are not JSON numbers: every number in a manifest must be finite");
        refused("string threshold", "\"threshold\": 0.5", "\"threshold\": \"0.5\"", "strictly between 0 and 1, got \"0.5\"");
        refused("zero scale", "\"scale\": 0.00392156862745098", "\"scale\": 0",
                "preprocessing.scale must be a finite number > 0, got 0");
        refused("negative scale", "\"scale\": 0.00392156862745098", "\"scale\": -1", "scale must be a finite number > 0");
        refused("size 0", "\"size\": [64, 64]", "\"size\": [0, 64]",
                "preprocessing.size must be [height, width], integers in [1, 8192], got [0,64]");
        refused("size huge", "\"size\": [64, 64]", "\"size\": [64, 100000]", "integers in [1, 8192], got [64,100000]");
        refused("size float", "\"size\": [64, 64]", "\"size\": [64.0, 64]", "integers in [1, 8192]");
        refused("n_classes 0", "\"n_classes\": 1", "\"n_classes\": 0", "n_classes must be an integer in [1, 255], got 0");
        refused("n_classes 256", "\"n_classes\": 1", "\"n_classes\": 256", "in [1, 255], got 256");
        refused("max_batch 0", "\"max_batch\": 16", "\"max_batch\": 0", "max_batch must be an integer in [1, 4096], got 0");
        refused("max_batch huge", "\"max_batch\": 16", "\"max_batch\": 18446744073709551615", "in [1, 4096]");
        refused("max_batch bool", "\"max_batch\": 16", "\"max_batch\": true", "in [1, 4096], got true");
        refused("artifact bytes", "\"bytes\": 1234", "\"bytes\": -5", "artifacts.fp32.bytes must be an integer in [0,");
    });
    run("artifact entries must be plain names with a size, a hash and a precision", [] {
        const std::string plain = "must be a plain file name inside the model directory";
        refused("parent path", "\"file\": \"model.onnx\"", "\"file\": \"../model.onnx\"", "\"../model.onnx\" " + plain);
        refused("absolute path", "\"file\": \"model.onnx\"", "\"file\": \"/etc/passwd\"", "\"/etc/passwd\" " + plain);
        refused("hidden name", "\"file\": \"model.onnx\"", "\"file\": \".model.onnx\"", plain);
        refused("subfolder", "\"file\": \"model.onnx\"", "\"file\": \"sub/model.onnx\"", plain);
        refused("empty name", "\"file\": \"model.onnx\"", "\"file\": \"\"", plain);
        refused("backslash", "\"file\": \"model.onnx\"", "\"file\": \"..\\\\model.onnx\"", plain);
        refused("too long", "\"file\": \"model.onnx\"", "\"file\": \"" + std::string(256, 'a') + "\"", plain);
        refused("old string entry", "{\"file\": \"model.onnx\", \"bytes\": 1234,", "\"model.onnx\", \"x\": {",
                "artifacts.fp32 must be a JSON object");
        refused("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "E3B0",
                "artifacts.fp32.sha256 must be 64 lower-case hex digits");
        refused("precision", "\"precision\": \"fp32\"}}", "\"precision\": \"int8\"}}",
                "artifacts.fp32.precision is \"int8\"; the fp32 artifact holds fp32");
        refused("same file twice", "\"precision\": \"fp32\"}}",
                "\"precision\": \"fp32\"}, \"fp16\": {\"file\": \"model.onnx\", \"bytes\": 1, \"sha256\": \"" +
                    std::string(64, '0') + "\", \"precision\": \"fp16\"}}",
                "lists model.onnx as both the \"fp16\" and the \"fp32\" artifact");
        refused("unknown key", "\"fp32\": {\"file\"", "\"bf16\": {\"file\"", "an artifacts key must be one of");
    });
    run("size and nesting limits stop hostile JSON before it is built", [] {
        const std::string deep = std::string(100000, '[') + std::string(100000, ']');
        expect_error<ManifestError>("100000 levels", "JSON nested deeper than 32 levels",
                                    [&] { Manifest::parse(deep, "model.json"); });
        const std::string levels33 = std::string(33, '[') + std::string(33, ']');
        expect_error<ManifestError>("33 levels", "nested deeper than 32", [&] { Manifest::parse(levels33, "m"); });
        // 32 levels parse (and then fail on content, not on depth).
        expect_error<ManifestError>("32 levels", "has no \"format\"",
                                    [] { Manifest::parse(std::string(32, '[') + std::string(32, ']'), "m"); });
        const std::string padded = replaced("\"name\": \"tiny\"", "\"name\": \"" + std::string(1 << 20, 'x') + "\"");
        expect_error<ManifestError>("over 1 MiB", "a manifest is at most 1048576 bytes (1 MiB)",
                                    [&] { Manifest::parse(padded, "m"); });
        const std::filesystem::path big = std::filesystem::temp_directory_path() / "mrdl_cpp_big_model.json";
        std::ofstream(big) << padded;
        expect_error<ManifestError>("over 1 MiB on disk", "bytes; a manifest is at most 1048576",
                                    [&] { Manifest::load(big.string()); });
        std::filesystem::remove(big);
    });
    run("image errors name the accepted layouts", [] {
        const std::vector<uint8_t> pixels(2 * 2 * 5);
        Preprocessing spec;
        spec.height = spec.width = 4;
        spec.scale = 1.0 / 255;
        expect_error<InputError>("channels", "image of shape (2, 2, 5): expected at least 1x1 pixels with 1 (gray), "
                                             "2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels",
                                 [&] { preprocess(ImageView{pixels.data(), 2, 2, 5}, spec); });
        expect_error<InputError>("empty", "image of shape (0, 2, 3)",
                                 [&] { preprocess(ImageView{pixels.data(), 0, 2, 3}, spec); });
        expect_error<InputError>("null", "no pixel data", [&] { preprocess(ImageView{nullptr, 2, 2, 3}, spec); });
        expect_error<InputError>("pixel limit", "image of 2x2 = 4 pixels exceeds the limit of 3 pixels; raise max_pixels",
                                 [&] { preprocess(ImageView{pixels.data(), 2, 2, 3}, spec, 3); });
    });
    run("segmenter errors name the missing piece", [] {
        const std::filesystem::path dir = std::filesystem::temp_directory_path() / "mrdl_cpp_test_errors";
        std::filesystem::create_directories(dir);
        expect_error<ManifestError>("no dir", "is not a directory", [] { Segmenter("/nonexistent/model"); });
        expect_error<ManifestError>("no manifest", "cannot open", [&] { Segmenter s(dir.string()); });
        std::ofstream(dir / "model.json") << kValid;
        expect_error<IntegrityError>("no artifact file", "model.onnx: listed in model.json as the \"fp32\" artifact but missing",
                                     [&] { Segmenter s(dir.string()); });
        SegmenterOptions int8;
        int8.precision = "int8";
        expect_error<BackendError>("no int8", "lists no \"int8\" artifact (it has: fp32)",
                                   [&] { Segmenter s(dir.string(), int8); });
        std::filesystem::remove_all(dir);
    });
    return finish();
}
