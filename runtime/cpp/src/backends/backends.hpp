// Internal: constructors of the compiled-in backends.
#pragma once

#include <memory>
#include <string>

#include "mrdl/backend.hpp"

namespace mrdl::detail {

std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& path, const Manifest& manifest,
                                                  const SegmenterOptions& options);

#ifdef MRDL_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const std::string& path, const Manifest& manifest,
                                               const SegmenterOptions& options);
#endif

}  // namespace mrdl::detail
