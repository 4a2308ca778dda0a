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
	$(BIN)/python run_pipeline.py train-mapper --config configs/demo.yaml
	$(BIN)/python run_pipeline.py sonify --config configs/demo.yaml $(MAPPED)
	$(BIN)/python run_pipeline.py report --config configs/demo.yaml $(MAPPED)

# The demo's second run: the mapper trained on the first run's shards, a scene source beside the
# VLM, into a folder of its own; its samples get both alignment scores.
MAPPED := sonify.out=$(DEMO)/sonified-mapped 'models.vlm=[{name: qwen-tiny, backend: transformers, \
	model: $(DEMO)/models/vlm-qwen2_5_vl, batch_size: 8}, {name: mapped, backend: mapper, \
	checkpoint: $(DEMO)/mapper.safetensors, batch_size: 8, num_cpus: 0.25}]'

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
