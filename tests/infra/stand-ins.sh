#!/usr/bin/env bash
# Tiny stand-ins for the five container images, for the role tests when `make save`'s real
# tarballs are not wanted (they are large; these are ~1 MB each): busybox-static from Debian's
# mirror, one `docker import` per image, `docker save | gzip` to OUT/NAME.tar.gz, tagged
# PREFIX/NAME:VERSION (the roles take the prefix as appliance_image_prefix). The prefix is not
# "appliance", so the stand-ins never replace the real images `make containers` tagged on the same
# Docker engine. The servers listen on the real ports (kafka 9092, ml-server 8000 with /healthz,
# mongodb 27017); the others just stay up.
#
#   tests/infra/stand-ins.sh [OUT] [VERSION] [PREFIX]  # build/infra/containers 0.1.0 appliance-stand-in
set -euo pipefail
OUT=${1:-build/infra/containers}
VERSION=${2:-0.1.0}
PREFIX=${3:-appliance-stand-in}
[[ $PREFIX != appliance ]] || { echo "stand-ins.sh: the prefix 'appliance' is the real images'" >&2; exit 2; }
CACHE=${APPLIANCE_CACHE:-$HOME/.cache/appliance}/stand-ins
mkdir -p "$OUT" "$CACHE"

if [[ ! -x $CACHE/busybox ]]; then
  (cd "$CACHE" && apt-get download busybox-static >/dev/null 2>&1) ||
    { apt-get update -qq && (cd "$CACHE" && apt-get download busybox-static >/dev/null); }
  rm -rf "$CACHE/x" && dpkg-deb -x "$CACHE"/busybox-static_*.deb "$CACHE/x"
  cp "$CACHE/x/bin/busybox" "$CACHE/busybox" && rm -rf "$CACHE/x" "$CACHE"/busybox-static_*.deb
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp"
cp "$CACHE/busybox" "$root/bin/busybox"
for tool in sh env sleep httpd cat echo; do ln -s busybox "$root/bin/$tool"; done
echo ok >"$root/www/healthz"
# The consumers' units run `appliance consume-db` / `appliance consume-inference`.
printf '#!/bin/sh\necho "stand-in: appliance $*"\ntrap "exit 0" TERM\nsleep 2147483647 & wait\n' >"$root/bin/appliance"
chmod 0755 "$root/bin/appliance"
tar -C "$root" -cf "$CACHE/rootfs.tar" .

# name|command (JSON array)
images=(
  'producer|["/bin/sh","-c","echo stand-in producer for $KAFKA_BOOTSTRAP_SERVERS; trap \"exit 0\" TERM; sleep 2147483647 \u0026 wait"]'
  'ml-server|["/bin/sh","-c","echo stand-in ml-server on 8000; trap \"exit 0\" TERM; httpd -f -p 8000 -h /www \u0026 wait"]'
  'kafka|["/bin/sh","-c","echo stand-in kafka advertising $KAFKA_ADVERTISED_LISTENERS; trap \"exit 0\" TERM; httpd -f -p 9092 -h /www \u0026 wait"]'
  'consumers|["/bin/sh","-c","echo stand-in consumer: $0 $*; trap \"exit 0\" TERM; sleep 2147483647 \u0026 wait"]'
  'mongodb|["/bin/sh","-c","echo stand-in mongodb on 27017; trap \"exit 0\" TERM; httpd -f -p 27017 -h /www \u0026 wait"]'
)
for entry in "${images[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  tag=$PREFIX/$name:$VERSION
  docker import --change "CMD $cmd" --change "LABEL org.opencontainers.image.version=$VERSION" \
    --change "LABEL appliance.stand-in=true" "$CACHE/rootfs.tar" "$tag" >/dev/null
  docker save "$tag" | gzip -1 >"$OUT/$name.tar.gz.tmp"
  mv "$OUT/$name.tar.gz.tmp" "$OUT/$name.tar.gz"
done
ls -l "$OUT"
