// Inference backends: something that maps the model's input tensors to its probabilities.
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mrdl/image.hpp"
#include "mrdl/manifest.hpp"

namespace mrdl {

/// Which engine runs the model.
enum class BackendKind {
    OnnxRuntime,  // model{,.int8,.fp16}.onnx through ONNX Runtime's C++ API
    TensorRT,     // model.engine through the TensorRT runtime (built only where the SDK is found)
};

/// Where ONNX Runtime runs the model (ignored by the TensorRT backend, which always uses a GPU).
enum class Device {
    CPU,
    CUDA,      // ONNX Runtime's CUDA execution provider
    TensorRT,  // ONNX Runtime's TensorRT execution provider (CUDA as fallback)
};

/// How a Segmenter loads its model.
struct MRDL_API SegmenterOptions {
    BackendKind backend = BackendKind::OnnxRuntime;
    Device device = Device::CPU;
    std::string precision = "fp32";  // a key of manifest.artifacts: "fp32", "int8", "fp16"
    int device_id = 0;               // GPU ordinal for CUDA / TensorRT
    /// ONNX Runtime's intra-op threads: how many CPU threads one model run uses (its thread pool
    /// belongs to the session, shared by concurrent calls). 0 lets ONNX Runtime choose (one per
    /// physical core); 1 runs each call on the calling thread alone, the usual choice when many
    /// threads share one Segmenter. Ignored by the TensorRT backend. mrdl_segment --threads N.
    int intra_op_threads = 0;
    /// Check the artifact's SHA-256 against model.json before loading it (about 4 s of CPU per
    /// GB). false skips only the hash, not the location, size, embedded-manifest and graph checks,
    /// and prints a warning once per process: use it only for huge engines whose directory you trust.
    bool verify_artifacts = true;
    /// Segmenter::segment refuses images with more pixels (height * width) than this.
    size_t max_pixels = kDefaultMaxPixels;
    /// false: Segmentation::probabilities stays empty and the mask is computed in row strips, so the
    /// n_classes x H x W float probabilities of a large image never exist (mrdl_segment sets it).
    bool with_probabilities = true;
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
    /// A short description, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)".
    virtual std::string describe() const = 0;
};

/// The backends compiled into this build, e.g. {"onnxruntime", "tensorrt"}.
MRDL_API std::vector<std::string> available_backends();

/// Verify (read_verified_artifact) and load the artifact for `options` from `model_dir`; throws
/// IntegrityError when the file is not the one model.json records, BackendError when the artifact
/// is not listed or the backend cannot load it.
MRDL_API std::unique_ptr<Backend> make_backend(const std::string& model_dir, const Manifest& manifest,
                                      const SegmenterOptions& options);

}  // namespace mrdl
