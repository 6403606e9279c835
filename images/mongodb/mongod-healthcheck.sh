#!/usr/bin/env bash
# The official flavor's health check: a ping, over TLS (trusting MONGODB_TLS_CA_FILE) when the
# server requires it. A ping needs no login.
set -euo pipefail
tls=()
if [[ -n ${MONGODB_TLS_CERT_KEY_FILE:-} ]]; then
  tls=(--tls --host localhost --tlsCAFile "${MONGODB_TLS_CA_FILE:?MONGODB_TLS_CA_FILE is not set}")
fi
exec mongosh --quiet --norc "${tls[@]}" --eval "quit(db.adminCommand('ping').ok ? 0 : 1)"
