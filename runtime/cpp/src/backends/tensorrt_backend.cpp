// TensorRT backend (compiled only where CMake finds the TensorRT SDK and the CUDA runtime):
// deserialises model.engine from the bytes read_verified_artifact checked (location, size,
// SHA-256), checks the TensorRT version recorded in model.json (major.minor) against the linked
// library, and runs the engine on a CUDA stream with device buffers sized for max_batch.
#include "backends.hpp"

#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "mrdl/errors.hpp"

namespace mrdl::detail {
namespace {

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << message << "\n";
    }
};

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw BackendError(what + " failed: " + cudaGetErrorString(status));
}

std::string linked_version() {
    // getInferLibVersion() encodes major * 10000 + minor * 100 + patch since TensorRT 10.
    const int32_t v = getInferLibVersion();
    return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

/// "10.3.0.26" -> "10.3".
std::string major_minor(const std::string& version) {
    std::istringstream parts(version);
    std::string part, out;
    for (int i = 0; i < 2 && std::getline(parts, part, '.'); ++i) out += (i ? "." : "") + part;
    return out;
}

size_t volume(const std::vector<int64_t>& shape, int64_t batch) {
    size_t n = static_cast<size_t>(batch);
    for (size_t d = 1; d < shape.size(); ++d) n *= static_cast<size_t>(shape[d]);
    return n;
}

class TensorRTBackend final : public Backend {
public:
    TensorRTBackend(const VerifiedArtifact& artifact, const Manifest& manifest, const SegmenterOptions& options)
        : manifest_(manifest) {
        const std::string& path = artifact.path;
        const std::vector<char>& blob = artifact.bytes;
        // Engines are tied to the TensorRT that built them; like mrdl_runtime, compare major.minor.
        auto recorded = manifest.versions.find("tensorrt");
        if (recorded == manifest.versions.end())
            std::cerr << "mrdl: model.json records no versions.tensorrt; relying on TensorRT to reject a foreign "
                         "engine\n";
        else if (major_minor(recorded->second) != major_minor(linked_version()))
            throw BackendError(path + " was built with TensorRT " + recorded->second + " but this program links " +
                               linked_version() + "; rebuild the engine with this TensorRT (mrdl-export --trt)");
        check_cuda(cudaSetDevice(options.device_id), "cudaSetDevice(" + std::to_string(options.device_id) + ")");
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw BackendError("createInferRuntime failed");
        engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine_)
            throw BackendError("TensorRT cannot deserialise " + path +
                               " (built for another GPU or TensorRT build?); rebuild it on this machine");
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw BackendError("TensorRT cannot create an execution context for " + path);
        check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");

        for (const TensorSpec& spec : manifest.inputs) bind(path, spec, nvinfer1::TensorIOMode::kINPUT);
        bind(path, manifest.outputs.front(), nvinfer1::TensorIOMode::kOUTPUT);
    }

    ~TensorRTBackend() override {
        for (Binding& binding : bindings_) cudaFree(binding.device);
        if (stream_ != nullptr) cudaStreamDestroy(stream_);
    }

    std::vector<float> run(const std::vector<float>& images, const std::vector<float>* text_features,
                           int64_t batch) override {
        const std::lock_guard<std::mutex> lock(run_mutex_);  // one context, one stream, one set of buffers
        for (Binding& binding : bindings_) {
            nvinfer1::Dims dims{};
            dims.nbDims = static_cast<int32_t>(binding.spec.shape.size());
            for (int d = 0; d < dims.nbDims; ++d) dims.d[d] = d == 0 ? batch : binding.spec.shape[d];
            const size_t bytes = volume(binding.spec.shape, batch) * sizeof(float);
            if (binding.input) {
                const std::vector<float>& host = binding.spec.name == "image" ? images : *text_features;
                if (!context_->setInputShape(binding.spec.name.c_str(), dims))
                    throw BackendError("TensorRT rejected batch " + std::to_string(batch) + " for input \"" +
                                       binding.spec.name + "\" (outside the engine's optimisation profile)");
                check_cuda(cudaMemcpyAsync(binding.device, host.data(), bytes, cudaMemcpyHostToDevice, stream_),
                           "copying \"" + binding.spec.name + "\" to the GPU");
            }
            context_->setTensorAddress(binding.spec.name.c_str(), binding.device);
        }
        if (!context_->enqueueV3(stream_)) throw BackendError("TensorRT enqueueV3 failed");
        const Binding& output = bindings_.back();
        std::vector<float> result(volume(output.spec.shape, batch));
        check_cuda(cudaMemcpyAsync(result.data(), output.device, result.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                   stream_),
                   "copying the probabilities from the GPU");
        check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        return result;
    }

    std::string describe() const override { return "tensorrt " + linked_version(); }

private:
    struct Binding {
        TensorSpec spec;
        bool input = false;
        void* device = nullptr;
    };

    void bind(const std::string& path, const TensorSpec& spec, nvinfer1::TensorIOMode mode) {
        const char* name = spec.name.c_str();
        if (engine_->getTensorIOMode(name) != mode)
            throw BackendError(path + " has no " + (mode == nvinfer1::TensorIOMode::kINPUT ? "input" : "output") +
                               " tensor \"" + spec.name + "\" as model.json declares");
        if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
            throw BackendError(path + ": tensor \"" + spec.name + "\" must be float32 as model.json declares");
        Binding binding{spec, mode == nvinfer1::TensorIOMode::kINPUT, nullptr};
        check_cuda(cudaMalloc(&binding.device, volume(spec.shape, manifest_.max_batch) * sizeof(float)),
                   "cudaMalloc for \"" + spec.name + "\"");
        bindings_.push_back(binding);
    }

    Manifest manifest_;
    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::mutex run_mutex_;
    std::vector<Binding> bindings_;  // inputs in manifest order, then the output
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                               const SegmenterOptions& options) {
    return std::make_unique<TensorRTBackend>(artifact, manifest, options);
}

}  // namespace mrdl::detail
