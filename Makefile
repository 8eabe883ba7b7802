# Two commands do all the set-up: `make demo` runs the main job, `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench dist clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m cnnlab.native
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench.py

dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

clean-venv:
	rm -rf $(VENV)
