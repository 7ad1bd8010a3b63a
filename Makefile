# actrec: every stage of the pipeline is one target. `make help` lists them.
# Variables: CONFIG (the YAML config), SET (space-separated section.key=value overrides).
#   make train CONFIG=configs/ucf101.yaml SET="train.epochs=5 model.name=meanpool"

.DEFAULT_GOAL := help
SHELL := /bin/bash

CONFIG ?= configs/ucf101.yaml
SET ?=
DEMO_CONFIG := configs/synthetic.yaml
SPLITS ?= 1
# make sweep: GRID="model.hidden_dim=256,512 train.lr=1e-3,3e-4" (cross product) or RUNS=FILE, JOBS=N, NAME=NAME
GRID ?=
RUNS ?=
JOBS ?=
NAME ?=
# make tune: PARAMS="train.lr=float:1e-5:1e-2:log model.hidden_dim=int:128:2048:log" (or SPACE=FILE), TRIALS=N,
# JOBS=N, NAME=NAME (default: the config's name), STORAGE=URL (default: runs/tune/NAME/study.db), PRUNER=median|halving
PARAMS ?=
SPACE ?= $(if $(PARAMS),,configs/tune-space.txt)
TRIALS ?= 20
STORAGE ?=
PRUNER ?=
TUNE_ARGS := $(foreach p,$(PARAMS),--param $(p)) $(if $(SPACE),--space $(SPACE)) --trials $(TRIALS) \
  $(if $(JOBS),--jobs $(JOBS)) --name $(or $(NAME),$(basename $(notdir $(CONFIG)))) \
  $(if $(STORAGE),--storage $(STORAGE)) $(if $(PRUNER),--pruner $(PRUNER))
# Ranks of `make embed` on this machine: one per visible GPU (CUDA_VISIBLE_DEVICES, else nvidia-smi), 1 without.
VISIBLE_GPUS := $(shell if [ -n "$$CUDA_VISIBLE_DEVICES" ]; then echo "$$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c '[0-9]'; \
  else nvidia-smi -L 2>/dev/null | grep -c '^GPU'; fi)
NPROC ?= $(if $(filter-out 0,$(VISIBLE_GPUS)),$(VISIBLE_GPUS),1)
# How torchrun's ranks find each other: one machine by default; several, e.g.
#   RDZV="--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=node1:29500 --rdzv-id=ucf101"
RDZV ?= --standalone
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

VENV := .venv
PY := $(VENV)/bin/python
ACTREC := $(VENV)/bin/actrec
STAMP := $(VENV)/.installed
SET_ARGS := $(foreach kv,$(SET),--set $(kv))
ARGS := -c $(CONFIG) $(SET_ARGS)
DEMO := -c $(DEMO_CONFIG) $(SET_ARGS)
SWEEP_ARGS := $(foreach g,$(GRID),--grid $(g)) $(if $(RUNS),--runs $(RUNS)) $(if $(JOBS),--jobs $(JOBS)) \
  $(if $(NAME),--name $(NAME))
DEMO_SWEEP := runs/sweeps/demo
# The sweep's BiLSTM with attention (configs/synthetic.yaml's own model): the run the demo predicts with.
DEMO_BILSTM := $(DEMO_SWEEP)/name=bilstm_attention=true
# The first test video of the synthetic split 1, for the demo's prediction.
DEMO_VIDEO = data/synthetic/videos/$$(head -n 1 data/synthetic/splits/testlist01.txt | tr -d '\r')

.PHONY: help install download extract embed train evaluate probe zeroshot sweep tune all demo test bench docs lint clean

help: ## List the targets (this text)
	@echo "usage: make TARGET [CONFIG=configs/ucf101.yaml] [SET=\"section.key=value ...\"]"
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[test]' $(TORCH_PINS)
	touch $@

install: $(STAMP) ## Create .venv and install the package with its test extras

download: $(STAMP) ## Get the dataset: download UCF-101 / HMDB-51 (resumable), generate the synthetic one; folder: nothing
	$(ACTREC) download $(ARGS)

extract: $(STAMP) ## Decode every video into JPEG frames (only needed for embed.source=frames)
	$(ACTREC) extract $(ARGS)

embed: $(STAMP) ## Stage one: run the frozen backbone once, cache features in HDF5 (resumes); NPROC ranks (torchrun)
	@if [ "$(NPROC)" -gt 1 ] || [ "$(RDZV)" != "--standalone" ]; then \
	  echo "$(VENV)/bin/torchrun $(RDZV) --nproc_per_node=$(NPROC) -m pipeline embed $(ARGS)"; \
	  $(VENV)/bin/torchrun $(RDZV) --nproc_per_node=$(NPROC) -m pipeline embed $(ARGS); \
	else $(ACTREC) embed $(ARGS); fi

train: $(STAMP) ## Stage two: train on the cached features, once per split in SPLITS (e.g. SPLITS="1 2 3")
	@for split in $(SPLITS); do $(ACTREC) train $(ARGS) --set data.split=$$split || exit 1; done

evaluate: $(STAMP) ## Evaluate best.pt of each split in SPLITS on its test list; with several, report the mean
	@for split in $(SPLITS); do $(ACTREC) evaluate $(ARGS) --set data.split=$$split || exit 1; done
	@$(ACTREC) report $$(for split in $(SPLITS); do $(ACTREC) config $(ARGS) --set data.split=$$split --key run.dir; done)

probe: $(STAMP) ## Linear probe (or SET="probe.method=knn") on pooled cached features, for each split in SPLITS
	@for split in $(SPLITS); do $(ACTREC) probe $(ARGS) --set data.split=$$split || exit 1; done

zeroshot: $(STAMP) ## Zero-shot test top-1 of an OpenCLIP cache from class prompts (no training), each split in SPLITS
	@for split in $(SPLITS); do $(ACTREC) zeroshot $(ARGS) --set data.split=$$split || exit 1; done

sweep: $(STAMP) ## Many train+evaluate runs on one cache (GRID="k=v1,v2 ..." or RUNS=FILE, JOBS=N): a leaderboard
	$(ACTREC) sweep $(ARGS) $(SWEEP_ARGS)

tune: $(STAMP) ## Optuna search of training settings on one cache (PARAMS="k=float:LO:HI:log ..." or SPACE=FILE)
	$(ACTREC) tune $(ARGS) $(TUNE_ARGS)

all: $(STAMP) ## download, extract (only for embed.source=frames), embed, train, evaluate on CONFIG
	$(MAKE) download
	@if [ "$$($(ACTREC) config $(ARGS) --key embed.source)" = frames ]; then $(MAKE) extract; \
	  else echo "extract: not needed (embed.source=videos decodes the .avi files directly)"; fi
	$(MAKE) embed train evaluate

demo: $(STAMP) ## Offline demo on the synthetic dataset: synth, embed, a sweep of 6 models, predict, leaderboard
	$(ACTREC) synth $(DEMO)
	$(ACTREC) embed $(DEMO)
	$(ACTREC) sweep $(DEMO) --runs configs/demo-sweep.txt --jobs 2 --name demo
	$(ACTREC) predict $(DEMO_VIDEO) --checkpoint $(DEMO_BILSTM)/checkpoints/best.pt \
	  --out $(DEMO_BILSTM)/prediction.gif --json $(DEMO_BILSTM)/prediction.json
	@echo; echo "== demo summary: a sweep on the synthetic cache (test split 1), ranked by validation accuracy =="
	@$(ACTREC) report $(DEMO_SWEEP)

test: $(STAMP) ## Run the test suite: one pytest-xdist worker per core, one torch thread each; then Ray's tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto -m "not ray"
	@# Ray's tests start a local cluster and kill its workers: alone, since beside the xdist workers they time out.
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m ray --durations=5

bench: $(STAMP) ## Benchmarks: ratios measured side by side, written to bench/ and docs/performance.md
	$(PY) -m benchmarks -c $(DEMO_CONFIG) $(SET_ARGS) --readme docs/performance.md

docs: $(STAMP) ## The documentation site into site/ (MkDocs, strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP) ## ruff over the package and tests
	$(VENV)/bin/ruff check pipeline tests

clean: ## Remove runs, bench results and caches (keeps data/ and .venv)
	rm -rf runs bench site
	find cache -mindepth 1 ! -name README.md -delete
