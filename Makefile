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
PY_STAMP := $(VENV)/.tools-1
DEVICE ?= auto
DATA ?= data/synth
BIN := target/release/ekphrasis
EK := $(BIN) --device $(DEVICE)

ifeq ($(origin LIBTORCH), undefined)
LIBTORCH_DEP := $(TORCH_STAMP)
export LIBTORCH = $(shell cat $(VENV)/.libtorch-path 2>/dev/null)
else
LIBTORCH_DEP :=
endif

# An interrupted run (a checkpoint but no done.json) is resumed, not restarted.
resume = $(if $(wildcard $(1)/checkpoints/latest.json),--resume,)

.PHONY: all libtorch pytools build test demo data-synth tokenizer train-captioner \
        eval-captioner tensorboard fmt lint clean

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

## Python tools the tests use to check our files independently (tokenizers, tensorboard)
pytools: $(PY_STAMP)
$(PY_STAMP): | $(TORCH_STAMP)
	@echo "==> installing tokenizers and tensorboard into $(VENV)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check tokenizers tensorboard numpy
	@touch $@

build: $(LIBTORCH_DEP)
	@echo "==> building ekphrasis (release) against $(LIBTORCH)"
	@cargo build --release --quiet

## test: unit + integration tests on tiny data the tests make themselves
test: $(LIBTORCH_DEP) $(PY_STAMP)
	@echo "==> running the test suite"
	EKPHRASIS_PYTHON=$(PYTHON) cargo test --release

## data-synth: render the embedded dataset (5,000 paintings, 64 px; seconds)
data-synth: $(DATA)/captions.json
$(DATA)/captions.json: | build
	$(EK) data synth --out $(DATA) --n 5000 --size 64 --seed 0

## tokenizer: byte-level BPE on the training captions
tokenizer: $(DATA)/tokenizer.json
$(DATA)/tokenizer.json: $(DATA)/captions.json | build
	$(EK) tokenizer train --data $(DATA) -c experiments/demo/tokenizer.yaml

## train-captioner: image -> paragraph on the embedded set (<= 5 min on 2 cores)
train-captioner: runs/captioner/demo/done.json
runs/captioner/demo/done.json: $(DATA)/tokenizer.json | build
	$(EK) train captioner -c experiments/demo/captioner.yaml --run runs/captioner/demo $(call resume,runs/captioner/demo)

eval-captioner: runs/captioner/demo/done.json
	$(EK) eval captioner --run runs/captioner/demo --split test

## demo: every stage that exists, on the embedded set
demo: build data-synth tokenizer train-captioner eval-captioner
	@echo "==> demo finished: see runs/ (make tensorboard to browse)"

tensorboard: $(PY_STAMP)
	$(VENV)/bin/tensorboard --logdir runs --bind_all

fmt:
	cargo fmt

lint: $(LIBTORCH_DEP)
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

clean:
	cargo clean
