# The two set-up commands of the README. Both create .venv with the pinned dependency set.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: install repro test

$(BIN)/dvc: pyproject.toml requirements.lock
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/dvc

repro: install
	PATH="$(BIN):$$PATH" dvc repro

test: install
	PATH="$(BIN):$$PATH" python -m pytest
