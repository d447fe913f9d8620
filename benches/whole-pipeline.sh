#!/usr/bin/env bash
# The whole data pipeline on the test broker (benches/whole_pipeline.rs): starts the
# broker if it is not up and runs the benchmark. PIPELINE_CRATES sets the 1x corpus.
#
#   bash benches/whole-pipeline.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tests/kafka/broker.sh" up >&2
export TEST_KAFKA_BROKERS=$("$root/tests/kafka/broker.sh" bootstrap)
cd "$root"
cargo bench --bench whole_pipeline
