#!/usr/bin/env bash
# One Apache Kafka 4.x broker (KRaft, combined broker+controller) on 127.0.0.1 for the
# tests, from Maven Central jars. Port 9092 is the crawler's metrics port, so the
# broker listens on $KAFKA_PORT (default 19092).
#
#   tests/kafka/broker.sh up     fetch jars if needed, format storage, start, wait
#   tests/kafka/broker.sh down   stop it and delete its data
#   tests/kafka/broker.sh stop   stop it, keeping its data (the fault harness's outage)
#   tests/kafka/broker.sh start  start it again on the data `stop` kept, and wait
#   tests/kafka/broker.sh status exit 0 when it answers
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${LUPE_CACHE_DIR:-$HOME/.cache/codelupe}
port=${KAFKA_PORT:-19092}
controller_port=$((port + 1))
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
libs="$cache/kafka-$version/libs"
state="${TMPDIR:-/tmp}/codelupe-kafka-$port"
bootstrap="127.0.0.1:$port"
java_opts=(-Xms256m -Xmx768m -Dkafka.logs.dir="${state}/logs" -Dlog4j2.configurationFile="$here/log4j2.yaml")

fetch() {
  if [ -f "$libs/.complete" ]; then return; fi
  echo "broker: fetching Apache Kafka $version jars into $libs" >&2
  rm -rf "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

answers() {
  kcat -b "$bootstrap" -L -m 3 >/dev/null 2>&1
}

up() {
  if answers; then echo "broker: already answering on $bootstrap" >&2; return; fi
  fetch
  rm -rf "$state"
  mkdir -p "$state/data" "$state/logs"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  local cluster_id
  cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$state/server.properties" --standalone >"$state/logs/format.log" 2>&1 \
    || { cat "$state/logs/format.log" >&2; exit 1; }
  launch
}

# Runs the broker on the formatted storage under $state and waits until it answers.
launch() {
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$state/server.properties" \
    >"$state/logs/stdout.log" 2>&1 &
  echo $! > "$state/pid"
  for _ in $(seq 1 120); do
    if answers; then echo "broker: Kafka $version answering on $bootstrap" >&2; return; fi
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
      echo "broker: exited during start-up; its output:" >&2
      tail -n 40 "$state/logs/stdout.log" "$state/logs/server.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  echo "broker: no answer on $bootstrap after 60 s" >&2
  exit 1
}

stop() {
  if [ -f "$state/pid" ]; then
    local pid
    pid=$(cat "$state/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

start() {
  if answers; then echo "broker: already answering on $bootstrap" >&2; return; fi
  [ -f "$state/server.properties" ] || { echo "broker: nothing to start at $state (run up)" >&2; exit 1; }
  launch
}

down() {
  stop
  rm -rf "$state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop) stop ;;
  start) start ;;
  status) answers ;;
  bootstrap) echo "$bootstrap" ;;
  *) echo "usage: $0 up|down|stop|start|status|bootstrap" >&2; exit 2 ;;
esac
