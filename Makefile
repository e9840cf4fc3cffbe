# The two set-up commands of the README. Both create .venv with the pinned dependency set.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: install system-deps repro test

$(BIN)/dvc: pyproject.toml requirements.lock
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/dvc

system-deps:
	scripts/install_system_deps.sh

repro: install
	PATH="$(BIN):$$PATH" dvc repro

test: install system-deps
	PATH="$(BIN):$$PATH" python -m pytest
