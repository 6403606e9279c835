#!/usr/bin/env bash
# Boot the newest local bake of one image under QEMU, as OpenStack would: cloud-init user-data from
# `appliance userdata`, with this machine (10.0.2.2 on QEMU's user network) as every peer and the
# VM's own address (10.0.2.15) as its own. Then run the testinfra checks for a booted VM over SSH.
# The image file is not changed.
#
#   tests/infra/vm-check.sh producer              # = make vm-check-producer
#   IMAGE_FILE=path.qcow2 tests/infra/vm-check.sh kafka
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?usage: vm-check.sh producer|ml-server|kafka|mongodb}
BIN=.venv/bin
HOST_IP=10.0.2.2
GUEST_IP=10.0.2.15

if [[ -z ${IMAGE_FILE:-} ]]; then
  # The newest artifact for this image in Packer's manifest.
  IMAGE_FILE=$("$BIN/python" - "$NAME" <<'PY'
import json, sys
builds = json.load(open("build/images/manifest.json"))["builds"]
files = [f["name"] for b in builds if b["custom_data"]["image"] == sys.argv[1] for f in b["files"]]
print(files[-1] if files else "")
PY
  )
fi
[[ -n $IMAGE_FILE && -s $IMAGE_FILE ]] ||
  { echo "vm-check: no baked $NAME image (run make image-$NAME first)" >&2; exit 1; }

case $NAME in
  producer) peers=(--kafka "$HOST_IP") ;;
  kafka) peers=(--kafka "$GUEST_IP" --mongodb "$HOST_IP" --ml-server "$HOST_IP") ;;
  *) peers=() ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN/appliance" userdata "$NAME" "${peers[@]}" --output "$work/user-data.yaml"

# The ml-server loads TensorFlow and the model: more memory than the others.
memory=2048
[[ $NAME == ml-server ]] && memory=4096
echo "vm-check: booting $IMAGE_FILE"
# shellcheck disable=SC2016  # expanded by boot-test.sh
MEMORY=$memory BOOT_TEST_LOCAL_COMMAND='.venv/bin/pytest -q -p no:cacheprovider tests/infra/test_image.py \
  --hosts "$BOOT_TEST_HOST" --ssh-config "$BOOT_TEST_SSH_CONFIG" --sudo --listen-timeout 600 --image '"$NAME" \
  packer/base-vm/boot-test.sh "$IMAGE_FILE" "$work/user-data.yaml"
