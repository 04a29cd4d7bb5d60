# heartbeat: `make spectrograms && make train` reruns the study; `make help` lists every target.
# Targets are real files where they can be: a rerun with nothing changed does no work.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DATA ?= data# folder holding set_b.csv and set_b/ (see data/README.md)
SPECTROGRAMS ?= data/spectrograms# stage 1 output: images/ + manifest.csv
JOBS ?=# worker processes for stage 1 (empty: one per core)
SPECTROGRAM_FLAGS ?=# e.g. --include-unlabelled
RUNS ?= data/runs# training runs; RUNS/latest points to the newest
WEIGHTS ?=# ResNet-34 ImageNet weights file (default: the torch hub cache under TORCH_HOME)
TRAIN_FLAGS ?=# e.g. --no-pretrained, --split random, --mode finetune, --epochs 10
CV_FLAGS ?= --folds 5# e.g. --seeds 1,2,3 --protocol published --balance weights
REAL_DATA ?= ../shared/data/heartbeat-sounds# the benchmarks' data
BENCH_DIR ?= data/bench# make bench keeps its stand-in model and spectrograms here
BENCH_WINDOWS ?=# bench-device: spectrogram windows per pass (empty: the script's default, 16)
DEMO := data/demo
# The demo trains from scratch (no download possible), small and quick: see README "make demo".
DEMO_FLAGS := --no-pretrained --image-size 128 --epochs 6 --bs 8 --name demo

# The torch build on this machine's disk; never let pip resolve another one.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PACKAGE_SOURCES := pyproject.toml $(wildcard heartbeat/*.py)
STAGE1_SOURCES := heartbeat/audio.py heartbeat/dataset.py heartbeat/spectrograms.py

.PHONY: help install spectrograms train cv demo test bench bench-spectrograms bench-train bench-predict bench-cv bench-device clean

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

spectrograms: $(SPECTROGRAMS)/manifest.csv ## stage 1: mel-spectrogram PNGs of every labelled recording in DATA

# A run with failed recordings still writes the manifest of the others, but dates it back so
# that the next `make spectrograms` tries again instead of calling it up to date.
$(SPECTROGRAMS)/manifest.csv: $(DATA)/set_b.csv $(wildcard $(DATA)/set_b/*.wav) $(STAGE1_SOURCES) | $(INSTALLED)
	$(BIN)/heartbeat spectrograms --data $(DATA) --out $(SPECTROGRAMS) $(if $(JOBS),--jobs $(JOBS)) $(SPECTROGRAM_FLAGS) \
		|| { test -f $@ && touch -d @0 $@; exit 1; }

train: $(RUNS)/latest/metrics.json ## stage 2: fine-tune ResNet-34 on the spectrograms, write the run folder and its report

$(RUNS)/latest/metrics.json: $(SPECTROGRAMS)/manifest.csv $(PACKAGE_SOURCES) $(RUNS)/.train-settings | $(INSTALLED)
	$(BIN)/heartbeat train --spectrograms $(SPECTROGRAMS) --runs $(RUNS) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(TRAIN_FLAGS)

# Rewritten only when the training settings change, so that changing WEIGHTS or TRAIN_FLAGS retrains.
$(RUNS)/.train-settings: FORCE
	@mkdir -p $(RUNS)
	@echo '$(SPECTROGRAMS) $(WEIGHTS) $(TRAIN_FLAGS)' | cmp -s - $@ || echo '$(SPECTROGRAMS) $(WEIGHTS) $(TRAIN_FLAGS)' > $@

FORCE:

cv: $(SPECTROGRAMS)/manifest.csv | $(INSTALLED) ## cross-validation by patient (CV_FLAGS), into data/cv-<time>
	$(BIN)/heartbeat cv --spectrograms $(SPECTROGRAMS) --out data/cv-$$(date +%Y%m%d-%H%M%S) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(TRAIN_FLAGS) $(CV_FLAGS)

demo: $(INSTALLED) ## offline quick run: synthetic recordings -> spectrograms -> train (from scratch) -> report, in data/demo
	$(MAKE) --no-print-directory $(DEMO)/set_b.csv
	$(MAKE) --no-print-directory train DATA=$(DEMO) SPECTROGRAMS=$(DEMO)/spectrograms RUNS=$(DEMO)/runs TRAIN_FLAGS="$(DEMO_FLAGS)"
	@echo "demo report: $(DEMO)/runs/latest/report.md"

$(DEMO)/set_b.csv: | $(INSTALLED)
	$(BIN)/heartbeat synth --out $(DEMO)

ifneq ($(DATA),$(DEMO))  # the demo's csv has the rule above
$(DATA)/set_b.csv:
	@echo "No Dataset B in '$(DATA)/': put set_b.csv and set_b/ there (see data/README.md), pass DATA=folder, or run 'make demo'." >&2
	@exit 1
endif

test: $(INSTALLED) ## run the test suite (synthetic audio; a few tests also use ../shared/data/heartbeat-sounds when present)
	$(BIN)/python -m pytest -q

# bench-predict reuses bench-train's 512-px model (a stand-in: timing only) instead of training another.
bench: ## run every benchmark and print its figures (about 16 minutes on 2 cores)
	$(MAKE) --no-print-directory bench-spectrograms
	rm -rf $(BENCH_DIR) && $(MAKE) --no-print-directory bench-train BENCH_KEEP=$(BENCH_DIR)
	$(MAKE) --no-print-directory bench-predict MODEL=$(BENCH_DIR)/run BENCH_SPECTROGRAMS=$(BENCH_DIR)/spectrograms
	$(MAKE) --no-print-directory bench-cv

bench-spectrograms: $(INSTALLED) ## stage 1 speed vs the published recipe, no-op rerun, peak RSS (real data)
	$(BIN)/python scripts/bench_spectrograms.py --data $(REAL_DATA)

bench-train: $(INSTALLED) ## default training run vs the published recipe's time, peak RSS (real data, stand-in weights)
	$(BIN)/python scripts/bench_train.py --data $(REAL_DATA) $(if $(BENCH_KEEP),--keep $(BENCH_KEEP))

bench-cv: $(INSTALLED) ## 5-fold patient-grouped CV wall time, body features included (real data, stand-in weights)
	$(BIN)/python scripts/bench_cv.py --data $(REAL_DATA)

bench-predict: $(INSTALLED) ## predict cold start vs fastai load_learner, all 656 recordings, peak RSS (real data; trains a stand-in 512-px model unless MODEL=run)
	$(BIN)/python scripts/bench_predict.py --data $(REAL_DATA) $(if $(MODEL),--model $(MODEL)) \
		$(if $(BENCH_SPECTROGRAMS),--spectrograms $(BENCH_SPECTROGRAMS))

# Not part of `make bench`: its point is a GPU beside the CPU, and this machine has none.
bench-device: $(INSTALLED) ## features pass and finetune epoch timed on the CPU and the GPU side by side (stand-in weights; BENCH_WINDOWS=16)
	$(BIN)/python scripts/bench_device.py $(if $(BENCH_WINDOWS),--windows $(BENCH_WINDOWS)) \
		$(if $(BENCH_SPECTROGRAMS),--spectrograms $(BENCH_SPECTROGRAMS))

clean: ## remove generated outputs under data/ (keeps data/README.md and the venv)
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
