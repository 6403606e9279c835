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
# `make model`'s recipe: the one that trained the shipped model (README, "The model"). E.g.
# TRAIN_ARGS="--init-from $(MODEL) ..." trains on from it; --stem cifar is the way toward 90%.
TRAIN_ARGS ?= --stem stock --epochs 12 --warmup-epochs 0.5 --schedule linear --go-no-go 3:0.4

.DEFAULT_GOAL := help
.PHONY: help venv run test test-unit test-gpu-path soak lint services services-stop services-status model model-stride1 model-stage3 model-stage4 model-stage5 model-stage6 model-cutout model-long \
	gpu-bundle gpu-import evaluate bench-serve bench-pipeline bench-producer bench-runtimes clean

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

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

# Its third stage: the same stem, 6 more epochs from the second stage's weights at half the peak
# (the shipped run started from them as packed in commit 0679493: the same weights in float16).
STAGE2 ?= build/model-stride1/resnet50.keras
STAGE3_ARGS ?= --stem stride1 --epochs 6 --warmup-epochs 0.2 --schedule linear --lr 0.04 --go-no-go 2:0.74
model-stage3: venv ## Stage 3 of the shipped model: STAGE2 (make model-stride1) trained on into build/model-stride1b/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-stride1b/resnet50.keras --init-from $(STAGE2) $(STAGE3_ARGS)

# Its fourth stage: full detail. The fullres stem (stride1 without the max-pool: 32x32 into the
# first stage, the same weights' shapes) from the third stage packed (`appliance model pack
# build/model-stride1b/resnet50.keras --out build/model-stride1b/packed/resnet50.npz`; the run of
# 2026-12-05 started from that file's weights), 2 epochs: 82.78%, not shipped (README). Its epoch-1
# probe was 75.4%: a stem change costs accuracy first, so the bar is 70% (it ran with 80% and went on).
STAGE3 ?= build/model-stride1b/packed/resnet50.npz
STAGE4_ARGS ?= --stem fullres --epochs 2 --warmup-epochs 0.2 --schedule linear --lr 0.04 --go-no-go 1:0.70
model-stage4: venv ## Stage 4 of the shipped model: the fullres stem from STAGE3 into build/model-fullres/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-fullres/resnet50.keras --init-from $(STAGE3) $(STAGE4_ARGS)

STAGE4 ?= build/model-fullres/resnet50.keras
STAGE5_ARGS ?= --stem fullres --epochs 2 --warmup-epochs 0.1 --schedule linear --lr 0.03
model-stage5: venv ## Stage 5: STAGE4's fullres model trained on (more epochs at full detail) into build/model-fullres2/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-fullres2/resnet50.keras --init-from $(STAGE4) $(STAGE5_ARGS)

# Its sixth: 2 more epochs at full detail from the fifth, at two thirds of its peak (the fifth's
# restart at 0.03 cost 4.5 points of probe in its first epoch). The run of 2026-12-05: 83.59%, the
# fifth's figure again; not shipped (README).
STAGE5 ?= build/model-fullres2/resnet50.keras
STAGE6_ARGS ?= --stem fullres --epochs 2 --warmup-epochs 0.1 --schedule linear --lr 0.02
model-stage6: venv ## Stage 6: STAGE5's fullres model trained on into build/model-fullres3/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-fullres3/resnet50.keras --init-from $(STAGE5) $(STAGE6_ARGS)

# The third stage's stride1 model (the best so far, 84.60%), 2 more epochs with a 16-px Cutout:
# a regulariser, as training accuracy runs 6 points over test accuracy at every stage since. The
# run of 2026-12-05: 84.08%, under its start; two epochs are too short for it (README).
CUTOUT_ARGS ?= --stem stride1 --epochs 2 --warmup-epochs 0.1 --schedule linear --lr 0.02 --cutout 16
model-cutout: venv ## STAGE3's stride1 model, 2 epochs with a 16-px Cutout, into build/model-cutout/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-cutout/resnet50.keras --init-from $(STAGE3) $(CUTOUT_ARGS)

# The long run, over several sessions: the third stage's stride1 model (84.60%) for 14 epochs at a
# peak of 0.05, warm-up 0.3 epoch, linear to zero. Every stage so far ended with training accuracy
# near 90%: the model is under-trained, and 2-epoch restarts spend their time climbing back from the
# warm-up. An epoch is 16-25 minutes here, so this is two sessions' main job; the same command
# resumes from the last checkpoint (every 15 minutes, and where SIGTERM stopped it) while build/
# lasts: a new session's checkout here has none (make model-finetune fits one). The probe falls
# after a restart at this peak: bar 70%.
LONG_ARGS ?= --stem stride1 --epochs 14 --warmup-epochs 0.3 --schedule linear --lr 0.05 --go-no-go 2:0.70
model-long: venv ## STAGE3's stride1 model, 14 epochs (a multi-session run; resumes), into build/model-long/.
	$(BIN)/appliance train --data $(SOURCE) --out build/model-long/resnet50.keras --init-from $(STAGE3) $(LONG_ARGS)

# One session's run from the shipped model, which a fresh clone has (the stages above start from
# weights under build/, which a new session's checkout does not keep): 8 epochs at stage 3's peak
# of 0.04, linear to zero. About 2 h on an idle 2-core AVX-512 machine (13 minutes an epoch).
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
