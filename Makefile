# `make demo` and `make test` both create (once) and reuse the local .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo

.PHONY: demo test test-fast lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -qq -e '.[test]'
	$(BIN)/python -m pip install --disable-pip-version-check -qq --no-deps -r requirements-no-deps.txt
	touch $(STAMP)

# Models and sample are made once: remaking them would touch every file and make the pool see
# changed sources. `make clean` starts the demo over.
# The AST is the newest tiny model: a .demo built before it gets every model made again.
$(DEMO)/models/ast/config.json: | $(STAMP)
	$(BIN)/python run_pipeline.py tiny-models --out $(DEMO)/models

$(DEMO)/sample/.complete: | $(STAMP)
	$(BIN)/python run_pipeline.py sample-data --out $(DEMO)/sample
	touch $@

demo: $(STAMP) $(DEMO)/models/ast/config.json $(DEMO)/sample/.complete
	$(BIN)/python run_pipeline.py pool --config configs/demo.yaml
	$(BIN)/python run_pipeline.py generate --config configs/demo.yaml
	$(BIN)/python run_pipeline.py sonify --config configs/demo.yaml
	$(BIN)/python run_pipeline.py report --config configs/demo.yaml

# Lint and import order (ruff, configured in pyproject.toml); `make test` runs it first, so CI does.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# Unit and stage tests, no Ray: the tier to run while working (under 3 minutes on 2 cores).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(DEMO)
