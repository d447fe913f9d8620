//! An exported dataset read back with the parquet crate, for the export's checks.

use std::path::{Path, PathBuf};

use arrow_array::StringArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The data files under `<dataset>/data/<language>/`, sorted.
pub fn data_files(dataset: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for language in std::fs::read_dir(dataset.join("data"))
        .into_iter()
        .flatten()
    {
        for file in std::fs::read_dir(language.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

/// Every row's content hash, file by file; panics on a file that is not whole Parquet.
pub fn content_hashes(dataset: &Path) -> Vec<String> {
    let mut hashes = Vec::new();
    for file in data_files(dataset) {
        let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap_or_else(|e| panic!("{} is not Parquet: {e}", file.display()))
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column_by_name("content_hash").unwrap();
            let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
            hashes.extend(strings.iter().map(|s| s.unwrap().to_string()));
        }
    }
    hashes
}
