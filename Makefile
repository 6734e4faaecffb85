# Two entry points: `make demo` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

# Re-install whenever pyproject.toml changes, so `make test` always runs against what is declared.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,master]'
	touch $(STAMP)

# The whole loop on this machine. Until the master deploys relays itself, the relay-level demo:
# origin, core and edge in their own processes, one streamed completion through them.
demo: venv
	$(PY) -m relay.demo

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow" -x

lint: venv
	$(PY) -m ruff check relay master_api tests bench
	$(PY) -m ruff format --check relay master_api tests bench
	$(PY) -m mypy

bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
