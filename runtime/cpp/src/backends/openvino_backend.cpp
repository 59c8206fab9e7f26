// OpenVINO backend: the verified ONNX bytes compiled by OpenVINO's CPU plugin, as the Python
// runtime's openvino_runner does (docs/openvino.md). The model is read from memory (the file is
// read once, by read_verified_artifact), its embedded manifest and graph are checked against
// model.json, then it is compiled once per batch size it is called with, at a static batch:
// OpenVINO's CPU plugin runs static shapes faster, and OpenVINO 2026.4 computes wrong masks from
// this model's INT8 QDQ graphs compiled with a dynamic batch. Precisions: fp32 (hint f32, set
// explicitly: OpenVINO's default on a BF16 CPU is bf16), bf16 (the fp32 file computed in bfloat16,
// only where OpenVINO reports native BF16) and int8 (model.int8.onnx, hint f32 for the float parts).
#include "backends.hpp"
#include "identity.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <vector>

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
             << compiled.get_property(ov::hint::performance_mode) << ")";
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
