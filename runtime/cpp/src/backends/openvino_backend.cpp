// OpenVINO backend: the verified ONNX bytes compiled by OpenVINO's CPU plugin, as the Python
// runtime's openvino_runner does (docs/openvino.md). The model is read from memory (the file is
// read once, by read_verified_artifact), its embedded manifest and graph are checked against
// model.json, then it is compiled once per batch size it is called with, at a static batch:
// OpenVINO's CPU plugin runs static shapes faster, and OpenVINO 2026.4 computes wrong masks from
// this model's INT8 QDQ graphs compiled with a dynamic batch. Precisions: fp32 (hint f32, set
// explicitly: OpenVINO's default on a BF16 CPU is bf16), bf16 (the fp32 file computed in bfloat16,
// only where OpenVINO reports native BF16) and int8 (model.int8.onnx, hint f32 for the float parts;
// its channels-last upsampling rearrangements and channel LayerNorms' transposes rewritten first,
// exactly as mrdl_runtime.openvino_rewrites does, whose docstring says why each is sound).
#include "backends.hpp"
#include "identity.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include <openvino/op/constant.hpp>
#include <openvino/op/add.hpp>
#include <openvino/op/depth_to_space.hpp>
#include <openvino/op/multiply.hpp>
#include <openvino/op/mvn.hpp>
#include <openvino/op/transpose.hpp>
#include <openvino/openvino.hpp>

#include "mrdl/errors.hpp"

namespace mrdl::detail {
namespace {

/// OpenVINO's message without its "Exception from <source file>" lines, shortened.
std::string reason(const std::exception& error) {
    std::string out, line;
    std::istringstream lines(error.what());
    while (std::getline(lines, line)) {
        if (line.empty() || line.rfind("Exception from", 0) == 0) continue;
        out += (out.empty() ? "" : " ") + line;
    }
    return (out.empty() ? std::string("unknown error") : out).substr(0, 300);
}

/// OpenVINO element type names -> the manifest's dtype names (mrdl_runtime.openvino_runner.ELEMENT_TYPES).
std::string dtype_name(const ov::element::Type& type) {
    static const std::map<std::string, std::string> names{
        {"f32", "float32"}, {"f16", "float16"}, {"f64", "float64"}, {"i64", "int64"},
        {"i32", "int32"},   {"i8", "int8"},     {"u8", "uint8"},    {"boolean", "bool"}};
    const auto found = names.find(type.get_type_name());
    return found == names.end() ? type.get_type_name() : found->second;
}

std::vector<GraphPort> ports(const std::vector<ov::Output<ov::Node>>& outputs) {
    std::vector<GraphPort> found;
    for (const ov::Output<ov::Node>& port : outputs) {
        GraphPort graph{port.get_any_name(), dtype_name(port.get_element_type()), {}, true};
        for (const ov::Dimension& dim : port.get_partial_shape())
            graph.shape.push_back(dim.is_static() ? dim.get_length() : TensorSpec::kDynamic);
        found.push_back(std::move(graph));
    }
    return found;
}

/// The ONNX metadata_props value mrdl-export wrote, which OpenVINO's ONNX reader keeps in the
/// model's rt_info under "framework"; empty when absent.
std::optional<std::string> embedded_manifest(const std::shared_ptr<ov::Model>& model) {
    const ov::AnyMap& info = model->get_rt_info();
    const auto framework = info.find("framework");
    if (framework == info.end()) return std::nullopt;
    const ov::AnyMap metadata = framework->second.as<ov::AnyMap>();
    const auto text = metadata.find(kEmbeddedKey);
    if (text == metadata.end()) return std::nullopt;
    return text->second.as<std::string>();
}

// ---- the DepthToSpace rewrite (mrdl_runtime.openvino_rewrites, whose docstring says why it is exact)

std::shared_ptr<ov::Node> only_consumer(const std::shared_ptr<ov::Node>& node) {
    if (node->get_output_size() != 1) return nullptr;
    const auto targets = node->output(0).get_target_inputs();
    return targets.size() == 1 ? targets.begin()->get_node()->shared_from_this() : nullptr;
}

std::string type_of(const std::shared_ptr<ov::Node>& node) { return node ? node->get_type_name() : ""; }

/// Input `index` of `node` when it is a constant (also through a Convert, or a Range of constants, as
/// OpenVINO's ONNX reader writes zero points and reduction axes), as doubles; nullopt otherwise.
std::optional<std::vector<double>> constant_values(const std::shared_ptr<ov::Node>& node, size_t index) {
    std::shared_ptr<ov::Node> source = node->get_input_node_shared_ptr(index);
    if (type_of(source) == "Convert") source = source->get_input_node_shared_ptr(0);
    if (const auto constant = ov::as_type_ptr<ov::op::v0::Constant>(source)) return constant->cast_vector<double>();
    if (type_of(source) == "Range") {
        std::vector<double> bounds;
        for (size_t i = 0; i < 3; ++i) {
            const auto bound = ov::as_type_ptr<ov::op::v0::Constant>(source->get_input_node_shared_ptr(i));
            if (!bound || bound->cast_vector<double>().size() != 1) return std::nullopt;
            bounds.push_back(bound->cast_vector<double>().front());
        }
        if (bounds[2] == 0) return std::nullopt;
        std::vector<double> values;
        for (double v = bounds[0]; bounds[2] > 0 ? v < bounds[1] : v > bounds[1]; v += bounds[2]) values.push_back(v);
        return values;
    }
    return std::nullopt;
}

std::optional<std::vector<int64_t>> permutation(const std::shared_ptr<ov::Node>& node) {
    const auto values = constant_values(node, 1);
    if (!values) return std::nullopt;
    return std::vector<int64_t>(values->begin(), values->end());
}

/// Whether every input of `node` after its data is a constant scalar (a quantize/dequantize node then acts
/// element by element, whatever the layout).
bool per_tensor(const std::shared_ptr<ov::Node>& node) {
    for (size_t index = 1; index < node->get_input_size(); ++index) {
        const auto values = constant_values(node, index);
        if (!values || values->size() != 1) return false;
    }
    return true;
}

bool is_transpose(const std::shared_ptr<ov::Node>& node, const std::vector<int64_t>& order) {
    return type_of(node) == "Transpose" && permutation(node) == order;
}

/// When `node` starts a per-tensor quantize/dequantize pair as OpenVINO reads QuantizeLinear +
/// DequantizeLinear (FakeQuantize, Convert, Convert, Subtract of the zero point where not 0, Multiply by the
/// scale; every parameter a constant scalar, each node the only consumer of the one before), the pair's
/// nodes; else empty. Nothing else is ever stepped over (mrdl_runtime.openvino_rewrites._pair).
std::vector<std::shared_ptr<ov::Node>> pair(const std::shared_ptr<ov::Node>& node) {
    if (type_of(node) != "FakeQuantize" || !per_tensor(node)) return {};
    std::vector<std::shared_ptr<ov::Node>> nodes{node};
    for (int i = 0; i < 2; ++i) {
        nodes.push_back(only_consumer(nodes.back()));
        if (type_of(nodes.back()) != "Convert") return {};
    }
    std::shared_ptr<ov::Node> current = only_consumer(nodes.back());
    if (type_of(current) == "Subtract" && per_tensor(current)) {
        nodes.push_back(current);
        current = only_consumer(current);
    }
    if (type_of(current) != "Multiply" || !per_tensor(current)) return {};
    nodes.push_back(current);
    return nodes;
}

/// The node after `node` and the quantize/dequantize pair that may follow it; nullptr where something
/// else follows, or more than one consumer.
std::shared_ptr<ov::Node> next_step(const std::shared_ptr<ov::Node>& node) {
    const std::shared_ptr<ov::Node> current = only_consumer(node);
    if (!current) return nullptr;
    const auto found = pair(current);
    return found.empty() ? current : only_consumer(found.back());
}

/// A FakeQuantize's four ranges, or nullopt when one is not a constant.
std::optional<std::vector<std::vector<double>>> grid(const std::shared_ptr<ov::Node>& node) {
    std::vector<std::vector<double>> ranges;
    for (size_t index = 1; index < 5; ++index) {
        const auto range = constant_values(node, index);
        if (!range) return std::nullopt;
        ranges.push_back(*range);
    }
    return ranges;
}

/// Whether every FakeQuantize from `first` up to the one right after `last` quantizes to one grid.
bool same_grid(const std::shared_ptr<ov::Node>& first, const std::shared_ptr<ov::Node>& last) {
    std::vector<std::optional<std::vector<std::vector<double>>>> grids;
    std::shared_ptr<ov::Node> node = first;
    while (node != last) {  // the single-consumer path that next_step walked
        node = only_consumer(node);
        if (type_of(node) == "FakeQuantize") grids.push_back(grid(node));
    }
    const std::shared_ptr<ov::Node> after = only_consumer(last);
    if (!pair(after).empty()) grids.push_back(grid(after));
    for (const auto& found : grids)
        if (!found || *found != *grids.front()) return false;
    return true;
}

std::optional<int64_t> static_dim(const ov::PartialShape& shape, size_t index) {
    return shape[index].is_static() ? std::optional<int64_t>(shape[index].get_length()) : std::nullopt;
}

/// Replaces each channels-last one-tap ConvTranspose rearrangement (Transpose to NHWC, Reshape to
/// (B*H, W, k, k*C), Transpose of the middle axes, Reshape to (B, k*H, k*W, C)) by DepthToSpace
/// (blocks first) and one Transpose to NHWC; returns how many were replaced.
int rewrite_depth_to_space(const std::shared_ptr<ov::Model>& model) {
    int replaced = 0;
    for (const std::shared_ptr<ov::Node>& first : model->get_ordered_ops()) {
        if (!is_transpose(first, {0, 2, 3, 1})) continue;
        std::vector<std::shared_ptr<ov::Node>> chain{first};
        while (chain.size() < 4) {
            std::shared_ptr<ov::Node> step = next_step(chain.back());
            if (!step) break;
            chain.push_back(step);
        }
        if (chain.size() != 4 || type_of(chain[1]) != "Reshape" || type_of(chain[3]) != "Reshape") continue;
        const std::shared_ptr<ov::Node>& middle = chain[2];
        const std::shared_ptr<ov::Node>& last = chain[3];
        if (!is_transpose(middle, {0, 2, 1, 3}) || !same_grid(first, last)) continue;
        const ov::PartialShape source = first->get_input_partial_shape(0);
        const ov::PartialShape result = last->get_output_partial_shape(0);
        const ov::PartialShape merged = middle->get_input_partial_shape(0);
        if (source.rank() != 4 || result.rank() != 4 || merged.rank() != 4) continue;
        const auto channels_in = static_dim(source, 1), height = static_dim(source, 2), width = static_dim(source, 3);
        const auto channels_out = static_dim(result, 3), out_height = static_dim(result, 1),
                   out_width = static_dim(result, 2);
        if (!channels_in || !height || !width || !channels_out || !out_height || !out_width || *height == 0 ||
            *channels_out == 0)
            continue;
        const int64_t k = *out_height / *height;
        if (k < 2 || *out_height != k * *height || *out_width != k * *width || *channels_in != k * k * *channels_out)
            continue;
        // The first Reshape's output pins the rows merged with the batch: (B*H, W, k, k*C).
        if (static_dim(merged, 1) != *width || static_dim(merged, 2) != k || static_dim(merged, 3) != k * *channels_out)
            continue;
        const auto spread = std::make_shared<ov::op::v0::DepthToSpace>(
            first->input_value(0), ov::op::v0::DepthToSpace::DepthToSpaceMode::BLOCKS_FIRST, static_cast<size_t>(k));
        const auto order = ov::op::v0::Constant::create(ov::element::i64, ov::Shape{4}, {0, 2, 3, 1});
        const auto channels_last = std::make_shared<ov::op::v1::Transpose>(spread, order);
        last->output(0).replace(channels_last->output(0));
        ++replaced;
    }
    return replaced;
}

/// Replaces each Transpose to NHWC -> (per-tensor quantize/dequantize) -> MVN over the last axis ->
/// Multiply (weight) -> Add (bias) -> Transpose to NCHW by the same normalization over axis 1 of the NCHW
/// map; returns how many were replaced.
int rewrite_channel_layer_norm(const std::shared_ptr<ov::Model>& model) {
    int replaced = 0;
    for (const std::shared_ptr<ov::Node>& first : model->get_ordered_ops()) {
        if (!is_transpose(first, {0, 2, 3, 1})) continue;
        const std::shared_ptr<ov::Node> node = only_consumer(first);
        if (!node) continue;
        const std::vector<std::shared_ptr<ov::Node>> pairs = pair(node);
        const auto norm = ov::as_type_ptr<ov::op::v6::MVN>(pairs.empty() ? node : only_consumer(pairs.back()));
        const std::shared_ptr<ov::Node> scale = norm ? only_consumer(norm) : nullptr;
        const std::shared_ptr<ov::Node> shift = scale ? only_consumer(scale) : nullptr;
        const std::shared_ptr<ov::Node> last = shift ? only_consumer(shift) : nullptr;
        if (!is_transpose(last, {0, 3, 1, 2}) || type_of(scale) != "Multiply" || type_of(shift) != "Add") continue;
        const auto axes = constant_values(norm, 1);
        const ov::PartialShape source = first->get_input_partial_shape(0);
        if (!axes || axes->size() != 1 || (axes->front() != 3 && axes->front() != -1) || source.rank() != 4) continue;
        const auto channels = static_dim(source, 1);
        const auto weight = ov::as_type_ptr<ov::op::v0::Constant>(scale->get_input_node_shared_ptr(1));
        const auto bias = ov::as_type_ptr<ov::op::v0::Constant>(shift->get_input_node_shared_ptr(1));
        if (!channels || !weight || !bias || static_cast<int64_t>(ov::shape_size(weight->get_shape())) != *channels ||
            static_cast<int64_t>(ov::shape_size(bias->get_shape())) != *channels)
            continue;
        ov::Output<ov::Node> input = first->input_value(0);
        if (!pairs.empty()) {  // the pairs now act on the NCHW map
            pairs.front()->input(0).replace_source_output(input);
            for (const auto& pair : pairs) pair->validate_and_infer_types();
            input = pairs.back()->output(0);
        }
        const ov::Shape per_channel{1, static_cast<size_t>(*channels), 1, 1};
        const auto normalized = std::make_shared<ov::op::v6::MVN>(
            input, ov::op::v0::Constant::create(ov::element::i64, ov::Shape{1}, {1}), norm->get_normalize_variance(),
            norm->get_eps(), norm->get_eps_mode());
        const auto scaled = std::make_shared<ov::op::v1::Multiply>(
            normalized, std::make_shared<ov::op::v0::Constant>(weight->get_element_type(), per_channel,
                                                               weight->get_data_ptr()));
        const auto shifted = std::make_shared<ov::op::v1::Add>(
            scaled, std::make_shared<ov::op::v0::Constant>(bias->get_element_type(), per_channel, bias->get_data_ptr()));
        last->output(0).replace(shifted->output(0));
        ++replaced;
    }
    if (replaced > 0) model->validate_nodes_and_infer_types();
    return replaced;
}

/// Every INT8 rewrite, in mrdl_runtime.openvino_rewrites.REWRITES' order: name -> places rewritten.
std::vector<std::pair<std::string, int>> rewrite_int8(const std::shared_ptr<ov::Model>& model) {
    const int spread = rewrite_depth_to_space(model);
    return {{"depth_to_space", spread}, {"channel_layer_norm", rewrite_channel_layer_norm(model)}};
}

class OpenVinoBackend final : public Backend {
public:
    OpenVinoBackend(const VerifiedArtifact& artifact, const Manifest& manifest, const SegmenterOptions& options,
                    int threads)
        : manifest_(manifest), path_(artifact.path), precision_(options.precision), threads_(threads),
          hint_(options.hint) {
        if (precision_ == "bf16") require_native_bf16();
        try {
            model_ = core_.read_model(std::string(artifact.bytes.begin(), artifact.bytes.end()), ov::Tensor());
        } catch (const std::exception& error) {
            throw IntegrityError(path_ + ": OpenVINO " + version() + " cannot read it (" + reason(error) +
                                 "); the file is corrupt or not an ONNX model: re-export it");
        }
        const std::optional<std::string> text = embedded_manifest(model_);
        const std::string embedded = check_identity(artifact, manifest_, text ? text->c_str() : nullptr);
        check_signature(path_, "input", manifest_.inputs, ports(model_->inputs()));
        check_signature(path_, "output", manifest_.outputs, ports(model_->outputs()));
        check_unedited(artifact, manifest_, embedded);  // last: the checks above name a cause more precisely
        if (precision_ == "int8") rewrites_ = rewrite_int8(model_);  // float: slower or no faster, so int8 only
        compiled_for(1);  // a graph OpenVINO cannot compile fails here, not at the first call
    }

    std::vector<float> run(const std::vector<float>& images, const std::vector<float>* text_features,
                           int64_t batch) override {
        Lease lease(*this, batch);
        ov::InferRequest& request = lease.request();
        for (const TensorSpec& spec : manifest_.inputs) {
            const std::vector<float>& data = spec.name == "image" ? images : *text_features;
            std::vector<size_t> shape(spec.shape.begin(), spec.shape.end());
            shape[0] = static_cast<size_t>(batch);
            // Borrows the caller's data for this call (OpenVINO reads it, never writes it).
            request.set_tensor(spec.name, ov::Tensor(ov::element::f32, ov::Shape(shape), const_cast<float*>(data.data())));
        }
        try {
            request.infer();
        } catch (const std::exception& error) {
            throw BackendError("OpenVINO inference failed: " + reason(error));
        }
        const ov::Tensor output = request.get_tensor(manifest_.outputs.front().name);
        const ov::Shape shape = output.get_shape();
        check_output_shape(manifest_, batch, std::vector<int64_t>(shape.begin(), shape.end()));
        const float* data = output.data<const float>();
        return std::vector<float>(data, data + output.get_size());  // the request reuses its buffers
    }

    /// What the compiled model really runs with (OpenVINO's own properties), e.g.
    /// "openvino 2026.4.1 (CPU; precision f32, threads 2, hint LATENCY)".
    std::string describe() const override {
        ov::CompiledModel compiled = compiled_for(1);
        std::ostringstream text;
        text << "openvino " << version() << " (CPU; precision " << compiled.get_property(ov::hint::inference_precision)
             << ", threads " << compiled.get_property(ov::inference_num_threads) << ", hint "
             << compiled.get_property(ov::hint::performance_mode);
        std::string rewrites;
        for (const auto& [name, count] : rewrites_)
            if (count > 0) rewrites += (rewrites.empty() ? "" : ", ") + name + " x" + std::to_string(count);
        if (!rewrites.empty()) text << ", rewrites " << rewrites;
        text << ")";
        return text.str();
    }

private:
    /// An infer request for one call: a free one of this batch size, or a new one; returned after
    /// the call. Concurrent calls each hold their own, so one backend serves several threads.
    class Lease {
    public:
        Lease(OpenVinoBackend& owner, int64_t batch) : owner_(owner), batch_(batch) {
            ov::CompiledModel compiled = owner_.compiled_for(batch);
            {
                const std::lock_guard<std::mutex> lock(owner_.mutex_);
                std::vector<ov::InferRequest>& free = owner_.free_[batch];
                if (!free.empty()) {
                    request_ = std::move(free.back());
                    free.pop_back();
                    return;
                }
            }
            request_ = compiled.create_infer_request();
        }
        ~Lease() {
            const std::lock_guard<std::mutex> lock(owner_.mutex_);
            owner_.free_[batch_].push_back(std::move(request_));
        }
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ov::InferRequest& request() { return request_; }

    private:
        OpenVinoBackend& owner_;
        int64_t batch_;
        ov::InferRequest request_;
    };

    static std::string version() {
        const std::string build = ov::get_openvino_version().buildNumber;  // "2026.4.1-22982-..."
        return build.substr(0, build.find('-'));
    }

    void require_native_bf16() {
        std::vector<std::string> capabilities;
        try {
            capabilities = core_.get_property("CPU", ov::device::capabilities);
        } catch (const std::exception& error) {
            throw BackendError("OpenVINO cannot report the CPU's capabilities (" + reason(error) + ")");
        }
        if (std::find(capabilities.begin(), capabilities.end(), "BF16") != capabilities.end()) return;
        std::string listed;
        for (const std::string& name : capabilities) listed += (listed.empty() ? "" : ", ") + name;
        throw BackendError("openvino-cpu cannot run bf16 here: this CPU has no native BF16 (AVX512_BF16 or AMX; "
                           "OpenVINO reports " + listed + "), where bf16 would be emulated slower than fp32; run "
                           "precision fp32 or int8");
    }

    /// The model compiled for `batch` images (compiled on first use, then kept).
    ov::CompiledModel compiled_for(int64_t batch) const {
        const std::lock_guard<std::mutex> lock(compile_mutex_);
        const auto found = compiled_.find(batch);
        if (found != compiled_.end()) return found->second;
        const std::shared_ptr<ov::Model> model = model_->clone();
        std::map<std::string, ov::PartialShape> shapes;
        for (const ov::Output<ov::Node>& port : model->inputs()) {
            ov::PartialShape shape = port.get_partial_shape();
            shape[0] = batch;
            shapes[port.get_any_name()] = shape;
        }
        ov::CompiledModel compiled;
        try {
            model->reshape(shapes);
            compiled = core_.compile_model(
                model, "CPU", ov::hint::inference_precision(precision_ == "bf16" ? ov::element::bf16 : ov::element::f32),
                ov::hint::performance_mode(hint_ == PerformanceHint::Throughput ? ov::hint::PerformanceMode::THROUGHPUT
                                                                               : ov::hint::PerformanceMode::LATENCY),
                ov::inference_num_threads(threads_));
        } catch (const std::exception& error) {
            throw BackendError("OpenVINO " + version() + " cannot compile " + path_ + " for the CPU at batch " +
                               std::to_string(batch) + " (" + reason(error) + "); run it with backend onnxruntime-cpu");
        }
        compiled_.emplace(batch, compiled);
        return compiled;
    }

    Manifest manifest_;
    std::string path_;
    std::string precision_;  // "fp32", "bf16" or "int8"
    std::vector<std::pair<std::string, int>> rewrites_;  // rewrite -> places rewritten (int8)
    int threads_;
    PerformanceHint hint_;
    mutable ov::Core core_;
    std::shared_ptr<ov::Model> model_;
    mutable std::mutex compile_mutex_;
    mutable std::map<int64_t, ov::CompiledModel> compiled_;  // batch size -> compiled model
    std::mutex mutex_;
    std::map<int64_t, std::vector<ov::InferRequest>> free_;  // batch size -> idle infer requests
};

}  // namespace

std::unique_ptr<Backend> make_openvino_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                               const SegmenterOptions& options, int threads) {
    return std::make_unique<OpenVinoBackend>(artifact, manifest, options, threads);
}

}  // namespace mrdl::detail
