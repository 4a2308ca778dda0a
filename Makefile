# `make demo` and `make test` both create (once) and reuse the local .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -qq -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python run_pipeline.py tiny-models --out $(DEMO)/models
	$(BIN)/python run_pipeline.py sample-data --out $(DEMO)/sample
	$(BIN)/python run_pipeline.py pool --config configs/demo.yaml
	$(BIN)/python run_pipeline.py sonify --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(DEMO)
