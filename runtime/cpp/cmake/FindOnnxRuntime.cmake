# Find ONNX Runtime's C/C++ API.
#
# Looks in ONNXRUNTIME_ROOT (a CMake or environment variable) laid out as ONNX Runtime's release
# archives are: include/onnxruntime_cxx_api.h and lib/libonnxruntime.so. Also accepts the
# Debian/Ubuntu layout (include/onnxruntime/onnxruntime_cxx_api.h) and system paths.
#
# Defines OnnxRuntime_FOUND, OnnxRuntime_INCLUDE_DIR, OnnxRuntime_LIBRARY and the imported target
# onnxruntime::onnxruntime.
if(NOT ONNXRUNTIME_ROOT AND DEFINED ENV{ONNXRUNTIME_ROOT})
  set(ONNXRUNTIME_ROOT "$ENV{ONNXRUNTIME_ROOT}")
endif()

find_path(OnnxRuntime_INCLUDE_DIR onnxruntime_cxx_api.h
  HINTS "${ONNXRUNTIME_ROOT}/include"
  PATH_SUFFIXES onnxruntime onnxruntime/core/session)
find_library(OnnxRuntime_LIBRARY onnxruntime
  HINTS "${ONNXRUNTIME_ROOT}/lib" "${ONNXRUNTIME_ROOT}/lib64")

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OnnxRuntime
  REQUIRED_VARS OnnxRuntime_LIBRARY OnnxRuntime_INCLUDE_DIR
  REASON_FAILURE_MESSAGE "set ONNXRUNTIME_ROOT to a folder with include/onnxruntime_cxx_api.h and lib/libonnxruntime.so (runtime/cpp/scripts/fetch_onnxruntime.sh assembles one on Debian)")

if(OnnxRuntime_FOUND AND NOT TARGET onnxruntime::onnxruntime)
  add_library(onnxruntime::onnxruntime SHARED IMPORTED)
  set_target_properties(onnxruntime::onnxruntime PROPERTIES
    IMPORTED_LOCATION "${OnnxRuntime_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${OnnxRuntime_INCLUDE_DIR}")
endif()
mark_as_advanced(OnnxRuntime_INCLUDE_DIR OnnxRuntime_LIBRARY)
