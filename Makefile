# jrr-pipeline: make install | run | test | bench | ui | lint
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets/scifact
PRESET ?= cpu
JRR_HOME ?= $(CURDIR)/.jrr
export JRR_HOME
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install run test bench ui lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the local CPU wheel; an unpinned torch pulls CUDA
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

run: install
	$(BIN)/jrr run $(DATA) --preset $(PRESET)

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/bm25_scifact.py --data $(DATA)

ui: install
	DAGSTER_HOME=$$($(BIN)/python -c "from jrr_pipeline.paths import dagster_home; print(dagster_home())") \
	JRR_DATA_DIR=$(abspath $(DATA)) JRR_PRESET=$(PRESET) \
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -m jrr_pipeline.definitions

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(JRR_HOME)
