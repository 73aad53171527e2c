# Two commands do all set-up on a fresh machine:
#   make train   -- install into .venv, then a short CartPole training run
#   make test    -- install into .venv, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch: installed first, so that fastdqn's own range (torch>=2.2) is
# already satisfied and no CUDA packages are pulled in.
TORCH ?= torch==2.13.0

.PHONY: install train test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

train: install
	$(BIN)/fastdqn train --preset cartpole --run-dir runs/cartpole-$$(date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/python -m pytest -q
