//! An exported dataset read back with the parquet crate, for the export's checks.

use std::path::{Path, PathBuf};

use arrow_array::StringArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The data files under `<dataset>/data/<language>/`, sorted (not a put in progress,
/// which the local store writes aside under another name).
pub fn data_files(dataset: &Path) -> Vec<PathBuf> {
    table_files(dataset, "data")
}

/// The Parquet files of one table (`data`, `repositories`), at any depth under it,
/// sorted.
pub fn table_files(dataset: &Path, table: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&dataset.join(table), &mut files);
    files.sort();
    files
}

/// A text column of every row of one table, file by file (a file deleted while it is
/// read is skipped).
pub fn column(dataset: &Path, table: &str, column: &str) -> Vec<String> {
    let mut values = Vec::new();
    for file in table_files(dataset, table) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let name = file.display().to_string();
        values.extend(strings_in(bytes::Bytes::from(bytes), &name, column));
    }
    values
}

/// Every row's content hash, file by file; panics on a file that is not whole Parquet.
/// A file deleted while it is read (a stage deleting an uncommitted flush) is skipped.
pub fn content_hashes(dataset: &Path) -> Vec<String> {
    column(dataset, "data", "content_hash")
}

/// A text column of one file's rows; panics when it is not whole Parquet.
pub fn strings_in(parquet: bytes::Bytes, name: &str, column: &str) -> Vec<String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet)
        .unwrap_or_else(|e| panic!("{name} is not Parquet: {e}"))
        .build()
        .unwrap();
    let mut values = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let array = batch.column_by_name(column).unwrap();
        let strings = array.as_any().downcast_ref::<StringArray>().unwrap();
        values.extend(strings.iter().map(|s| s.unwrap().to_string()));
    }
    values
}
