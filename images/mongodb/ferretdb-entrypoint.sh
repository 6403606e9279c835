#!/usr/bin/env bash
# The ferretdb flavor's entrypoint. The mongodb VM's settings file gives the official image's
# MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD (from its user-data); here they become
# FerretDB's first user, with authentication on (FerretDB's SCRAM: --test-enable-new-auth), made
# on the first start with an empty data folder. Without them FerretDB serves with no
# authentication, as before. The password travels in the environment, never on a command line.
#
# MONGODB_TLS_CERT_KEY_FILE (a PEM with the server's key, its certificate and the CA's, as
# `appliance userdata mongodb` writes to /etc/appliance/tls/mongodb.pem): TLS only, on the same
# port; the plain listener is off.
set -euo pipefail
if [[ -n ${MONGODB_TLS_CERT_KEY_FILE:-} ]]; then
  if [[ ! -r $MONGODB_TLS_CERT_KEY_FILE ]]; then
    echo "ferretdb-entrypoint: cannot read MONGODB_TLS_CERT_KEY_FILE $MONGODB_TLS_CERT_KEY_FILE" \
      "as uid $(id -u): mount it owned by $(id -u), mode 0400" >&2
    exit 78 # EX_CONFIG
  fi
  # Go's TLS reads the certificates and the key from one PEM file, given twice.
  export FERRETDB_LISTEN_TLS=${FERRETDB_LISTEN_ADDR:-:27017}
  export FERRETDB_LISTEN_TLS_CERT_FILE=$MONGODB_TLS_CERT_KEY_FILE
  export FERRETDB_LISTEN_TLS_KEY_FILE=$MONGODB_TLS_CERT_KEY_FILE
  set -- --listen-addr= "$@"
fi
if [[ -n ${MONGO_INITDB_ROOT_USERNAME:-} ]]; then
  if [[ -z ${MONGO_INITDB_ROOT_PASSWORD:-} ]]; then
    echo "ferretdb-entrypoint: MONGO_INITDB_ROOT_USERNAME is set but MONGO_INITDB_ROOT_PASSWORD is empty" >&2
    exit 78 # EX_CONFIG
  fi
  export FERRETDB_TEST_ENABLE_NEW_AUTH=true
  export FERRETDB_SETUP_USERNAME=$MONGO_INITDB_ROOT_USERNAME
  export FERRETDB_SETUP_PASSWORD=$MONGO_INITDB_ROOT_PASSWORD
  export FERRETDB_SETUP_DATABASE=admin
  unset MONGO_INITDB_ROOT_USERNAME MONGO_INITDB_ROOT_PASSWORD
fi
exec ferretdb "$@"
