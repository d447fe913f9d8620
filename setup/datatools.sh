# Sourced by tests/run: makes (once) a Python venv holding the clients a user reads the
# exported dataset with, Hugging Face `datasets` and DuckDB (about 0.5 GB on disk),
# outside the clone as the torch venv is. The export's tests run them.
DATA_VENV=${DATA_VENV:-$HOME/.cache/codelupe/data-venv}
if [ ! -f "$DATA_VENV/.datasets-5.2.0-duckdb-2.0.1-ok" ]; then
  echo "setup: installing datasets 5.2.0 and duckdb 2.0.1 into $DATA_VENV (once)" >&2
  python3 -m venv "$DATA_VENV"
  "$DATA_VENV/bin/pip" install --disable-pip-version-check --quiet datasets==5.2.0 duckdb==2.0.1 >&2
  "$DATA_VENV/bin/python" -c 'import datasets, duckdb' >&2
  touch "$DATA_VENV/.datasets-5.2.0-duckdb-2.0.1-ok"
fi
export DATA_VENV
