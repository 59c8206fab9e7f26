// Inference backends: something that maps the model's input tensors to its probabilities.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mrdl/image.hpp"
#include "mrdl/manifest.hpp"

namespace mrdl {

/// Which engine runs the model.
enum class BackendKind {
    OnnxRuntime,  // model{,.int8,.fp16}.onnx through ONNX Runtime's C++ API
    TensorRT,     // model.engine through the TensorRT runtime (built only where the SDK is found)
    OpenVINO,     // model{,.int8}.onnx through OpenVINO's CPU plugin (built only where OpenVINO is found)
};

/// Where ONNX Runtime runs the model (ignored by the TensorRT backend, which always uses a GPU; the
/// OpenVINO backend runs on the CPU only).
enum class Device {
    CPU,
    CUDA,      // ONNX Runtime's CUDA execution provider
    TensorRT,  // ONNX Runtime's TensorRT execution provider (CUDA as fallback)
};

/// OpenVINO's PERFORMANCE_HINT: Latency (one call at a time uses every thread) or Throughput
/// (several streams for concurrent calls). Ignored by the other backends.
enum class PerformanceHint {
    Latency,
    Throughput,
};

/// How a Segmenter loads its model.
struct MRDL_API SegmenterOptions {
    BackendKind backend = BackendKind::OnnxRuntime;
    Device device = Device::CPU;
    /// ONNX Runtime: a key of manifest.artifacts ("fp32", "int8", "fp16"). OpenVINO: "fp32",
    /// "bf16" (the fp32 file computed in bfloat16; CPUs with AVX512_BF16 or AMX only) or "int8".
    std::string precision = "fp32";
    int device_id = 0;               // GPU ordinal for CUDA / TensorRT
    /// CPU threads one model run uses (ONNX Runtime's intra-op threads, OpenVINO's
    /// INFERENCE_NUM_THREADS; the pool belongs to the loaded model, shared by concurrent calls).
    /// 0, the default, is one per physical core available to the process (default_threads() in
    /// mrdl/threads.hpp: affinity mask, SMT siblings once, cgroup quota; the Python runtime's rule);
    /// 1 runs each call on the calling thread alone, the usual choice when many threads share one
    /// Segmenter. At most kMaxThreads (1024, mrdl/threads.hpp). Ignored by the TensorRT backend.
    /// mrdl_segment --threads N.
    int intra_op_threads = 0;
    /// OpenVINO only: mrdl_segment --hint latency|throughput.
    PerformanceHint hint = PerformanceHint::Latency;
    /// Check the artifact's SHA-256 against model.json before loading it (about 4 s of CPU per
    /// GB). false skips only the hash, not the location, size, embedded-manifest and graph checks,
    /// and prints a warning once per process: use it only for huge engines whose directory you trust.
    bool verify_artifacts = true;
    /// Segmenter::segment refuses images with more pixels (height * width) than this.
    size_t max_pixels = kDefaultMaxPixels;
    /// false: Segmentation::probabilities stays empty and the mask is computed in row strips, so the
    /// n_classes x H x W float probabilities of a large image never exist (mrdl_segment sets it).
    bool with_probabilities = true;

    /// Throw InputError naming the accepted range when a field is out of it (intra_op_threads
    /// outside [0, kMaxThreads]); Segmenter and make_backend call it before anything is loaded.
    void validate() const;
};

/// A loaded model. `run` takes the image batch (B, 3, H, W) and, under fusion "addition", the
/// text features (B, 77, D); it returns the probabilities (B, n_classes, H, W), row-major.
/// `run` may be called from several threads at once (Segmenter relies on it): ONNX Runtime's
/// Session::Run is safe to call concurrently; the TensorRT backend serialises its calls.
class MRDL_API Backend {
public:
    virtual ~Backend() = default;
    virtual std::vector<float> run(const std::vector<float>& images, const std::vector<float>* text_features,
                                   int64_t batch) = 0;
    /// A short description, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider; threads 2)" or
    /// "openvino 2026.4.1 (CPU; precision bf16, threads 2, hint LATENCY)" (what the engine reports).
    virtual std::string describe() const = 0;
};

/// The backends compiled into this build, e.g. {"onnxruntime", "tensorrt", "openvino"}.
MRDL_API std::vector<std::string> available_backends();

/// A backend of the Python runtime's registry as the C++ pair.
struct MRDL_API BackendChoice {
    BackendKind backend = BackendKind::OnnxRuntime;
    Device device = Device::CPU;
};

/// The Python registry name ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
/// "tensorrt", "openvino-cpu") or the C++ kind alone ("onnxruntime", "tensorrt", "openvino", on
/// the CPU unless it has no CPU device) as a BackendChoice; nullopt for any other name.
MRDL_API std::optional<BackendChoice> parse_backend_name(const std::string& name);

/// The Python registry name of a pair, e.g. "openvino-cpu" (one name for both runtimes in messages).
MRDL_API std::string backend_name(BackendKind backend, Device device);

/// Verify (read_verified_artifact) and load the artifact for `options` from `model_dir`; throws
/// IntegrityError when the file is not the one model.json records, BackendError when the artifact
/// is not listed or the backend cannot load it.
MRDL_API std::unique_ptr<Backend> make_backend(const std::string& model_dir, const Manifest& manifest,
                                      const SegmenterOptions& options);

}  // namespace mrdl
