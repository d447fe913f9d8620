//! What one table of the dataset is: the records it holds, where their files go, how
//! they become Parquet and what figures the card reads of each file. The export writes
//! three alike (files, repositories, near-duplicates), each from its own topic.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use codelupe_runtime::AvroRecord;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub trait Table: Send + Sync + 'static {
    type Record: AvroRecord;
    /// A file's figures, put beside it for the card.
    type Stats: Serialize + DeserializeOwned + Send + Sync;

    /// Its folder under the dataset's root.
    const ROOT: &'static str;

    /// The folder a record's row goes to: `ROOT` or a folder under it.
    fn folder(record: &Self::Record) -> String;

    /// About how many bytes a record adds to a file (toward `file_max_bytes` and a row
    /// group's size).
    fn size(record: &Self::Record) -> usize;

    /// The table's columns, the same in every file (a reader unions them by name).
    fn schema() -> SchemaRef;

    /// One Arrow batch of `records`, in order.
    fn batch(records: &[&Self::Record]) -> RecordBatch;

    fn stats(records: &[&Self::Record]) -> Self::Stats;
}

/// Rows per Arrow batch handed to the writer; a row group closes between batches.
pub const BATCH_ROWS: usize = 1024;

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("a valid level"),
        ))
        // Min/max of whole files' text would bloat the footer and help no filter.
        .set_column_statistics_enabled(ColumnPath::from("content"), EnabledStatistics::None)
        .set_max_row_group_row_count(None)
        .build()
}

/// One Parquet file holding `records` in order, zstd pages, row groups closed once they
/// hold `row_group_bytes` (by [`Table::size`]).
pub fn parquet_file<T: Table>(
    records: &[&T::Record],
    row_group_bytes: usize,
) -> parquet::errors::Result<Vec<u8>> {
    let mut writer = ArrowWriter::try_new(Vec::new(), T::schema(), Some(properties()))?;
    let mut group_bytes = 0;
    for chunk in records.chunks(BATCH_ROWS) {
        group_bytes += chunk.iter().map(|r| T::size(r)).sum::<usize>();
        writer.write(&T::batch(chunk))?;
        if group_bytes >= row_group_bytes {
            writer.flush()?;
            group_bytes = 0;
        }
    }
    writer.into_inner()
}

/// A `timestamp[ms, UTC]` column's type.
pub fn utc_millis() -> arrow_schema::DataType {
    arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some(Arc::from("UTC")))
}
