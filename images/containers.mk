# Container images of the appliance (included by the Makefile): build them with no container
# registry in reach, save them for the VM bake, run the whole pipeline as containers on one host.
# Images: appliance/<image>:<version from pyproject.toml> and :latest. See images/*/Dockerfile.

.PHONY: docker-engine base-image containers container-producer container-ml-server \
	container-kafka container-mongodb container-sizes container-pins save up down status \
	bench-pipeline-containers e2e-containers containers-clean

DOCKER ?= docker
IMAGE_PREFIX ?= appliance
BASE_IMAGE ?= debian:bookworm-slim
# official: FROM mongo:7 (needs Docker Hub); ferretdb: FerretDB 1.24 built here; auto: official
# when mongo:7 is present or can be pulled, else ferretdb.
MONGODB_FLAVOR ?= auto
MONGO_IMAGE ?= mongo:7
# The model the ml-server image serves: MODEL (the Makefile's: the trained one the repository
# ships), or any artifact, e.g. CONTAINER_MODEL=build/model/resnet50.keras after `make model`.
CONTAINER_MODEL ?= $(MODEL)
# The image carries it as a graph artifact, which OpenVINO serves without TensorFlow: written here
# from CONTAINER_MODEL, in a folder named after its path (another model, another graph).
CONTAINER_GRAPH = $(CTR_DIR)/graph/$(subst /,_,$(basename $(CONTAINER_MODEL)))/resnet50.onnx
# The images the producer image carries: the test split of SOURCE (the shared CIFAR-10 archive
# here, else the official download), about 3 MB.
CAMERA_IMAGES ?= $(CTR_DIR)/cameras/cifar10-test.tar.gz
# Compression of the tarballs `make save` writes (gzip: what `docker load` of Docker 20.10 reads).
SAVE_GZIP_LEVEL ?= 6
# More `docker build` options, e.g. --no-cache (a cold build) or --pull.
CONTAINER_BUILD_FLAGS ?=
STACK_PROJECT ?= appliance
STACK_ENV ?= build/stack/appliance.env

CTR_DIR := build/containers
CTX_DIR := $(CTR_DIR)/context
DIST_DIR := build/dist
CONTAINER_IMAGES := producer ml-server kafka mongodb
CTR_SPACE := $(subst ,, )
APPLIANCE_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)
# The commit (-dirty with local changes) and its time, for the images' labels; worked out on first
# use only, like CONTAINER_BUILDKIT below.
APPLIANCE_COMMIT = $(eval APPLIANCE_COMMIT := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell \
	git status --porcelain 2>/dev/null | grep -q . && echo -dirty))$(APPLIANCE_COMMIT)
APPLIANCE_CREATED = $(eval APPLIANCE_CREATED := $(shell git log -1 --format=%cI 2>/dev/null || echo unknown))$(APPLIANCE_CREATED)
APPLIANCE_WHEEL := $(DIST_DIR)/appliance-$(APPLIANCE_VERSION)-py3-none-any.whl
include images/versions.env

# BuildKit where this docker CLI has it (buildx, or the built-in one of 18.09-20.10 clients); the
# Dockerfiles also build with the classic builder. Worked out on first use only, so other targets
# never call docker.
CTR_BUILDKIT_PROBE = $(shell $(DOCKER) buildx version >/dev/null 2>&1 && echo 1 || \
	$(DOCKER) version --format '{{.Client.Version}}' 2>/dev/null | grep -qE '^(18[.]09|19[.]|20[.])' \
	&& echo 1 || echo 0)
CONTAINER_BUILDKIT ?= $(eval CONTAINER_BUILDKIT := $(CTR_BUILDKIT_PROBE))$(CONTAINER_BUILDKIT)
DOCKER_BUILD = DOCKER_BUILDKIT=$(CONTAINER_BUILDKIT) $(DOCKER) build \
	$(if $(filter 1,$(CONTAINER_BUILDKIT)),--progress=plain) $(CONTAINER_BUILD_FLAGS) \
	--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg VERSION=$(APPLIANCE_VERSION) \
	--build-arg GIT_COMMIT=$(APPLIANCE_COMMIT) --build-arg CREATED=$(APPLIANCE_CREATED)
PYTHON_BUILD_ARGS := --build-arg PYTHON_APT_VERSION=$(PYTHON_APT_VERSION) \
	--build-arg PYTHON3_APT_VERSION=$(PYTHON3_APT_VERSION)

# $(call build-image,IMAGE,EXTRA DOCKER BUILD ARGS,DOCKERFILE NAME): build from the staged context,
# tag :VERSION and :latest, say how long it took and how big it is.
define build-image
	@echo "==> building $(IMAGE_PREFIX)/$(1):$(APPLIANCE_VERSION)"
	@start=$$SECONDS; \
	$(DOCKER_BUILD) $(2) -f $(CTX_DIR)/$(1)/$(or $(3),Dockerfile) \
		-t $(IMAGE_PREFIX)/$(1):$(APPLIANCE_VERSION) -t $(IMAGE_PREFIX)/$(1):latest $(CTX_DIR)/$(1) \
	&& size=$$($(DOCKER) image inspect --format '{{.Size}}' $(IMAGE_PREFIX)/$(1):$(APPLIANCE_VERSION)) \
	&& echo "==> $(IMAGE_PREFIX)/$(1):$(APPLIANCE_VERSION): built in $$((SECONDS - start))s, $$((size / 1000000)) MB"
endef

docker-engine: ## Make sure a Docker engine answers (installs docker.io, starts dockerd).
	images/docker-engine.sh

base-image: ## Provide debian:bookworm-slim: pull it, or make it with debootstrap + docker import.
	BASE_IMAGE_WORK=build/base-image images/base-image.sh $(BASE_IMAGE)

containers: ## Build the four container images (producer, ml-server, kafka, mongodb).
	@start=$$SECONDS; \
	$(MAKE) --no-print-directory $(addprefix container-,$(CONTAINER_IMAGES)) \
	&& echo "==> all images built in $$((SECONDS - start))s" \
	&& $(MAKE) --no-print-directory container-sizes

container-sizes:
	@$(DOCKER) image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}\t{{.ID}}' \
		| grep -E '^$(IMAGE_PREFIX)/($(subst $(CTR_SPACE),|,$(CONTAINER_IMAGES))):$(APPLIANCE_VERSION)\s' | column -t

container-producer: base-image $(APPLIANCE_WHEEL) $(CTR_DIR)/deps-base/.complete $(CAMERA_IMAGES)
	CAMERA_IMAGES=$(CAMERA_IMAGES) DEPS_DIR=$(CTR_DIR)/deps-base DIST_DIR=$(DIST_DIR) \
		images/stage-context.sh producer $(CTX_DIR)/producer
	$(call build-image,producer,$(PYTHON_BUILD_ARGS))

container-kafka: base-image $(APPLIANCE_WHEEL) $(CTR_DIR)/deps-base/.complete
	@libs=$$($(BIN)/python -c 'import sys; from appliance.ops import services as d; \
		print(d.ensure_kafka_libs(d.default_cache_dir(), None, sys.stderr))') && \
	set -x && KAFKA_LIBS=$$libs DEPS_DIR=$(CTR_DIR)/deps-base DIST_DIR=$(DIST_DIR) \
		images/stage-context.sh kafka $(CTX_DIR)/kafka
	$(call build-image,kafka,$(PYTHON_BUILD_ARGS) --build-arg JRE_APT_VERSION=$(JRE_APT_VERSION) \
		--build-arg KAFKA_VERSION=$$($(BIN)/python -c 'from appliance.ops import services as d; print(d.KAFKA_VERSION)'))
	$(DOCKER) tag $(IMAGE_PREFIX)/kafka:$(APPLIANCE_VERSION) $(IMAGE_PREFIX)/consumers:$(APPLIANCE_VERSION)
	$(DOCKER) tag $(IMAGE_PREFIX)/kafka:$(APPLIANCE_VERSION) $(IMAGE_PREFIX)/consumers:latest

container-ml-server: base-image $(APPLIANCE_WHEEL) $(CTR_DIR)/deps-serving/.complete $(CONTAINER_GRAPH)
	MODEL=$(CONTAINER_GRAPH) DEPS_DIR=$(CTR_DIR)/deps-serving DIST_DIR=$(DIST_DIR) \
		images/stage-context.sh ml-server $(CTX_DIR)/ml-server
	$(call build-image,ml-server,$(PYTHON_BUILD_ARGS) --build-arg MODEL_ID="$$($(BIN)/python -c \
		'import json,sys; m=json.load(open(sys.argv[1])); \
		print(m["architecture"], "sha256:" + m["model_sha256"][:12], "trained" if m.get("extra",{}).get("trained", True) else "untrained")' \
		$(basename $(CONTAINER_GRAPH)).json)")

container-mongodb: venv
	@flavor=$(MONGODB_FLAVOR); \
	if [ "$$flavor" = auto ]; then \
		if $(DOCKER) image inspect $(MONGO_IMAGE) >/dev/null 2>&1 || timeout 30 $(DOCKER) pull $(MONGO_IMAGE); \
		then flavor=official; else flavor=ferretdb; fi; \
		echo "==> MONGODB_FLAVOR=auto: $$flavor ($(MONGO_IMAGE) $$([ $$flavor = official ] && echo is || echo cannot be) pulled)"; \
	fi; \
	case $$flavor in \
	official) $(MAKE) --no-print-directory container-mongodb-official;; \
	ferretdb) $(MAKE) --no-print-directory container-mongodb-ferretdb;; \
	*) echo "MONGODB_FLAVOR must be official, ferretdb or auto, not '$$flavor'" >&2; exit 2;; \
	esac

.PHONY: container-mongodb-official container-mongodb-ferretdb
container-mongodb-official:
	images/stage-context.sh mongodb $(CTX_DIR)/mongodb
	$(call build-image,mongodb,--build-arg MONGO_IMAGE=$(MONGO_IMAGE))

container-mongodb-ferretdb: base-image venv
	@binary=$$($(BIN)/python -c 'import sys; from appliance.ops import services as d; \
		print(d.ensure_ferretdb(d.default_cache_dir(), None, sys.stderr))') && \
	set -x && FERRETDB_BIN=$$binary images/stage-context.sh mongodb $(CTX_DIR)/mongodb
	$(call build-image,mongodb,--build-arg FERRETDB_VERSION=$$($(BIN)/python -c \
		'from appliance.ops import services as d; print(d.FERRETDB_VERSION)'),Dockerfile.ferretdb)

# The package, built once as a wheel from a clean copy of its sources (no stale files from an
# earlier build), with fixed timestamps so an unchanged tree gives the same bytes (and cache hits).
$(APPLIANCE_WHEEL): pyproject.toml README.md $(shell find appliance -name '*.py' 2>/dev/null) | venv
	rm -rf $(CTR_DIR)/src $(DIST_DIR) && mkdir -p $(CTR_DIR)/src $(DIST_DIR)
	cp -r pyproject.toml README.md appliance $(CTR_DIR)/src/
	find $(CTR_DIR)/src -name __pycache__ -prune -exec rm -rf {} +
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
		$(BIN)/pip wheel --quiet --no-deps --wheel-dir $(DIST_DIR) $(CTR_DIR)/src
	@ls -l $@

# Every dependency at the version the tests ran with (the venv's), rewritten only when it changes.
$(CTR_DIR)/constraints.txt: $(BIN)/.installed
	@mkdir -p $(@D)
	$(BIN)/pip freeze --all --exclude-editable | grep -v '^appliance[ =]' > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# Wheelhouses: base (cameras, consumers) and serving (+ Flask, Gunicorn, OpenVINO). PyPI is read
# here, once; the image builds install from these with --no-index.
$(CTR_DIR)/deps-%/.complete: $(CTR_DIR)/constraints.txt pyproject.toml | venv
	rm -rf $(@D) && mkdir -p $(@D)/wheels
	$(BIN)/python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		extra = p["optional-dependencies"].get(sys.argv[1], []) if sys.argv[1] != "base" else []; \
		print("\n".join(p["dependencies"] + extra))' $* > $(@D)/requirements.txt
	cp $(CTR_DIR)/constraints.txt $(@D)/constraints.txt
	$(BIN)/pip wheel --quiet --wheel-dir $(@D)/wheels -r $(@D)/requirements.txt -c $(@D)/constraints.txt
	@echo "wheelhouse $*: $$(ls $(@D)/wheels | wc -l) wheels, $$(du -sh $(@D)/wheels | cut -f1)"
	touch $@

# SOURCE is a make variable (the shared archive or cifar10): the file is made again by `make clean`.
$(CAMERA_IMAGES): | venv
	$(BIN)/appliance dataset pack $(SOURCE) --split test --out $@

# A CONTAINER_MODEL that does not exist (a build/ path before `make model`): an untrained one,
# said plainly. The shipped model is in the repository and never made here.
$(CONTAINER_MODEL): | venv
	@echo "NOTE: no model at $@: saving an untrained ResNet50 there for the ml-server image" \
		"(its labels are guesses; 'make model' trains one, then rebuild)"
	$(BIN)/appliance model init $@

$(CONTAINER_GRAPH): $(CONTAINER_MODEL) appliance/ml/onnx_export.py | venv
	rm -rf $(@D)
	$(BIN)/appliance model export-onnx $< --out $@

container-pins: base-image ## Print the Debian versions images/versions.env could pin now.
	@$(DOCKER) run --rm $(BASE_IMAGE) bash -c 'apt-get update -qq && for p in python3.11 python3 openjdk-17-jre-headless; do \
		echo "$$p $$(apt-cache policy $$p | sed -n "s/ *Candidate: //p")"; done' \
	| awk '{v[$$1]=$$2} END {print "PYTHON_APT_VERSION=" v["python3.11"]; \
		print "PYTHON3_APT_VERSION=" v["python3"]; print "JRE_APT_VERSION=" v["openjdk-17-jre-headless"]}'

# What the VM image bake loads: one gzip'd `docker save` per image (both tags), written again
# only when the image changed, and a manifest with each file's image id and sha256. The kafka
# tarball also carries the appliance/consumers tags (the same image: the kafka VM runs its
# consumers from it); consumers.tar.gz is a hard link to it, for a bake that asks for that name.
save: ## Write each image as build/containers/<image>.tar.gz (for the VM image bake).
	@set -o pipefail; mkdir -p $(CTR_DIR); : > $(CTR_DIR)/manifest.txt.new; \
	for image in $(CONTAINER_IMAGES); do \
		ref=$(IMAGE_PREFIX)/$$image:$(APPLIANCE_VERSION); \
		refs="$$ref $(IMAGE_PREFIX)/$$image:latest"; \
		if [ $$image = kafka ]; then \
			refs="$$refs $(IMAGE_PREFIX)/consumers:$(APPLIANCE_VERSION) $(IMAGE_PREFIX)/consumers:latest"; fi; \
		id=$$($(DOCKER) image inspect --format '{{.Id}}' $$refs | sort -u) || { echo "missing image(s) among $$refs: run 'make containers'" >&2; exit 1; }; \
		[ $$(echo "$$id" | wc -l) = 1 ] || { echo "$$refs are not one image: run 'make containers'" >&2; exit 1; }; \
		file=$(CTR_DIR)/$$image.tar.gz; \
		if [ -f $$file ] && [ "$$(cat $$file.id 2>/dev/null)" = "$$id $$refs" ]; then \
			echo "==> $$file: up to date"; \
		else \
			start=$$SECONDS; echo "==> saving $$refs to $$file ..."; \
			$(DOCKER) save $$refs | gzip -$(SAVE_GZIP_LEVEL) > $$file.partial \
			&& mv $$file.partial $$file && echo "$$id $$refs" > $$file.id \
			&& echo "==> $$file: $$(du -h $$file | cut -f1) in $$((SECONDS - start))s" || exit 1; \
		fi; \
		echo "$$image $$ref $$id $$file $$(sha256sum $$file | cut -d' ' -f1)" >> $(CTR_DIR)/manifest.txt.new; \
		if [ $$image = kafka ]; then \
			ln -f $$file $(CTR_DIR)/consumers.tar.gz; \
			echo "consumers $(IMAGE_PREFIX)/consumers:$(APPLIANCE_VERSION) $$id $(CTR_DIR)/consumers.tar.gz $$(sha256sum $$file | cut -d' ' -f1)" >> $(CTR_DIR)/manifest.txt.new; \
		fi; \
	done; mv $(CTR_DIR)/manifest.txt.new $(CTR_DIR)/manifest.txt; column -t $(CTR_DIR)/manifest.txt

# The local env file: images/appliance.env.example with this host's container names as peers.
$(STACK_ENV): images/appliance.env.example | venv
	$(BIN)/appliance stack env --template $< --out $@

up: $(STACK_ENV) | venv ## Run the pipeline as containers on this Docker host (images from 'make containers').
	$(BIN)/appliance stack up --project $(STACK_PROJECT) --env-file $(STACK_ENV) --tag $(APPLIANCE_VERSION) \
		--source $(SOURCE)

down: venv ## Stop and remove the containers, their network and volumes.
	$(BIN)/appliance stack down --project $(STACK_PROJECT)

status: venv ## Each container's health; images stored, labelled, dead-lettered; consumer lag.
	$(BIN)/appliance stack status --project $(STACK_PROJECT)

bench-pipeline-containers: $(STACK_ENV) | venv ## Benchmark: bench-pipeline's steps against the container stack; build/bench/containers.
	$(BIN)/appliance bench pipeline --containers --project $(STACK_PROJECT) --env-file $(STACK_ENV) \
		--tag $(APPLIANCE_VERSION) --source $(SOURCE)

e2e-containers: venv ## Engine, base image, all images, then the containerised end-to-end test.
	images/docker-engine.sh
	$(MAKE) --no-print-directory containers
	APPLIANCE_E2E_TAG=$(APPLIANCE_VERSION) $(BIN)/pytest -v -s -p no:cacheprovider tests/e2e

containers-clean: ## Remove the images and build/containers (not the base image).
	-$(DOCKER) image rm $(foreach i,$(CONTAINER_IMAGES) consumers,$(IMAGE_PREFIX)/$(i):$(APPLIANCE_VERSION) $(IMAGE_PREFIX)/$(i):latest)
	rm -rf $(CTR_DIR) $(DIST_DIR)
