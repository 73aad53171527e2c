# Two commands do all set-up on a fresh machine:
#   make train   -- install into .venv, then a short CartPole training run
#   make test    -- install into .venv, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch, installed first so that fastdqn's own range (torch>=2.2) is already satisfied.
# Which build this is depends on the machine's pip: from PyPI on Linux x86_64, torch==2.13.0
# is the CUDA 13 build (it pulls the nvidia-* packages, several GB); where pip also finds a
# local torch-2.13.0+cpu wheel (a find-links folder in pip's configuration), it takes that
# one. For the CPU build elsewhere, PyTorch's CPU index:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
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
