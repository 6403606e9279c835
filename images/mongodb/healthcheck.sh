#!/usr/bin/env bash
# FerretDB's health check, read with bash's /dev/tcp: the image carries no HTTP client.
# Without TLS: its readiness probe (/debug/readyz on the debug listener: it pings its own MongoDB
# listener and backend). With TLS (MONGODB_TLS_CERT_KEY_FILE): FerretDB 1.24 cannot ping a TLS
# listener (readyz says ready and logs "TLS ping is not implemented yet" at every call), so the
# check is its liveness probe (/debug/livez) and a TCP connection to the TLS port.
set -euo pipefail
address=${FERRETDB_DEBUG_ADDR:-127.0.0.1:8088}
probe=/debug/readyz
[[ -n ${MONGODB_TLS_CERT_KEY_FILE:-} ]] && probe=/debug/livez
exec 3<>"/dev/tcp/${address%:*}/${address##*:}"
printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$probe" "$address" >&3
read -r -t 5 status_line <&3
exec 3>&-
if [[ $status_line != *" 200 "* ]]; then
  echo "ferretdb: not ready (${status_line%$'\r'})"
  exit 1
fi
if [[ -n ${MONGODB_TLS_CERT_KEY_FILE:-} ]]; then
  listen=${FERRETDB_LISTEN_ADDR:-:27017}
  if ! (exec 3<>"/dev/tcp/127.0.0.1/${listen##*:}") 2>/dev/null; then
    echo "ferretdb: TLS port ${listen##*:} does not accept connections"
    exit 1
  fi
  echo "ferretdb: live, TLS port ${listen##*:} open"
  exit 0
fi
echo "ferretdb: ready"
