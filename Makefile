# moviola: two commands from a fresh clone.
#   make demo   set up .venv and generate clips from prompts with the shipped text-to-video model -> demo.gif
#               (make demo PROMPT="a green circle moving left" for your own prompt;
#                make demo MODEL=latte-diffusers for the shipped model that exports to diffusers;
#                make demo MODEL=walt for the shipped W.A.L.T)
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
PROMPT ?=
export PROMPT
MODEL  ?= latte
# the shipped text-to-video model of each MODEL name
CKPT_latte := checkpoints/shapes-latte-t2v
CKPT_latte-diffusers := checkpoints/shapes-latte-t2v-diffusers
CKPT_walt := checkpoints/shapes-walt-t2v
CKPT = $(CKPT_$(MODEL))
DEMO_PROMPTS := --prompt "a red circle moving down" --prompt "a green square moving right" \
	--prompt "a blue triangle moving up" --prompt "a yellow triangle moving right"
DEMO_LIST := a red circle moving down, a green square moving right, a blue triangle moving up, a yellow triangle moving right (the last a combination never seen in training)

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	@test -n "$(CKPT)" || { echo "make demo: MODEL=$(MODEL) is not a shipped model; choose latte, latte-diffusers or walt" >&2; exit 2; }
	$(BIN)/moviola sample $(CKPT) $(if $(PROMPT),--prompt "$$PROMPT",$(DEMO_PROMPTS)) \
		--steps 50 --cfg 4 --seed 0 --out demo.gif
	@echo "demo.gif: $(if $(PROMPT),$$PROMPT,$(DEMO_LIST)); make demo PROMPT='a blue circle moving up' for your own"

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest --runslow

bench: setup
	$(BIN)/python benchmarks/train_step.py --markdown

clean:
	rm -rf $(VENV) .pytest_cache demo.gif
