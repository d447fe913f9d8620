"""Reads an exported dataset as its users would, with Hugging Face `datasets` and
DuckDB, and prints what each saw as JSON: rows, content hashes, rows per language."""
import json
import sys

import datasets
import duckdb

root = sys.argv[1]
datasets.disable_progress_bars()
loaded = datasets.load_dataset("parquet", data_dir=f"{root}/data", split="train")
by_duckdb = duckdb.sql(
    f"SELECT content_hash, language, quality_components.syntax AS syntax, redactions.email AS emails "
    f"FROM read_parquet('{root}/data/*/*.parquet')"
).fetchall()
per_language = duckdb.sql(
    f"SELECT language, count(*) FROM read_parquet('{root}/data/*/*.parquet') GROUP BY language"
).fetchall()
print(json.dumps({
    "datasets_rows": loaded.num_rows,
    "datasets_columns": loaded.column_names,
    "datasets_hashes": list(loaded["content_hash"]),
    "duckdb_hashes": [row[0] for row in by_duckdb],
    "duckdb_emails": sum(row[3] for row in by_duckdb),
    "duckdb_per_language": dict(per_language),
}))
