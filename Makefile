# The two commands of the README: `make run` (demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The server, then the callers' client (its own distribution: the `auxot` command).
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e './clients/python[callbacks]'
	touch $@

run: $(VENV)/.installed
	DEBUG=1 PORT=$(PORT) $(BIN)/python manage.py demo

test: $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var

# --- bench and drills (issue 6): PostgreSQL, gunicorn, wrk; see BENCHMARKS.md -------------
BENCH_DB ?= postgres://postgres@127.0.0.1:5432/auxot_bench
.PHONY: bench drill
bench: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/run.py $(BENCH_ARGS)

drill: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/drills.py $(DRILL_ARGS)
