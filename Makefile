# MuseLab — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?= pianoroll_rnn
DATA ?= bach
N ?= 4
OUT ?= samples
CKPT ?=
# Free Hydra overrides: everything after the target that looks like key=value.
OVERRIDES = $(filter-out MODEL=% DATA=% N=% OUT=% CKPT=%,$(MAKEOVERRIDES))
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: help install install-audio train sample evaluate test test-all lint format bench bench-data bench-poly clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "  Examples: make train MODEL=pianoroll_rnn DATA=nottingham data.source.root=/path trainer.max_epochs=20"
	@echo "            make sample CKPT=outputs/.../checkpoints/last.ckpt N=4 OUT=samples"

install: $(STAMP) ## Create .venv and install (torch==2.13.0 CPU first); idempotent

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install-audio: ## Optional: Debian's fluidsynth + GM soundfont for audio (a fallback synth is used without)
	@command -v fluidsynth >/dev/null && test -f /usr/share/sounds/sf2/FluidR3_GM.sf2 || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm >/dev/null); }

train: install ## Train: make train MODEL=pianoroll_rnn DATA=bach [hydra overrides]
	$(PY) -m muselab.train model=$(MODEL) data=$(DATA) $(OVERRIDES)

sample: install ## Write N MIDI files from a checkpoint: make sample CKPT=path N=4 OUT=samples
	@test -n "$(CKPT)" || (echo "usage: make sample CKPT=path/to/last.ckpt [N=4] [OUT=samples]"; exit 2)
	$(PY) -m muselab.sample ckpt=$(CKPT) n=$(N) out=$(OUT) $(OVERRIDES)

evaluate: install ## Test-split loss + music metrics: make evaluate CKPT=path [N=16]
	@test -n "$(CKPT)" || (echo "usage: make evaluate CKPT=path/to/last.ckpt [N=16]"; exit 2)
	$(PY) -m muselab.evaluate ckpt=$(CKPT) n=$(N) $(OVERRIDES)

test: install ## Fast test suite
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup

test-all: install ## All tests, slow ones (DDP) included
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: bench-data bench-poly ## All benchmarks (results in docs/benchmarks.md)

bench-data: install ## Preprocessing throughput vs muspy / symusic
	$(PY) -m muselab.bench.data $(OVERRIDES)

bench-poly: install ## Boulanger polyphonic benchmark (needs ../shared/data/boulanger)
	$(PY) -m muselab.bench.poly $(OVERRIDES)

clean: ## Remove caches and outputs (keeps .venv)
	rm -rf outputs logs .cache .pytest_cache .ruff_cache
