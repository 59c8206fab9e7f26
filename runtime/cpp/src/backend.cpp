// Backend selection: which artifact of model.json each backend loads, verified before it is loaded.
#include "mrdl/backend.hpp"

#include "backends/backends.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/integrity.hpp"
#include "mrdl/threads.hpp"

namespace mrdl {
namespace {

/// The key of model.json's artifacts that `options` loads; BackendError for a precision the
/// backend does not run.
std::string artifact_key(const SegmenterOptions& options) {
    switch (options.backend) {
        case BackendKind::TensorRT: return "tensorrt";
        case BackendKind::OpenVINO:
            if (options.precision == "fp32" || options.precision == "bf16") return "fp32";  // bf16: no file of its own
            if (options.precision == "int8") return "int8";
            throw BackendError("openvino-cpu runs precisions fp32, bf16 and int8, not \"" + options.precision +
                               "\"; use backend onnxruntime for it");
        case BackendKind::OnnxRuntime:
            if (options.precision == "bf16")
                throw BackendError("precision bf16 runs on the openvino backend (openvino-cpu), not on ONNX Runtime: "
                                   "choose BackendKind::OpenVINO (mrdl_segment --backend openvino-cpu)");
            return options.precision;
    }
    return options.precision;
}

}  // namespace

void SegmenterOptions::validate() const { check_threads(intra_op_threads); }

std::vector<std::string> available_backends() {
    std::vector<std::string> built{"onnxruntime"};
#ifdef MRDL_WITH_TENSORRT
    built.push_back("tensorrt");
#endif
#ifdef MRDL_WITH_OPENVINO
    built.push_back("openvino");
#endif
    return built;
}

std::optional<BackendChoice> parse_backend_name(const std::string& name) {
    if (name == "onnxruntime" || name == "onnxruntime-cpu") return BackendChoice{BackendKind::OnnxRuntime, Device::CPU};
    if (name == "onnxruntime-cuda") return BackendChoice{BackendKind::OnnxRuntime, Device::CUDA};
    if (name == "onnxruntime-tensorrt") return BackendChoice{BackendKind::OnnxRuntime, Device::TensorRT};
    if (name == "tensorrt") return BackendChoice{BackendKind::TensorRT, Device::CPU};
    if (name == "openvino" || name == "openvino-cpu") return BackendChoice{BackendKind::OpenVINO, Device::CPU};
    return std::nullopt;
}

std::string backend_name(BackendKind backend, Device device) {
    if (backend == BackendKind::TensorRT) return "tensorrt";
    if (backend == BackendKind::OpenVINO) return "openvino-cpu";  // its only device
    return device == Device::CUDA ? "onnxruntime-cuda" : device == Device::TensorRT ? "onnxruntime-tensorrt"
                                                                                    : "onnxruntime-cpu";
}

std::unique_ptr<Backend> make_backend(const std::string& model_dir, const Manifest& manifest,
                                      const SegmenterOptions& options) {
    options.validate();
    const std::string key = artifact_key(options);
    const int threads = resolve_threads(options.intra_op_threads);
    if (manifest.artifacts.count(key) == 0) {
        std::string listed;
        for (const auto& item : manifest.artifacts) listed += (listed.empty() ? "" : ", ") + item.first;
        throw BackendError(model_dir + "/model.json lists no \"" + key + "\" artifact (it has: " + listed + ")" +
                           (key == "tensorrt" ? "; export with mrdl-export --trt on a machine with TensorRT" : ""));
    }
#ifndef MRDL_WITH_TENSORRT
    if (options.backend == BackendKind::TensorRT)
        throw BackendError("this build of the mrdl C++ runtime has no TensorRT backend (CMake did not find the "
                           "TensorRT SDK: NvInfer.h and libnvinfer); reconfigure with "
                           "-DTENSORRT_ROOT=/path/to/TensorRT");
#endif
    if (options.backend == BackendKind::OpenVINO) {
#ifdef MRDL_WITH_OPENVINO
        if (options.device != Device::CPU)
            throw BackendError("the openvino backend runs on the CPU only (openvino-cpu); use Device::CPU, or "
                               "onnxruntime-cuda / tensorrt for a GPU");
#else
        throw BackendError("this build of the mrdl C++ runtime has no OpenVINO backend (CMake did not find "
                           "OpenVINO's C++ runtime); pip install 'mrdl[openvino]' and reconfigure with "
                           "-DMRDL_OPENVINO=ON -DOpenVINO_DIR=<site-packages>/openvino/cmake");
#endif
    }
    VerifiedArtifact verified = read_verified_artifact(model_dir, manifest, key, options.verify_artifacts);
#ifdef MRDL_WITH_TENSORRT
    if (options.backend == BackendKind::TensorRT)
        return detail::make_tensorrt_backend(std::move(verified), manifest, options);
#endif
#ifdef MRDL_WITH_OPENVINO
    if (options.backend == BackendKind::OpenVINO)
        return detail::make_openvino_backend(std::move(verified), manifest, options, threads);
#endif
    return detail::make_onnxruntime_backend(std::move(verified), manifest, options, threads);
}

}  // namespace mrdl
