// Backend selection: which artifact of model.json each backend loads.
#include "mrdl/backend.hpp"

#include <filesystem>

#include "backends/backends.hpp"
#include "mrdl/errors.hpp"

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
    auto artifact = manifest.artifacts.find(key);
    if (artifact == manifest.artifacts.end()) {
        std::string listed;
        for (const auto& item : manifest.artifacts) listed += (listed.empty() ? "" : ", ") + item.first;
        throw BackendError(model_dir + "/model.json lists no \"" + key + "\" artifact (it has: " + listed + ")" +
                           (key == "tensorrt" ? "; export with mrdl-export --trt on a machine with TensorRT" : ""));
    }
    const std::string path = (std::filesystem::path(model_dir) / artifact->second).string();
    if (!std::filesystem::is_regular_file(path))
        throw BackendError(path + " is listed in model.json but does not exist");
    if (options.backend == BackendKind::OnnxRuntime) return detail::make_onnxruntime_backend(path, manifest, options);
#ifdef MRDL_WITH_TENSORRT
    return detail::make_tensorrt_backend(path, manifest, options);
#else
    throw BackendError("this build of the mrdl C++ runtime has no TensorRT backend (CMake did not find the TensorRT "
                       "SDK: NvInfer.h and libnvinfer); reconfigure with -DTENSORRT_ROOT=/path/to/TensorRT");
#endif
}

}  // namespace mrdl
