# Sourced by tests/run: fetches (once) real Jupyter notebooks for the processor's
# notebook test, never committed: the 55 input notebooks of jupytext 1.16.4's own tests
# (its source package on PyPI, MIT licence; 33 kernels: Python, R, Julia, C++, Rust,
# Scala, …). Exports NOTEBOOKS_DIR, the folder holding them.
NOTEBOOKS_DIR=${NOTEBOOKS_DIR:-$HOME/.cache/codelupe/notebooks}
if [ ! -f "$NOTEBOOKS_DIR/.jupytext-1.16.4-ok" ]; then
  echo "setup: fetching jupytext 1.16.4's test notebooks from PyPI into $NOTEBOOKS_DIR" >&2
  sdist=$(mktemp -d)
  python3 -m pip download --disable-pip-version-check --quiet --no-deps --no-binary :all: \
    --dest "$sdist" jupytext==1.16.4 >&2
  rm -rf "$NOTEBOOKS_DIR" && mkdir -p "$NOTEBOOKS_DIR"
  tar -xzf "$sdist/jupytext-1.16.4.tar.gz" -C "$NOTEBOOKS_DIR" --strip-components=5 \
    --wildcards 'jupytext-1.16.4/tests/data/notebooks/inputs/ipynb_*/*.ipynb'
  rm -rf "$sdist"
  touch "$NOTEBOOKS_DIR/.jupytext-1.16.4-ok"
fi
export NOTEBOOKS_DIR
