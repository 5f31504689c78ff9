# Every target bootstraps .venv itself: on a fresh machine `make demo` and
# `make test` are the only two commands a user types.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean bytecode

$(STAMP): pyproject.toml hatch_build.py aioproc/_lineiter.c aioproc/_runcore.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,cli,plot,uvloop,trio,bench]'
	touch $(STAMP)

# Workers and the zygote are fresh interpreters: with the bytecode cached they
# start in about two thirds of the time (PYTHONDONTWRITEBYTECODE may be set, so
# write it explicitly; stale files are simply recompiled in memory).
bytecode: $(STAMP)
	$(PY) -m compileall -q aioproc benchmarks tests examples

demo: bytecode
	$(PY) examples/tour.py

lint: $(STAMP)
	$(VENV)/bin/ruff check aioproc tests benchmarks examples
	$(VENV)/bin/ruff format --check aioproc tests benchmarks examples
	$(VENV)/bin/mypy --strict aioproc

test: lint bytecode
	$(PY) -m pytest -q

bench: bytecode
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
