#!/usr/bin/env bash
# Boot a qcow2 (the base, or a baked appliance image) under QEMU with a NoCloud seed, wait until
# SSH answers and cloud-init has finished, print how long that took, and power it off. The disk is
# not changed (a throwaway overlay takes the writes).
#
#   packer/base-vm/boot-test.sh IMAGE.qcow2 [USER-DATA-EXTRA.yaml]
#   BOOT_TEST_LOCAL_COMMAND='.venv/bin/pytest tests/infra/test_image.py --hosts "$BOOT_TEST_HOST" \
#     --ssh-config "$BOOT_TEST_SSH_CONFIG" --sudo --image producer' \
#     packer/base-vm/boot-test.sh build/images/producer/appliance-producer-*.qcow2 producer.yaml
# (tests/infra/vm-check.sh does this for a baked image.)
#
# ACCEL=kvm where KVM works; the default is tcg (software emulation: minutes). MEMORY in MiB.
# SSH is forwarded to 127.0.0.1:$SSH_PORT (default 2222); the serial console goes to
# build/base-vm/boot-test-console.log.
set -euo pipefail
IMAGE=${1:?usage: boot-test.sh IMAGE.qcow2 [extra user-data]}
EXTRA=${2:-}
# tcg unless told: /dev/kvm can exist where KVM does not work (as on this build machine).
ACCEL=${ACCEL:-tcg}
SSH_PORT=${SSH_PORT:-2222}
TIMEOUT=${BOOT_TIMEOUT:-1200}
MEMORY=${MEMORY:-2048}
LOG_DIR=build/base-vm
mkdir -p "$LOG_DIR"
work=$(mktemp -d)
qemu_pid=
cleanup() {
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N '' -f "$work/key"
mkdir "$work/seed"
echo "instance-id: boot-test-$(date +%s)" >"$work/seed/meta-data"
{
  echo "#cloud-config"
  echo "users:"
  echo "  - name: debian"
  echo "    sudo: 'ALL=(ALL) NOPASSWD:ALL'"
  echo "    shell: /bin/bash"
  echo "    ssh_authorized_keys: ['$(cat "$work/key.pub")']"
  [[ -n $EXTRA ]] && grep -v '^#cloud-config' "$EXTRA"
} >"$work/seed/user-data"
xorriso -as mkisofs -quiet -o "$work/seed.iso" -V cidata -J -r "$work/seed"
qemu-img create -q -f qcow2 -F qcow2 -b "$(realpath "$IMAGE")" "$work/disk.qcow2"

start=$SECONDS
# -cpu max: the default qemu64 model lacks instructions (SSE4, AVX) the containers' numpy uses;
# -monitor: the guest idles with HLT, not MWAIT (a busy loop under TCG with 2 vCPUs).
qemu-system-x86_64 -accel "$ACCEL" -cpu max,-monitor -m "$MEMORY" -smp 2 -nographic -no-reboot \
  -drive "file=$work/disk.qcow2,if=virtio" -drive "file=$work/seed.iso,media=cdrom" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" -device virtio-net-pci,netdev=n0 \
  -serial "file:$LOG_DIR/boot-test-console.log" -monitor none -display none &
qemu_pid=$!
# One login for every ssh here and for the local command (testinfra's --ssh-config): a throwaway
# VM, unknown host key.
cat >"$work/ssh_config" <<EOF
Host 127.0.0.1
  User debian
  Port $SSH_PORT
  IdentityFile $work/key
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 10
  BatchMode yes
EOF
ssh_opts=(-F "$work/ssh_config")
until ssh "${ssh_opts[@]}" 127.0.0.1 true 2>/dev/null; do
  kill -0 "$qemu_pid" 2>/dev/null || { echo "boot-test: QEMU exited"; tail -20 "$LOG_DIR/boot-test-console.log"; exit 1; }
  if ((SECONDS - start > TIMEOUT)); then
    echo "boot-test: no SSH after $TIMEOUT s"; tail -30 "$LOG_DIR/boot-test-console.log"; exit 1
  fi
  sleep 5
done
echo "boot-test: SSH after $((SECONDS - start)) s ($ACCEL)"
ssh "${ssh_opts[@]}" 127.0.0.1 'cloud-init status --wait >/dev/null; cloud-init status --long | head -5; uname -r; systemctl is-system-running || true' || true
echo "boot-test: cloud-init finished after $((SECONDS - start)) s"
status=0
if [[ -n ${BOOT_TEST_COMMAND:-} ]]; then # in the VM
  ssh "${ssh_opts[@]}" 127.0.0.1 "$BOOT_TEST_COMMAND" || status=$?
fi
if [[ -n ${BOOT_TEST_LOCAL_COMMAND:-} ]]; then # here, e.g. testinfra with --hosts "$BOOT_TEST_HOST"
  BOOT_TEST_HOST="ssh://127.0.0.1" BOOT_TEST_SSH_CONFIG=$work/ssh_config BOOT_TEST_SSH_KEY=$work/key \
    bash -c "$BOOT_TEST_LOCAL_COMMAND" || status=$?
fi
ssh "${ssh_opts[@]}" 127.0.0.1 'sudo systemctl poweroff' 2>/dev/null || true
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
exit "$status"
