// Internal: constructors of the compiled-in backends. Each takes an artifact whose location, size
// and (unless the user turned it off) SHA-256 were already checked against model.json, and the
// CPU thread count already resolved (mrdl/threads.hpp: 0 became the physical cores available).
#pragma once

#include <memory>
#include <string>

#include "mrdl/backend.hpp"
#include "mrdl/integrity.hpp"

namespace mrdl::detail {

/// Also checks the ONNX file's embedded manifest (export_id, precision) and its graph's inputs and
/// outputs (names, element types, non-batch dims) against `manifest`; throws IntegrityError.
std::unique_ptr<Backend> make_onnxruntime_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                                  const SegmenterOptions& options, int threads);

#ifdef MRDL_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                               const SegmenterOptions& options);
#endif

#ifdef MRDL_WITH_OPENVINO
/// OpenVINO's CPU plugin at options.precision ("fp32", "bf16" on the fp32 file, "int8"), compiled per
/// static batch size; the same embedded-manifest and graph checks as ONNX Runtime's.
std::unique_ptr<Backend> make_openvino_backend(VerifiedArtifact artifact, const Manifest& manifest,
                                               const SegmenterOptions& options, int threads);
#endif

}  // namespace mrdl::detail
