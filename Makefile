# MuseLab — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MODEL, DATA, N, OUT, CKPT, PRIMER, CHORDS, INSTRUMENTS, ATTRIBUTE, A, B, STEPS: passed on only when
# given, so each default is stated once, in conf/ (a model config may choose its own default data).
ARG_VARS := MODEL DATA N OUT CKPT PRIMER CHORDS INSTRUMENTS ATTRIBUTE A B STEPS
# Where pip finds torch==2.13.0, e.g. https://download.pytorch.org/whl/cpu (a CPU-only wheel for a
# machine without a GPU); empty: pip's own configuration. Everything else comes from pip's index.
TORCH_INDEX ?=

# Free Hydra overrides: every key=value after the target except the variables above, in the order
# typed, each single-quoted for the shell, so that braces, brackets, commas, $, ~, * and spaces
# reach Hydra as typed ('model.scheduler={_target_:...,step_size:1}' must not be brace-expanded).
# make keeps them in MAKEOVERRIDES, last first, with \\, "\ " and $$ escapes, undone here.
MAKE_VARS := $(ARG_VARS) TORCH_INDEX PYTHON PY SWEEP TRIALS RUNS
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
export HF_HUB_OFFLINE ?= 1
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: help install install-audio install-browser train sweep compare sample evaluate test test-all lint format bench bench-data bench-poly bench-default bench-denormal bench-scale clean interpolate bench-musicvae bench-melody bench-musenet bench-midinet

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

install-browser: ## Optional: Debian's chromium, for the headless-browser test of make compare's page
	@command -v chromium >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }

train: install ## Train: make train MODEL=pianoroll_rnn DATA=bach [hydra overrides]
	$(PY) -m muselab.train $(call arg,MODEL,model) $(call arg,DATA,data) $(OVERRIDES)

sweep: install ## Sweep: make sweep SWEEP=pianoroll_rnn [TRIALS=N] [overrides]; W&B if online, else Optuna here
	@test -n "$(SWEEP)" || (echo "usage: make sweep SWEEP=<conf/sweep file> [TRIALS=N] [key=value ...]   (files: $$(ls conf/sweep | sed 's/.yaml//' | tr '\n' ' '))"; exit 2)
	$(PY) -m muselab.sweep $(call shell_quote,$(SWEEP)) $(if $(TRIALS),--trials $(call shell_quote,$(TRIALS))) $(call arg,MODEL,model) $(call arg,DATA,data) $(OVERRIDES)

compare: install ## One HTML page comparing the runs under outputs/ (or RUNS=dir): make compare [OUT=dir]
	$(PY) -m muselab.compare $(if $(RUNS),$(call shell_quote,$(RUNS))) --out $(call shell_quote,$(or $(OUT),outputs/compare))

sample: install ## Write N samples from a checkpoint: make sample CKPT=path [N=4] [OUT=samples] [PRIMER=tune.mid]
	@test -n "$(CKPT)" || (echo "usage: make sample CKPT=path/to/last.ckpt [N=4] [OUT=samples] [PRIMER=tune.mid] [option=value ...]"; exit 2)
	$(PY) -m muselab.sample $(call arg,CKPT,ckpt) $(SAMPLE_ARGS) $(OVERRIDES)

evaluate: install ## Test-split loss + music metrics: make evaluate CKPT=path [N=16]
	@test -n "$(CKPT)" || (echo "usage: make evaluate CKPT=path/to/last.ckpt [N=16] [option=value ...]"; exit 2)
	$(PY) -m muselab.evaluate $(call arg,CKPT,ckpt) $(SAMPLE_ARGS) $(OVERRIDES)

interpolate: install ## Latent path between two pieces: make interpolate CKPT=path A=a.mid B=b.mid [STEPS=8] [OUT=dir]
	@test -n "$(CKPT)" -a -n "$(A)" -a -n "$(B)" || (echo "usage: make interpolate CKPT=path/to/last.ckpt A=a.mid B=b.mid [STEPS=8] [OUT=interpolation] [mode=lerp]"; exit 2)
	$(PY) -m muselab.interpolate $(call arg,CKPT,ckpt) $(call arg,A,a) $(call arg,B,b) $(call arg,STEPS,steps) $(call arg,OUT,out) $(OVERRIDES)

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

bench: bench-data bench-poly bench-melody bench-musenet ## All benchmarks (results in docs/benchmarks.md)

bench-data: install ## Preprocessing throughput vs muspy / symusic
	$(PY) -m muselab.bench.data $(OVERRIDES)

bench-default: install ## The default make train + make evaluate N=16: time, test NLL, overlap, memorisation
	$(PY) -m muselab.bench.default_run $(OVERRIDES)

bench-denormal: install ## Denormal floats: an Adam step and a long CPU run, flush_denormal on and off
	$(PY) -m muselab.bench.denormal $(OVERRIDES)

bench-poly: install ## Boulanger polyphonic benchmark (needs ../shared/data/boulanger)
	$(PY) -m muselab.bench.poly $(OVERRIDES)

bench-scale: install ## Lakh-scale preprocessing: files/s and peak memory against corpus size, loader windows/s
	$(PY) -m muselab.bench.scale $(OVERRIDES)

bench-musicvae: install ## MusicVAE on Essen: 2-bar and 16-bar accuracy, attribute vectors, interpolation smoothness
	$(PY) -m muselab.bench.musicvae $(OVERRIDES)

bench-melody: install ## Melody RNN basic/lookback/attention on Essen, same budget (about an hour)
	$(PY) -m muselab.bench.melody $(OVERRIDES)

bench-musenet: install ## MuseNet: encoding speed, KV-cache sampling, Lightning vs plain loop, NLL and samples (bach, nottingham)
	$(PY) -m muselab.bench.musenet $(OVERRIDES)

bench-midinet: install ## MidiNet + multi-track on bach and nottingham: make bench-midinet nottingham_root=/copy/of/nottingham_abc
	$(PY) -m muselab.bench.midinet $(OVERRIDES)

clean: ## Remove caches and outputs (keeps .venv)
	rm -rf outputs logs .cache .pytest_cache .ruff_cache
