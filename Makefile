# Two commands do all the set-up on a fresh Debian 12 / Python 3.11 machine (root): `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint install system docker clean

install: $(VENV)/.installed

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the sandboxes need (bubblewrap for `local`, docker.io + debootstrap for `docker`).
system:
	bash scripts/ensure_system.sh

# A running Docker engine and the offline base image, built once and reused by tag.
docker: install system
	bash scripts/ensure_docker.sh
	$(VENV)/bin/cwm sandbox image

# The demo brings up what its steps need as `make test` does, but goes on without what cannot be had: the
# step that needs it fails with one line saying why, and `cwm demo` exits 1.
demo: install
	@bash scripts/ensure_system.sh || echo "demo: going on without those packages; the steps that need them will say so"
	@{ bash scripts/ensure_docker.sh && $(VENV)/bin/cwm sandbox image >/dev/null; } \
		|| echo "demo: going on without Docker; its SWE step will fail and say why"
	$(VENV)/bin/cwm demo

# ruff's settings are in pyproject.toml; linting comes first, so a finding fails before the Docker set-up.
lint: install
	$(VENV)/bin/ruff check .

test: lint docker
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
