#!/usr/bin/env bash
# Apache Kafka 4.x for the tests, from Maven Central jars: one broker (KRaft, combined
# broker+controller) on 127.0.0.1, or with KAFKA_NODES=3 a cluster of three such nodes
# (a three-voter quorum; internal topics replicated 3 times, min.insync.replicas 2).
# Port 9092 is the crawler's metrics port, so node i listens on $KAFKA_PORT + 2(i-1)
# (default 19092) and its controller one port above.
#
#   tests/kafka/broker.sh up        fetch jars if needed, format storage, start, wait
#   tests/kafka/broker.sh down      stop every node and delete the data
#   tests/kafka/broker.sh stop [i]  stop node i (default: all), keeping its data
#   tests/kafka/broker.sh kill i    SIGKILL node i, keeping its data
#   tests/kafka/broker.sh start [i] start node i (default: all) on its kept data, and wait
#   tests/kafka/broker.sh status    exit 0 when every node answers
#   tests/kafka/broker.sh bootstrap the bootstrap list
#   tests/kafka/broker.sh tool CLASS [ARGS…]  one of Kafka's command-line tools
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${LUPE_CACHE_DIR:-$HOME/.cache/codelupe}
port=${KAFKA_PORT:-19092}
nodes=${KAFKA_NODES:-1}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
libs="$cache/kafka-$version/libs"
root="${TMPDIR:-/tmp}/codelupe-kafka-$port"
java_opts=(-Xms256m -Xmx768m -Dlog4j2.configurationFile="$here/log4j2.yaml")

node_port() { echo $((port + 2 * ($1 - 1))); }
node_dir() { if [ "$nodes" = 1 ]; then echo "$root"; else echo "$root/node-$1"; fi; }
all_nodes() { seq 1 "$nodes"; }
# The nodes named, or all of them.
chosen() { if [ $# -gt 0 ]; then echo "$@"; else all_nodes; fi; }
bootstrap() {
  local list=() i
  for i in $(all_nodes); do list+=("127.0.0.1:$(node_port "$i")"); done
  (IFS=,; echo "${list[*]}")
}

fetch() {
  if [ -f "$libs/.complete" ]; then return; fi
  echo "broker: fetching Apache Kafka $version jars into $libs" >&2
  rm -rf "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

answers() {
  kcat -b "127.0.0.1:$(node_port "$1")" -L -m 3 >/dev/null 2>&1
}

# The properties of node $1: a single node bootstraps its own quorum; a cluster's
# nodes are the static voters of one.
properties() {
  local i=$1 p c dir quorum rf=$nodes isr=$(( nodes > 1 ? 2 : 1 )) voters=() n
  p=$(node_port "$i") c=$(( $(node_port "$i") + 1 )) dir=$(node_dir "$i")
  if [ "$nodes" = 1 ]; then
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$c"
  else
    for n in $(all_nodes); do voters+=("$n@127.0.0.1:$(( $(node_port "$n") + 1 ))"); done
    quorum="controller.quorum.voters=$(IFS=,; echo "${voters[*]}")"
  fi
  cat <<PROPS
process.roles=broker,controller
node.id=$i
$quorum
listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$c
advertised.listeners=PLAINTEXT://127.0.0.1:$p
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
PROPS
}

up() {
  if status; then echo "broker: already answering on $(bootstrap)" >&2; return; fi
  fetch
  rm -rf "$root"
  local cluster_id i dir
  cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  for i in $(all_nodes); do
    dir=$(node_dir "$i")
    mkdir -p "$dir/data" "$dir/logs"
    properties "$i" > "$dir/server.properties"
    local standalone=()
    if [ "$nodes" = 1 ]; then standalone=(--standalone); fi
    java "${java_opts[@]}" -Dkafka.logs.dir="$dir/logs" -cp "$libs/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" "${standalone[@]}" >"$dir/logs/format.log" 2>&1 \
      || { cat "$dir/logs/format.log" >&2; exit 1; }
  done
  start
}

# Starts the given nodes (all by default) that do not answer, together: a cluster's
# node waits for a quorum of its voters.
start() {
  local i dir started=() chosen
  chosen=$(chosen "$@")
  for i in $chosen; do
    if answers "$i"; then continue; fi
    dir=$(node_dir "$i")
    [ -f "$dir/server.properties" ] || { echo "broker: nothing to start at $dir (run up)" >&2; exit 1; }
    nohup java "${java_opts[@]}" -Dkafka.logs.dir="$dir/logs" -cp "$libs/*" kafka.Kafka \
      "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 &
    echo $! > "$dir/pid"
    started+=("$i")
  done
  for i in "${started[@]}"; do await "$i"; done
}

# Waits until node $1 answers.
await() {
  local dir
  dir=$(node_dir "$1")
  for _ in $(seq 1 180); do
    if answers "$1"; then echo "broker: Kafka $version answering on 127.0.0.1:$(node_port "$1")" >&2; return; fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "broker: node $1 exited during start-up; its output:" >&2
      tail -n 40 "$dir/logs/stdout.log" "$dir/logs/server.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  echo "broker: no answer on 127.0.0.1:$(node_port "$1") after 90 s" >&2
  exit 1
}

# Ends node $2 (all by default) with signal $1; a TERM gets 20 s before a KILL.
signal() {
  local sig=$1 i pid dir chosen
  shift
  chosen=$(chosen "$@")
  for i in $chosen; do
    dir=$(node_dir "$i")
    [ -f "$dir/pid" ] || continue
    pid=$(cat "$dir/pid")
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

status() {
  local i
  for i in $(all_nodes); do answers "$i" || return 1; done
}

down() {
  signal TERM
  rm -rf "$root"
}

command=${1:-}
shift || true
case "$command" in
  up) up ;;
  down) down ;;
  stop) signal TERM "$@" ;;
  kill) [ $# = 1 ] || { echo "usage: $0 kill NODE" >&2; exit 2; }; signal KILL "$1" ;;
  start) start "$@" ;;
  status) status ;;
  bootstrap) bootstrap ;;
  tool)
    fetch
    mkdir -p "$root/tool-logs"
    java -Xmx256m -Dkafka.logs.dir="$root/tool-logs" -Dlog4j2.configurationFile="$here/log4j2.yaml" \
      -cp "$libs/*" "$@" ;;
  *) echo "usage: $0 up|down|stop [i]|kill i|start [i]|status|bootstrap|tool CLASS [ARGS…]" >&2; exit 2 ;;
esac
