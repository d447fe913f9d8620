#!/usr/bin/env bash
# The long form of fuzzing: every target (or those named in TARGETS) for FUZZ_SECONDS
# each (600), JOBS at a time (2), with libFuzzer under cargo-fuzz on nightly. New inputs
# go to fuzz/runs/<target>/ (the committed seeds under fuzz/corpus/ are only read); a
# crash lands in fuzz/artifacts/<target>/. Prints one line per target: executions,
# coverage, corpus, crashes.
#
# No sanitizer: the cc crate builds the C libraries (zstd, OpenSSL) with ASan when the
# Rust code has it, and librdkafka's configure script then fails to link against them.
# The targets' code is safe Rust; libFuzzer still reports panics, hangs and memory blowups.
#
#   bash fuzz/run.sh
#   FUZZ_SECONDS=60 TARGETS="records config" bash fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="$PWD/target"

seconds=${FUZZ_SECONDS:-600}
jobs=${JOBS:-2}
targets=${TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^codelupe-fuzz$')}
for target in $targets; do cargo +nightly fuzz build --sanitizer none --debug-assertions "$target"; done

run() {
  local target=$1
  local options=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)
  [ -f "dicts/$target.dict" ] && options+=(-dict="dicts/$target.dict")
  mkdir -p "runs/$target"
  # A crash ends the run early; the summary reports it.
  cargo +nightly fuzz run --sanitizer none --debug-assertions "$target" "runs/$target" "corpus/$target" -- "${options[@]}" \
    >"runs/$target.log" 2>&1 || true
}

for target in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  echo "fuzzing $target for ${seconds}s" >&2
  run "$target" &
done
wait

status=0
for target in $targets; do
  log="runs/$target.log"
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  coverage=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  features=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corpus=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  crashes=$(ls "artifacts/$target" 2>/dev/null | wc -l)
  printf '%-18s executions %-10s coverage %-6s features %-6s corpus %-6s crashes %s\n' \
    "$target" "${executions:-?}" "${coverage:-?}" "${features:-?}" "${corpus:-?}" "$crashes"
  if [ "$crashes" -gt 0 ] || grep -q 'ERROR: libFuzzer\|panicked at' "$log"; then
    status=1
    grep -m3 'panicked at\|ERROR: libFuzzer\|SUMMARY' "$log" | sed 's/^/    /'
  fi
done
exit "$status"
