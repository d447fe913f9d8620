#!/usr/bin/env bash
# Near-duplicate judgement, CodeLupe against datatrove's MinHash pipeline, on the same
# files (the benchmark crates' sources from the local cargo registry), one core each,
# in one run. Installs datatrove in its own venv on first use (PyPI).
#
#   bash stages/neardup/benches/versus_datatrove.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

venv=${DATATROVE_VENV:-$HOME/.cache/codelupe/datatrove-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import datatrove, spacy, orjson" 2>/dev/null; then
  python3 -m venv "$venv"
  # datatrove tokenizes words with spaCy (a blank English pipeline; no model download).
  "$venv/bin/pip" install -q "datatrove[io,processing]==0.10.1" "spacy==3.8.*"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
NEARDUP_BENCH_FILES="$work/files.jsonl" cargo bench -q -p codelupe-neardup --bench signatures | tee "$work/codelupe.txt"
"$venv/bin/python" stages/neardup/benches/datatrove_minhash.py "$work/files.jsonl" "$work/datatrove" 2>"$work/datatrove.log" | tee "$work/datatrove.txt"

ours=$(sed -n 's/^codelupe.*: *\([0-9.]*\) files\/s.*/\1/p' "$work/codelupe.txt")
theirs=$(sed -n 's/^datatrove whole pipeline.*: *\([0-9.]*\) files\/s.*/\1/p' "$work/datatrove.txt")
python3 -c "print(f'CodeLupe / datatrove, files/s on one core: {$ours / $theirs:.1f}x (goal >= 3x)')"
