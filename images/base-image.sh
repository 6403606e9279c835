#!/usr/bin/env bash
# Provide the container base image (debian:bookworm-slim by default) to the local Docker engine:
# already there -> nothing to do; a registry answers -> pull it; otherwise make it here with
# debootstrap (--variant=minbase) and `docker import`, trimmed like the official slim image.
# Usage: images/base-image.sh [IMAGE]   (env: DEBIAN_MIRROR, BASE_IMAGE_WORK, PULL_TIMEOUT_S)
set -euo pipefail

IMAGE=${1:-debian:bookworm-slim}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
WORK=${BASE_IMAGE_WORK:-build/base-image}
PULL_TIMEOUT_S=${PULL_TIMEOUT_S:-30}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE: already present ($(docker image inspect --format '{{.Id}}' "$IMAGE"))"
  exit 0
fi

echo "base image $IMAGE: trying docker pull (${PULL_TIMEOUT_S}s at most)"
if timeout "$PULL_TIMEOUT_S" docker pull "$IMAGE"; then
  exit 0
fi

if [[ $IMAGE != debian:"$SUITE"* ]]; then
  echo "base-image.sh: cannot pull $IMAGE and only knows how to make debian:$SUITE*" >&2
  exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "base-image.sh: debootstrap is missing: apt-get install debootstrap" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }

started=$SECONDS
rootfs=$WORK/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"
echo "base image $IMAGE: no registry; debootstrap $SUITE (minbase) from $MIRROR into $rootfs"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  echo "base-image.sh: debootstrap failed; last lines of $WORK/debootstrap.log:" >&2
  tail -n 20 "$WORK/debootstrap.log" >&2
  exit 1
}

# What the official slim image configures, so later `apt-get install` layers stay small too.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
# No documentation, manuals or translations in a container image (copyright files are kept).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
# Services must not start inside an image build.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG

# Trim what debootstrap leaves behind: docs, manuals, locales, package lists and caches, logs.
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* "$rootfs"/usr/share/locale/*
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old
rm -rf "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/root/.bash_history
find "$rootfs/var/log" -type f -delete
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
# Names resolve through Docker's own files at run time.
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

tar --numeric-owner --xattrs -C "$rootfs" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase, made by images/base-image.sh (debootstrap + docker import)\"" \
    - "$IMAGE" >/dev/null
rm -rf "$rootfs"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "base image $IMAGE: imported in $((SECONDS - started))s, $((size / 1000000)) MB"
