# actrec: every stage of the pipeline is one target. `make help` lists them.
# Variables: CONFIG (the YAML config), SET (space-separated section.key=value overrides).
#   make train CONFIG=configs/ucf101.yaml SET="train.epochs=5 model.name=meanpool"

.DEFAULT_GOAL := help
SHELL := /bin/bash

CONFIG ?= configs/ucf101.yaml
SET ?=
DEMO_CONFIG := configs/synthetic.yaml
SPLITS ?= 1
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

VENV := .venv
PY := $(VENV)/bin/python
ACTREC := $(VENV)/bin/actrec
STAMP := $(VENV)/.installed
SET_ARGS := $(foreach kv,$(SET),--set $(kv))
RUN := $(ACTREC) -c $(CONFIG) $(SET_ARGS)
DEMO := -c $(DEMO_CONFIG) $(SET_ARGS)

.PHONY: help install download extract embed train evaluate all demo test bench lint clean

help: ## List the targets (this text)
	@echo "usage: make TARGET [CONFIG=configs/ucf101.yaml] [SET=\"section.key=value ...\"]"
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_PINS)
	$(VENV)/bin/pip install --quiet -e '.[test]' $(TORCH_PINS)
	touch $@

install: $(STAMP) ## Create .venv and install the package with its test extras

download: $(STAMP) ## Download and unpack UCF-101 and its split files (resumable)
	$(ACTREC) download -c $(CONFIG) $(SET_ARGS)

extract: $(STAMP) ## Decode every video into JPEG frames (only needed for embed.source=frames)
	$(ACTREC) extract -c $(CONFIG) $(SET_ARGS)

embed: $(STAMP) ## Stage one: run the frozen backbone once, cache features in HDF5 (resumes)
	$(ACTREC) embed -c $(CONFIG) $(SET_ARGS)

train: $(STAMP) ## Stage two: train the sequence model on the cached features
	$(ACTREC) train -c $(CONFIG) $(SET_ARGS)

evaluate: $(STAMP) ## Evaluate best.pt on the test list of each split in SPLITS (e.g. SPLITS="1 2 3")
	$(ACTREC) evaluate -c $(CONFIG) $(SET_ARGS)

all: download extract embed train evaluate ## The five stages in order on CONFIG

demo: $(STAMP) ## Offline demo on the synthetic dataset: synth, embed, train, evaluate, predict, summary
	$(ACTREC) synth $(DEMO)
	$(ACTREC) embed $(DEMO)
	$(ACTREC) train $(DEMO) --set model.name=bilstm
	$(ACTREC) evaluate $(DEMO) --set model.name=bilstm
	$(ACTREC) train $(DEMO) --set model.name=meanpool
	$(ACTREC) evaluate $(DEMO) --set model.name=meanpool

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q

bench: $(STAMP) ## Benchmarks: ratios measured side by side, written to bench/ and README.md
	$(ACTREC) bench -c $(DEMO_CONFIG) $(SET_ARGS) --readme README.md

lint: $(STAMP) ## ruff over the package and tests
	$(VENV)/bin/ruff check pipeline tests

clean: ## Remove runs, bench results and caches (keeps data/ and .venv)
	rm -rf runs bench
	find cache -mindepth 1 ! -name README.md -delete
