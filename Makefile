# Every target bootstraps .venv itself: on a fresh machine `make demo` and
# `make test` are the only two commands a user types.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,cli,plot,uvloop,trio,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/tour.py

lint: $(STAMP)
	$(VENV)/bin/ruff check aioproc tests benchmarks examples
	$(VENV)/bin/ruff format --check aioproc tests benchmarks examples
	$(VENV)/bin/mypy --strict aioproc

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
