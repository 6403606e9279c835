#!/usr/bin/env bash
# Build the local Debian 12 base that the role tests run in: a bookworm root filesystem with systemd
# and python3, made with debootstrap and imported into Docker (Docker Hub is not needed).
#
#   tests/infra/systemd-image.sh [IMAGE]      # default appliance-test/debian-systemd:bookworm
#
# The rootfs tarball is cached under ~/.cache/appliance/systemd-image; the image is rebuilt from it
# when Docker lost it. Set DEBIAN_MIRROR to use another mirror.
set -euo pipefail
IMAGE=${1:-appliance-test/debian-systemd:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${APPLIANCE_CACHE:-$HOME/.cache/appliance}/systemd-image
TARBALL=$CACHE/debian-bookworm-systemd.tar
# What a cloud image has that Ansible and the roles rely on; openssh-server so the sysprep checks
# have host keys to remove; cloud-init is left out (the roles cope with its absence).
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,iproute2,procps,openssh-server,sudo,gnupg

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE already present"
  exit 0
fi
if [[ ! -s $TARBALL ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
  mkdir -p "$CACHE"
  root=$(mktemp -d /var/tmp/systemd-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm into $root (about 2-3 min)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  # A container has no consoles or udev to wait for, and must not boot a getty.
  for unit in getty@tty1.service systemd-udevd.service systemd-udev-trigger.service \
      systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  echo 'deb http://deb.debian.org/debian bookworm main' >"$root/etc/apt/sources.list"
  echo 'deb http://deb.debian.org/debian-security bookworm-security main' >>"$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  : >"$root/etc/machine-id"
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
# (Docker 20.10's import takes no STOPSIGNAL: the tests remove their containers with rm -f.)
docker import --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE imported"
