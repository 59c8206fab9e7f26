# ctest install_consumer (cmake -P): install the build into a fresh prefix, build the separate
# project tests/consumer against it with find_package(mrdl CONFIG REQUIRED), run it, and run the
# installed mrdl_segment, both with no LD_LIBRARY_PATH and no ONNXRUNTIME_ROOT in the environment.
# -D inputs: BUILD_DIR, PREFIX, CONSUMER_SRC, CONSUMER_BUILD, TEST_DATA, CXX_COMPILER, GENERATOR,
# LIBDIR (CMAKE_INSTALL_LIBDIR), WITH_SEGMENT (ON when mrdl_segment was built).
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
          "${LIBDIR}/cmake/mrdl/mrdlTargets.cmake" "include/mrdl/export.hpp" "include/mrdl/segmenter.hpp")
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "the install lacks ${f}")
  endif()
endforeach()
file(GLOB ort "${PREFIX}/${LIBDIR}/libonnxruntime.so*")
if(NOT ort)
  message(FATAL_ERROR "no libonnxruntime.so* installed in ${PREFIX}/${LIBDIR}")
endif()
file(GLOB lib "${PREFIX}/${LIBDIR}/libmrdl_runtime.so.*.*.*")
file(GLOB soname_link "${PREFIX}/${LIBDIR}/libmrdl_runtime.so.[0-9]")
if(NOT lib OR NOT soname_link)
  message(FATAL_ERROR "no versioned libmrdl_runtime.so.X.Y.Z with its libmrdl_runtime.so.X link in ${PREFIX}/${LIBDIR}")
endif()
file(READ_ELF "${lib}" RUNPATH runpath)
if(NOT runpath STREQUAL "$ORIGIN")
  message(FATAL_ERROR "${lib}: RUNPATH '${runpath}', expected $ORIGIN")
endif()

run("configure the consumer project" "${CMAKE_COMMAND}" -S "${CONSUMER_SRC}" -B "${CONSUMER_BUILD}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" -DCMAKE_BUILD_TYPE=Release)
run("build the consumer project" "${CMAKE_COMMAND}" --build "${CONSUMER_BUILD}")

file(READ "${TEST_DATA}/index.json" index)
string(JSON model_dir GET "${index}" segment model_dir)
string(JSON png GET "${index}" segment cases 0 png)
run("run the consumer" "${CONSUMER_BUILD}/mrdl_consumer" "${TEST_DATA}/${model_dir}")
message(STATUS "${run_output}")

if(WITH_SEGMENT)
  set(exe "${PREFIX}/bin/mrdl_segment")
  file(READ_ELF "${exe}" RUNPATH runpath)
  if(NOT runpath STREQUAL "$ORIGIN/../${LIBDIR}")
    message(FATAL_ERROR "${exe}: RUNPATH '${runpath}', expected $ORIGIN/../${LIBDIR}")
  endif()
  run("run the installed mrdl_segment" "${exe}" "${TEST_DATA}/${model_dir}" "${TEST_DATA}/${png}"
      "${CONSUMER_BUILD}/mask.png")
  if(NOT EXISTS "${CONSUMER_BUILD}/mask.png")
    message(FATAL_ERROR "the installed mrdl_segment wrote no mask")
  endif()
endif()
