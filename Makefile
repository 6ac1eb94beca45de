# Two commands on a fresh machine:  make demo  |  make test
# The venv is created once; re-running does not reinstall what is there (a stamp file tracks setup.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision pins that pip resolves from local wheels on the reference machine (Python 3.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv demo test test-slow lint bench figures clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5 = no slow test selected

lint: $(STAMP)
	$(VENV)/bin/ruff check .

figures: $(STAMP)
	bash scripts/make_figures.sh

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache
