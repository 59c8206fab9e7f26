// Parsing and validation of model.json with nlohmann::json.
#include "mrdl/manifest.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "mrdl-deploy/1";

class Reader {
public:
    explicit Reader(std::string source) : source_(std::move(source)) {}

    [[noreturn]] void fail(const std::string& what) const { throw ManifestError(source_ + ": " + what); }

    const json& field(const json& object, const std::string& key, const std::string& where) const {
        if (!object.is_object()) fail(where + " must be a JSON object");
        auto it = object.find(key);
        if (it == object.end()) fail("missing key \"" + key + "\" in " + where);
        return *it;
    }

    std::string text(const json& object, const std::string& key, const std::string& where) const {
        const json& value = field(object, key, where);
        if (!value.is_string()) fail(where + "." + key + " must be a string, got " + value.dump());
        return value.get<std::string>();
    }

    int integer(const json& object, const std::string& key, const std::string& where, int minimum) const {
        const json& value = field(object, key, where);
        if (!value.is_number_integer() || value.get<int64_t>() < minimum)
            fail(where + "." + key + " must be an integer >= " + std::to_string(minimum) + ", got " + value.dump());
        return value.get<int>();
    }

    double number(const json& object, const std::string& key, const std::string& where) const {
        const json& value = field(object, key, where);
        if (!value.is_number()) fail(where + "." + key + " must be a number, got " + value.dump());
        return value.get<double>();
    }

    void one_of(const std::string& value, std::initializer_list<const char*> allowed, const std::string& what) const {
        std::string list;
        for (const char* option : allowed) {
            if (value == option) return;
            list += std::string(list.empty() ? "" : ", ") + "\"" + option + "\"";
        }
        fail(what + " must be one of " + list + ", got \"" + value + "\"");
    }

    std::vector<TensorSpec> tensors(const json& root, const std::string& key) const {
        const json& list = field(root, key, "the manifest");
        if (!list.is_array() || list.empty()) fail("\"" + key + "\" must be a non-empty list of tensor specs");
        std::vector<TensorSpec> specs;
        for (size_t i = 0; i < list.size(); ++i) {
            const std::string where = key + "[" + std::to_string(i) + "]";
            TensorSpec spec;
            spec.name = text(list[i], "name", where);
            spec.dtype = text(list[i], "dtype", where);
            one_of(spec.dtype, {"float32"}, where + ".dtype");
            const json& shape = field(list[i], "shape", where);
            if (!shape.is_array() || shape.empty()) fail(where + ".shape must be a non-empty list");
            for (size_t d = 0; d < shape.size(); ++d) {
                if (d == 0 && shape[d] == "batch") {
                    spec.shape.push_back(TensorSpec::kDynamic);
                } else if (shape[d].is_number_integer() && shape[d].get<int64_t>() > 0) {
                    spec.shape.push_back(shape[d].get<int64_t>());
                } else {
                    fail(where + ".shape[" + std::to_string(d) + "] must be " +
                         (d == 0 ? "\"batch\" or " : "") + "a positive integer, got " + shape[d].dump());
                }
            }
            specs.push_back(std::move(spec));
        }
        return specs;
    }

private:
    std::string source_;
};

}  // namespace

Manifest Manifest::load(const std::string& path) {
    std::ifstream stream(path);
    if (!stream) throw ManifestError("cannot open " + path + " (expected the model.json written by mrdl-export)");
    std::stringstream buffer;
    buffer << stream.rdbuf();
    return parse(buffer.str(), path);
}

Manifest Manifest::parse(const std::string& text, const std::string& source) {
    Reader r(source);
    json root;
    try {
        root = json::parse(text);
    } catch (const json::parse_error& error) {
        r.fail(std::string("not valid JSON: ") + error.what());
    }
    Manifest m;
    m.format = r.text(root, "format", "the manifest");
    if (m.format != kFormat) r.fail(std::string("format must be \"") + kFormat + "\", got \"" + m.format + "\"");
    m.name = r.text(root, "name", "the manifest");
    m.fusion = r.text(root, "fusion", "the manifest");
    r.one_of(m.fusion, {"distribution", "addition"}, "fusion");
    m.n_classes = r.integer(root, "n_classes", "the manifest", 1);
    const json& classes = r.field(root, "classes", "the manifest");
    if (!classes.is_array()) r.fail("\"classes\" must be a list of names, got " + classes.dump());
    for (const json& name : classes) {
        if (!name.is_string()) r.fail("\"classes\" must hold strings, got " + name.dump());
        m.classes.push_back(name.get<std::string>());
    }
    const json& artifacts = r.field(root, "artifacts", "the manifest");
    if (!artifacts.is_object() || artifacts.empty()) r.fail("\"artifacts\" must be a non-empty object");
    for (const auto& item : artifacts.items()) m.artifacts[item.key()] = r.text(artifacts, item.key(), "artifacts");
    m.inputs = r.tensors(root, "inputs");
    m.outputs = r.tensors(root, "outputs");
    m.max_batch = r.integer(root, "max_batch", "the manifest", 1);
    m.precision = root.value("precision", "fp32");

    const json& pre = r.field(root, "preprocessing", "the manifest");
    const json& size = r.field(pre, "size", "preprocessing");
    if (!size.is_array() || size.size() != 2 || !size[0].is_number_integer() || !size[1].is_number_integer() ||
        size[0].get<int>() < 1 || size[1].get<int>() < 1)
        r.fail("preprocessing.size must be [height, width] of positive integers, got " + size.dump());
    m.preprocessing.height = size[0].get<int>();
    m.preprocessing.width = size[1].get<int>();
    m.preprocessing.resize = r.text(pre, "resize", "preprocessing");
    r.one_of(m.preprocessing.resize, {"bilinear"}, "preprocessing.resize");
    m.preprocessing.channel_order = r.text(pre, "channel_order", "preprocessing");
    r.one_of(m.preprocessing.channel_order, {"RGB"}, "preprocessing.channel_order");
    m.preprocessing.layout = r.text(pre, "layout", "preprocessing");
    r.one_of(m.preprocessing.layout, {"NCHW"}, "preprocessing.layout");
    m.preprocessing.scale = r.number(pre, "scale", "preprocessing");
    m.preprocessing.grayscale = r.text(pre, "grayscale", "preprocessing");
    r.one_of(m.preprocessing.grayscale, {"replicate"}, "preprocessing.grayscale");

    const json& post = r.field(root, "postprocessing", "the manifest");
    m.postprocessing.activation = r.text(post, "activation", "postprocessing");
    r.one_of(m.postprocessing.activation, {"sigmoid", "softmax"}, "postprocessing.activation");
    const json& in_graph = r.field(post, "activation_in_graph", "postprocessing");
    if (!in_graph.is_boolean() || !in_graph.get<bool>())
        r.fail("postprocessing.activation_in_graph must be true (the runtimes expect probabilities), got " +
               in_graph.dump());
    m.postprocessing.activation_in_graph = true;
    m.postprocessing.threshold = r.number(post, "threshold", "postprocessing");
    m.postprocessing.resize_to_original = r.text(post, "resize_to_original", "postprocessing");
    r.one_of(m.postprocessing.resize_to_original, {"bilinear"}, "postprocessing.resize_to_original");

    if (root.contains("versions") && root["versions"].is_object())
        for (const auto& item : root["versions"].items())
            m.versions[item.key()] = item.value().is_string() ? item.value().get<std::string>() : item.value().dump();

    const TensorSpec& image = m.input("image");
    const std::vector<int64_t> expected_image{TensorSpec::kDynamic, 3, m.preprocessing.height, m.preprocessing.width};
    if (image.shape != expected_image)
        r.fail("inputs \"image\" must have shape [\"batch\", 3, " + std::to_string(m.preprocessing.height) + ", " +
               std::to_string(m.preprocessing.width) + "] to match preprocessing.size");
    if (m.needs_text_features()) {
        const TensorSpec& text = m.input("text_features");
        if (text.shape.size() != 3 || text.shape[0] != TensorSpec::kDynamic)
            r.fail("inputs \"text_features\" must have shape [\"batch\", L, D]");
    }
    if (m.inputs.size() != (m.needs_text_features() ? 2u : 1u))
        r.fail("fusion \"" + m.fusion + "\" expects " + (m.needs_text_features() ? "2 inputs (image, text_features)"
                                                                                   : "1 input (image)") +
               ", got " + std::to_string(m.inputs.size()));
    const TensorSpec& out = m.outputs.front();
    const std::vector<int64_t> expected_out{TensorSpec::kDynamic, m.n_classes, m.preprocessing.height,
                                            m.preprocessing.width};
    if (out.shape != expected_out)
        r.fail("outputs[0] (\"" + out.name + "\") must have shape [\"batch\", n_classes=" +
               std::to_string(m.n_classes) + ", " + std::to_string(m.preprocessing.height) + ", " +
               std::to_string(m.preprocessing.width) + "]");
    return m;
}

const TensorSpec& Manifest::input(const std::string& name) const {
    for (const TensorSpec& spec : inputs)
        if (spec.name == name) return spec;
    throw ManifestError("the manifest has no input named \"" + name + "\"");
}

}  // namespace mrdl
