# The two setup commands of the README: `make install`, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast bench lint

install:
	bash scripts/install.sh

# Every test, the slow end-to-end ones included (CI runs exactly this).
test:
	$(PY) -m pytest

# Skip the slow end-to-end tests while iterating.
test-fast:
	$(PY) -m pytest -m "not slow"

bench:
	$(PY) -m bench.envs

lint:
	$(VENV)/bin/ruff check sftrl services deploy bench tests
