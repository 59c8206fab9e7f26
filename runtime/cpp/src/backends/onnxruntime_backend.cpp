// ONNX Runtime backend through the C++ API: CPU, or the CUDA / TensorRT execution providers
// when the linked library has them. The session is built from the verified bytes (the file is
// read once), then its embedded manifest and graph signature are checked against model.json.
#include "backends.hpp"
#include "identity.hpp"

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
    OnnxRuntimeBackend(const VerifiedArtifact& artifact, const Manifest& manifest, const SegmenterOptions& options,
                       int threads)
        : manifest_(manifest), threads_(threads) {
        const std::string& path = artifact.path;
        Ort::SessionOptions session_options;
        session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        session_options.SetIntraOpNumThreads(threads);
        provider_ = "CPUExecutionProvider";
        if (options.device == Device::CUDA) {
            append_cuda(session_options, options.device_id);
            provider_ = "CUDAExecutionProvider";
        } else if (options.device == Device::TensorRT) {
            append_tensorrt(session_options, options.device_id);
            provider_ = "TensorrtExecutionProvider";
        }
        try {
            session_ = std::make_unique<Ort::Session>(environment(), artifact.bytes.data(), artifact.bytes.size(),
                                                      session_options);
        } catch (const Ort::Exception& error) {
            throw BackendError("ONNX Runtime cannot load " + path + ": " + error.what());
        }
        Ort::AllocatorWithDefaultOptions allocator;
        const Ort::AllocatedStringPtr text =
            session_->GetModelMetadata().LookupCustomMetadataMapAllocated(kEmbeddedKey, allocator);
        const std::string embedded = check_identity(artifact, manifest_, text.get());
        check_signature(path, "input", manifest_.inputs,
                        ports(session_->GetInputCount(),
                              [this](size_t i, OrtAllocator* a) { return session_->GetInputNameAllocated(i, a); },
                              [this](size_t i) { return session_->GetInputTypeInfo(i); }));
        check_signature(path, "output", manifest_.outputs,
                        ports(session_->GetOutputCount(),
                              [this](size_t i, OrtAllocator* a) { return session_->GetOutputNameAllocated(i, a); },
                              [this](size_t i) { return session_->GetOutputTypeInfo(i); }));
        check_unedited(artifact, manifest_, embedded);  // last: the checks above name a cause more precisely
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
        check_output_shape(manifest_, batch, info.GetShape());
        const float* data = outputs.front().GetTensorData<float>();
        return std::vector<float>(data, data + info.GetElementCount());
    }

    std::string describe() const override {
        return "onnxruntime " + Ort::GetVersionString() + " (" + provider_ + "; threads " + std::to_string(threads_) +
               ")";
    }

private:
    /// The graph's inputs or outputs as the session reports them.
    template <typename NameOf, typename TypeOf>
    static std::vector<GraphPort> ports(size_t count, NameOf name_of, TypeOf type_of) {
        Ort::AllocatorWithDefaultOptions allocator;
        std::vector<GraphPort> found;
        for (size_t i = 0; i < count; ++i) {
            GraphPort port{name_of(i, allocator).get(), "", {}, true};
            const Ort::TypeInfo type = type_of(i);
            port.tensor = type.GetONNXType() == ONNX_TYPE_TENSOR;
            if (port.tensor) {
                const auto info = type.GetTensorTypeAndShapeInfo();
                port.dtype = element_name(info.GetElementType());
                port.shape = info.GetShape();
            }
            found.push_back(std::move(port));
        }
        return found;
    }

    static std::string element_name(ONNXTensorElementDataType type) {
        switch (type) {
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
            default: return "element type " + std::to_string(static_cast<int>(type));
        }
    }

    Manifest manifest_;
    int threads_;
    std::string provider_;
    std::unique_ptr<Ort::Session> session_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                                  const SegmenterOptions& options, int threads) {
    return std::make_unique<OnnxRuntimeBackend>(artifact, manifest, options, threads);
}

}  // namespace mrdl::detail
