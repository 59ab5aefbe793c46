# The two commands of the README: `make run` (demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint clean tools

# Programs some tests run. Installed when missing and we are root with apt-get; otherwise
# the tests that need them skip loudly (and fail under AUXOT_REQUIRE_ALL_TOOLS=1, as in CI).
# node and npm run examples/node/receiver.mjs (Debian's package for node is nodejs).
TEST_TOOLS := shellcheck jq curl chromium node npm
define install_tools
	@missing=""; for tool in $(1); do command -v $$tool >/dev/null \
	  || missing="$$missing $$(if [ $$tool = node ]; then echo nodejs; else echo $$tool; fi)"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	    || echo "could not install$$missing: the tests that need them will skip"; \
	else \
	  echo "missing$$missing and not root with apt-get: the tests that need them will skip" \
	       "(sudo apt-get install -y$$missing)"; \
	fi
endef

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

tools:
	$(call install_tools,$(TEST_TOOLS))

test: $(VENV)/.installed tools
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var

# --- bench and drills: PostgreSQL, gunicorn, wrk; see BENCHMARKS.md -------------
# `make bench` empties BENCH_DB first (it refuses a name that does not end in "bench" or
# have a "_bench_" part). BENCH_ARGS="--broker orm,redis" adds the Redis broker (REDIS_URL,
# default redis://127.0.0.1:6379/12); `python bench/run.py --help` lists the rest.
BENCH_DB ?= postgres://postgres@127.0.0.1:5432/auxot_bench
.PHONY: bench drill fleet
bench: $(VENV)/.installed
	$(call install_tools,wrk)
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/run.py $(BENCH_ARGS)

drill: $(VENV)/.installed
	DATABASE_URL=$(BENCH_DB) $(BIN)/python bench/drills.py $(DRILL_ARGS)

# The multi-host drill: PostgreSQL, Redis, 2 web and 2 worker hosts in network namespaces
# (root only; names axf-*, subnet 10.77.0.0/24). FLEET_ARGS="--size 600 --redis-outage 10"
# is the CI size.
fleet: $(VENV)/.installed
	$(BIN)/python bench/fleet.py $(FLEET_ARGS)
