// The Python runtime's shared test vectors (runtime/VECTORS.md, mrdl-runtime-vectors/1):
// in the recorded pass order the C++ resize is bit-exact; the runtime's fixed horizontal-first
// order stays within one grey level (images) and 1e-6 (probabilities), masks exact away from ties;
// to_rgb8 decodes every array case bit for bit as Python's, and refuses the same ones with the
// same message. (The PNG cases of decode.json: test_png.cpp.)
//   test_shared_vectors VECTORS_DIR
#include <cstdint>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/processing.hpp"
#include "mrdl/resample.hpp"
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
            const std::vector<float> tensor = preprocess(view, spec);
            const std::vector<float> expected = values<float>(c.at("tensor"));
            const float diff = max_abs_diff(tensor, expected);
            check(diff <= 1.0f / 255 + 1e-7f, "tensor differs by " + std::to_string(diff * 255) + " levels");
            if (c.at("pass_order") != "vertical_first") check(tensor == expected, "tensor not bit-exact");
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
            }
            const Segmentation result = postprocess(probs.data(), k, model_h, model_w, h, w, post_spec);
            check(max_abs_diff(result.probabilities, expected) <= 1e-6f, "resized probabilities beyond 1e-6");
            const size_t plane = static_cast<size_t>(h) * w;
            size_t differing = 0;
            for (size_t p = 0; p < plane; ++p) {
                const bool near_tie = k == 1 && std::fabs(expected[p] - static_cast<float>(post_spec.threshold)) <= 1e-5f;
                differing += result.mask[p] != mask[p] && !near_tie;
            }
            check(differing == 0, std::to_string(differing) + " mask pixels differ away from the threshold");
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
    return finish();
}
