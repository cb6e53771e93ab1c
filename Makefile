# moviola: two commands from a fresh clone.
#   make demo   set up .venv and generate a clip with the shipped Moving Shapes model -> demo.gif
#   make test   set up .venv and run the test suite (what .ci/run runs)
#
# torch is installed first, pinned, so pip takes the CPU build that lies on this machine
# instead of pulling a multi-GB CUDA build; on a GPU machine set TORCH to the build you want
# (e.g. make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/moviola sample checkpoints/shapes-latte-tiny --label 3 --label 17 --label 34 --label 44 \
		--steps 50 --cfg 4 --seed 0 --out demo.gif
	@echo "demo.gif asks for: a red circle moving down, a green square moving right, a blue triangle moving up, a yellow triangle moving left"

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest --runslow

bench: setup
	$(BIN)/python benchmarks/train_step.py --markdown

clean:
	rm -rf $(VENV) .pytest_cache demo.gif
