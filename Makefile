# The two fresh-machine commands (see README): `make train` and `make test`.
# Each creates the virtual environment and installs beedet into it the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.beedet-installed

.PHONY: install train test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Trains the embedded default (synthetic bees; no network needed). Extra overrides: make train ARGS="trainer.max_epochs=2"
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# Runs every test, slow ones included. Quick loop while developing: make test PYTEST_ARGS="-m 'not slow'"
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
