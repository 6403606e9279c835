#!/usr/bin/env bash
# Everything CI checks for the VM images, on one machine with Docker (about 10-15 min cold on 2
# cores, ~4 min warm): packer fmt + validate (both sources), yamllint + ansible-lint, the
# userdata/deploy tests, and the roles in systemd containers: each image's playbook applied twice
# (the second run must change nothing), testinfra on the fresh bake, a boot (docker restart) with
# missing and then complete settings, and testinfra on the booted container.
#
#   tests/infra/run.sh                  # all four images, stand-in container images
#   IMAGES="kafka" KEEP=1 tests/infra/run.sh
#   CONTAINERS_DIR=build/containers tests/infra/run.sh   # the real `make save` tarballs
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
IMAGES=${IMAGES:-producer ml-server kafka mongodb}
KEEP=${KEEP:-0}
LOGS=build/infra/logs
CONTAINERS_DIR=${CONTAINERS_DIR:-build/infra/containers}
# The stand-ins' repository prefix (not "appliance": the real images keep their tags).
IMAGE_PREFIX=appliance
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
[[ $CONTAINERS_DIR == build/infra/containers ]] && IMAGE_PREFIX=appliance-stand-in
BASE_IMAGE=appliance-test/debian-systemd:bookworm
BIN=$ROOT/.venv/bin
export PATH=$BIN:$PATH ANSIBLE_CONFIG=$ROOT/ansible.cfg
export ANSIBLE_CONNECTION_PLUGINS=$ROOT/tests/infra/connection_plugins ANSIBLE_NOCOLOR=1
mkdir -p "$LOGS"
start=$SECONDS
step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - start)); }
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

containers=()
cleanup() {
  if [[ $KEEP != 1 && ${#containers[@]} -gt 0 ]]; then
    docker rm -f -v "${containers[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "venv with the cloud and infra extras"
make --no-print-directory infra-venv >/dev/null

step "Packer and plugins from the Go module proxy (in the background; log $LOGS/packer-tools.log)"
(make --no-print-directory packer-tools >"$LOGS/packer-tools.log" 2>&1; echo $? >"$LOGS/packer-tools.rc") &
packer_pid=$!

step "userdata / deploy / destroy tests (fake OpenStack on loopback)"
pytest -q -p no:cacheprovider tests/unit/test_userdata*.py tests/unit/test_deploy.py || fail "unit tests"

step "yamllint and ansible-lint (production profile)"
yamllint -s . || fail yamllint
ansible-lint -q || fail ansible-lint

if ! docker info >/dev/null 2>&1; then
  if [[ -x images/docker-engine.sh ]]; then images/docker-engine.sh; fi
fi
docker info >/dev/null 2>&1 || { echo "Docker is not running: cannot test the roles"; exit 1; }

step "Debian 12 systemd base image and stand-in container images"
tests/infra/systemd-image.sh "$BASE_IMAGE"
if [[ $CONTAINERS_DIR == build/infra/containers ]]; then
  tests/infra/stand-ins.sh "$CONTAINERS_DIR" "$VERSION" "$IMAGE_PREFIX" >/dev/null
fi

run_container() { # NAME IMAGE
  docker rm -f -v "$1" >/dev/null 2>&1 || true
  docker run -d --name "$1" --hostname "$1" \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -v /var/lib/docker "$2" >/dev/null
  containers+=("$1")
  for _ in $(seq 60); do
    state=$(docker exec "$1" systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && return 0
    sleep 1
  done
  echo "$1: systemd did not come up ($state)"
  return 1
}

converge() { # CONTAINER PLAYBOOK LOG
  ansible-playbook -i "$1," -c docker_cli -e @tests/infra/vars.yml \
    -e "appliance_containers_dir=$ROOT/$CONTAINERS_DIR" -e "appliance_image_prefix=$IMAGE_PREFIX" \
    -e "appliance_version=$VERSION" "$2" >"$3" 2>&1
}

# "changed=0 ... failed=0" in the PLAY RECAP, or say what changed.
idempotent() { # LOG
  if grep -qE 'changed=0 +unreachable=0 +failed=0' "$1"; then return 0; fi
  grep -B2 -E '^changed:' "$1" | grep -E '^TASK' || true
  return 1
}

# The common and docker roles once, committed: every image's container starts from there.
prep_hash=$(cat roles/common/*/* roles/docker/*/* tests/infra/prepare.yml tests/infra/vars.yml \
  <(docker image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-12)
PREPARED=appliance-test/prepared:$prep_hash
if ! docker image inspect "$PREPARED" >/dev/null 2>&1; then
  step "common + docker roles on the bare base, twice (log $LOGS/prepare-*.log)"
  run_container appliance-test-prepare "$BASE_IMAGE"
  converge appliance-test-prepare tests/infra/prepare.yml "$LOGS/prepare-1.log" ||
    { tail -30 "$LOGS/prepare-1.log"; exit 1; }
  converge appliance-test-prepare tests/infra/prepare.yml "$LOGS/prepare-2.log" ||
    { tail -30 "$LOGS/prepare-2.log"; exit 1; }
  idempotent "$LOGS/prepare-2.log" && echo "prepare: second run changed nothing" ||
    fail "prepare: the second run changed something"
  docker commit appliance-test-prepare "$PREPARED" >/dev/null
  docker rm -f -v appliance-test-prepare >/dev/null
else
  step "common + docker roles: $PREPARED is cached"
fi

step "each image's playbook, twice, in parallel (logs $LOGS/IMAGE-*.log)"
for image in $IMAGES; do run_container "appliance-test-$image" "$PREPARED"; done
for run in 1 2; do
  pids=()
  for image in $IMAGES; do
    converge "appliance-test-$image" "images/$image/playbook.yml" "$LOGS/$image-$run.log" &
    pids+=($!)
  done
  i=0
  for image in $IMAGES; do
    if ! wait "${pids[$i]}"; then fail "$image: run $run"; tail -25 "$LOGS/$image-$run.log"; fi
    i=$((i + 1))
  done
done
for image in $IMAGES; do
  if idempotent "$LOGS/$image-2.log"; then echo "$image: second run changed nothing"
  else fail "$image: the second run changed something"; fi
done

step "testinfra on the fresh bakes"
for image in $IMAGES; do
  pytest -q -p no:cacheprovider tests/infra/test_image.py --hosts "docker://appliance-test-$image" \
    --image "$image" --image-prefix "$IMAGE_PREFIX" --baked || fail "$image: testinfra (baked)"
done

step "boot each bake without settings, then with a peer missing, then complete; testinfra booted"
pids=()
for image in $IMAGES; do docker restart "appliance-test-$image" >/dev/null & pids+=($!); done
wait "${pids[@]}"
for image in $IMAGES; do
  pytest -q -p no:cacheprovider tests/infra/test_boot_contract.py tests/infra/test_image.py \
    --hosts "docker://appliance-test-$image" --image "$image" --image-prefix "$IMAGE_PREFIX" \
    --boot-contract --durations=3 ||
    fail "$image: boot contract / testinfra (booted)"
done

step "packer fmt and validate (qemu and openstack sources)"
wait "$packer_pid" || true
if [[ $(cat "$LOGS/packer-tools.rc") != 0 ]]; then tail -20 "$LOGS/packer-tools.log"; fail "packer build"
else make --no-print-directory packer-validate 2>&1 | grep -vE '^\s*$' | tail -4 || fail "packer validate"; fi

step "done"
if ((failures)); then echo "infra: $failures check(s) failed"; exit 1; fi
echo "infra: all checks passed"
