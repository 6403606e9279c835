#!/usr/bin/env bash
# FerretDB's readiness probe (/debug/readyz on its debug listener: it pings its own MongoDB
# listener and backend), read with bash's /dev/tcp: the image carries no HTTP client.
set -euo pipefail
address=${FERRETDB_DEBUG_ADDR:-127.0.0.1:8088}
exec 3<>"/dev/tcp/${address%:*}/${address##*:}"
printf 'GET /debug/readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$address" >&3
read -r -t 5 status_line <&3
exec 3>&-
if [[ $status_line == *" 200 "* ]]; then
  echo "ferretdb: ready"
  exit 0
fi
echo "ferretdb: not ready (${status_line%$'\r'})"
exit 1
