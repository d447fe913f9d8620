#!/usr/bin/env bash
# CodeLupe's runtime against Kafka Streams on the test broker: fetches Kafka Streams
# (the broker's version) from Maven Central on first use, compiles the identity
# topology, starts the broker if it is not up, and runs the side-by-side benchmark.
#
#   bash benches/kafka-streams/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache_root=${LUPE_CACHE_DIR:-$HOME/.cache/codelupe}
cache=$cache_root/kafka-streams-4.1.1
if [ ! -f "$cache/classes/Identity.class" ]; then
  mkdir -p "$cache/libs" "$cache/classes"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$cache/libs" >&2
  javac -d "$cache/classes" -cp "$cache/libs/*" "$here/Identity.java"
fi
"$root/tests/kafka/broker.sh" up >&2
export TEST_KAFKA_BROKERS=$("$root/tests/kafka/broker.sh" bootstrap)
export KAFKA_STREAMS_CLASSPATH="$cache/libs/*:$cache/classes"
# ProducerPerformance and ConsumerPerformance, the ceiling: from the broker's jars.
export KAFKA_TOOLS_CLASSPATH="$cache_root/kafka-4.1.1/libs/*"
cd "$root"
cargo bench --bench versus_kafka_streams
