#!/usr/bin/env bash
# The trainer against the same model and step in eager PyTorch (pytorch_reference.py),
# side by side on one machine: alternating rounds, the best tokens/s of each, the ratio.
#
#   bash stages/trainer/benches/versus_pytorch.sh            # CPU: tiny and 125m
#   GPU=1 bash stages/trainer/benches/versus_pytorch.sh      # CUDA: 125m at 1024 and 2048, bf16
#
# CONFIGS overrides the list ("preset:sequence:rows:steps ..."), ROUNDS the rounds (2);
# PHASES=1 adds each side's milliseconds a step by phase (forward, backward, optimiser).
# TRAINER_BENCH names a built bench binary (a GPU machine without cargo gets one built
# elsewhere; PYTHON then names that machine's torch 2.11 interpreter).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

if [ "${GPU:-0}" = 1 ]; then
  default_configs="125m:1024:32:20 125m:2048:16:20"
else
  default_configs="tiny:256:8:20 125m:256:2:3"
fi
configs=${CONFIGS:-$default_configs}
rounds=${ROUNDS:-2}

if [ -z "${TRAINER_BENCH:-}" ]; then
  # shellcheck source=/dev/null
  source "$root/setup/torch.sh"
  TRAINER_BENCH=$(cd "$root" && cargo bench -p codelupe-trainer --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "throughput" and m.get("executable"):
        print(m["executable"])')
fi
python=${PYTHON:-python3}
# The bench binary finds libtorch through this interpreter's torch (the same 2.11 build).
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The larger of a run's tokens/s (its output, $1) and the best so far ($2).
best() { echo "$1" | awk -v b="$2" '/tokens\/s/ && !t { t = $1 } END { print (t > b) ? t : b }'; }

for config in $configs; do
  IFS=: read -r preset seq rows steps <<<"$config"
  export PRESET=$preset SEQ=$seq ROWS=$rows STEPS=$steps
  best_rust=0 best_torch=0
  for round in $(seq 1 "$rounds"); do
    rust_out=$("$TRAINER_BENCH" --bench 2>&1) || { echo "$rust_out"; exit 1; }
    torch_out=$("$python" "$here/pytorch_reference.py" 2>&1) || { echo "$torch_out"; exit 1; }
    echo "round $round"; echo "$rust_out" | sed 's/^/  codelupe  /'; echo "$torch_out" | sed 's/^/  /'
    best_rust=$(best "$rust_out" "$best_rust")
    best_torch=$(best "$torch_out" "$best_torch")
  done
  awk -v p="$preset" -v s="$seq" -v r="$rows" -v a="$best_rust" -v b="$best_torch" 'BEGIN {
    printf "%s seq %s rows %s: codelupe %.0f tokens/s, pytorch %.0f tokens/s, ratio %.2fx\n", p, s, r, a, b, a / b }'
done
