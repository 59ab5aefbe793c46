# The two commands of the README: `make run` (demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	DEBUG=1 PORT=$(PORT) $(BIN)/python manage.py demo

test: $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var

# --- bench and drills (issue 6): PostgreSQL, gunicorn, wrk; see BENCHMARKS.md -------------
BENCH_DB ?= postgres://postgres@127.0.0.1:5432/auxot_bench
.PHONY: bench drill
bench: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/run.py $(BENCH_ARGS)

drill: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/drills.py $(DRILL_ARGS)
