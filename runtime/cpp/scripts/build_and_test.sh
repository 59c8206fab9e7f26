#!/usr/bin/env bash
# Build the C++ runtime and run its ctest suite: what `make test-cpp` runs.
#
#   runtime/cpp/scripts/build_and_test.sh [PYTHON]
#
# PYTHON (default: the repo's .venv) provides onnxruntime's library for fetch_onnxruntime.sh and
# runs tests/cpp/make_test_data.py, which writes the reference data the tests compare against with
# the Python runtime (it exports a model with torch, so it lives with the repo's tests, not here).
# Where PYTHON has the openvino wheel (the `test` extra installs it), its C++ runtime is passed as
# OpenVINO_DIR, so the OpenVINO backend and its tests are built (MRDL_OPENVINO=AUTO).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cpp_root="$(dirname "$here")"
repo="$(cd "$cpp_root/../.." && pwd)"
python="${1:-$repo/.venv/bin/python}"
[ -e "$python" ] || { echo "build_and_test: no Python at $python (run make install first)" >&2; exit 1; }
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, venv symlink kept
build="$cpp_root/build"

ort_root="$("$here/fetch_onnxruntime.sh" "$python" | tail -n1)"
openvino=()
ov_dir="$("$python" -c 'import os, openvino; print(os.path.join(os.path.dirname(openvino.__file__), "cmake"))' \
  2>/dev/null || true)"
if [ -n "$ov_dir" ] && [ -f "$ov_dir/OpenVINOConfig.cmake" ]; then
  openvino=(-DOpenVINO_DIR="$ov_dir")
else
  echo "build_and_test: $python has no openvino wheel: the C++ OpenVINO backend is not built" >&2
fi
cmake -S "$cpp_root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DONNXRUNTIME_ROOT="$ort_root" -DMRDL_PYTHON="$python" \
  -DMRDL_TEST_DATA_SCRIPT="$repo/tests/cpp/make_test_data.py" "${openvino[@]}"
cmake --build "$build" -j2
cd "$build"
ctest --output-on-failure
