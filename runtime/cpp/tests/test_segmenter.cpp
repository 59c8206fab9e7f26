// End to end: the C++ Segmenter's masks equal mrdl_runtime's on the synthetic images, whole and
// tiled (docs/tiling.md), for the tiny model exported by make_test_data.py.
//   test_segmenter TEST_DATA_DIR
#include <algorithm>
#include <cmath>

#include "mrdl/segmenter.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

constexpr float kProbabilityTolerance = 1e-5f;  // ONNX Runtime builds may differ in float rounding

struct Case {
    std::string name;
    std::vector<uint8_t> pixels;
    ImageView view;
    std::vector<uint8_t> mask;
    std::vector<float> probabilities;
};

/// One end-to-end case of index.json: its image and the Python runtime's mask and probabilities.
Case load_case(const std::string& dir, const nlohmann::json& c) {
    Case item{c.at("name"), read_array<uint8_t>(dir + "/" + c.at("image").get<std::string>()), {},
              read_array<uint8_t>(dir + "/" + c.at("expected_mask").get<std::string>()),
              read_array<float>(dir + "/" + c.at("expected_probabilities").get<std::string>())};
    item.view = ImageView{item.pixels.data(), c.at("shape")[0], c.at("shape")[1], c.at("shape")[2]};
    return item;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_segmenter TEST_DATA_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    const nlohmann::json index = read_index(dir);
    const nlohmann::json& segment = index.at("segment");
    std::vector<Case> cases;
    for (const auto& c : segment.at("cases")) {
        cases.push_back(load_case(dir, c));
    }
    check(!cases.empty(), "the test data holds end-to-end cases");

    Segmenter segmenter(dir + "/" + segment.at("model_dir").get<std::string>());
    std::cout << "backend: " << segmenter.backend_description() << "\n";
    size_t foreground = 0;
    for (const Case& c : cases) {
        run("segment " + c.name + " (" + std::to_string(c.view.height) + "x" + std::to_string(c.view.width) + "x" +
                std::to_string(c.view.channels) + ")",
            [&] {
                const Segmentation result = segmenter.segment(c.view);
                check(result.height == c.view.height && result.width == c.view.width, "mask at the original size");
                size_t differing = 0;
                for (size_t i = 0; i < c.mask.size() && i < result.mask.size(); ++i)
                    differing += result.mask[i] != c.mask[i];
                check(result.mask.size() == c.mask.size() && differing == 0,
                      std::to_string(differing) + " mask pixels differ from mrdl_runtime");
                const float diff = max_abs_diff(result.probabilities, c.probabilities);
                check(diff <= kProbabilityTolerance, "max |probability diff| " + std::to_string(diff));
                for (uint8_t value : result.mask) foreground += value;
            });
    }
    check(foreground > 0, "some pixel is foreground (the comparison is not all-background)");

    run("batched segmentation equals one image at a time", [&] {
        std::vector<ImageView> views;
        for (const Case& c : cases) views.push_back(c.view);
        const std::vector<Segmentation> results = segmenter.segment(views);
        check(results.size() == cases.size(), "one result per image");
        for (size_t i = 0; i < results.size() && i < cases.size(); ++i) {
            check(results[i].mask == cases[i].mask, cases[i].name + ": batched mask differs");
            check(max_abs_diff(results[i].probabilities, cases[i].probabilities) <= kProbabilityTolerance,
                  cases[i].name + ": batched probabilities differ");
        }
    });
    // Tiled inference (docs/tiling.md): the Python runtime's tiled masks and probabilities.
    const float threshold = segment.at("threshold").get<float>();
    std::vector<Case> tiled_cases;
    std::vector<TileOptions> tile_options;
    std::vector<bool> expect_tiled;
    for (const auto& c : segment.at("tiled_cases")) {
        tiled_cases.push_back(load_case(dir, c));
        TileOptions options;
        const nlohmann::json& tile = c.at("tile");
        options.mode = tile.is_string() ? TileMode::Auto : tile.get<bool>() ? TileMode::On : TileMode::Off;
        options.overlap = c.at("overlap");
        options.blend = c.at("blend") == "constant" ? Blend::Constant : Blend::Gaussian;
        tile_options.push_back(options);
        expect_tiled.push_back(c.at("tiled"));
    }
    check(tiled_cases.size() >= 4, "the test data holds tiled cases");
    check(segmenter.manifest().source_size.has_value(), "the test model's model.json has a source_size");
    float worst_tiled = 0.0f;
    for (size_t t = 0; t < tiled_cases.size(); ++t) {
        const Case& c = tiled_cases[t];
        run("tiled " + c.name + " (" + std::to_string(c.view.height) + "x" + std::to_string(c.view.width) + "x" +
                std::to_string(c.view.channels) + (expect_tiled[t] ? ", tiled)" : ", whole)"),
            [&] {
                const Segmentation result = segmenter.segment(c.view, {}, tile_options[t]);
                check(result.tiled == expect_tiled[t], "tiled flag differs from mrdl_runtime's decision");
                check(result.height == c.view.height && result.width == c.view.width, "mask at the original size");
                const float diff = max_abs_diff(result.probabilities, c.probabilities);
                worst_tiled = std::max(worst_tiled, diff);
                check(diff <= kProbabilityTolerance, "max |probability diff| " + std::to_string(diff));
                size_t differing = 0, near = 0;  // docs/tiling.md: masks equal away from the threshold
                for (size_t i = 0; i < c.mask.size() && i < result.mask.size(); ++i) {
                    if (result.mask[i] == c.mask[i]) continue;
                    if (std::fabs(c.probabilities[i] - threshold) <= 1e-4f) ++near;
                    else ++differing;
                }
                check(result.mask.size() == c.mask.size() && differing == 0,
                      std::to_string(differing) + " mask pixels differ from mrdl_runtime away from the threshold");
                std::cout << "     " << c.name << ": max |p diff| " << diff << ", mask pixels differing "
                          << differing + near << " (" << near << " within 1e-4 of the threshold)\n";
            });
    }
    std::cout << "tiled: worst max |probability diff| vs mrdl_runtime " << worst_tiled << "\n";
    run("a batch mixing tiled and whole images equals them one by one", [&] {
        std::vector<ImageView> views{tiled_cases[0].view, cases[0].view, tiled_cases[2].view};
        const std::vector<Segmentation> results = segmenter.segment(views, {}, tile_options[0]);
        check(results.size() == 3 && results[0].tiled && !results[1].tiled && results[2].tiled, "tiled flags");
        check(results[0].mask == tiled_cases[0].mask, "tiled image in a batch");
        check(results[1].mask == cases[0].mask, "whole image in a batch");
        check(results[2].mask == segmenter.segment(tiled_cases[2].view, {}, tile_options[0]).mask, "second tiled image");
    });
    run("masks only (with_probabilities = false): the same masks, no probabilities", [&] {
        SegmenterOptions options;
        options.with_probabilities = false;
        const Segmenter masks_only(dir + "/" + segment.at("model_dir").get<std::string>(), options);
        for (const Case& c : cases) {
            const Segmentation result = masks_only.segment(c.view);
            check(result.mask == c.mask && result.probabilities.empty() && !result.tiled, c.name + ": whole image");
        }
        for (size_t t = 0; t < tiled_cases.size(); ++t) {
            const Segmentation result = masks_only.segment(tiled_cases[t].view, {}, tile_options[t]);
            check(result.mask == tiled_cases[t].mask && result.probabilities.empty() && result.tiled == expect_tiled[t],
                  tiled_cases[t].name + ": tiled");
        }
    });
    run("bad tile options are refused", [&] {
        TileOptions options;
        options.overlap = 1.0;
        expect_error<InputError>("overlap 1", "overlap must be a number with 0 <= overlap <= 0.9",
                                 [&] { segmenter.segment(cases.front().view, {}, options); });
        options.overlap = std::nan("");
        expect_error<InputError>("overlap nan", "0 <= overlap <= 0.9", [&] { segmenter.segment(cases.front().view, {}, options); });
    });
    run("a tiled RGB image gets the whole-image path's checks", [&] {
        const uint8_t pixel[3] = {0, 0, 0};
        const std::vector<std::pair<ImageView, std::string>> bad{
            {ImageView{pixel, 0, 5, 3}, "expected at least 1x1 pixels"},
            {ImageView{pixel, 5, 0, 3}, "expected at least 1x1 pixels"},
            {ImageView{nullptr, 5, 5, 3}, "has no pixel data"}};
        for (const auto& [view, fragment] : bad)
            for (TileMode mode : {TileMode::Off, TileMode::On}) {
                TileOptions options;
                options.mode = mode;
                expect_error<InputError>(std::string("bad RGB view, tile ") + (mode == TileMode::On ? "on" : "off"),
                                         fragment, [&] { segmenter.segment(view, {}, options); });
            }
    });
    run("the tiled path's cost is checked against max_pixels before it allocates", [&] {
        // The test model: 64x64, source_size [128, 128], so a 1000x1000 image resamples to 500x500.
        // With overlap 0.9 (stride 6) that is 74 x 74 windows of 64x64 = 22.4 M model pixels.
        SegmenterOptions options;
        options.max_pixels = 1000 * 1000;
        const Segmenter limited(dir + "/" + segment.at("model_dir").get<std::string>(), options);
        const std::vector<uint8_t> pixels(1000 * 1000 * 3, 128);
        const ImageView image{pixels.data(), 1000, 1000, 3};
        TileOptions tiling;
        tiling.mode = TileMode::On;
        tiling.overlap = 0.9;
        expect_error<InputError>("overlap 0.9", "tiling this 1000x1000 image takes 5476 windows of 64x64 = "
                                                "22429696 model pixels, more than 16 x the limit of 1000000 pixels",
                                 [&] { limited.segment(image, {}, tiling); });
        tiling.overlap = 0.5;  // 15 x 15 windows = 921600 model pixels: accepted
        check(limited.segment(image, {}, tiling).tiled, "overlap 0.5 is within the bound");
    });
    run("text features are refused by a distribution-fusion model", [&] {
        expect_error<InputError>("text", "takes no text features",
                                 [&] { segmenter.segment(cases.front().view, std::vector<float>(77 * 8)); });
    });
    run("the TensorRT backend is either built or says how to get it", [&] {
        SegmenterOptions options;
        options.backend = BackendKind::TensorRT;
        expect_error<BackendError>("tensorrt", "tensorrt",
                                   [&] { Segmenter s(dir + "/" + segment.at("model_dir").get<std::string>(), options); });
    });
    run("the OpenVINO backend is either built or says how to get it", [&] {
        SegmenterOptions options;
        options.backend = BackendKind::OpenVINO;
        const std::vector<std::string> built = available_backends();
        if (std::find(built.begin(), built.end(), "openvino") != built.end())
            check(Segmenter(dir + "/" + segment.at("model_dir").get<std::string>(), options).segment(cases.front().view)
                      .mask.size() == cases.front().mask.size(), "openvino segments");  // parity: test_openvino
        else
            expect_error<BackendError>("openvino", "pip install 'mrdl[openvino]' and reconfigure with -DMRDL_OPENVINO=ON",
                                       [&] { Segmenter s(dir + "/" + segment.at("model_dir").get<std::string>(), options); });
    });
    return finish();
}
