# One entry point for people and CI. `make test` creates .venv when absent, installs what the
# tests need and runs them; `make demo` runs the whole toolchain on the built-in synthetic data.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mrdl-installed
# `mrdl serve` (PyTriton) runs the model inside tritonserver's Python backend, whose stub embeds the
# serving Python's own shared libpython (mrdl serve points it there): .venv is made from Debian's
# /usr/bin/python3.11 (built with --enable-shared) when it exists, else from python3, with a note
# when that one has no shared libpython (serving and its tests cannot run there; they skip).
# Override with `make install BASE_PYTHON=/path/to/python3`.
SERVE_PYTHON ?= /usr/bin/python3.11
HAS_SHARED_LIBPYTHON = -c 'import sys, sysconfig, venv, ensurepip; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)'
BASE_PYTHON ?= $(shell $(SERVE_PYTHON) $(HAS_SHARED_LIBPYTHON) >/dev/null 2>&1 && echo $(SERVE_PYTHON) || echo python3)
NO_SERVING_NOTE = note: $(VENV) uses a Python without a shared libpython: mrdl serve and the Triton serving tests \
	cannot run there (they skip). Rebuild it from one that has it: rm -rf $(VENV) && make install BASE_PYTHON=/usr/bin/python3.11
# torch 2.14.1 + torchvision 0.29.1 are the pair tested together (on a 2-core AMD EPYC VM with Debian 12,
# PyPI's torchvision broke beside the local torch 2.13.0 CPU wheel).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: test test-py test-cpp demo install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	@$(PY) $(HAS_SHARED_LIBPYTHON) || echo "$(NO_SERVING_NOTE)"
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no test; that is not a failure of the suite.
test-py: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# The C++ runtime: installs its Debian build dependencies when missing (as root), assembles ONNX
# Runtime, builds runtime/cpp (with its OpenVINO backend from the openvino wheel the `test` extra
# installs) and runs its ctest suite against the Python runtime.
test-cpp: $(STAMP)
	runtime/cpp/scripts/build_and_test.sh $(PY)

test: test-py test-cpp

demo: $(STAMP)
	$(VENV)/bin/mrdl demo $(if $(DATA),--data $(DATA),)

clean:
	rm -rf build dist *.egg-info runtime/cpp/build
