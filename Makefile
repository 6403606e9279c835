# The appliance's entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Images for the cameras: the shared CIFAR-10 archive when present, else the official download.
SOURCE ?= $(firstword $(wildcard ../shared/data/cifar10-jpg.tar.gz) cifar10)
COUNT ?= 1000
# The model `make run`, `make evaluate` and the ml-server image use: the trained one the repository
# ships (packed weights), or e.g. MODEL=build/model/resnet50.keras after `make model`.
MODEL ?= images/ml-server/model/resnet50.npz
# `make model`'s recipe: the one that trained the shipped model's first stage from scratch (README,
# "The model"); `make model-finetune` trains on from the shipped model itself.
TRAIN_ARGS ?= --stem stock --epochs 12 --warmup-epochs 0.5 --schedule linear --go-no-go 3:0.4

.DEFAULT_GOAL := help
.PHONY: help venv run test test-unit test-gpu-path soak lint services services-stop services-status model model-stride1 model-finetune \
	gpu-bundle gpu-import evaluate bench-serve bench-pipeline bench-producer bench-runtimes clean

help: ## List the targets.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: $(BIN)/.installed ## Create .venv with the pinned packages.

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[server,dev,cloud,runtimes]'
	touch $@

run: venv ## Run the whole pipeline locally (services, server, consumers, cameras) and print the counts.
	$(BIN)/appliance pipeline --source $(SOURCE) --count $(COUNT) --model $(MODEL)

test: venv ## Unit and integration tests (starts Kafka and the MongoDB-protocol server itself).
	$(BIN)/pytest

test-gpu-path: venv ## The GPU training path on this CPU: a Keras/JAX venv (build/jax-venv), a tiny run, the import.
	APPLIANCE_TEST_GPU_PATH=1 $(BIN)/pytest -v tests/integration/test_gpu_path.py

soak: venv ## Minutes of steady load: lag bounded, memory at start and end (APPLIANCE_SOAK_RATE, _MINUTES).
	$(BIN)/pytest -m soak -s tests/integration/test_soak.py

test-unit: venv ## Run the tests that need no services.
	$(BIN)/pytest tests/unit

lint: venv ## ruff check and ruff format --check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

services: venv ## Start local Kafka and the MongoDB-protocol server (loopback).
	$(BIN)/appliance services up

services-stop: venv ## Stop them and remove their data.
	$(BIN)/appliance services down

services-status: venv ## Show whether they are running and healthy.
	$(BIN)/appliance services status

model: venv ## Train the ResNet50 on CIFAR-10 into build/model/ (TRAIN_ARGS; resumes if interrupted).
	$(BIN)/appliance train --data $(SOURCE) --out build/model/resnet50.keras $(TRAIN_ARGS)

# The shipped model's second stage: the stride1 stem (16x16 into the first stage) trained on from
# the first stage's stock-stem weights (same shapes), 6 epochs.
STAGE1 ?= build/model/resnet50.keras
STRIDE1_ARGS ?= --stem stride1 --epochs 6 --warmup-epochs 0.3 --schedule linear --lr 0.08 --go-no-go 2:0.6
model-stride1: venv ## Stage 2 of the shipped model: the stride1 stem from STAGE1 (make model) into build/model-stride1/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-stride1/resnet50.keras --init-from $(STAGE1) $(STRIDE1_ARGS)

# One session's run from the shipped model, which a fresh clone has (build/ may not outlive a
# session): 8 epochs at a peak of 0.04, linear to zero; the README's "Toward 90%" lists every run
# so far. About 2 h on an idle 2-core AVX-512 machine (13 to 17 minutes an epoch). Its second run
# (7 epochs from the shipped 85.43%) gained 0.06 points: the stride1 stem has levelled off here.
FINETUNE_FROM ?= images/ml-server/model/resnet50.npz
FINETUNE_ARGS ?= --stem stride1 --epochs 8 --warmup-epochs 0.2 --schedule linear --lr 0.04 --go-no-go 2:0.74
model-finetune: venv ## The shipped model trained on for 8 epochs (one session's job), into build/model-finetune/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-finetune/resnet50.keras --init-from $(FINETUNE_FROM) $(FINETUNE_ARGS)

gpu-bundle: venv ## Pinned Keras wheels + the CIFAR-10 archive for a GPU run, in build/gpu-bundle (carry it).
	$(BIN)/python -m appliance.ml.gpu_bundle

gpu-import: venv ## The artifact from a GPU run's output folder: make gpu-import GPU_OUT=DIR
	@test -n "$(GPU_OUT)" || { echo "gpu-import: say where the GPU run's files are: make gpu-import GPU_OUT=DIR"; exit 2; }
	$(BIN)/appliance model import-weights $(GPU_OUT) --out build/model/resnet50.keras --data $(SOURCE)

evaluate: venv ## Evaluate MODEL (default: the shipped one) on the test split; the plot goes to build/evaluate.
	$(BIN)/appliance evaluate $(MODEL) $(SOURCE)

bench-serve: venv ## Benchmark: in-process model vs the server vs a naive server.
	$(BIN)/appliance bench serve

bench-pipeline: venv ## Benchmark: the whole pipeline in rising open-loop steps; table, JSON, plots in build/bench.
	$(BIN)/appliance bench pipeline --source $(SOURCE)

bench-runtimes: venv ## Benchmark: the served model under TensorFlow, ONNX Runtime, OpenVINO fp32/bf16/int8; build/bench/runtimes.
	$(BIN)/appliance bench runtimes --model $(MODEL) --data $(SOURCE)

bench-producer: venv ## Benchmark: the cameras' producer against kafka-producer-perf-test, same broker and record size.
	$(BIN)/appliance bench producer --source $(SOURCE)

clean: ## Remove build outputs (not the venv).
	rm -rf build

# Each part of the build keeps its targets beside its files.
-include images/containers.mk packer/images.mk
