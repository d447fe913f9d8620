# Sourced by ./codelupe, tests/run and .ci/run: makes (once) a Python venv holding torch
# 2.11.0, the libtorch tch 0.24 builds against (PyPI's wheel: about 2.7 GB to fetch,
# 4.6 GB on disk; it runs on a CPU too), and points the trainer's build at it.
TORCH_VENV=${TORCH_VENV:-$HOME/.cache/codelupe/torch-venv}
# The marker is written only after torch imported at the right version (an import
# takes seconds; every ./codelupe call sources this file).
if [ ! -f "$TORCH_VENV/.torch-2.11.0-ok" ]; then
  if ! "$TORCH_VENV/bin/python" -c 'import sys, torch; sys.exit(not torch.__version__.startswith("2.11.0"))' 2>/dev/null; then
    echo "setup: installing torch 2.11.0 into $TORCH_VENV (about 2.7 GB to download, once)" >&2
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install --disable-pip-version-check --progress-bar on torch==2.11.0 >&2
    "$TORCH_VENV/bin/python" -c 'import torch' >&2
  fi
  touch "$TORCH_VENV/.torch-2.11.0-ok"
fi
export PATH="$TORCH_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
