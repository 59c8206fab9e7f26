// ONNX Runtime backend through the C++ API: CPU, or the CUDA / TensorRT execution providers
// when the linked library has them. The session is built from the verified bytes (the file is
// read once), then its embedded manifest and graph signature are checked against model.json.
#include "backends.hpp"

#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>

#include <onnxruntime_cxx_api.h>

#include "mrdl/errors.hpp"

namespace mrdl::detail {
namespace {

constexpr const char* kEmbeddedKey = "mrdl.manifest";  // ONNX metadata_props key written by mrdl-export

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
    OnnxRuntimeBackend(const VerifiedArtifact& artifact, const Manifest& manifest, const SegmenterOptions& options)
        : manifest_(manifest) {
        const std::string& path = artifact.path;
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
            session_ = std::make_unique<Ort::Session>(environment(), artifact.bytes.data(), artifact.bytes.size(),
                                                      session_options);
        } catch (const Ort::Exception& error) {
            throw BackendError("ONNX Runtime cannot load " + path + ": " + error.what());
        }
        const std::string embedded = check_identity(artifact);
        check_signature(path, "input", manifest_.inputs, session_->GetInputCount(),
                        [this](size_t i, OrtAllocator* a) { return session_->GetInputNameAllocated(i, a); },
                        [this](size_t i) { return session_->GetInputTypeInfo(i); });
        check_signature(path, "output", manifest_.outputs, session_->GetOutputCount(),
                        [this](size_t i, OrtAllocator* a) { return session_->GetOutputNameAllocated(i, a); },
                        [this](size_t i) { return session_->GetOutputTypeInfo(i); });
        check_unedited(artifact, embedded);  // last: the checks above name a cause more precisely
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
    /// model.json must be the manifest embedded in this (verified) file, but for the records of the
    /// artifacts' sizes and hashes: an edited field (source_size, threshold, ...) is refused, named.
    void check_unedited(const VerifiedArtifact& artifact, const std::string& embedded) const {
        const std::vector<std::string> edits = manifest_edits(manifest_, embedded, artifact.record.precision,
                                                              artifact.path + " (embedded manifest)");
        if (edits.empty()) return;
        const std::string model_json = (std::filesystem::path(artifact.path).parent_path() / "model.json").string();
        std::string listed;
        for (const std::string& edit : edits) listed += (listed.empty() ? "" : "; ") + edit;
        throw IntegrityError(model_json + " was edited after export: " + listed + " (what mrdl-export embedded in " +
                             artifact.path + "); restore it, or re-export to change a field (e.g. mrdl-export "
                             "--source-size)");
    }

    /// The embedded manifest must come from the same export as model.json and hold the precision
    /// model.json records for this file: catches another export's file or a renamed variant.
    /// Returns the embedded manifest's text.
    std::string check_identity(const VerifiedArtifact& artifact) const {
        const std::string& path = artifact.path;
        Ort::AllocatorWithDefaultOptions allocator;
        const Ort::ModelMetadata metadata = session_->GetModelMetadata();
        const Ort::AllocatedStringPtr text = metadata.LookupCustomMetadataMapAllocated(kEmbeddedKey, allocator);
        if (!text)
            throw IntegrityError(path + ": has no embedded manifest (ONNX metadata \"" + kEmbeddedKey +
                                 "\"), so it was not written by mrdl-export with model.json (" + kManifestFormat +
                                 "); re-export");
        const EmbeddedIdentity found = parse_embedded_manifest(text.get(), path + " (embedded manifest)");
        if (found.export_id != manifest_.export_id)
            throw IntegrityError(path + ": belongs to export " + found.export_id + ", but model.json is export " +
                                 manifest_.export_id +
                                 " (a file from another export?); use the model directory of one export as written");
        if (found.precision != artifact.record.precision)
            throw IntegrityError(path + ": its embedded manifest says " + found.precision +
                                 ", but model.json records the \"" + artifact.key + "\" artifact as " +
                                 artifact.record.precision + " (a renamed file?); re-export");
        return text.get();
    }

    /// The graph's inputs or outputs must be model.json's, in order: names, float32, non-batch dims.
    template <typename NameOf, typename TypeOf>
    static void check_signature(const std::string& path, const std::string& kind, const std::vector<TensorSpec>& specs,
                                size_t count, NameOf name_of, TypeOf type_of) {
        Ort::AllocatorWithDefaultOptions allocator;
        std::vector<std::string> graph, declared;
        bool same = count == specs.size();
        for (size_t i = 0; i < count; ++i) {
            const std::string name = name_of(i, allocator).get();
            const Ort::TypeInfo type = type_of(i);
            if (type.GetONNXType() != ONNX_TYPE_TENSOR) {
                graph.push_back(name + " (not a tensor)");
                same = false;
                continue;
            }
            const auto info = type.GetTensorTypeAndShapeInfo();
            const ONNXTensorElementDataType element = info.GetElementType();
            std::vector<int64_t> shape = info.GetShape();
            if (!shape.empty()) shape[0] = TensorSpec::kDynamic;  // any batch axis
            graph.push_back(describe(name, element_name(element), shape));
            same = same && name == specs[i].name && element == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT &&
                   shape == specs[i].shape;
        }
        for (const TensorSpec& spec : specs) declared.push_back(describe(spec.name, spec.dtype, spec.shape));
        if (!same)
            throw IntegrityError(path + ": graph " + kind + "s [" + join(graph) + "] differ from model.json's [" +
                                 join(declared) + "]; re-export, or use the model.json written with this file");
    }

    static std::string describe(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
        std::string dims;
        for (size_t d = 0; d < shape.size(); ++d)
            dims += (d ? ", " : "") + (d == 0 ? std::string("batch") : std::to_string(shape[d]));
        return "\"" + name + "\" " + dtype + " [" + dims + "]";
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
    std::string provider_;
    std::unique_ptr<Ort::Session> session_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                                  const SegmenterOptions& options) {
    return std::make_unique<OnnxRuntimeBackend>(artifact, manifest, options);
}

}  // namespace mrdl::detail
