// The Python runtime's shared test vectors (runtime/VECTORS.md, mrdl-runtime-vectors/1):
// in the recorded pass order the C++ resize is bit-exact, and that order is pillow_pass_order's
// (Pillow 13's rule), so preprocess and postprocess, which follow it, are bit-exact too; to_rgb8 decodes every array case bit for bit as Python's, and refuses the same ones with the
// same message. (The PNG cases of decode.json: test_png.cpp.) tiling.json: docs/tiling.md's
// decisions, sizes, window starts and weights exactly, and the whole tiled pipeline with the fake
// model within 1e-6.
//   test_shared_vectors VECTORS_DIR
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/processing.hpp"
#include "mrdl/resample.hpp"
#include "mrdl/tiling.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

nlohmann::json read_json(const std::string& path) {
    std::ifstream stream(path);
    if (!stream) throw std::runtime_error("cannot open " + path + " (written by tests/test_runtime_vectors.py)");
    nlohmann::json doc = nlohmann::json::parse(stream);
    if (doc.at("format") != "mrdl-runtime-vectors/1") throw std::runtime_error(path + ": unknown format");
    return doc;
}

template <typename T>
std::vector<T> values(const nlohmann::json& list) {
    std::vector<T> out;
    out.reserve(list.size());
    for (const auto& v : list) out.push_back(static_cast<T>(v.get<double>()));  // double, then float32
    return out;
}

/// One decode.json array case as a typed buffer; "nan" / "inf" / "-inf" strings stand for the
/// values JSON cannot hold.
struct Pixels {
    std::vector<uint8_t> u8;
    std::vector<uint16_t> u16;
    std::vector<int32_t> i32;
    std::vector<float> f32;
    std::vector<double> f64;
    PixelView view;
};

double number(const nlohmann::json& v) {
    if (!v.is_string()) return v.get<double>();
    const std::string text = v;
    return text == "nan" ? NAN : text == "inf" ? INFINITY : text == "-inf" ? -INFINITY : throw std::runtime_error(text);
}

Pixels pixels(const nlohmann::json& c) {
    Pixels p;
    const std::string dtype = c.at("dtype");
    const nlohmann::json& shape = c.at("shape");
    p.view.height = shape[0];
    p.view.width = shape[1];
    p.view.channels = shape.size() == 3 ? shape[2].get<int>() : 1;
    for (const auto& v : c.at("values")) {
        if (dtype == "uint8") p.u8.push_back(static_cast<uint8_t>(number(v)));
        else if (dtype == "uint16") p.u16.push_back(static_cast<uint16_t>(number(v)));
        else if (dtype == "int32") p.i32.push_back(static_cast<int32_t>(number(v)));
        else if (dtype == "float32") p.f32.push_back(static_cast<float>(number(v)));
        else if (dtype == "float64") p.f64.push_back(number(v));
        else throw std::runtime_error("unknown dtype " + dtype);
    }
    if (dtype == "uint8") p.view.data = p.u8.data(), p.view.type = PixelType::UInt8;
    if (dtype == "uint16") p.view.data = p.u16.data(), p.view.type = PixelType::UInt16;
    if (dtype == "int32") p.view.data = p.i32.data(), p.view.type = PixelType::Int32;
    if (dtype == "float32") p.view.data = p.f32.data(), p.view.type = PixelType::Float32;
    if (dtype == "float64") p.view.data = p.f64.data(), p.view.type = PixelType::Float64;
    return p;
}

/// runtime/VECTORS.md's fake model: class c = input channel c % 3 times the row vignette, then the column one.
std::vector<float> fake_model(const std::vector<float>& batch, int64_t count, int n_classes, int mh, int mw) {
    const auto vignette = [](int side) {
        std::vector<float> v(side);
        for (int i = 0; i < side; ++i)
            v[i] = static_cast<float>(1.0 - 0.5 * std::abs(2 * i - (side - 1)) / std::max(side - 1, 1));
        return v;
    };
    const std::vector<float> rows = vignette(mh), cols = vignette(mw);
    const size_t plane = static_cast<size_t>(mh) * mw;
    std::vector<float> out(static_cast<size_t>(count) * n_classes * plane);
    for (int64_t b = 0; b < count; ++b)
        for (int c = 0; c < n_classes; ++c)
            for (int i = 0; i < mh; ++i)
                for (int j = 0; j < mw; ++j) {
                    const float x = batch[(b * 3 + c % 3) * plane + static_cast<size_t>(i) * mw + j];
                    const float row = x * rows[i];
                    out[(b * n_classes + c) * plane + static_cast<size_t>(i) * mw + j] = row * cols[j];
                }
    return out;
}

std::array<int, 2> pair(const nlohmann::json& v) { return {v.at(0).get<int>(), v.at(1).get<int>()}; }

PassOrder recorded(const nlohmann::json& c) {
    return c.at("pass_order") == "vertical_first" ? PassOrder::VerticalFirst : PassOrder::HorizontalFirst;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_shared_vectors VECTORS_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    run("pillow_pass_order: vertical first when the height shrinks by more than twice the width's shrink", [] {
        check(pillow_pass_order(70, 50, 64, 64) == PassOrder::VerticalFirst, "70x50 -> 64x64 (height shrinks, width grows)");
        check(pillow_pass_order(50, 70, 64, 64) == PassOrder::HorizontalFirst, "50x70 -> 64x64 (height grows)");
        check(pillow_pass_order(84, 74, 64, 64) == PassOrder::HorizontalFirst, "shrinks 20 and 10: not more than twice");
        check(pillow_pass_order(85, 74, 64, 64) == PassOrder::VerticalFirst, "shrinks 21 and 10: more than twice");
        check(pillow_pass_order(64, 90, 64, 64) == PassOrder::HorizontalFirst, "height unchanged");
        check(pillow_pass_order(20000, 1, 64, 64) == PassOrder::VerticalFirst, "a tall strip");
        check(pillow_pass_order(2000000000, 2000000000, 1, 500000000) == PassOrder::HorizontalFirst,
              "no overflow in 2 x the width's shrink");
    });
    const nlohmann::json pre = read_json(dir + "/preprocess.json");
    Preprocessing spec;
    spec.height = pre.at("size")[0];
    spec.width = pre.at("size")[1];
    spec.scale = pre.at("scale");
    for (const auto& c : pre.at("cases")) {
        run("preprocess " + c.at("name").get<std::string>() + " (" + c.at("pass_order").get<std::string>() + ")", [&] {
            const std::vector<uint8_t> pixels = values<uint8_t>(c.at("image"));
            const ImageView view{pixels.data(), c.at("height"), c.at("width"), c.at("channels")};
            const Image exact = resize_bilinear(to_rgb8(view).view(), spec.height, spec.width, recorded(c));
            check(exact.pixels == values<uint8_t>(c.at("resized")), "resized differs in the recorded pass order");
            check(c.at("pass_order") == "either" ||
                      pillow_pass_order(c.at("height"), c.at("width"), spec.height, spec.width) == recorded(c),
                  "pillow_pass_order is not the recorded order (the C++ whole-image path follows Pillow 13's "
                  "rule: is the Python side's Pillow older?)");
            const std::vector<float> tensor = preprocess(view, spec);  // Pillow 13's order: exact on every case
            const std::vector<float> expected = values<float>(c.at("tensor"));
            const float diff = max_abs_diff(tensor, expected);
            check(tensor == expected, "tensor not bit-exact (max |diff| " + std::to_string(diff * 255) + " levels)");
        });
    }

    const nlohmann::json post = read_json(dir + "/postprocess.json");
    Postprocessing post_spec;
    post_spec.threshold = post.at("threshold");
    const int model_h = post.at("size")[0], model_w = post.at("size")[1];
    for (const auto& c : post.at("cases")) {
        run("postprocess " + c.at("name").get<std::string>() + " (" + c.at("pass_order").get<std::string>() + ")", [&] {
            const int k = c.at("n_classes"), h = c.at("original_size")[0], w = c.at("original_size")[1];
            const std::vector<float> probs = values<float>(c.at("probabilities"));
            const std::vector<float> expected = values<float>(c.at("resized_probabilities"));
            const std::vector<uint8_t> mask = values<uint8_t>(c.at("mask"));
            if (c.at("pass_order") != "mixed") {
                std::vector<float> exact;
                for (int cls = 0; cls < k; ++cls) {
                    const std::vector<float> plane = resize_bilinear(
                        probs.data() + static_cast<size_t>(cls) * model_h * model_w, model_h, model_w, h, w, recorded(c));
                    exact.insert(exact.end(), plane.begin(), plane.end());
                }
                check(exact == expected, "resized probabilities not bit-exact in the recorded pass order");
                check(c.at("pass_order") == "either" || pillow_pass_order(model_h, model_w, h, w) == recorded(c),
                      "pillow_pass_order is not the recorded order (the C++ whole-image path follows Pillow 13's "
                  "rule: is the Python side's Pillow older?)");
            }
            const Segmentation result = postprocess(probs.data(), k, model_h, model_w, h, w, post_spec);
            check(result.probabilities == expected, "resized probabilities not bit-exact in Pillow 13's order (max "
                                                    "|diff| " + std::to_string(max_abs_diff(result.probabilities, expected)) + ")");
            check(result.mask == mask, "mask differs");
            check(mask_at_size(probs.data(), k, model_h, model_w, h, w, post_spec) == mask, "mask_at_size differs");
        });
    }

    const nlohmann::json decode = read_json(dir + "/decode.json");
    for (const auto& c : decode.at("arrays")) {
        run("decode " + c.at("name").get<std::string>() + " (" + c.at("dtype").get<std::string>() + ")", [&] {
            const Pixels input = pixels(c);
            if (c.contains("error")) {  // the same refusal, word for word
                expect_error<InputError>(c.at("name"), c.at("error"), [&] { to_rgb8(input.view); });
                return;
            }
            check(to_rgb8(input.view).pixels == values<uint8_t>(c.at("rgb")), "RGB differs from Python's to_rgb8");
        });
    }

    const nlohmann::json tiling = read_json(dir + "/tiling.json");
    const std::array<int, 2> model_size = pair(tiling.at("size"));
    run("tiling: auto decisions, resampled sizes, window starts, weights (exact)", [&] {
        for (const auto& a : tiling.at("auto"))
            check(should_tile(a.at("image_size")[0], a.at("image_size")[1], pair(a.at("source_size")), TileMode::Auto) ==
                      a.at("tile").get<bool>(),
                  "auto decision for " + a.at("image_size").dump());
        for (const auto& r : tiling.at("resampled_sizes"))
            check(resampled_size(r.at("image_size")[0], r.at("image_size")[1], pair(r.at("source_size")),
                                 pair(r.at("model_size"))) == pair(r.at("resampled_size")),
                  "resampled size of " + r.at("image_size").dump());
        for (const auto& w : tiling.at("window_starts"))
            check(window_starts(w.at("length"), w.at("window"), w.at("overlap")) == w.at("starts").get<std::vector<int>>(),
                  "window starts for " + w.at("length").dump() + "/" + w.at("window").dump());
        for (const auto& w : tiling.at("weights")) {
            const std::array<int, 2> size = pair(w.at("model_size"));
            const Blend blend = w.at("blend") == "constant" ? Blend::Constant : Blend::Gaussian;
            check(blend_weights(size[0], size[1], blend) == values<float>(w.at("weights")),
                  "weights " + w.at("blend").get<std::string>() + " " + w.at("model_size").dump() + " not bit-exact");
        }
        check(tiling.at("auto").size() >= 4 && tiling.at("weights").size() >= 3, "tiling.json holds the cases");
    });
    Postprocessing tiling_post;
    tiling_post.threshold = tiling.at("threshold");
    for (const auto& c : tiling.at("cases")) {
        run("tiling " + c.at("name").get<std::string>(), [&] {
            const int height = c.at("height"), width = c.at("width"), classes = c.at("n_classes");
            const std::vector<uint8_t> pixels = values<uint8_t>(c.at("image"));
            const TilePlan plan = plan_tiles(height, width, pair(c.at("source_size")), model_size, c.at("overlap"));
            check(plan.resampled_size == pair(c.at("resampled_size")) && plan.padded_size == pair(c.at("padded_size")),
                  "resampled / padded size");
            std::vector<std::array<int, 2>> windows;
            for (const auto& w : c.at("windows")) windows.push_back(pair(w));
            check(plan.windows == windows, "window starts or order");
            const Image resampled = resize_bilinear(ImageView{pixels.data(), height, width, 3}, plan.resampled_size[0],
                                                    plan.resampled_size[1], PassOrder::HorizontalFirst);
            check(resampled.pixels == values<uint8_t>(c.at("resampled")), "resampled image not byte-exact");
            int64_t batches = 0, largest = 0;
            const WindowRunner run = [&](const std::vector<float>& batch, int64_t count) {
                ++batches;
                largest = std::max(largest, count);
                return fake_model(batch, count, classes, model_size[0], model_size[1]);
            };
            const Blend blend = c.at("blend") == "constant" ? Blend::Constant : Blend::Gaussian;
            const int max_batch = c.at("max_batch");
            const std::vector<float> stitched =
                stitch(resampled.view(), plan, run, model_size, classes, max_batch, tiling.at("scale"), blend);
            const int64_t expected_batches = (static_cast<int64_t>(windows.size()) + max_batch - 1) / max_batch;
            check(batches == expected_batches && largest <= max_batch, "windows run in batches of max_batch");
            const std::vector<float> expected_stitched = values<float>(c.at("stitched"));
            const float stitch_diff = max_abs_diff(stitched, expected_stitched);
            check(stitch_diff <= 1e-6f, "stitched differs by " + std::to_string(stitch_diff));
            const Segmentation result = postprocess(stitched.data(), classes, plan.resampled_size[0],
                                                    plan.resampled_size[1], height, width, tiling_post,
                                                    PassOrder::HorizontalFirst);  // the tiled path's order
            const std::vector<float> expected = values<float>(c.at("probabilities"));
            const float diff = max_abs_diff(result.probabilities, expected);
            check(diff <= 1e-6f, "probabilities differ by " + std::to_string(diff));
            const std::vector<uint8_t> mask = values<uint8_t>(c.at("mask"));
            const size_t plane = static_cast<size_t>(height) * width;
            size_t differing = 0;
            for (size_t p = 0; p < plane; ++p) {
                const bool near_tie = classes == 1
                    ? std::fabs(expected[p] - static_cast<float>(tiling_post.threshold)) <= 1e-5f
                    : classes == 2 && std::fabs(expected[p] - expected[plane + p]) <= 1e-5f;
                differing += result.mask[p] != mask[p] && !near_tie;
            }
            check(differing == 0, std::to_string(differing) + " mask pixels differ away from ties");
            std::cout << "     " << c.at("name").get<std::string>() << ": " << windows.size() << " windows in "
                      << batches << " batches; max |diff| stitched " << stitch_diff << ", probabilities " << diff
                      << (stitched == expected_stitched && result.probabilities == expected ? " (bit-exact)" : "")
                      << "\n";
        });
    }
    return finish();
}
