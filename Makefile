# jrr-pipeline: make install | run | test | bench | ui | mlflow | lint | browser | postgres
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets/scifact
PRESET ?= cpu
UI_PORT ?= 3000
MLFLOW_PORT ?= 5000
JRR_HOME ?= $(CURDIR)/.jrr
export JRR_HOME
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install run test bench ui mlflow lint clean browser postgres

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # the local CPU wheel; an unpinned torch pulls CUDA
	$(BIN)/pip install -q -e ".[dev,postgres]"
	touch $@

run: install
	$(BIN)/jrr run $(DATA) --preset $(PRESET)

test: install browser postgres
	$(BIN)/pytest -q

# The browser tests drive Debian's Chromium (no browser downloads from PyPI or npm): install it
# with apt-get when it is missing, through sudo unless already root.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The PostgreSQL tests start a throwaway cluster (initdb + pg_ctl on 127.0.0.1) with Debian's server
# binaries: install them with apt-get when they are missing, through sudo unless already root.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

bench: install
	$(BIN)/python bench/bm25_scifact.py --data $(DATA)

ui: install
	exec $(BIN)/jrr ui $(DATA) --preset $(PRESET) --port $(UI_PORT)

# MLflow server on the project's store (the same sqlite file and artifact folder the pipeline
# writes); point runs at it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT).
mlflow: install
	exec $(BIN)/jrr mlflow --port $(MLFLOW_PORT)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(JRR_HOME)
