#!/usr/bin/env bash
# The producer image's entrypoint. No arguments (or only options): `appliance produce` with its
# options taken from the environment, so the VM's env file alone configures the cameras:
#   PRODUCER_SOURCE (cifar10), PRODUCER_SPLIT (test), PRODUCER_DEVICES (4), PRODUCER_RATE (5),
#   PRODUCER_COUNT or PRODUCER_DURATION (unset: the whole split once), PRODUCER_ORDER (shuffle).
# Any other command runs as given (`docker run appliance/producer appliance --help`).
set -euo pipefail

if (($# == 0)) || [[ $1 == -* ]]; then
  options=(
    --source "${PRODUCER_SOURCE:-cifar10}"
    --split "${PRODUCER_SPLIT:-test}"
    --devices "${PRODUCER_DEVICES:-4}"
    --rate "${PRODUCER_RATE:-5}"
    --order "${PRODUCER_ORDER:-shuffle}"
    --no-progress
  )
  if [[ -n ${PRODUCER_COUNT:-} ]]; then
    options+=(--count "$PRODUCER_COUNT")
  elif [[ -n ${PRODUCER_DURATION:-} ]]; then
    options+=(--duration "$PRODUCER_DURATION")
  fi
  set -- appliance produce "${options[@]}" "$@"
fi
exec "$@"
