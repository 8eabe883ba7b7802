# Two commands do all the set-up: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use. The demo needs the core install only (torch, numpy, matplotlib...), then the
# native kernels are built (one compiler call, seconds); the tests add the `test` extra on top. --no-compile:
# pip would byte-compile every module of torch & co. up front (15-30 s of a fresh set-up); Python compiles the
# few hundred that are imported on first use instead, and keeps them: some environments set
# PYTHONDONTWRITEBYTECODE, which would make every later command compile torch's modules again (about 2 s each).
PY ?= python3.11
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: demo test bench dist clean-venv

$(CORE): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e .
	$(BIN)/python -m cnnlab.native
	@touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(CORE)
	$(BIN)/cnnlab demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(CORE)
	$(BIN)/python bench/bench.py

dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

clean-venv:
	rm -rf $(VENV)
