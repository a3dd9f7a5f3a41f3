VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m restorelcc.cli demo

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q
	bash scripts/test_old_transformers.sh

lint: setup
	$(VENV)/bin/ruff check restorelcc lcc_kernels tests benchmarks
	$(VENV)/bin/ruff format --check restorelcc lcc_kernels tests benchmarks

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-enable
