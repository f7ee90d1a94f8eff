# Set-up is part of every target: a fresh machine needs only `make distill` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/distill

.PHONY: venv assets distill test test-fast test-gpu lint benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,test]"
	touch $@

venv: $(BIN)/.installed

assets: venv
	$(BIN)/hfcompress assets install

distill: assets
	$(BIN)/accelerate launch --num_processes 1 -m hfcompress distill --output_dir $(OUT)

# Two workers, each test file on one of them (--dist loadfile: a file's module fixtures are built once).
test: assets
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 tests

test-fast: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests -m "not slow"

# The CUDA paths (bf16/fp16 autocast, structured pruning, bitsandbytes, the teacher cache on cuda); skipped without a GPU.
test-gpu: venv
	$(BIN)/python -m pytest -q tests -m gpu -rs

lint: venv
	$(BIN)/ruff check hfcompress scripts tests benchmarks examples

benchmark: assets
	$(BIN)/python scripts/benchmark_distill.py

clean:
	rm -rf $(VENV) out
