// Parsing and validation of model.json (format mrdl-deploy/2) with nlohmann::json.
#include "mrdl/manifest.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

using json = nlohmann::json;

constexpr const char* kOlderFormat = "mrdl-deploy/1";

struct TooDeep {};

/// `text` as JSON, refused when larger than kMaxManifestBytes or nested deeper than
/// kMaxManifestDepth. The depth is checked by the parser callback as each object or array opens,
/// so a hostile document fails before it is built (nlohmann's parser itself does not recurse).
template <typename E>
json parse_limited(const std::string& text, const std::string& source) {
    if (text.size() > kMaxManifestBytes)
        throw E(source + ": " + std::to_string(text.size()) + " bytes; a manifest is at most " +
                std::to_string(kMaxManifestBytes) + " bytes (1 MiB)");
    const json::parser_callback_t limit = [](int depth, json::parse_event_t event, json&) {
        const bool opens = event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
        if (opens && depth >= kMaxManifestDepth) throw TooDeep{};
        return true;
    };
    try {
        return json::parse(text, limit);
    } catch (const TooDeep&) {
        throw E(source + ": JSON nested deeper than " + std::to_string(kMaxManifestDepth) +
                " levels; a manifest written by mrdl-export is flat");
    } catch (const json::parse_error& error) {
        const size_t at = std::min<size_t>(error.byte > 0 ? error.byte - 1 : 0, text.size());
        const std::string token = text.substr(at, 9);
        const bool non_finite = token.rfind("NaN", 0) == 0 || token.rfind("Infinity", 0) == 0 ||
                                token.rfind("-Infinity", 0) == 0;
        const size_t from = at > 40 ? at - 40 : 0;
        throw E(source + ": not valid JSON near \"" + text.substr(from, at - from + 9) + "\" (" + error.what() + ")" +
                (non_finite ? "; NaN and Infinity are not JSON numbers: every number in a manifest must be finite"
                            : ""));
    } catch (const json::exception& error) {  // e.g. out_of_range 406: a number beyond double's range
        throw E(source + ": not valid JSON (" + error.what() + "); every number in a manifest must be finite");
    }
}

std::string show(const json& value) {
    if (value.is_number_float() && !std::isfinite(value.get<double>())) {
        const double v = value.get<double>();
        return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
    }
    return value.dump();
}

bool is_hex(const std::string& text, size_t length) {
    if (text.size() != length) return false;
    for (char c : text)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

/// ARTIFACT_NAME_PATTERN of mrdl_runtime.manifest: [A-Za-z0-9_-][A-Za-z0-9._-]{0,254}.
bool is_plain_name(const std::string& name) {
    if (name.empty() || name.size() > 255 || name[0] == '.') return false;
    for (char c : name)
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    return true;
}

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
        if (!value.is_string()) fail(where + "." + key + " must be a string, got " + show(value));
        return value.get<std::string>();
    }

    /// An optional string field: `fallback` when absent (the descriptive fields the Python runtime
    /// also defaults; mrdl-export always writes them).
    std::string text_or(const json& object, const std::string& key, const std::string& where,
                        const std::string& fallback) const {
        return object.contains(key) ? text(object, key, where) : fallback;
    }

    int64_t integer(const json& object, const std::string& key, const std::string& where, int64_t minimum,
                    int64_t maximum) const {
        const json& value = field(object, key, where);
        const bool ok = value.is_number_unsigned() ? value.get<uint64_t>() <= static_cast<uint64_t>(maximum) &&
                                                         minimum <= static_cast<int64_t>(value.get<uint64_t>())
                                                   : value.is_number_integer() && value.get<int64_t>() >= minimum &&
                                                         value.get<int64_t>() <= maximum;
        if (!ok)
            fail(where + "." + key + " must be an integer in [" + std::to_string(minimum) + ", " +
                 std::to_string(maximum) + "], got " + show(value));
        return value.get<int64_t>();
    }

    double finite(const json& object, const std::string& key, const std::string& where, const std::string& range,
                  bool (*inside)(double)) const {
        const json& value = field(object, key, where);
        if (!value.is_number() || !std::isfinite(value.get<double>()) || !inside(value.get<double>()))
            fail(where + "." + key + " must be a finite number " + range + ", got " + show(value));
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

    std::map<std::string, Artifact> artifacts(const json& root) const {
        const json& entries = field(root, "artifacts", "the manifest");
        if (!entries.is_object() || entries.empty()) fail("\"artifacts\" must be a non-empty object");
        std::map<std::string, Artifact> out;
        for (const auto& item : entries.items()) {
            const std::string where = "artifacts." + item.key();
            one_of(item.key(), {"fp32", "int8", "fp16", "tensorrt"}, "an artifacts key");
            Artifact a;
            a.file = text(item.value(), "file", where);
            if (!is_plain_name(a.file))
                fail(where + ".file \"" + a.file + "\" must be a plain file name inside the model directory "
                     "(letters, digits, '.', '_', '-'; no path separators, no leading '.')");
            a.bytes = static_cast<uint64_t>(integer(item.value(), "bytes", where, 0, INT64_MAX));
            a.sha256 = text(item.value(), "sha256", where);
            if (!is_hex(a.sha256, 64))
                fail(where + ".sha256 must be 64 lower-case hex digits, got \"" + a.sha256 + "\"");
            a.precision = text(item.value(), "precision", where);
            one_of(a.precision, {"fp32", "fp16", "int8"}, where + ".precision");
            if (item.key() != "tensorrt" && a.precision != item.key())
                fail(where + ".precision is \"" + a.precision + "\"; the " + item.key() + " artifact holds " +
                     item.key());
            for (const auto& [other, record] : out)
                if (record.file == a.file)
                    fail("lists " + a.file + " as both the \"" + other + "\" and the \"" + item.key() + "\" artifact");
            out[item.key()] = a;
        }
        return out;
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
            if (!shape.is_array() || shape.size() < 2 || shape[0] != "batch")
                fail(where + ".shape must be [\"batch\", positive integers...], got " + show(shape));
            spec.shape.push_back(TensorSpec::kDynamic);
            for (size_t d = 1; d < shape.size(); ++d) {
                if (!shape[d].is_number_integer() || shape[d].get<int64_t>() < 1 || shape[d].get<int64_t>() > INT32_MAX)
                    fail(where + ".shape[" + std::to_string(d) + "] must be a positive integer, got " + show(shape[d]));
                spec.shape.push_back(shape[d].get<int64_t>());
            }
            specs.push_back(std::move(spec));
        }
        return specs;
    }

private:
    std::string source_;
};

bool positive(double v) { return v > 0.0; }
bool open_unit(double v) { return v > 0.0 && v < 1.0; }

void check_format(const json& root, const std::string& source, bool embedded) {
    const std::string what = embedded ? "the embedded manifest" : "model.json";
    if (!root.is_object() || !root.contains("format") || !root["format"].is_string())
        throw ManifestError(source + ": " + what + " has no \"format\"; expected a manifest written by mrdl-export (" +
                            kManifestFormat + ")");
    const std::string format = root["format"];
    if (format == kOlderFormat)
        throw ManifestError(source + ": format \"" + format + "\" was written by an older mrdl-export; re-export "
                            "the checkpoint (mrdl-export --ckpt CKPT --out DIR) to get " + kManifestFormat);
    if (format != kManifestFormat)
        throw ManifestError(source + ": format must be \"" + kManifestFormat + "\", got \"" + format + "\"");
}

}  // namespace

Manifest Manifest::load(const std::string& path) {
    std::error_code error;
    const auto size = std::filesystem::file_size(path, error);
    std::ifstream stream(path, std::ios::binary);
    if (error || !stream)
        throw ManifestError("cannot open " + path + " (expected the model.json written by mrdl-export)");
    if (size > kMaxManifestBytes)
        throw ManifestError(path + ": " + std::to_string(size) + " bytes; a manifest is at most " +
                            std::to_string(kMaxManifestBytes) + " bytes (1 MiB)");
    std::stringstream buffer;
    buffer << stream.rdbuf();
    return parse(buffer.str(), path);
}

Manifest Manifest::parse(const std::string& text, const std::string& source) {
    Reader r(source);
    const json root = parse_limited<ManifestError>(text, source);
    check_format(root, source, false);
    Manifest m;
    m.document = text;
    m.format = kManifestFormat;
    m.export_id = r.text(root, "export_id", "the manifest");
    if (!is_hex(m.export_id, 32)) r.fail("export_id must be 32 lower-case hex digits, got \"" + m.export_id + "\"");
    m.name = r.text_or(root, "name", "the manifest", "");
    m.fusion = r.text(root, "fusion", "the manifest");
    r.one_of(m.fusion, {"distribution", "addition"}, "fusion");
    m.n_classes = static_cast<int>(r.integer(root, "n_classes", "the manifest", 1, 255));
    const json& classes = root.contains("classes") ? root["classes"] : json::array();
    if (!classes.is_array()) r.fail("\"classes\" must be a list of names, got " + show(classes));
    for (const json& name : classes) {
        if (!name.is_string()) r.fail("\"classes\" must hold strings, got " + show(name));
        m.classes.push_back(name.get<std::string>());
    }
    m.artifacts = r.artifacts(root);
    m.inputs = r.tensors(root, "inputs");
    m.outputs = r.tensors(root, "outputs");
    m.max_batch = static_cast<int>(r.integer(root, "max_batch", "the manifest", 1, 4096));
    m.precision = r.text_or(root, "precision", "the manifest", "fp32");
    r.one_of(m.precision, {"fp32", "fp16", "int8"}, "precision");

    const json& pre = r.field(root, "preprocessing", "the manifest");
    const json& size = r.field(pre, "size", "preprocessing");
    const auto in_range = [](const json& v) { return v.is_number_integer() && v >= 1 && v <= 8192; };
    if (!size.is_array() || size.size() != 2 || !in_range(size[0]) || !in_range(size[1]))
        r.fail("preprocessing.size must be [height, width], integers in [1, 8192], got " + show(size));
    m.preprocessing.height = size[0].get<int>();
    m.preprocessing.width = size[1].get<int>();
    m.preprocessing.resize = r.text_or(pre, "resize", "preprocessing", "bilinear");
    r.one_of(m.preprocessing.resize, {"bilinear"}, "preprocessing.resize");
    m.preprocessing.channel_order = r.text_or(pre, "channel_order", "preprocessing", "RGB");
    r.one_of(m.preprocessing.channel_order, {"RGB"}, "preprocessing.channel_order");
    m.preprocessing.layout = r.text_or(pre, "layout", "preprocessing", "NCHW");
    r.one_of(m.preprocessing.layout, {"NCHW"}, "preprocessing.layout");
    m.preprocessing.scale = r.finite(pre, "scale", "preprocessing", "> 0", positive);
    m.preprocessing.grayscale = r.text_or(pre, "grayscale", "preprocessing", "replicate");
    r.one_of(m.preprocessing.grayscale, {"replicate"}, "preprocessing.grayscale");

    const json& post = r.field(root, "postprocessing", "the manifest");
    m.postprocessing.activation =
        r.text_or(post, "activation", "postprocessing", m.n_classes == 1 ? "sigmoid" : "softmax");
    r.one_of(m.postprocessing.activation, {"sigmoid", "softmax"}, "postprocessing.activation");
    const json& in_graph = r.field(post, "activation_in_graph", "postprocessing");
    if (!in_graph.is_boolean() || !in_graph.get<bool>())
        r.fail("postprocessing.activation_in_graph must be true (the runtimes expect probabilities), got " +
               show(in_graph));
    m.postprocessing.activation_in_graph = true;
    m.postprocessing.threshold =
        r.finite(post, "threshold", "postprocessing", "strictly between 0 and 1", open_unit);
    m.postprocessing.resize_to_original = r.text_or(post, "resize_to_original", "postprocessing", "bilinear");
    r.one_of(m.postprocessing.resize_to_original, {"bilinear"}, "postprocessing.resize_to_original");

    if (root.contains("source_size")) {
        const json& source = root["source_size"];
        const int model[2] = {m.preprocessing.height, m.preprocessing.width};
        int low[2];
        for (int a = 0; a < 2; ++a) low[a] = std::max(kMinSourceSide, (model[a] + kMaxSourceUpscale - 1) / kMaxSourceUpscale);
        const auto side = [](const json& v, int least) { return v.is_number_integer() && v >= least && v <= kMaxSourceSide; };
        if (!source.is_array() || source.size() != 2 || !side(source[0], low[0]) || !side(source[1], low[1])) {
            const auto range = [](int least) { return "[" + std::to_string(least) + ", " + std::to_string(kMaxSourceSide) + "]"; };
            r.fail("source_size is " + show(source) + "; expected [height, width] of the training images, each side in " +
                   (low[0] == low[1] ? range(low[0]) : range(low[0]) + " and " + range(low[1])) + " for a " +
                   std::to_string(model[0]) + "x" + std::to_string(model[1]) + " model (below a quarter of the model "
                   "size the tiled path would enlarge every image more than 4 times per axis)");
        }
        m.source_size = std::array<int, 2>{source[0].get<int>(), source[1].get<int>()};
    }

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
        if (text.shape.size() != 3) r.fail("inputs \"text_features\" must have shape [\"batch\", L, D]");
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

EmbeddedIdentity parse_embedded_manifest(const std::string& text, const std::string& source) {
    const json root = parse_limited<IntegrityError>(text, source);
    try {
        check_format(root, source, true);
    } catch (const ManifestError& error) {
        throw IntegrityError(error.what());
    }
    EmbeddedIdentity identity;
    for (auto [key, target] : {std::pair{"export_id", &identity.export_id}, {"precision", &identity.precision}}) {
        if (!root.contains(key) || !root[key].is_string())
            throw IntegrityError(source + ": the embedded manifest has no \"" + key + "\"; re-export");
        *target = root[key].get<std::string>();
    }
    return identity;
}

namespace {

/// `value` as Python's json.dumps writes it (", " and ": " between items, non-ASCII escaped).
std::string python_dumps(const json& value) {
    std::string out;
    if (value.is_array()) {
        for (const json& item : value) out += (out.empty() ? "" : ", ") + python_dumps(item);
        return "[" + out + "]";
    }
    if (value.is_object()) {
        for (const auto& item : value.items())
            out += (out.empty() ? "" : ", ") + json(item.key()).dump(-1, ' ', true) + ": " + python_dumps(item.value());
        return "{" + out + "}";
    }
    return value.dump(-1, ' ', true);
}

/// Equal values of the same Python type (1 and 1.0 differ, as do true and 1).
bool same_value(const json& a, const json& b) {
    const auto kind = [](const json& v) { return v.is_number_integer() ? json::value_t::number_integer : v.type(); };
    return kind(a) == kind(b) && a == b;
}

void differences(const json& expected, const json& embedded, const std::string& where, size_t limit,
                 std::vector<std::string>& found) {
    if (expected.is_array() && embedded.is_array() && expected.size() == embedded.size()) {
        for (size_t i = 0; i < expected.size() && found.size() < limit; ++i)
            differences(expected[i], embedded[i], where + "[" + std::to_string(i) + "]", limit, found);
        return;
    }
    if (expected.is_object() && embedded.is_object()) {
        std::set<std::string> keys;
        for (const auto& item : expected.items()) keys.insert(item.key());
        for (const auto& item : embedded.items()) keys.insert(item.key());
        for (const std::string& key : keys) {
            if (found.size() >= limit) return;
            const std::string name = where.empty() ? key : where + "." + key;
            if (!embedded.contains(key)) found.push_back(name + " was added");
            else if (!expected.contains(key)) found.push_back(name + " was removed");
            else differences(expected[key], embedded[key], name, limit, found);
        }
        return;
    }
    if (same_value(expected, embedded)) return;
    std::string shown[2] = {python_dumps(expected), python_dumps(embedded)};
    for (std::string& text : shown)
        if (text.size() > 60) text = text.substr(0, 57) + "...";
    found.push_back((where.empty() ? "the manifest" : where) + " is " + shown[0] + ", not " + shown[1]);
}

}  // namespace

std::vector<std::string> manifest_edits(const Manifest& manifest, const std::string& embedded_text,
                                        const std::string& precision, const std::string& source, size_t limit) {
    json expected = parse_limited<ManifestError>(manifest.document, "model.json");
    const json embedded = parse_limited<IntegrityError>(embedded_text, source);
    expected["precision"] = precision;  // the copy mrdl-export embeds in this artifact
    if (expected.contains("artifacts") && expected["artifacts"].is_object())
        for (auto& item : expected["artifacts"].items()) {
            const json& record = item.value();
            const auto field = [&](const char* key) { return record.is_object() && record.contains(key) ? record[key] : json(); };
            item.value() = json{{"file", field("file")}, {"precision", field("precision")}};
        }
    std::vector<std::string> found;
    differences(expected, embedded, "", limit, found);
    return found;
}

}  // namespace mrdl
