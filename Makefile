# heartbeat: `make spectrograms && make train` reruns the study; `make help` lists every target.
# Targets are real files where they can be: a rerun with nothing changed does no work.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DATA ?= data# folder holding set_b.csv and set_b/ (see data/README.md), or another collection (FORMAT)
FORMAT ?= pascal-b# the data's layout: the study's Dataset B; auto detects; see README "Other datasets"
SPECTROGRAMS ?= data/spectrograms# stage 1 output: images/ + manifest.csv
JOBS ?=# worker processes for stage 1 (empty: one per core)
SPECTROGRAM_FLAGS ?=# e.g. --include-unlabelled, --label-map noisynormal=normal, --group-regex '^(\d+)_'
RUNS ?= data/runs# training runs; RUNS/latest points to the newest
WEIGHTS ?=# ResNet-34 ImageNet weights file (default: the torch hub cache under TORCH_HOME)
TRAIN_FLAGS ?=# e.g. --recipe heartbeat, --no-pretrained, --split random, --mode finetune, --epochs 10
CV_FLAGS ?= --folds 5# e.g. --seeds 1,2,3 --protocol published --balance weights
EVAL_DATA ?=# make evaluate: the labelled data folder to run a model on (any layout)
EVAL_FORMAT ?= auto# its layout (auto: detected from its files)
EVAL_FLAGS ?=# e.g. --label-map extrahls=drop,artifact=drop --max-seconds 120
EVAL_OUT ?= data/evaluations/$(notdir $(abspath $(EVAL_DATA)))# make evaluate writes its report here
REAL_DATA ?= ../shared/data/heartbeat-sounds# the benchmarks' data
BENCH_DIR ?= data/bench# make bench keeps its stand-in model and spectrograms here
BENCH_WINDOWS ?=# bench-device: spectrogram windows per pass (empty: the script's default, 16)
DEMO := data/demo
# The demo trains from scratch (no download possible), small and quick: see README "make demo".
DEMO_FLAGS := --no-pretrained --image-size 128 --epochs 6 --bs 8 --name demo

# The torch build on this machine's disk; never let pip resolve another one.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PACKAGE_SOURCES := pyproject.toml $(wildcard heartbeat/*.py heartbeat/*/*.py heartbeat/*/*/*.py)
STAGE1_SOURCES := $(wildcard heartbeat/data/*.py heartbeat/data/*/*.py) heartbeat/fileio.py heartbeat/workers.py
# Settings stamps: a file rewritten only when what a stage is asked changes, so that another DATA, FORMAT,
# WEIGHTS or flag reruns the stage. make's own file functions write them: no shell quoting of the flags.
same-text = $(and $(findstring x$(1),x$(2)),$(findstring x$(2),x$(1)))
stamp = $(if $(wildcard $(dir $(1))),$(if $(call same-text,$(strip $(2)),$(file <$(1))),,$(file >$(1),$(strip $(2)))))

.PHONY: help install spectrograms train cv evaluate demo test bench bench-spectrograms bench-train bench-predict bench-cv bench-device bench-beats bench-explain release-model clean

help: ## list the targets
	@echo "heartbeat: make TARGET [DATA=folder-with-set_b.csv] [SPECTROGRAMS=...]"
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install: $(INSTALLED) ## make .venv and install the package with its test extras

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	printf '%s\n' $(TORCH_PINS) > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[test]'
	touch $@

spectrograms: $(SPECTROGRAMS)/manifest.csv ## stage 1: mel-spectrogram PNGs of every labelled recording in DATA (layout FORMAT)

# Dataset B's files are the manifest's prerequisites. Other layouts keep their files anywhere below DATA, so
# stage 1 always runs for them: it is incremental, and leaves the manifest untouched when nothing changed.
ifeq ($(FORMAT),pascal-b)
STAGE1_INPUTS := $(DATA)/set_b.csv $(wildcard $(DATA)/set_b/*.wav)
else
STAGE1_INPUTS := FORCE
endif

# A run with failed recordings still writes the manifest of the others, but dates it back so
# that the next `make spectrograms` tries again instead of calling it up to date.
$(SPECTROGRAMS)/manifest.csv: $(STAGE1_INPUTS) $(STAGE1_SOURCES) $(SPECTROGRAMS)/.stage1-settings | $(INSTALLED)
	$(BIN)/heartbeat spectrograms --data $(DATA) --format $(FORMAT) --out $(SPECTROGRAMS) $(if $(JOBS),--jobs $(JOBS)) \
		$(SPECTROGRAM_FLAGS) || { test -f $@ && touch -d @0 $@; exit 1; }

$(SPECTROGRAMS)/.stage1-settings: FORCE | $(SPECTROGRAMS)/
	$(call stamp,$@,$(DATA) $(FORMAT) $(SPECTROGRAM_FLAGS))

train: $(RUNS)/latest/model.json ## stage 2: train on the spectrograms (TRAIN_FLAGS), write the run folder and its report

# model.json: every run has one (a --valid-fraction 0 run has no metrics.json)
$(RUNS)/latest/model.json: $(SPECTROGRAMS)/manifest.csv $(PACKAGE_SOURCES) $(RUNS)/.train-settings | $(INSTALLED)
	$(BIN)/heartbeat train --spectrograms $(SPECTROGRAMS) --runs $(RUNS) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(TRAIN_FLAGS)

$(RUNS)/.train-settings: FORCE | $(RUNS)/
	$(call stamp,$@,$(SPECTROGRAMS) $(WEIGHTS) $(TRAIN_FLAGS))

$(SPECTROGRAMS)/ $(RUNS)/:
	mkdir -p $@

FORCE:

cv: $(SPECTROGRAMS)/manifest.csv | $(INSTALLED) ## cross-validation by patient (CV_FLAGS), into data/cv-<time>
	$(BIN)/heartbeat cv --spectrograms $(SPECTROGRAMS) --out data/cv-$$(date +%Y%m%d-%H%M%S) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(TRAIN_FLAGS) $(CV_FLAGS)

# MODEL is passed only when given: evaluate then uses data/runs/latest, else the bundled model; bench-predict trains its own stand-in.
evaluate: | $(INSTALLED) ## run a model (MODEL; default data/runs/latest, else the bundled one) on another labelled folder EVAL_DATA, report in EVAL_OUT
	@test -n "$(EVAL_DATA)" || { echo "make evaluate needs EVAL_DATA=folder: a labelled data folder in any layout (see README 'heartbeat evaluate')" >&2; exit 2; }
	$(BIN)/heartbeat evaluate $(if $(MODEL),--model $(MODEL)) --data $(EVAL_DATA) --format $(EVAL_FORMAT) \
		--out $(EVAL_OUT) $(EVAL_FLAGS)

demo: $(INSTALLED) ## offline quick run: synthetic recordings -> spectrograms -> train (from scratch) -> report, in data/demo
	$(MAKE) --no-print-directory $(DEMO)/set_b.csv
	$(MAKE) --no-print-directory train DATA=$(DEMO) SPECTROGRAMS=$(DEMO)/spectrograms RUNS=$(DEMO)/runs TRAIN_FLAGS="$(DEMO_FLAGS)"
	@echo "demo report: $(DEMO)/runs/latest/report.md"

$(DEMO)/set_b.csv: | $(INSTALLED)
	$(BIN)/heartbeat synth --out $(DEMO)

ifneq ($(DATA),$(DEMO))  # the demo's csv has the rule above
ifeq ($(FORMAT),pascal-b)
$(DATA)/set_b.csv:
	@echo "No Dataset B in '$(DATA)/': put set_b.csv and set_b/ there (see data/README.md), pass DATA=folder, or run 'make demo'." >&2
	@exit 1
endif
endif

test: $(INSTALLED) ## run the test suite (synthetic audio; a few tests also use ../shared/data/heartbeat-sounds when present)
	$(BIN)/python -m pytest -q

# bench-predict reuses bench-train's 512-px model (a stand-in: timing only) instead of training another.
bench: ## run every benchmark and print its figures (about 16 minutes on 2 cores)
	$(MAKE) --no-print-directory bench-spectrograms
	rm -rf $(BENCH_DIR) && $(MAKE) --no-print-directory bench-train BENCH_KEEP=$(BENCH_DIR)
	$(MAKE) --no-print-directory bench-predict MODEL=$(BENCH_DIR)/run BENCH_SPECTROGRAMS=$(BENCH_DIR)/spectrograms
	$(MAKE) --no-print-directory bench-cv
	$(MAKE) --no-print-directory bench-beats
	$(MAKE) --no-print-directory bench-explain

bench-spectrograms: $(INSTALLED) ## stage 1 speed vs the published recipe, no-op rerun, peak RSS (real data)
	$(BIN)/python scripts/bench_spectrograms.py --data $(REAL_DATA)

bench-train: $(INSTALLED) ## default training run vs the published recipe's time, peak RSS (real data, stand-in weights)
	$(BIN)/python scripts/bench_train.py --data $(REAL_DATA) $(if $(BENCH_KEEP),--keep $(BENCH_KEEP))

bench-cv: $(INSTALLED) ## 5-fold patient-grouped CV wall time, body features included (real data, stand-in weights)
	$(BIN)/python scripts/bench_cv.py --data $(REAL_DATA)

bench-predict: $(INSTALLED) ## predict cold start vs fastai load_learner, all 656 recordings, peak RSS (real data; trains a stand-in 512-px model unless MODEL=run)
	$(BIN)/python scripts/bench_predict.py --data $(REAL_DATA) $(if $(MODEL),--model $(MODEL)) \
		$(if $(BENCH_SPECTROGRAMS),--spectrograms $(BENCH_SPECTROGRAMS))

bench-beats: $(INSTALLED) ## beat segmentation's time per 10-s recording (predict's heart rate) vs reading it and making its images
	$(BIN)/python scripts/bench_beats.py

bench-explain: $(INSTALLED) ## predict --explain's occlusion saliency per 10-s recording vs plain predict (trains a small heartbeat-recipe model)
	$(BIN)/python scripts/bench_explain.py

# Not part of `make bench`: its point is a GPU beside the CPU, and this machine has none.
bench-device: $(INSTALLED) ## features pass and finetune epoch timed on the CPU and the GPU side by side (stand-in weights; BENCH_WINDOWS=16)
	$(BIN)/python scripts/bench_device.py $(if $(BENCH_WINDOWS),--windows $(BENCH_WINDOWS)) \
		$(if $(BENCH_SPECTROGRAMS),--spectrograms $(BENCH_SPECTROGRAMS))

# The bundled model (heartbeat/models/builtin/) and its MODEL_CARD.md, from REAL_DATA: stage 1, the heartbeat recipe
# on every labelled recording (seed 1), its CV on seeds 3-5 and the device shift for the card. Intermediate outputs
# in data/release (reused when present: delete it to start over). RELEASE_FLAGS: e.g. --check 40 (rebuild and
# compare with the shipped model to 1e-4, replacing nothing).
RELEASE_FLAGS ?=
release-model: | $(INSTALLED) ## rebuild the bundled model and its model card from REAL_DATA (20-40 minutes on 2 cores, mostly the CV)
	$(BIN)/python scripts/release_model.py --data $(REAL_DATA) $(RELEASE_FLAGS)

clean: ## remove generated outputs under data/ (keeps data/README.md and the venv)
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
