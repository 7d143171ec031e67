# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo dev test test-stripe lint lock bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Exactly the pinned, hashed set (the image installs requirements.lock, the runtime
# part of it), then the project itself with nothing resolved again.
$(VENV)/.installed: requirements-dev.lock requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Both locks from pyproject.toml, for the image's platform (Debian bookworm, x86_64).
# The runtime lock is wheels only (the image never compiles); the dev lock is the
# runtime lock plus the dev extra, constrained to the very same runtime pins. A pin
# already in a lock is kept unless pyproject.toml rules it out: `make lock` after
# editing dependencies, `make lock LOCK_FLAGS=--upgrade` to move every pin to the
# newest release that fits (LOCK_FLAGS='--upgrade-package stripe' for one).
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes \
	--python-version 3.11 --python-platform x86_64-manylinux_2_36 \
	--custom-compile-command 'make lock' $(LOCK_FLAGS)

lock: $(VENV)/.installed
	$(UV_COMPILE) --only-binary :all: -o requirements.lock
	$(UV_COMPILE) --extra dev --constraint requirements.lock -o requirements-dev.lock

demo: $(VENV)/.installed
	$(BIN)/paystep demo

dev: $(VENV)/.installed
	$(BIN)/paystep dev

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two pytest workers (pytest-xdist), each with its own local stack: most tests wait on
# processes and timeouts rather than compute, so two share 2 cores well. A module's tests
# stay on one worker (`--dist loadfile`): module fixtures such as the image build run once.
TEST_WORKERS ?= 2

test: $(VENV)/.installed lint
	@if [ -x .ci/deploy-tools.sh ]; then PYTHON=$(BIN)/python bash .ci/deploy-tools.sh; fi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# Stripe's test mode, not part of `make test`: needs PAYSTEP_STRIPE_TEST_KEY (skipped without).
test-stripe: $(VENV)/.installed
	$(BIN)/pytest -q -rs tests_contract

bench: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

bench-quick: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info
