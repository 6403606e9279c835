#!/usr/bin/env bash
# The official flavor's entrypoint: the official image's own (docker-entrypoint.sh: the root user
# from MONGO_INITDB_ROOT_*, on the first start), with TLS when the settings ask for it.
#
# MONGODB_TLS_CERT_KEY_FILE (a PEM with the server's key, its certificate and the CA's, as
# `appliance userdata mongodb` writes to /etc/appliance/tls/mongodb.pem): mongod requires TLS on
# its port. docker-entrypoint.sh relaxes that for its own first-start setup on loopback.
set -euo pipefail
if [[ -n ${MONGODB_TLS_CERT_KEY_FILE:-} ]]; then
  if [[ ! -r $MONGODB_TLS_CERT_KEY_FILE ]]; then
    echo "mongod-entrypoint: cannot read MONGODB_TLS_CERT_KEY_FILE $MONGODB_TLS_CERT_KEY_FILE" \
      "as uid $(id -u): mount it owned by $(id -u), mode 0400" >&2
    exit 78 # EX_CONFIG
  fi
  if (($# == 0)) || [[ $1 == -* ]]; then
    set -- mongod "$@"
  fi
  if [[ $1 == mongod ]]; then
    set -- "$@" --tlsMode requireTLS --tlsCertificateKeyFile "$MONGODB_TLS_CERT_KEY_FILE"
  fi
fi
exec docker-entrypoint.sh "$@"
