#!/usr/bin/env bash
# The local Debian 12 cloud base image for Packer's qemu source, built here without partition
# devices, device-mapper or kpartx (which this machine lacks):
#
#   1. debootstrap bookworm with the cloud kernel, systemd, cloud-init, openssh-server, sudo, python3
#   2. a raw disk with one MBR partition at 1 MiB (sfdisk works on a plain file)
#   3. the root file system written straight into that partition's byte range:
#      mke2fs -E offset=1048576 -d ROOTFS (no mount needed)
#   4. extlinux installed through a loop mount with that offset, and syslinux's MBR boot code
#   5. qemu-img convert to a compressed qcow2, and a sha256 beside it
#
#   packer/base-vm/build.sh [OUT.qcow2]        # default build/base-vm/debian-12-base.qcow2
#   BOOT_TEST=1 packer/base-vm/build.sh        # then boot it under QEMU (tcg) and wait for SSH
#
# The debootstrap tree is cached (~/.cache/appliance/base-vm) so a rebuild takes about a minute.
# Network: systemd-networkd does DHCP on every Ethernet interface; cloud-init does users, SSH keys,
# host keys and write_files (NoCloud, ConfigDrive and OpenStack data sources).
set -euo pipefail
OUT=${1:-build/base-vm/debian-12-base.qcow2}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The same size as the qemu source's disk_size (12G): Packer then needs no resize, and the root
# file system fills the disk without growpart. Sparse: the qcow2 holds only what is used.
SIZE_MB=${BASE_VM_SIZE_MB:-12288}
CACHE=${APPLIANCE_CACHE:-$HOME/.cache/appliance}/base-vm
OFFSET=$((1024 * 1024))
# debootstrap lays down a minimal system; apt-get in a chroot adds the rest (debootstrap's own
# --include of this many packages fails while configuring them).
PACKAGES=(linux-image-cloud-amd64 systemd-resolved dbus cloud-init cloud-guest-utils
  openssh-server sudo python3 python3-apt ca-certificates curl gnupg initramfs-tools e2fsprogs
  iproute2 netbase less procps locales)

need() {
  local missing=()
  for tool in "$@"; do command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}
need debootstrap:debootstrap sfdisk:fdisk mke2fs:e2fsprogs extlinux:extlinux qemu-img:qemu-utils
[[ -f /usr/lib/syslinux/mbr/mbr.bin ]] || need nonexistent-tool:syslinux-common

mkdir -p "$CACHE" "$(dirname "$OUT")"
work=$(mktemp -d /var/tmp/base-vm.XXXXXX)
mnt=$work/mnt
cleanup() {
  for m in "$mnt" "$work"/root/{proc,sys,dev/pts,dev}; do
    mountpoint -q "$m" 2>/dev/null && umount "$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

tree=$CACHE/rootfs-$(echo "${PACKAGES[*]}" | sha256sum | cut -c1-10).tar
if [[ ! -s $tree ]]; then
  echo "base-vm: debootstrap bookworm and install the cloud packages (a few minutes)"
  root=$work/root
  debootstrap --variant=minbase --include=systemd-sysv,ca-certificates bookworm "$root" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 ||
    { cp "$root/debootstrap/debootstrap.log" "$CACHE/debootstrap-inner.log" 2>/dev/null || true
      tail -20 "$CACHE/debootstrap.log"; exit 1; }
  mount -t proc proc "$root/proc"
  mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  # No service starts inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
  chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y \
    -qq --no-install-recommends ${PACKAGES[*]}" >"$CACHE/apt.log" 2>&1 ||
    { tail -20 "$CACHE/apt.log"; exit 1; }
  rm -f "$root/usr/sbin/policy-rc.d"
  umount "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc"
  tar -C "$root" --numeric-owner -cf "$tree.tmp" . && mv "$tree.tmp" "$tree"
  rm -rf "$root"
  # Trees made from an older package list.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "$(basename "$tree")" -delete
fi

root=$work/root
mkdir -p "$root"
tar -C "$root" --numeric-owner -xf "$tree"
uuid=$(cat /proc/sys/kernel/random/uuid)

# -- configure the tree ----------------------------------------------------------------------------
cat >"$root/etc/fstab" <<EOF
UUID=$uuid / ext4 errors=remount-ro,discard 0 1
EOF
echo debian >"$root/etc/hostname"
cat >"$root/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Type=ether

[Network]
DHCP=yes
EOF
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat >"$root/etc/cloud/cloud.cfg.d/90-appliance-base.cfg" <<'EOF'
# Local Debian 12 base for the appliance images: networkd does DHCP, cloud-init the rest.
datasource_list: [NoCloud, ConfigDrive, OpenStack, None]
# C.UTF-8 is built into libc; cloud-init's default (en_US.UTF-8) would need locale-gen first.
locale: C.UTF-8
network: {config: disabled}
system_info:
  default_user:
    name: debian
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
EOF
# Serial console for the kernel and getty, so a headless boot shows its progress.
ln -sf /lib/systemd/system/serial-getty@.service \
  "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
mkdir -p "$root/boot/extlinux"
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[[ -f $root/boot/$initrd ]] || { echo "base-vm: no $initrd in the tree"; exit 1; }
# tsc=reliable: under QEMU's software emulation (tcg) a VM with 2 vCPUs fails the kernel's TSC
# sync check and falls back to the emulated HPET, where every clock read traps into QEMU (an idle
# 2-vCPU VM took most of a host core). This base is only for local QEMU; clouds bring their own.
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
PROMPT 0
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 tsc=reliable
EOF
: >"$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_* "$root"/var/lib/dbus/machine-id
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/cloud/*

# -- disk ------------------------------------------------------------------------------------------
raw=$work/disk.raw
truncate -s "${SIZE_MB}M" "$raw"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk --quiet "$raw"
fs_kb=$(((SIZE_MB * 1024) - OFFSET / 1024))
# extlinux reads ext4 without the 64bit and metadata_csum_seed features.
mke2fs -q -t ext4 -O ^64bit,^metadata_csum_seed -U "$uuid" -L root -E offset=$OFFSET \
  -d "$root" "$raw" "${fs_kb}k"
rm -rf "$root"
mkdir -p "$mnt"
mount -o loop,offset=$OFFSET "$raw" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -c -O qcow2 "$raw" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
sha256sum "$OUT" | cut -d' ' -f1 >"$OUT.sha256"
echo "base-vm: $OUT ($(du -h "$OUT" | cut -f1), kernel ${kernel#vmlinuz-})"

if [[ ${BOOT_TEST:-0} == 1 ]]; then
  exec "$(dirname "$0")/boot-test.sh" "$OUT"
fi
