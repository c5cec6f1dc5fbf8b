# ekphrasis: every target installs what it needs first (libtorch into a cache outside
# the checkout), so `make demo` and `make test` work on a fresh machine.
#
#   make demo       the whole spine on the embedded dataset (2-core CPU, minutes)
#   make test       the test suite (tiny data, a few minutes warm)
#
# Set LIBTORCH to use your own libtorch; EKPHRASIS_CACHE moves the venv (default
# ~/.cache/ekphrasis). DEVICE=cuda runs the stages on a GPU.

SHELL := /bin/bash
EKPHRASIS_CACHE ?= $(HOME)/.cache/ekphrasis
VENV := $(EKPHRASIS_CACHE)/venv
PYTHON := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
PY_STAMP := $(VENV)/.tools-3
DEVICE ?= auto
DATA ?= data/synth
BIN := target/release/ekphrasis
# NPROC=N trains data-parallel: N processes under torchrun (Gloo on the CPU, NCCL on
# CUDA); the config's batch is the global batch. Other commands run in one process.
NPROC ?= 1
# `make demo` and `make pipeline` run JOBS stages at once (JOBS=1: one after another),
# splitting the cores between them (`--share-cores`: a stage left alone takes them all)
# and printing a line per stage every 30 s. SIDE_BY_SIDE is set on the make they start.
JOBS ?= $(if $(filter 1,$(NPROC)),2,1)
SIDE_BY_SIDE ?=
PAR := $(if $(and $(SIDE_BY_SIDE),$(filter-out 1,$(JOBS))),--share-cores runs/.cores --progress lines,)
EK := $(BIN) --device $(DEVICE) $(PAR)
EK_TRAIN := $(if $(filter 1,$(NPROC)),$(EK),scripts/ekphrasis-torchrun --nproc-per-node=$(NPROC) -- --device $(DEVICE))

ifeq ($(origin LIBTORCH), undefined)
LIBTORCH_DEP := $(TORCH_STAMP)
export LIBTORCH = $(shell cat $(VENV)/.libtorch-path 2>/dev/null)
else
LIBTORCH_DEP :=
endif

# An interrupted run (a checkpoint but no done.json) is resumed, not restarted.
# A two-phase run (captioner, facts VAE) may have stopped in its first phase, whose
# checkpoints live in a subfolder.
resume = $(if $(wildcard $(1)/checkpoints/latest.json $(1)/*/checkpoints/latest.json),--resume,)

.PHONY: all libtorch pytools build test demo data-synth tokenizer train-captioner \
        eval-captioner train-clip eval-clip train-probe eval-probe train-align train-t2i eval-t2i \
        cycle pipeline pipeline-stages demo-stages demo-scenes export serve bench-serve screenshots bench bench-ddp fuzz train-invertible eval-invertible train-unified train-unified-scenes eval-unified tensorboard fmt lint clean

all: build

## libtorch: a venv with torch==2.13.0 from PyPI (~4.7 GB once; instant afterwards)
libtorch: $(LIBTORCH_DEP)
$(TORCH_STAMP):
	@echo "==> installing torch==$(TORCH_VERSION) into $(VENV) (once; ~4.7 GB)"
	@mkdir -p $(EKPHRASIS_CACHE)
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	@$(PYTHON) -c 'import torch, pathlib; print(pathlib.Path(torch.__file__).parent)' > $(VENV)/.libtorch-path
	@touch $@

## Python tools the tests and the benchmark use (tokenizers, tensorboard, numpy, pillow, yaml)
pytools: $(PY_STAMP)
$(PY_STAMP): | $(TORCH_STAMP)
	@echo "==> installing tokenizers and tensorboard into $(VENV)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check tokenizers tensorboard numpy pillow pyyaml
	@touch $@

build: $(LIBTORCH_DEP)
	@echo "==> building ekphrasis (release) against $(LIBTORCH)"
	@cargo build --release --quiet

## test: unit + integration tests on tiny data the tests make themselves
test: $(LIBTORCH_DEP) $(PY_STAMP)
	@echo "==> running the test suite"
	EKPHRASIS_PYTHON=$(PYTHON) cargo test --release

## fuzz: every fuzz and fault suite in full (FUZZ_SECONDS per parser; 2 s in make test), then the table of docs/reliability.md
FUZZ_SECONDS ?= 60
fuzz: $(LIBTORCH_DEP)
	@mkdir -p target
	set -o pipefail; EKPHRASIS_FUZZ_SECONDS=$(FUZZ_SECONDS) cargo test --release --test fuzz --test fuzz_numbers \
	  --test reliability --test prepare -- --nocapture --test-threads 1 2>&1 | tee target/fuzz.log
	@echo; echo "| area | inputs tried | clean errors | ran | panics, aborts, hangs | data loss |"
	@echo "|---|---:|---:|---:|---:|---:|"
	@grep -o 'FUZZ|.*' target/fuzz.log | awk -F'|' '{printf "| %s | %s | %s | %s | %s | %s |\n", $$2, $$3, $$4, $$5, $$6, $$7; t+=$$3; e+=$$4; r+=$$5; p+=$$6} END {printf "| **all** | %d | %d | %d | %d | |\n", t, e, r, p}'

## data-synth: render the embedded dataset (5,000 paintings, 64 px; seconds)
data-synth: $(DATA)/captions.json
$(DATA)/captions.json: | build
ifeq ($(DATA),data/synth)
	$(EK) data synth --out $(DATA) --n 5000 --size 64 --seed 0
else
	@echo "error: $(DATA) is not a prepared dataset (no captions.json): run ekphrasis data prepare --out $(DATA) first"; exit 1
endif

## tokenizer: byte-level BPE on the training captions
tokenizer: $(DATA)/tokenizer.json
$(DATA)/tokenizer.json: $(DATA)/captions.json | build
	$(EK) tokenizer train --data $(DATA) -c experiments/$(if $(filter data/synth,$(DATA)),demo,general)/tokenizer.yaml

## train-align: the general path's conditioning model (image and text encoders matched
## by sentence, place and words-as-labels terms; ~4 min on 2 cores)
train-align: runs/align/demo/done.json
runs/align/demo/done.json: $(DATA)/tokenizer.json | build
	$(EK_TRAIN) train align -c experiments/general/align.yaml --run runs/align/demo $(call resume,runs/align/demo)

## train-captioner: image -> paragraph from the align run's image encoder, fine-tuned (3,000 steps; ~6 min alone on 2 cores)
train-captioner: runs/captioner/demo/done.json
runs/captioner/demo/done.json: runs/align/demo/done.json | build
	$(EK_TRAIN) train captioner -c experiments/general/captioner.yaml --run runs/captioner/demo $(call resume,runs/captioner/demo)

eval-captioner: runs/captioner/demo/eval_test/metrics.json
runs/captioner/demo/eval_test/metrics.json: runs/captioner/demo/done.json
	$(EK) eval captioner --run runs/captioner/demo --split test

## train-clip: contrastive image-text embedding, the evaluators' encoder (~3 min)
train-clip: runs/clip/demo/done.json
runs/clip/demo/done.json: $(DATA)/tokenizer.json | build
	$(EK_TRAIN) train clip -c experiments/demo/clip.yaml --run runs/clip/demo $(call resume,runs/clip/demo)

eval-clip: runs/clip/demo/eval_test/metrics.json
runs/clip/demo/eval_test/metrics.json: runs/clip/demo/done.json
	$(EK) eval clip --run runs/clip/demo --split test

## train-probe: attribute classifier that grades generated images (~2 min)
train-probe: runs/probe/demo/done.json
runs/probe/demo/done.json: $(DATA)/captions.json | build
	$(EK_TRAIN) train probe -c experiments/demo/probe.yaml --run runs/probe/demo $(call resume,runs/probe/demo)

eval-probe: runs/probe/demo/eval_test/metrics.json
runs/probe/demo/eval_test/metrics.json: runs/probe/demo/done.json
	$(EK) eval probe --run runs/probe/demo --split test

## train-t2i: text -> image generator painting from the align run's frozen text side,
## MODEL=vae (default, runs/t2i/demo; ~5 min), gan or diffusion (runs/t2i/gan,
## runs/t2i/diffusion; longer, see docs/results.md)
MODEL ?= vae
T2I_RUN := runs/t2i/$(if $(filter vae,$(MODEL)),demo,$(MODEL))
train-t2i: $(T2I_RUN)/done.json
$(T2I_RUN)/done.json: runs/align/demo/done.json runs/clip/demo/done.json runs/probe/demo/done.json | build
	$(EK_TRAIN) train t2i -c experiments/general/t2i-$(MODEL).yaml --set eval.probe=runs/probe/demo --run $(T2I_RUN) $(call resume,$(T2I_RUN))

eval-t2i: $(T2I_RUN)/eval_test/metrics.json
$(T2I_RUN)/eval_test/metrics.json: $(T2I_RUN)/done.json
	$(EK) eval t2i --run $(T2I_RUN) --split test

## train-invertible: the invertible bridge (autoencoder + invertible MLP on the align
## run's sentence vector; minutes). experiments/demo/invertible.yaml embeds with the
## contrastive evaluator's text tower instead, as Menon et al. use CLIP's.
train-invertible: runs/invertible/demo/done.json
runs/invertible/demo/done.json: runs/align/demo/done.json runs/clip/demo/done.json runs/probe/demo/done.json | build
	$(EK_TRAIN) train invertible -c experiments/general/invertible.yaml --run runs/invertible/demo $(if $(wildcard runs/invertible/demo/config.yaml),--resume,)

eval-invertible: runs/invertible/demo/eval_test/metrics.json
runs/invertible/demo/eval_test/metrics.json: runs/invertible/demo/done.json
	$(EK) eval invertible --run runs/invertible/demo --split test

## train-unified: the one-seed-two-outputs generator reading the align run's caption
## features off its latent (general path; ~6 min); generate with
## `ekphrasis generate --seeds 0..30`. train-unified-scenes: the one reading scene facts
## (runs/unified/scenes).
train-unified: runs/unified/demo/done.json
runs/unified/demo/done.json: runs/align/demo/done.json runs/clip/demo/done.json runs/probe/demo/done.json | build
	$(EK_TRAIN) train unified -c experiments/general/unified.yaml --set eval.probe=runs/probe/demo --run runs/unified/demo $(call resume,runs/unified/demo)
train-unified-scenes: runs/unified/scenes/done.json
runs/unified/scenes/done.json: runs/clip/demo/done.json runs/probe/demo/done.json | build
	$(EK_TRAIN) train unified -c experiments/scenes/unified.yaml --run runs/unified/scenes $(call resume,runs/unified/scenes)

eval-unified: runs/unified/demo/eval_prior/metrics.json
runs/unified/demo/eval_prior/metrics.json: runs/unified/demo/done.json
	$(EK) eval unified --run runs/unified/demo --n 100

## cycle: image -> caption -> image on the test split, and the report (with the
## scene-supervised path's headline beside it once `make demo-scenes` has run: the
## report is rewritten when that one is newer)
SCENES_HEADLINE := $(wildcard reports/scenes/headline.json)
cycle: reports/demo/index.html
reports/demo/index.html: runs/captioner/demo/eval_test/metrics.json runs/t2i/demo/eval_test/metrics.json runs/clip/demo/done.json runs/probe/demo/done.json $(SCENES_HEADLINE)
	$(EK) cycle --captioner runs/captioner/demo --generator runs/t2i/demo --clip runs/clip/demo --probe runs/probe/demo --split test --out reports/demo $(if $(SCENES_HEADLINE),--beside reports/scenes,)

## pipeline: any prepared dataset (DATA=data/<name>) through the general path, no scene
## facts: tokenizer, contrastive model, align, captioner, VAE, their evaluations, the cycle and
## the export (the dataset's tokenizer is trained if it has none). Runs go to runs/<stage>/<name>, the report to reports/<name>; a finished
## stage is skipped and an interrupted one resumed. PROFILE=cpu (64 px, minutes per stage
## on 2 cores), gpu (128 px, 30-60 epochs of the training split: experiments/gpu) or
## smoke (a few steps per stage, for a first look).
PROFILE ?= cpu
ifeq ($(filter cpu gpu smoke,$(PROFILE)),)
$(error PROFILE=$(PROFILE): choose cpu, gpu or smoke)
endif
# Runs and reports are named after the dataset, and the profile when it is not cpu
# (runs/clip/mine-gpu): a smoke run never stands in for a real one.
NAME = $(notdir $(patsubst %/,%,$(DATA)))$(if $(filter cpu,$(PROFILE)),,-$(PROFILE))
G := experiments/$(if $(filter gpu,$(PROFILE)),gpu,general)
SMOKE := $(if $(filter smoke,$(PROFILE)),--set train.steps=4 --set train.eval_every=4,)
SMOKE_PRE := $(if $(filter smoke,$(PROFILE)),--set pretrain.train.steps=4 --set pretrain.train.eval_every=4,)
ON = --set data=$(DATA) $(SMOKE)
pipeline: build $(DATA)/tokenizer.json
	@$(MAKE) --no-print-directory -j$(JOBS) SIDE_BY_SIDE=1 pipeline-stages
	@echo "==> $(NAME): report in reports/$(NAME)/index.html, models in models/$(NAME)"
	@for f in runs/clip/$(NAME)/eval_test runs/captioner/$(NAME)/eval_test runs/t2i/$(NAME)/eval_test; do \
	  echo "--- $$f/metrics.json"; cat $$f/metrics.json; echo; done
# The align model first: the captioner and the generator wait for it.
pipeline-stages: runs/align/$(NAME)/done.json runs/clip/$(NAME)/done.json \
          reports/$(NAME)/index.html runs/captioner/$(NAME)/eval_test/metrics.json \
          runs/clip/$(NAME)/eval_test/metrics.json runs/t2i/$(NAME)/eval_test/metrics.json \
          models/$(NAME)/captioner/manifest.json models/$(NAME)/t2i/manifest.json
runs/clip/$(NAME)/done.json: $(DATA)/tokenizer.json
	$(EK_TRAIN) train clip -c $(G)/clip.yaml $(ON) --run runs/clip/$(NAME) $(call resume,runs/clip/$(NAME))
runs/align/$(NAME)/done.json: $(DATA)/tokenizer.json
	$(EK_TRAIN) train align -c $(G)/align.yaml $(ON) $(SMOKE_PRE) --run runs/align/$(NAME) $(call resume,runs/align/$(NAME))
runs/captioner/$(NAME)/done.json: runs/align/$(NAME)/done.json
	$(EK_TRAIN) train captioner -c $(G)/captioner.yaml $(ON) --set encoder_from=runs/align/$(NAME) --run runs/captioner/$(NAME) $(call resume,runs/captioner/$(NAME))
runs/t2i/$(NAME)/done.json: runs/align/$(NAME)/done.json runs/clip/$(NAME)/done.json
	$(EK_TRAIN) train t2i -c $(G)/t2i-vae.yaml $(ON) --set model.align.run=runs/align/$(NAME) --set eval.clip=runs/clip/$(NAME) --run runs/t2i/$(NAME) $(call resume,runs/t2i/$(NAME))
runs/clip/$(NAME)/eval_test/metrics.json: runs/clip/$(NAME)/done.json
	$(EK) eval clip --run runs/clip/$(NAME) --split test
runs/captioner/$(NAME)/eval_test/metrics.json: runs/captioner/$(NAME)/done.json
	$(EK) eval captioner --run runs/captioner/$(NAME) --split test
runs/t2i/$(NAME)/eval_test/metrics.json: runs/t2i/$(NAME)/done.json
	$(EK) eval t2i --run runs/t2i/$(NAME) --split test
reports/$(NAME)/index.html: runs/captioner/$(NAME)/eval_test/metrics.json runs/t2i/$(NAME)/eval_test/metrics.json runs/clip/$(NAME)/done.json
	$(EK) cycle --captioner runs/captioner/$(NAME) --generator runs/t2i/$(NAME) --clip runs/clip/$(NAME) --split test --out reports/$(NAME)
models/$(NAME)/captioner/manifest.json: runs/captioner/$(NAME)/done.json
	$(EK) export --run runs/captioner/$(NAME) --kind captioner --out models/$(NAME)/captioner
models/$(NAME)/t2i/manifest.json: runs/t2i/$(NAME)/done.json
	$(EK) export --run runs/t2i/$(NAME) --kind t2i --out models/$(NAME)/t2i

## export: the demo models as TorchScript (models/<name>: *.pt, manifest.json,
## tokenizer.json) for `caption/draw --model`, `cycle IMAGE…`, `embed`, `retrieve`, Python
EXPORTS := models/captioner/manifest.json models/t2i/manifest.json models/clip/manifest.json models/probe/manifest.json
export: $(EXPORTS)
models/captioner/manifest.json: runs/captioner/demo/done.json
	$(EK) export --run runs/captioner/demo --out models/captioner
models/t2i/manifest.json: runs/t2i/demo/done.json
	$(EK) export --run runs/t2i/demo --out models/t2i
models/clip/manifest.json: runs/clip/demo/done.json
	$(EK) export --run runs/clip/demo --out models/clip
models/probe/manifest.json: runs/probe/demo/done.json
	$(EK) export --run runs/probe/demo --out models/probe

## serve: the web app over the exported models on http://127.0.0.1:8080 (PORT=…);
## the one-seed view appears when runs/unified/demo exists
PORT ?= 8080
SERVE_ARGS = --models models --report reports/demo $(if $(wildcard runs/unified/demo/done.json),--unified runs/unified/demo,)
serve: export reports/demo/index.html
	$(EK) serve $(SERVE_ARGS) --port $(PORT)

## bench-serve: describe / paint latency and 50 clients for 30 s against the demo exports (~1 min)
bench-serve: export
	$(EK) bench serve $(SERVE_ARGS) --image $(firstword $(wildcard $(DATA)/images/*.png))

## screenshots: the page's four views, driven in headless Chromium over the demo models (docs/serve/)
screenshots: export reports/demo/index.html
	EKPHRASIS_SCREENSHOT_MODELS=models EKPHRASIS_SCREENSHOT_REPORT=reports/demo \
	EKPHRASIS_SCREENSHOT_UNIFIED=$(if $(wildcard runs/unified/demo/done.json),runs/unified/demo,) \
	EKPHRASIS_SCREENSHOT_IMAGE=$(firstword $(wildcard $(DATA)/images/*.png)) EKPHRASIS_SCREENSHOTS=docs/serve \
	cargo test --release --test serve the_page_works_in_headless_chromium -- --nocapture

## bench: ekphrasis vs the PyTorch-in-Python reference (bench/reference.py), side by side:
## bench/results.json + a table (~5 min; QUICK=1 for a one-minute version)
## bench-ddp: data-parallel (NPROC processes, Gloo) against one process with NPROC threads
bench-ddp: build $(PY_STAMP) $(DATA)/tokenizer.json
	BIN=$(BIN) DATA=$(DATA) NPROC=$(if $(filter 1,$(NPROC)),2,$(NPROC)) $(if $(STEPS),STEPS=$(STEPS),) bench/ddp.sh

bench: build $(PY_STAMP)
	$(PYTHON) bench/run.py --bin $(BIN) $(if $(QUICK),--quick,)

## demo: the general path on the embedded set (every model learns from images and
## paragraphs alone; the probe and the caption parser only grade), then the report and
## the exported models. JOBS stages at once (the align model, which the captioner and
## the generator wait for, first).
demo: build data-synth tokenizer
	@$(MAKE) --no-print-directory -j$(JOBS) SIDE_BY_SIDE=1 demo-stages
	@echo "==> demo finished: open reports/demo/index.html (make tensorboard to browse runs/; exported models in models/)"
demo-stages: train-align train-clip train-probe train-captioner train-t2i eval-captioner eval-clip eval-probe eval-t2i cycle export

## demo-scenes: the scene-supervised path, an embedded-set extension and upper bound: the
## captioner's encoder and the VAE's text reader also learn from the scene facts
## (experiments/scenes; runs/*/scenes, reports/scenes). Its figures join the demo
## report when both have run.
demo-scenes: build data-synth tokenizer train-clip train-probe runs/captioner/scenes/eval_test/metrics.json runs/t2i/scenes/eval_test/metrics.json reports/scenes/index.html
	@echo "==> scene-supervised path finished: reports/scenes/index.html"
runs/captioner/scenes/done.json: $(DATA)/tokenizer.json | build
	$(EK_TRAIN) train captioner -c experiments/scenes/captioner.yaml --run runs/captioner/scenes $(call resume,runs/captioner/scenes)
runs/t2i/scenes/done.json: runs/clip/demo/done.json runs/probe/demo/done.json | build
	$(EK_TRAIN) train t2i -c experiments/scenes/t2i-vae.yaml --run runs/t2i/scenes $(call resume,runs/t2i/scenes)
runs/captioner/scenes/eval_test/metrics.json: runs/captioner/scenes/done.json
	$(EK) eval captioner --run runs/captioner/scenes --split test
runs/t2i/scenes/eval_test/metrics.json: runs/t2i/scenes/done.json
	$(EK) eval t2i --run runs/t2i/scenes --split test
reports/scenes/index.html: runs/captioner/scenes/eval_test/metrics.json runs/t2i/scenes/eval_test/metrics.json runs/clip/demo/done.json runs/probe/demo/done.json
	$(EK) cycle --captioner runs/captioner/scenes --generator runs/t2i/scenes --clip runs/clip/demo --probe runs/probe/demo --split test --out reports/scenes $(if $(wildcard reports/demo/headline.json),--beside reports/demo,)

tensorboard: $(PY_STAMP)
	$(VENV)/bin/tensorboard --logdir runs --bind_all

fmt:
	cargo fmt

lint: $(LIBTORCH_DEP)
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean
