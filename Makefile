# MuseLab — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MODEL, DATA, N, OUT, CKPT, PRIMER, CHORDS, INSTRUMENTS, ATTRIBUTE: passed on only when given, so
# each default is stated once, in conf/ (a model config may choose its own default data).
ARG_VARS := MODEL DATA N OUT CKPT PRIMER CHORDS INSTRUMENTS ATTRIBUTE
# Where pip finds torch==2.13.0, e.g. https://download.pytorch.org/whl/cpu (a CPU-only wheel for a
# machine without a GPU); empty: pip's own configuration. Everything else comes from pip's index.
TORCH_INDEX ?=

# Free Hydra overrides: every key=value after the target except the variables above, in the order
# typed, each single-quoted for the shell, so that braces, brackets, commas, $, ~, * and spaces
# reach Hydra as typed ('model.scheduler={_target_:...,step_size:1}' must not be brace-expanded).
# make keeps them in MAKEOVERRIDES, last first, with \\, "\ " and $$ escapes, undone here.
MAKE_VARS := $(ARG_VARS) TORCH_INDEX PYTHON PY
empty :=
space := $(empty) $(empty)
tab := $(shell printf '\t')
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
hide_escapes = $(subst \$(tab),@MUSELAB_TAB@,$(subst \$(space),@MUSELAB_SP@,$(subst \\,@MUSELAB_BS@,$(1))))
unescape = $(subst $$$$,$$,$(subst @MUSELAB_BS@,\,$(subst @MUSELAB_TAB@,$(tab),$(subst @MUSELAB_SP@,$(space),$(1)))))
shell_quote = '$(subst ','\'',$(1))'
OVERRIDE_WORDS = $(filter-out $(addsuffix =%,$(MAKE_VARS)),$(call hide_escapes,$(MAKEOVERRIDES)))
OVERRIDES = $(foreach o,$(call reverse,$(OVERRIDE_WORDS)),$(call shell_quote,$(call unescape,$(o))))
# `NAME=value` as a quoted `key=value` for the command line, only when NAME was given.
arg = $(if $($(1)),$(call shell_quote,$(2)=$($(1))))
SAMPLE_ARGS = $(call arg,N,n) $(call arg,OUT,out) $(call arg,PRIMER,prompt) $(call arg,CHORDS,chords) \
	$(call arg,INSTRUMENTS,instruments) $(call arg,ATTRIBUTE,attribute)

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: help install install-audio train sample evaluate test test-all lint format bench bench-data bench-poly bench-midinet clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "  Examples: make train MODEL=pianoroll_rnn DATA=nottingham data.source.root=/path trainer.max_epochs=20"
	@echo "            make sample CKPT=outputs/.../checkpoints/last.ckpt N=4 OUT=samples"
	@echo "            make install TORCH_INDEX=https://download.pytorch.org/whl/cpu   (torch from that index)"

install: $(STAMP) ## Create .venv and install (torch==2.13.0 first, from TORCH_INDEX if set); idempotent

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(call shell_quote,$(TORCH_INDEX)))
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install-audio: ## Optional: Debian's fluidsynth + GM soundfont for audio (a fallback synth is used without)
	@command -v fluidsynth >/dev/null && test -f /usr/share/sounds/sf2/FluidR3_GM.sf2 || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm >/dev/null); }

train: install ## Train: make train MODEL=pianoroll_rnn DATA=bach [hydra overrides]
	$(PY) -m muselab.train $(call arg,MODEL,model) $(call arg,DATA,data) $(OVERRIDES)

sample: install ## Write N samples from a checkpoint: make sample CKPT=path [N=4] [OUT=samples] [PRIMER=tune.mid]
	@test -n "$(CKPT)" || (echo "usage: make sample CKPT=path/to/last.ckpt [N=4] [OUT=samples] [PRIMER=tune.mid] [option=value ...]"; exit 2)
	$(PY) -m muselab.sample $(call arg,CKPT,ckpt) $(SAMPLE_ARGS) $(OVERRIDES)

evaluate: install ## Test-split loss + music metrics: make evaluate CKPT=path [N=16]
	@test -n "$(CKPT)" || (echo "usage: make evaluate CKPT=path/to/last.ckpt [N=16] [option=value ...]"; exit 2)
	$(PY) -m muselab.evaluate $(call arg,CKPT,ckpt) $(SAMPLE_ARGS) $(OVERRIDES)

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

bench-midinet: install ## MidiNet + multi-track on bach and nottingham: make bench-midinet nottingham_root=/copy/of/nottingham_abc
	$(PY) -m muselab.bench.midinet $(OVERRIDES)

clean: ## Remove caches and outputs (keeps .venv)
	rm -rf outputs logs .cache .pytest_cache .ruff_cache
