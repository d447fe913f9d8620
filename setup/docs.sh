# Sourced by .ci/run (or run with bash): installs (once) mdBook, which builds the
# documentation book in docs/ (`mdbook build docs`, `mdbook serve docs`), outside the
# clone as the torch venv is. It is built from crates.io with the lock file it ships.
MDBOOK_ROOT=${MDBOOK_ROOT:-$HOME/.cache/codelupe/mdbook}
MDBOOK_VERSION=0.4.52
if ! "$MDBOOK_ROOT/bin/mdbook" --version 2>/dev/null | grep -qx "mdbook v$MDBOOK_VERSION"; then
  echo "setup: building mdbook $MDBOOK_VERSION into $MDBOOK_ROOT (once, a few minutes)" >&2
  # Its own build folder: the project's target cache holds the project's builds only.
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --version "$MDBOOK_VERSION" \
    --root "$MDBOOK_ROOT" mdbook >&2
fi
export PATH="$MDBOOK_ROOT/bin:$PATH"
