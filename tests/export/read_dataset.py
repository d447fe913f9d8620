"""Reads an exported dataset as its users would, with Hugging Face `datasets` and
DuckDB, and prints what each saw as JSON: rows, content hashes, rows per language, and
the rows of each config the dataset card (README.md) declares."""
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import duckdb  # noqa: E402

root = sys.argv[1]
datasets.disable_progress_bars()
# A cache of this read's own: `datasets` keys its cache by the folder's name and the
# files' names, which another export (another test's) may share.
cache = tempfile.mkdtemp(prefix="codelupe-datasets-")
loaded = datasets.load_dataset("parquet", data_dir=f"{root}/data", split="train", cache_dir=cache)
files = f"{root}/data/*/*.parquet"
by_duckdb = duckdb.sql(
    f"SELECT content_hash, redactions.email FROM read_parquet('{files}')"
).fetchall()
per_language = duckdb.sql(
    f"SELECT language, count(*) FROM read_parquet('{files}') GROUP BY language"
).fetchall()
# The card's configs, as `datasets` reads them from its YAML header.
card_configs = {}
if os.path.exists(f"{root}/README.md"):
    for name in datasets.get_dataset_config_names(root):
        card_configs[name] = datasets.load_dataset(root, name, split="train", cache_dir=cache).num_rows
print(json.dumps({
    "datasets_rows": loaded.num_rows,
    "datasets_columns": loaded.column_names,
    "datasets_hashes": list(loaded["content_hash"]),
    "duckdb_hashes": [row[0] for row in by_duckdb],
    "duckdb_emails": sum(row[1] for row in by_duckdb),
    "duckdb_per_language": dict(per_language),
    "card_configs": card_configs,
}))
shutil.rmtree(cache, ignore_errors=True)
