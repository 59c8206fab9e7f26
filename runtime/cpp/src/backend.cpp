// Backend selection: which artifact of model.json each backend loads, verified before it is loaded.
#include "mrdl/backend.hpp"

#include "backends/backends.hpp"
#include "mrdl/errors.hpp"
#include "mrdl/integrity.hpp"

namespace mrdl {

std::vector<std::string> available_backends() {
#ifdef MRDL_WITH_TENSORRT
    return {"onnxruntime", "tensorrt"};
#else
    return {"onnxruntime"};
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& model_dir, const Manifest& manifest,
                                      const SegmenterOptions& options) {
    const std::string key = options.backend == BackendKind::TensorRT ? "tensorrt" : options.precision;
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
    VerifiedArtifact verified = read_verified_artifact(model_dir, manifest, key, options.verify_artifacts);
#ifdef MRDL_WITH_TENSORRT
    if (options.backend == BackendKind::TensorRT)
        return detail::make_tensorrt_backend(std::move(verified), manifest, options);
#endif
    return detail::make_onnxruntime_backend(std::move(verified), manifest, options);
}

}  // namespace mrdl
