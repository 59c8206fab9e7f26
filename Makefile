# One entry point for people and CI. `make test` creates .venv when absent, installs what the
# tests need and runs them; `make demo` runs the whole toolchain on the built-in synthetic data.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mrdl-installed
# torch 2.14.1 + torchvision 0.29.1 are the pair that import together on these machines
# (PyPI's torchvision breaks beside the local torch 2.13.0 CPU wheel).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: test test-py test-cpp demo install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no test; that is not a failure of the suite.
test-py: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# The C++ runtime: installs its Debian build dependencies when missing (as root), assembles ONNX
# Runtime, builds runtime/cpp and runs its ctest suite against the Python runtime.
test-cpp: $(STAMP)
	runtime/cpp/scripts/build_and_test.sh $(PY)

test: test-py test-cpp

demo: $(STAMP)
	$(VENV)/bin/mrdl demo $(if $(DATA),--data $(DATA),)

clean:
	rm -rf build dist *.egg-info runtime/cpp/build
