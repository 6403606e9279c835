#!/usr/bin/env bash
# The kafka image's entrypoint. No arguments: a single-node KRaft broker (broker and controller in
# one JVM), its storage formatted on first start. Any other command runs as given: the consumers
# run from this image too (`appliance consume-db`, `appliance consume-inference`).
#
# Environment (all optional except an address clients can reach, the first of these found):
#   KAFKA_ADVERTISED_LISTENERS  as the broker property, e.g. PLAINTEXT://192.0.2.11:9092 (what
#                               `appliance userdata kafka` writes)
#   KAFKA_ADVERTISED_HOST       just the address (the VM's IP; `kafka` on a Docker network)
#   KAFKA_BOOTSTRAP_SERVERS     its first entry's host
#   KAFKA_PORT (9092), KAFKA_ADVERTISED_PORT (KAFKA_PORT), KAFKA_CONTROLLER_PORT (9093)
#   KAFKA_NODE_ID (1), KAFKA_CLUSTER_ID (random, chosen on first start), KAFKA_DATA_DIR
#   KAFKA_NUM_PARTITIONS (TOPIC_PARTITIONS or 3), KAFKA_HEAP_OPTS (-Xms512m -Xmx1g)
#   KAFKA_LOG_FLUSH_INTERVAL_MESSAGES (1: fsync before acknowledging; see below)
#   KAFKA_CFG_<NAME>=value  any broker property: KAFKA_CFG_LOG_RETENTION_HOURS=24 sets
#                           log.retention.hours=24 (last, so it overrides the settings above)
#
# Clients log in (KAFKA_SECURITY_PROTOCOL=SASL_SSL, as `appliance stack env` writes): the client
# listener is SASL_SSL, SCRAM-SHA-512, and the advertised listener must say SASL_SSL://HOST:PORT.
#   KAFKA_USERNAME, KAFKA_PASSWORD  the clients' login, added to the broker at every start (so a
#                               new password takes effect with a restart)
#   KAFKA_KEYSTORE_FILE         PEM: the broker's key, its certificate and the CA's, readable by
#                               this image's user (uid 10001) only
#   KAFKA_INTERNAL_PORT (9094)  PLAINTEXT on 127.0.0.1 only: the broker's own traffic, the login
#                               setup and the health check; nothing outside the container reaches it
set -euo pipefail

if (($# > 0)); then
  exec "$@"
fi

fail() {
  echo "kafka-entrypoint: $*" >&2
  exit 64
}

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
data_dir=${KAFKA_DATA_DIR:-/var/lib/kafka/data}
config_dir=${KAFKA_CONFIG_DIR:-/var/lib/kafka/config}
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
node_id=${KAFKA_NODE_ID:-1}

internal_port=${KAFKA_INTERNAL_PORT:-9094}
protocol=${KAFKA_SECURITY_PROTOCOL:-PLAINTEXT}
protocol=${protocol^^}
[[ $protocol == PLAINTEXT || $protocol == SASL_SSL ]] ||
  fail "KAFKA_SECURITY_PROTOCOL must be PLAINTEXT or SASL_SSL, got '$protocol'"

for setting in port controller_port node_id internal_port; do
  [[ ${!setting} =~ ^[0-9]+$ ]] || fail "$setting must be a number, got '${!setting}'"
done
advertised=${KAFKA_ADVERTISED_LISTENERS:-}
if [[ -z $advertised ]]; then
  advertised_host=${KAFKA_ADVERTISED_HOST:-}
  if [[ -z $advertised_host && -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
    first=${KAFKA_BOOTSTRAP_SERVERS%%,*}
    advertised_host=${first%:*}
  fi
  [[ -n $advertised_host ]] || fail "KAFKA_ADVERTISED_LISTENERS is not set (nor KAFKA_ADVERTISED_HOST" \
    "or KAFKA_BOOTSTRAP_SERVERS): the address clients reach this broker at, e.g." \
    "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://192.0.2.11:9092"
  advertised=$protocol://$advertised_host:${KAFKA_ADVERTISED_PORT:-$port}
fi
[[ $advertised =~ ^$protocol://[^:/]+:[0-9]+$ ]] ||
  fail "KAFKA_ADVERTISED_LISTENERS must look like $protocol://HOST:PORT" \
    "(KAFKA_SECURITY_PROTOCOL=$protocol), got '$advertised'"
if [[ $protocol == SASL_SSL ]]; then
  [[ -n ${KAFKA_USERNAME:-} && -n ${KAFKA_PASSWORD:-} ]] ||
    fail "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_USERNAME and KAFKA_PASSWORD"
  [[ -n ${KAFKA_KEYSTORE_FILE:-} ]] ||
    fail "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_KEYSTORE_FILE (PEM: key, certificate, CA)"
  [[ -r $KAFKA_KEYSTORE_FILE ]] ||
    fail "cannot read KAFKA_KEYSTORE_FILE $KAFKA_KEYSTORE_FILE as uid $(id -u): mount it owned" \
      "by $(id -u), mode 0600"
fi

if ! mkdir -p "$data_dir" "$config_dir" 2>/dev/null || [[ ! -w $data_dir || ! -w $config_dir ]]; then
  fail "cannot write $data_dir and $config_dir as uid $(id -u): a host directory mounted at" \
    "/var/lib/kafka must be owned by $(id -u):$(id -g) (a named volume needs nothing)"
fi
properties=$config_dir/server.properties
{
  echo "# Written by kafka-entrypoint at every start; set KAFKA_CFG_* to change a setting."
  echo "process.roles=broker,controller"
  echo "node.id=$node_id"
  echo "controller.quorum.voters=$node_id@127.0.0.1:$controller_port"
  echo "controller.listener.names=CONTROLLER"
  if [[ $protocol == SASL_SSL ]]; then
    echo "listeners=SASL_SSL://0.0.0.0:$port,INTERNAL://127.0.0.1:$internal_port,CONTROLLER://127.0.0.1:$controller_port"
    echo "advertised.listeners=$advertised,INTERNAL://127.0.0.1:$internal_port"
    echo "inter.broker.listener.name=INTERNAL"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL"
    echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$KAFKA_KEYSTORE_FILE"
    echo "ssl.client.auth=none"
  else
    echo "listeners=PLAINTEXT://0.0.0.0:$port,CONTROLLER://127.0.0.1:$controller_port"
    echo "advertised.listeners=$advertised"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  fi
  echo "log.dirs=$data_dir"
  echo "num.partitions=${KAFKA_NUM_PARTITIONS:-${TOPIC_PARTITIONS:-3}}"
  # One broker holds one replica of everything.
  echo "default.replication.factor=1"
  echo "min.insync.replicas=1"
  echo "offsets.topic.replication.factor=1"
  echo "transaction.state.log.replication.factor=1"
  echo "transaction.state.log.min.isr=1"
  # Fewer than the default 50 offsets partitions: the first consumer group creates them all.
  echo "offsets.topic.num.partitions=10"
  echo "auto.create.topics.enable=true"
  # One broker, no replicas: its disk is the only copy. Flushing every append before the produce
  # answer (acks=all) means a power loss of the VM loses no acknowledged image and no committed
  # offset; Kafka's default leaves that to the page cache. A few hundred fsyncs a second at most
  # at the appliance's rates; raise it to trade durability for throughput.
  echo "log.flush.interval.messages=${KAFKA_LOG_FLUSH_INTERVAL_MESSAGES:-1}"
  # Images are up to 4 MiB base64-encoded (MAX_IMAGE_BYTES): room for one per record.
  echo "message.max.bytes=${KAFKA_MESSAGE_MAX_BYTES:-16777216}"
  echo "replica.fetch.max.bytes=${KAFKA_MESSAGE_MAX_BYTES:-16777216}"
  while IFS='=' read -r name value; do
    key=${name#KAFKA_CFG_}
    key=${key,,}
    echo "${key//_/.}=$value"
  done < <(env | grep '^KAFKA_CFG_[A-Za-z0-9_]*=' || true)
} >"$properties"

classpath="$KAFKA_HOME/libs/*"
# shellcheck disable=SC2206  # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS are lists of JVM options
java_opts=(
  ${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true
  "-Dlog4j.configuration=file:$KAFKA_HOME/config/log4j.properties"
  ${KAFKA_JVM_OPTS:-}
)

if [[ ! -f $data_dir/meta.properties ]]; then
  cluster_id=${KAFKA_CLUSTER_ID:-$(python3 -c \
    'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')}
  echo "kafka-entrypoint: formatting $data_dir (first start, cluster id $cluster_id)"
  java "${java_opts[@]}" -cp "$classpath" kafka.tools.StorageTool \
    format -t "$cluster_id" -c "$properties"
fi

# The health check passes only once the clients' login exists (appliance-healthcheck).
login_ready=$config_dir/login.ready
rm -f "$login_ready"
if [[ $protocol == SASL_SSL ]]; then
  add_login() {
    local secret=$config_dir/scram.properties
    until (exec 3<>"/dev/tcp/127.0.0.1/$internal_port") 2>/dev/null; do sleep 1; done
    for _attempt in 1 2 3 4 5 6 7 8 9 10; do
      # From a 0600 file, removed after: the password never shows in a command line.
      (umask 077 && printf 'SCRAM-SHA-512=iterations=8192,password=%s\n' "$KAFKA_PASSWORD" >"$secret")
      if java -Xmx128m -cp "$classpath" "-Dlog4j.configuration=file:$KAFKA_HOME/config/log4j.properties" \
        kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$internal_port" --alter \
        --entity-type users --entity-name "$KAFKA_USERNAME" --add-config-file "$secret" \
        >"$config_dir/login.log" 2>&1; then
        rm -f "$secret" "$config_dir/login.log"
        echo "$KAFKA_USERNAME" >"$login_ready"
        echo "kafka-entrypoint: SCRAM-SHA-512 login for $KAFKA_USERNAME is set"
        return 0
      fi
      rm -f "$secret"
      sleep 3
    done
    # ConfigCommand quotes the offending line, password and all: never print it.
    local output
    output=$(tail -n 5 "$config_dir/login.log")
    rm -f "$config_dir/login.log"  # it quotes the password too: not left on the volume
    echo "kafka-entrypoint: adding the login for $KAFKA_USERNAME failed: ${output//"$KAFKA_PASSWORD"/****}" >&2
    return 1
  }
  add_login &
else
  echo "-" >"$login_ready"
fi

echo "kafka-entrypoint: Kafka broker (KRaft, node $node_id) on :$port, advertised as $advertised"
exec java "${java_opts[@]}" -cp "$classpath" kafka.Kafka "$properties"
