# ctest install_consumer (cmake -P): install the build into a fresh prefix; build the separate project
# tests/consumer against it with find_package(mrdl CONFIG REQUIRED COMPONENTS imageio), install it into
# a second prefix and run the installed program on a PNG and a TIFF; run the installed mrdl_segment.
# All with no LD_LIBRARY_PATH and no ONNXRUNTIME_ROOT in the environment: the installed programs find
# libmrdl_runtime.so.0 and libmrdl_imageio.so.0 through their RUNPATH alone.
# -D inputs: BUILD_DIR, PREFIX, CONSUMER_SRC, CONSUMER_BUILD, TEST_DATA, CXX_COMPILER, GENERATOR,
# LIBDIR (CMAKE_INSTALL_LIBDIR), WITH_SEGMENT (ON when mrdl_segment was built), OPENVINO_LIBDIR (the
# folder of the libopenvino.so.* the build linked; empty without the OpenVINO backend).
cmake_minimum_required(VERSION 3.19)  # string(JSON)

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${ARGN}\n${out}")
  endif()
  message(STATUS "${what}: ok")
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

unset(ENV{LD_LIBRARY_PATH})
unset(ENV{ONNXRUNTIME_ROOT})
file(REMOVE_RECURSE "${PREFIX}" "${CONSUMER_BUILD}")

run("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}")
foreach(f "${LIBDIR}/cmake/mrdl/mrdlConfig.cmake" "${LIBDIR}/cmake/mrdl/mrdlConfigVersion.cmake"
          "${LIBDIR}/cmake/mrdl/mrdlTargets.cmake" "${LIBDIR}/cmake/mrdl/mrdlImageioTargets.cmake"
          "include/mrdl/export.hpp" "include/mrdl/segmenter.hpp" "include/mrdl/imageio.hpp"
          "include/mrdl/imageio_export.hpp")
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "the install lacks ${f}")
  endif()
endforeach()
file(GLOB ort "${PREFIX}/${LIBDIR}/libonnxruntime.so*")
if(NOT ort)
  message(FATAL_ERROR "no libonnxruntime.so* installed in ${PREFIX}/${LIBDIR}")
endif()
foreach(name mrdl_runtime mrdl_imageio)
  file(GLOB lib "${PREFIX}/${LIBDIR}/lib${name}.so.*.*.*")
  file(GLOB soname_link "${PREFIX}/${LIBDIR}/lib${name}.so.[0-9]")
  if(NOT lib OR NOT soname_link)
    message(FATAL_ERROR "no versioned lib${name}.so.X.Y.Z with its lib${name}.so.X link in ${PREFIX}/${LIBDIR}")
  endif()
  unset(runpath)  # READ_ELF leaves it unchanged where there is none
  file(READ_ELF "${lib}" RUNPATH runpath)
  set(expected "$ORIGIN")
  if(name STREQUAL "mrdl_runtime" AND OPENVINO_LIBDIR)  # OpenVINO stays where the build found it
    list(APPEND expected "${OPENVINO_LIBDIR}")
  endif()
  if(NOT runpath STREQUAL expected)
    message(FATAL_ERROR "${lib}: RUNPATH '${runpath}', expected ${expected}")
  endif()
endforeach()

# A component the package does not have is refused at configure time, naming the ones it has.
set(probe "${CONSUMER_BUILD}-probe")
file(WRITE "${probe}/CMakeLists.txt" "cmake_minimum_required(VERSION 3.18)\nproject(probe NONE)\n"
                                     "find_package(mrdl CONFIG REQUIRED COMPONENTS imageio no_such_part)\n")
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${probe}" -B "${probe}/build" "-DCMAKE_PREFIX_PATH=${PREFIX}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
string(REGEX REPLACE "[ \t\r\n]+" " " out "${out}")  # CMake wraps the message's lines
if(rc EQUAL 0 OR NOT out MATCHES "has no component 'no_such_part' \\(its components: runtime, imageio\\)")
  message(FATAL_ERROR "find_package(mrdl COMPONENTS no_such_part) was not refused by name (${rc}):\n${out}")
endif()
file(REMOVE_RECURSE "${probe}")

set(app_prefix "${CONSUMER_BUILD}-prefix")
file(REMOVE_RECURSE "${app_prefix}")
run("configure the consumer project" "${CMAKE_COMMAND}" -S "${CONSUMER_SRC}" -B "${CONSUMER_BUILD}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DCMAKE_INSTALL_PREFIX=${app_prefix}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -DCMAKE_BUILD_TYPE=Release)
run("build the consumer project" "${CMAKE_COMMAND}" --build "${CONSUMER_BUILD}")
run("install the consumer project" "${CMAKE_COMMAND}" --install "${CONSUMER_BUILD}")
set(consumer "${app_prefix}/bin/mrdl_consumer")
unset(runpath)  # READ_ELF leaves it unchanged where there is none
file(READ_ELF "${consumer}" RUNPATH runpath)
if(NOT runpath STREQUAL "${PREFIX}/${LIBDIR}")
  message(FATAL_ERROR "${consumer}: RUNPATH '${runpath}', expected mrdl_LIBDIR, ${PREFIX}/${LIBDIR}")
endif()

file(READ "${TEST_DATA}/index.json" index)
string(JSON model_dir GET "${index}" segment model_dir)
string(JSON png GET "${index}" segment cases 0 png)
string(JSON tiff GET "${index}" segment cases 0 tiff)
run("run the installed consumer on a PNG" "${consumer}" "${TEST_DATA}/${model_dir}" "${TEST_DATA}/${png}"
    "${CONSUMER_BUILD}/mask_png.png")
message(STATUS "${run_output}")
run("run the installed consumer on a TIFF" "${consumer}" "${TEST_DATA}/${model_dir}" "${TEST_DATA}/${tiff}"
    "${CONSUMER_BUILD}/mask_tiff.png")
file(SHA256 "${CONSUMER_BUILD}/mask_png.png" from_png)
file(SHA256 "${CONSUMER_BUILD}/mask_tiff.png" from_tiff)
if(NOT from_png STREQUAL from_tiff)
  message(FATAL_ERROR "the consumer's masks from ${png} and ${tiff} (the same pixels) differ")
endif()

if(WITH_SEGMENT)
  set(exe "${PREFIX}/bin/mrdl_segment")
  unset(runpath)  # READ_ELF leaves it unchanged where there is none
  file(READ_ELF "${exe}" RUNPATH runpath)
  if(NOT runpath STREQUAL "$ORIGIN/../${LIBDIR}")
    message(FATAL_ERROR "${exe}: RUNPATH '${runpath}', expected $ORIGIN/../${LIBDIR}")
  endif()
  run("run the installed mrdl_segment" "${exe}" "${TEST_DATA}/${model_dir}" "${TEST_DATA}/${png}"
      "${CONSUMER_BUILD}/mask.png")
  # test_example checks mrdl_segment's mask against the Python runtime's; the consumer's must be the same file.
  file(SHA256 "${CONSUMER_BUILD}/mask.png" from_segment)
  if(NOT from_segment STREQUAL from_png)
    message(FATAL_ERROR "the installed consumer's mask differs from the installed mrdl_segment's")
  endif()
  if(OPENVINO_LIBDIR)  # test_openvino checks its masks; here: the installed tree loads OpenVINO
    run("run the installed mrdl_segment on OpenVINO" "${exe}" "${TEST_DATA}/${model_dir}" "${TEST_DATA}/${png}"
        "${CONSUMER_BUILD}/mask_openvino.png" --backend openvino-cpu)
    if(NOT run_output MATCHES "\\(openvino [0-9.]+ \\(CPU; precision f32")
      message(FATAL_ERROR "the installed mrdl_segment did not run on OpenVINO: ${run_output}")
    endif()
  endif()
endif()
