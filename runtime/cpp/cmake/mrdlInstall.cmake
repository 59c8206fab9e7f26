# Install rules: `cmake --install` writes a package that another project uses with
#   find_package(mrdl CONFIG REQUIRED [COMPONENTS imageio])
#   target_link_libraries(app PRIVATE mrdl::runtime [mrdl::imageio])
#   set_target_properties(app PROPERTIES INSTALL_RPATH "${mrdl_LIBDIR}")  # the installed app finds them
# Layout (GNUInstallDirs): include/mrdl/*.hpp (+ the generated export.hpp, imageio_export.hpp),
# lib/libmrdl_runtime.so.*, lib/libmrdl_imageio.so.* (with MRDL_IMAGEIO), lib/libonnxruntime.so*
# (the ONNX Runtime the build linked, with MRDL_INSTALL_ONNXRUNTIME),
# lib/cmake/mrdl/{mrdlConfig,mrdlConfigVersion,mrdlTargets,mrdlImageioTargets}.cmake and
# bin/mrdl_segment. The libraries' RUNPATH is $ORIGIN and mrdl_segment's $ORIGIN/../lib, so the
# installed tree runs without LD_LIBRARY_PATH; mrdlConfig.cmake sets mrdl_LIBDIR (the installed
# lib folder, absolute) for an application's own INSTALL_RPATH.
include(CMakePackageConfigHelpers)
set(MRDL_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/mrdl" CACHE STRING
    "Where cmake --install puts mrdlConfig.cmake (relative to the prefix)")
mark_as_advanced(MRDL_INSTALL_CMAKEDIR)

install(TARGETS mrdl_runtime EXPORT mrdlTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/mrdl DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} PATTERN imageio.hpp EXCLUDE)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/include/mrdl/export.hpp" DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mrdl)
install(EXPORT mrdlTargets NAMESPACE mrdl:: DESTINATION ${MRDL_INSTALL_CMAKEDIR})
if(MRDL_IMAGEIO)  # the component imageio: its own export set, loaded by find_package(mrdl COMPONENTS imageio)
  install(TARGETS mrdl_imageio EXPORT mrdlImageioTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Development
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(FILES include/mrdl/imageio.hpp "${CMAKE_CURRENT_BINARY_DIR}/include/mrdl/imageio_export.hpp"
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mrdl)
  install(EXPORT mrdlImageioTargets NAMESPACE mrdl:: DESTINATION ${MRDL_INSTALL_CMAKEDIR})
endif()

# ONNX Runtime: the libonnxruntime.so* files beside the library the build linked (the real file
# and its symlinks, plus any libonnxruntime_providers_*.so), so the installed tree is self-contained.
# mrdlConfig.cmake points the imported target onnxruntime::onnxruntime at the installed copy. With
# MRDL_INSTALL_ONNXRUNTIME=OFF it instead runs the installed FindOnnxRuntime.cmake with the
# ONNXRUNTIME_ROOT recorded here (a consumer may set its own ONNXRUNTIME_ROOT, or define
# onnxruntime::onnxruntime before find_package(mrdl)).
get_filename_component(_mrdl_ort_name "${OnnxRuntime_LIBRARY}" NAME)
set(MRDL_ORT_INSTALLED "${CMAKE_INSTALL_LIBDIR}/${_mrdl_ort_name}")
if(MRDL_INSTALL_ONNXRUNTIME)
  get_filename_component(_mrdl_ort_real "${OnnxRuntime_LIBRARY}" REALPATH)
  get_filename_component(_mrdl_ort_dir "${_mrdl_ort_real}" DIRECTORY)
  file(GLOB _mrdl_ort_files "${_mrdl_ort_dir}/libonnxruntime.so*" "${_mrdl_ort_dir}/libonnxruntime_providers_*.so")
  get_filename_component(_mrdl_ort_link_dir "${OnnxRuntime_LIBRARY}" DIRECTORY)
  if(NOT _mrdl_ort_link_dir STREQUAL _mrdl_ort_dir)
    # e.g. ONNXRUNTIME_ROOT/lib/libonnxruntime.so -> /usr/lib/.../libonnxruntime.so.1.21.0
    file(GLOB _mrdl_ort_links "${_mrdl_ort_link_dir}/libonnxruntime.so*")
    foreach(_f IN LISTS _mrdl_ort_links)
      get_filename_component(_n "${_f}" NAME)
      if(NOT EXISTS "${_mrdl_ort_dir}/${_n}")
        list(APPEND _mrdl_ort_files "${_f}")  # a name the real folder lacks: installed as a copy
      endif()
    endforeach()
  endif()
  foreach(_f IN LISTS _mrdl_ort_files)
    if(IS_SYMLINK "${_f}")
      file(READ_SYMLINK "${_f}" _target)
      if(IS_ABSOLUTE "${_target}")  # an absolute link would point outside the installed tree
        get_filename_component(_n "${_f}" NAME)
        get_filename_component(_real "${_f}" REALPATH)
        install(FILES "${_real}" DESTINATION ${CMAKE_INSTALL_LIBDIR} RENAME "${_n}")
        continue()
      endif()
    endif()
    install(FILES "${_f}" DESTINATION ${CMAKE_INSTALL_LIBDIR})
  endforeach()
else()
  install(FILES "${CMAKE_CURRENT_SOURCE_DIR}/cmake/FindOnnxRuntime.cmake" DESTINATION ${MRDL_INSTALL_CMAKEDIR})
  # The installed library then looks for libonnxruntime.so.1 where the build found it, too.
  get_filename_component(_mrdl_ort_dir "${OnnxRuntime_LIBRARY}" DIRECTORY)
  set_property(TARGET mrdl_runtime APPEND PROPERTY INSTALL_RPATH "${_mrdl_ort_dir}")
endif()

configure_package_config_file("${CMAKE_CURRENT_SOURCE_DIR}/cmake/mrdlConfig.cmake.in"
  "${CMAKE_CURRENT_BINARY_DIR}/mrdlConfig.cmake"
  INSTALL_DESTINATION ${MRDL_INSTALL_CMAKEDIR}
  PATH_VARS MRDL_ORT_INSTALLED CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/mrdlConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/mrdlConfig.cmake" "${CMAKE_CURRENT_BINARY_DIR}/mrdlConfigVersion.cmake"
  DESTINATION ${MRDL_INSTALL_CMAKEDIR})
