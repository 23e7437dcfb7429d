# The two setup commands of the README: `make install`, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast test-faults bench lint studies

install:
	bash scripts/install.sh

# Every test, the slow end-to-end ones included (CI runs exactly this).
# -X faulthandler: a crash, even in the interpreter's teardown after the last test, prints every thread's stack.
test:
	$(PY) -X faulthandler -m pytest

# Skip the slow end-to-end tests while iterating.
test-fast:
	$(PY) -m pytest -m "not slow"

# The fault and hostile-caller suites (docs/security.md); part of `make test` too.
test-faults:
	$(PY) -m pytest -m "fault or hostile"

bench:
	$(PY) -m bench.envs

# Every study recipe at the tiny size, each with its report (CI runs the cheapest in `make test`).
STUDY_SIZE ?= tiny
studies:
	for recipe in $$($(PY) -c "from deploy.studies.recipe import list_recipes; print(' '.join(r['name'] for r in list_recipes()))"); do \
		$(VENV)/bin/sftrl study $$recipe --size $(STUDY_SIZE) || exit 1; \
	done

lint:
	$(VENV)/bin/ruff check sftrl services deploy bench tests
