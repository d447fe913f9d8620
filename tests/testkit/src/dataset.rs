//! An exported dataset read back with the parquet crate, for the export's checks.

use std::path::{Path, PathBuf};

use arrow_array::StringArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The data files under `<dataset>/data/<language>/`, sorted (not a put in progress,
/// which the local store writes aside under another name).
pub fn data_files(dataset: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for language in std::fs::read_dir(dataset.join("data"))
        .into_iter()
        .flatten()
    {
        let Ok(language) = language else { continue };
        for file in std::fs::read_dir(language.path()).into_iter().flatten() {
            let Ok(file) = file else { continue };
            let path = file.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every row's content hash, file by file; panics on a file that is not whole Parquet.
/// A file deleted while it is read (a stage deleting an uncommitted flush) is skipped.
pub fn content_hashes(dataset: &Path) -> Vec<String> {
    let mut hashes = Vec::new();
    for file in data_files(dataset) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        hashes.extend(hashes_in(
            bytes::Bytes::from(bytes),
            &file.display().to_string(),
        ));
    }
    hashes
}

/// The content hashes of one data file's rows; panics when it is not whole Parquet.
pub fn hashes_in(parquet: bytes::Bytes, name: &str) -> Vec<String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet)
        .unwrap_or_else(|e| panic!("{name} is not Parquet: {e}"))
        .build()
        .unwrap();
    let mut hashes = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("content_hash").unwrap();
        let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
        hashes.extend(strings.iter().map(|s| s.unwrap().to_string()));
    }
    hashes
}
