#!/usr/bin/env bash
# Install the host tools the local bake and the local four-VM cloud run: QEMU (the qemu builder and
# the boots), an ISO writer for the NoCloud seed (the qemu builder's cd_content and the boots'
# seeds), VDE (the VMs' private switch) and the tools `make base-vm` uses. Debian packages only;
# what is present already is left alone, so on a ready machine this prints one line.
#
#   packer/tools/install-host-tools.sh          # = make host-tools (each bake/boot target runs it)
set -euo pipefail

# command:package
wanted=(
  qemu-system-x86_64:qemu-system-x86
  qemu-img:qemu-utils
  xorriso:xorriso
  vde_switch:vde2
  debootstrap:debootstrap
  sfdisk:fdisk
  mke2fs:e2fsprogs
  extlinux:extlinux
  ssh:openssh-client
  ssh-keygen:openssh-client
)
missing=()
for entry in "${wanted[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
[[ -f /usr/lib/syslinux/mbr/mbr.bin ]] || missing+=(syslinux-common)
if ((${#missing[@]} == 0)); then
  echo "host tools: all present (qemu, qemu-img, xorriso, vde_switch, debootstrap, extlinux, ssh)"
  exit 0
fi
# Each package once, in a stable order.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "host tools: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
