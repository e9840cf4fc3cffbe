# The two set-up commands of the README (`make repro`, `make test`), and `make ui`.
# Each installs the pinned dependency set into $(VENV) with the newest supported Python found
# (on PATH or from pyenv); override with `make PYTHON=/path/to/python3.X VENV=.venv-3.X ...`.
SUPPORTED := 3.13 3.12 3.11
PYTHON ?= $(shell scripts/find_python.sh $(SUPPORTED))
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
RUN := PATH="$(BIN):$$PATH"

.PHONY: install system-deps repro test test-fast ui

$(BIN)/dvc: pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "no Python $(SUPPORTED) found: install one" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/dvc

system-deps:
	scripts/install_system_deps.sh

repro: install
	$(RUN) dvc repro

test: install system-deps
	$(RUN) python -m pytest

# the suite without the slow end-to-end tests (what CI runs on the other Python versions)
test-fast: install
	$(RUN) python -m pytest -m "not slow"

# the MLflow UI on 127.0.0.1, with the link straight to this project's runs
ui: install
	$(RUN) vaelab ui
