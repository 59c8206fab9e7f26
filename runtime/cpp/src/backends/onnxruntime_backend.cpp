// ONNX Runtime backend through the C++ API: CPU, or the CUDA / TensorRT execution providers
// when the linked library has them.
#include "backends.hpp"

#include <algorithm>
#include <array>
#include <memory>

#include <onnxruntime_cxx_api.h>

#include "mrdl/errors.hpp"

namespace mrdl::detail {
namespace {

Ort::Env& environment() {
    static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "mrdl");
    return env;
}

std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
    return out;
}

void require_provider(const std::string& provider) {
    const std::vector<std::string> available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), provider) == available.end())
        throw BackendError("this ONNX Runtime library (" + Ort::GetVersionString() + ") has no " + provider +
                           "; it has: " + join(available) +
                           ". Link a GPU build of ONNX Runtime or use Device::CPU");
}

void append_cuda(Ort::SessionOptions& session_options, int device_id) {
    require_provider("CUDAExecutionProvider");
    const OrtApi& api = Ort::GetApi();
    OrtCUDAProviderOptionsV2* raw = nullptr;
    Ort::ThrowOnError(api.CreateCUDAProviderOptions(&raw));
    std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> cuda(
        raw, api.ReleaseCUDAProviderOptions);
    const std::string device = std::to_string(device_id);
    const std::array<const char*, 1> keys{"device_id"};
    const std::array<const char*, 1> values{device.c_str()};
    Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda.get(), keys.data(), values.data(), keys.size()));
    session_options.AppendExecutionProvider_CUDA_V2(*cuda);
}

void append_tensorrt(Ort::SessionOptions& session_options, int device_id) {
    require_provider("TensorrtExecutionProvider");
    const OrtApi& api = Ort::GetApi();
    OrtTensorRTProviderOptionsV2* raw = nullptr;
    Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&raw));
    std::unique_ptr<OrtTensorRTProviderOptionsV2, decltype(api.ReleaseTensorRTProviderOptions)> trt(
        raw, api.ReleaseTensorRTProviderOptions);
    const std::string device = std::to_string(device_id);
    const std::array<const char*, 1> keys{"device_id"};
    const std::array<const char*, 1> values{device.c_str()};
    Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt.get(), keys.data(), values.data(), keys.size()));
    session_options.AppendExecutionProvider_TensorRT_V2(*trt);
    append_cuda(session_options, device_id);  // nodes TensorRT declines fall back to CUDA
}

class OnnxRuntimeBackend final : public Backend {
public:
    OnnxRuntimeBackend(const std::string& path, const Manifest& manifest, const SegmenterOptions& options)
        : manifest_(manifest) {
        Ort::SessionOptions session_options;
        session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        if (options.intra_op_threads > 0) session_options.SetIntraOpNumThreads(options.intra_op_threads);
        provider_ = "CPUExecutionProvider";
        if (options.device == Device::CUDA) {
            append_cuda(session_options, options.device_id);
            provider_ = "CUDAExecutionProvider";
        } else if (options.device == Device::TensorRT) {
            append_tensorrt(session_options, options.device_id);
            provider_ = "TensorrtExecutionProvider";
        }
        try {
            session_ = std::make_unique<Ort::Session>(environment(), path.c_str(), session_options);
        } catch (const Ort::Exception& error) {
            throw BackendError("ONNX Runtime cannot load " + path + ": " + error.what());
        }
        check_names(path);
    }

    std::vector<float> run(const std::vector<float>& images, const std::vector<float>* text_features,
                           int64_t batch) override {
        const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        std::vector<Ort::Value> inputs;
        std::vector<const char*> input_names;
        for (const TensorSpec& spec : manifest_.inputs) {
            const std::vector<float>& data = spec.name == "image" ? images : *text_features;
            std::vector<int64_t> shape = spec.shape;
            shape[0] = batch;
            inputs.push_back(Ort::Value::CreateTensor<float>(memory, const_cast<float*>(data.data()), data.size(),
                                                             shape.data(), shape.size()));
            input_names.push_back(spec.name.c_str());
        }
        const char* output_name = manifest_.outputs.front().name.c_str();
        std::vector<Ort::Value> outputs;
        try {
            outputs = session_->Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(), inputs.size(),
                                    &output_name, 1);
        } catch (const Ort::Exception& error) {
            throw BackendError(std::string("ONNX Runtime inference failed: ") + error.what());
        }
        const Ort::TensorTypeAndShapeInfo info = outputs.front().GetTensorTypeAndShapeInfo();
        std::vector<int64_t> expected = manifest_.outputs.front().shape;
        expected[0] = batch;
        if (info.GetShape() != expected)
            throw BackendError("the model returned output of an unexpected shape (expected [" + std::to_string(batch) +
                               ", " + std::to_string(manifest_.n_classes) + ", H, W] as model.json says)");
        const float* data = outputs.front().GetTensorData<float>();
        return std::vector<float>(data, data + info.GetElementCount());
    }

    std::string describe() const override { return "onnxruntime " + Ort::GetVersionString() + " (" + provider_ + ")"; }

private:
    void check_names(const std::string& path) const {
        Ort::AllocatorWithDefaultOptions allocator;
        std::vector<std::string> graph_inputs;
        for (size_t i = 0; i < session_->GetInputCount(); ++i)
            graph_inputs.push_back(session_->GetInputNameAllocated(i, allocator).get());
        std::vector<std::string> declared;
        for (const TensorSpec& spec : manifest_.inputs) declared.push_back(spec.name);
        if (graph_inputs != declared)
            throw BackendError(path + " has inputs [" + join(graph_inputs) + "] but model.json declares [" +
                               join(declared) + "]");
        const std::string output = session_->GetOutputNameAllocated(0, allocator).get();
        if (output != manifest_.outputs.front().name)
            throw BackendError(path + " has output \"" + output + "\" but model.json declares \"" +
                               manifest_.outputs.front().name + "\"");
    }

    Manifest manifest_;
    std::string provider_;
    std::unique_ptr<Ort::Session> session_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& path, const Manifest& manifest,
                                                  const SegmenterOptions& options) {
    return std::make_unique<OnnxRuntimeBackend>(path, manifest, options);
}

}  // namespace mrdl::detail
