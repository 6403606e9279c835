# VM images: Packer + Ansible bake the four appliance images; the role tests and lints.
# Included by the Makefile. `make help` lists the targets with ##.

.PHONY: packer-tools packer-init packer-validate images image-producer image-ml-server image-kafka \
	image-mongodb base-vm lint-infra test-infra infra-venv container-tarballs vm-check-producer \
	vm-check-ml-server vm-check-kafka vm-check-mongodb host-tools cloud-up cloud-check cloud-status \
	cloud-down cloud-containers-check

PACKER_CACHE ?= $(HOME)/.cache/appliance/packer
PACKER := $(PACKER_CACHE)/bin/packer
# Plugins come from the cache (built by packer/tools/build-packer.sh), never from GitHub; no
# checkpoint calls home. Ansible comes from the venv.
PACKER_ENV := PACKER_PLUGIN_PATH=$(PACKER_CACHE)/plugins CHECKPOINT_DISABLE=1 \
	PATH="$(CURDIR)/$(BIN):$$PATH"
# local: the qemu source and the Debian 12 base from `make base-vm`; chameleon: OpenStack.
CLOUD ?= local
PACKER_SOURCE := $(if $(filter chameleon openstack,$(CLOUD)),openstack,qemu)
APPLIANCE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_COMMIT ?= $(shell git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)$(if \
	$(shell git status --porcelain --untracked-files=no 2>/dev/null),-dirty)
# tcg (software emulation) works everywhere, slowly; QEMU_ACCEL=kvm where KVM works (here /dev/kvm
# exists but KVM fails).
QEMU_ACCEL ?= tcg
# Bakes at once: local QEMU VMs one at a time (each already uses every core under tcg); OpenStack
# builds all four in parallel (0: no limit).
PACKER_PARALLEL ?= $(if $(filter qemu,$(PACKER_SOURCE)),1,0)
BUILD_KEY := build/packer/ssh/id_ed25519
BASE_VM := build/base-vm/debian-12-base.qcow2
IMAGE_NAMES := producer ml-server kafka mongodb
PACKER_VARS = -var appliance_version=$(APPLIANCE_VERSION) -var git_commit=$(GIT_COMMIT) \
	-var qemu_ssh_private_key_file=$(BUILD_KEY) -var qemu_ssh_public_key="$$(cat $(BUILD_KEY).pub)" \
	-var qemu_base_image=$(BASE_VM) -var qemu_accelerator=$(QEMU_ACCEL) $(PACKER_EXTRA_VARS)

infra-venv: $(BIN)/.infra-installed

host-tools: ## Install QEMU, xorriso, VDE and the base-vm tools from Debian (what is missing only).
	packer/tools/install-host-tools.sh

$(BIN)/.infra-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[cloud,infra]'
	touch $@

packer-tools: $(PACKER) ## Build Packer 1.9.4 and its pinned plugins from the Go module proxy (cached).

$(PACKER): packer/tools/build-packer.sh
	nice -n 10 packer/tools/build-packer.sh

# A throwaway key for the local build VM (its public half goes into the NoCloud seed; sysprep
# removes it from the image).
$(BUILD_KEY):
	mkdir -p $(dir $@)
	ssh-keygen -q -t ed25519 -N '' -C appliance-packer-build -f $@

packer-init: $(PACKER)
	$(PACKER_ENV) $(PACKER) init packer/

packer-validate: packer-init infra-venv $(BUILD_KEY) ## packer fmt -check, and validate both sources.
	$(PACKER_ENV) $(PACKER) fmt -check -diff packer/
	# (an output folder that no bake has made: the qemu builder refuses an existing one)
	$(PACKER_ENV) $(PACKER) validate -only='appliance.qemu.*' $(PACKER_VARS) \
		-var output_dir=build/packer/validate-only packer/
	# The openstack builder logs in while validating: a fake Keystone on loopback answers.
	$(PACKER_ENV) $(BIN)/python -m tests.infra.fake_openstack exec -- \
		$(PACKER) validate -only='appliance.openstack.*' $(PACKER_VARS) packer/

base-vm: $(BASE_VM) ## Build the local Debian 12 cloud base qcow2 (debootstrap, no partitions tools needed).

$(BASE_VM): packer/base-vm/build.sh | host-tools
	nice -n 10 packer/base-vm/build.sh $@

# Container tarballs from `make save` (images/containers.mk), unless the bake pulls from a registry.
container-tarballs:
	@missing=; for i in $(IMAGE_NAMES); do [ -s build/containers/$$i.tar.gz ] || missing="$$missing $$i"; done; \
	if [ -n "$$missing" ]; then echo "container tarballs missing:$$missing; building and saving the containers"; \
		images/docker-engine.sh && $(MAKE) --no-print-directory containers save; fi

IMAGE_PREREQS := packer-init infra-venv $(if $(filter qemu,$(PACKER_SOURCE)),host-tools $(BUILD_KEY) $(BASE_VM)) \
	$(if $(filter registry,$(IMAGE_SOURCE)),,container-tarballs)

images: $(IMAGE_PREREQS) ## Bake all four (CLOUD=chameleon: OpenStack; default: local qemu); image-NAME: one.
	$(PACKER_ENV) $(PACKER) build -parallel-builds=$(PACKER_PARALLEL) -only='appliance.$(PACKER_SOURCE).*' \
		$(PACKER_VARS) packer/

# A static pattern rule: phony targets get no implicit-rule search.
$(addprefix image-,$(IMAGE_NAMES)): image-%: $(IMAGE_PREREQS)
	$(PACKER_ENV) $(PACKER) build -only='appliance.$(PACKER_SOURCE).$*' $(PACKER_VARS) packer/

# Boot a local bake under QEMU with user-data naming its peers, then testinfra over SSH.
$(addprefix vm-check-,$(IMAGE_NAMES)): vm-check-%: infra-venv host-tools
	tests/infra/vm-check.sh $*

# The local four-VM cloud: the newest bakes as QEMU VMs on a private VDE switch (appliance cloud).
# Cameras at CLOUD_RATE img/s each (4 cameras). Under emulation the ml-server VM labels about
# 0.3 img/s, so the VMs' cameras send 0.2 img/s in all; the containers take 2 per camera.
CLOUD_PROVIDER ?= vm
CLOUD_RATE ?= $(if $(filter vm,$(CLOUD_PROVIDER)),0.05,1)
CLOUD_COUNT ?= 200
LOCAL_CLOUD := $(BIN)/appliance cloud --provider $(CLOUD_PROVIDER)
cloud-up: infra-venv $(if $(filter vm,$(CLOUD_PROVIDER)),host-tools) ## Boot the four newest bakes as VMs on one private network, in order, until healthy.
	$(if $(filter containers,$(CLOUD_PROVIDER)),images/docker-engine.sh && $(MAKE) --no-print-directory containers save)
	$(LOCAL_CLOUD) up --set-for producer:PRODUCER_RATE=$(CLOUD_RATE)

cloud-check: cloud-up ## cloud-up, then testinfra and the pipeline across the four VMs, with faults (tests/cluster).
	$(BIN)/pytest -v -s -p no:cacheprovider tests/cluster --provider $(CLOUD_PROVIDER) \
		--count $(CLOUD_COUNT) --durations=0

cloud-status: infra-venv ## The local cloud's machines, addresses and health.
	$(LOCAL_CLOUD) status

cloud-down: infra-venv ## Stop the local cloud and remove its disks and state.
	$(LOCAL_CLOUD) down

cloud-containers-check: ## The same checks on the four playbooks converged into systemd containers (CI).
	$(MAKE) --no-print-directory cloud-check CLOUD_PROVIDER=containers CLOUD_RATE=2 CLOUD_COUNT=100

lint-infra: infra-venv $(PACKER) ## yamllint, ansible-lint (production profile), packer fmt -check.
	$(BIN)/yamllint -s .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint
	$(PACKER_ENV) $(PACKER) fmt -check -diff packer/

test-infra: ## Packer validate, lints, userdata/deploy tests, roles in systemd containers + testinfra.
	tests/infra/run.sh
