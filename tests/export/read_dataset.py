"""Reads an exported dataset as its users would, with Hugging Face `datasets` and
DuckDB, and prints what each saw as JSON: rows, content hashes, rows per language, the
rows of each config the dataset card (README.md) declares, and the catalogue: the
repositories table with each repository's files in the data, and the near-duplicates
table."""
import glob
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
# The catalogue: "is my repository in it, and which files?" as one query.
repositories = {}
if glob.glob(f"{root}/repositories/*.parquet"):
    by_datasets = datasets.load_dataset(
        "parquet", data_files=f"{root}/repositories/*.parquet", split="train", cache_dir=cache
    )
    rows = duckdb.sql(
        f"""SELECT r.repository, r.files_published, r.files_skipped.vendored,
                   count(d.path) AS in_dataset
            FROM read_parquet('{root}/repositories/*.parquet') r
            LEFT JOIN read_parquet('{files}') d ON d.repository = r.repository
            GROUP BY ALL"""
    ).fetchall()
    repositories = {
        "datasets_rows": by_datasets.num_rows,
        "rows": {name: {"published": p, "vendored": v, "in_dataset": n} for name, p, v, n in rows},
    }
near_duplicates = 0
if glob.glob(f"{root}/near-duplicates/*.parquet"):
    near_duplicates = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/near-duplicates/*.parquet')"
    ).fetchall()[0][0]
print(json.dumps({
    "datasets_rows": loaded.num_rows,
    "datasets_columns": loaded.column_names,
    "datasets_hashes": list(loaded["content_hash"]),
    "duckdb_hashes": [row[0] for row in by_duckdb],
    "duckdb_emails": sum(row[1] for row in by_duckdb),
    "duckdb_per_language": dict(per_language),
    "card_configs": card_configs,
    "repositories": repositories,
    "near_duplicates_rows": near_duplicates,
}))
shutil.rmtree(cache, ignore_errors=True)
