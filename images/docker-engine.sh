#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install Debian's docker.io when the CLI is
# missing, start dockerd when it is not running (systemd when it is PID 1, else in the background).
# CI runs this on a fresh Debian 12 machine; on a machine with a working engine it does nothing.
set -euo pipefail

WAIT_S=${DOCKER_ENGINE_WAIT_S:-60}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && answers; then
  echo "docker engine: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "docker-engine.sh: needs root (or sudo)" >&2; exit 1; }
  sudo=(sudo)
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker engine: installing Debian's docker.io"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io
fi

if answers; then
  # The package's own unit started it.
  echo "docker engine: running"
  exit 0
fi

if [[ -d /run/systemd/system ]]; then
  echo "docker engine: starting docker.service"
  "${sudo[@]}" systemctl start docker
else
  # No systemd (a container, a chroot-like CI runner): run dockerd by hand, as a service would.
  echo "docker engine: starting dockerd in the background (log: $LOG)"
  "${sudo[@]}" bash -c "nohup dockerd >>'$LOG' 2>&1 </dev/null &"
fi

for ((i = 0; i < WAIT_S; i++)); do
  if answers; then
    echo "docker engine: running after ${i}s ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "docker engine: dockerd did not answer within ${WAIT_S}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1
