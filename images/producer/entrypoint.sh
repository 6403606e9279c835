#!/usr/bin/env bash
# The producer image's entrypoint. No arguments (or only options): `appliance produce` with its
# options taken from the environment, so the VM's env file alone configures the cameras:
#   PRODUCER_SOURCE (the CIFAR-10 test split baked into the image; `cifar10` downloads the official
#     archive instead), PRODUCER_SPLIT (test), PRODUCER_DEVICES (4), PRODUCER_RATE (5),
#   PRODUCER_COUNT or PRODUCER_DURATION (unset: send until stopped, as cameras do),
#   PRODUCER_ORDER (shuffle).
# Any other command runs as given (`docker run appliance/producer appliance --help`).
set -euo pipefail

if (($# == 0)) || [[ $1 == -* ]]; then
  options=(
    --source "${PRODUCER_SOURCE:-$CAMERA_IMAGES}"
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
  else
    options+=(--forever)
  fi
  set -- appliance produce "${options[@]}" "$@"
fi
exec "$@"
