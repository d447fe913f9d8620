//! Metrics on :9096/metrics (a stage the original did not have).

use codelupe_runtime::telemetry::register;
use prometheus::{Histogram, IntCounter, Registry};

codelupe_runtime::label_set! {
    /// Why the export stops (it dead-letters no row of its own making).
    pub enum ExportError {
        /// The dataset's store did not take a file (retried after a restart).
        Store => "store",
    }
}

pub const ROWS_EXPORTED: &str = "export_rows_total";
pub const FILES_WRITTEN: &str = "export_files_written_total";
pub const BYTES_WRITTEN: &str = "export_bytes_written_total";

pub struct ExportMetrics {
    pub rows_exported: IntCounter,
    pub files_written: IntCounter,
    pub bytes_written: IntCounter,
    pub uncommitted_deleted: IntCounter,
    pub card_writes: IntCounter,
    pub flush_duration: Histogram,
}

impl ExportMetrics {
    /// One table's metrics, named `<prefix>_…`: `export` for the files (the names
    /// above), `export_repositories` and `export_near_duplicates` for the catalogue,
    /// so a sum over `export_rows_total` counts the dataset's files alone.
    pub fn register(r: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        Ok(Self {
            rows_exported: register::counter(
                r,
                &name("rows_total"),
                "Rows in Parquet files written",
            )?,
            files_written: register::counter(
                r,
                &name("files_written_total"),
                "Parquet files written whole",
            )?,
            bytes_written: register::counter(
                r,
                &name("bytes_written_total"),
                "Bytes of the Parquet files written",
            )?,
            uncommitted_deleted: register::counter(
                r,
                &name("uncommitted_files_deleted_total"),
                "Files of a flush that crashed before its commit, deleted at assignment",
            )?,
            card_writes: register::counter(
                r,
                &name("card_writes_total"),
                "Times the dataset card (README.md) was rewritten",
            )?,
            flush_duration: register::histogram(
                r,
                &name("flush_duration_seconds"),
                "Time to encode and put one partition's files",
                prometheus::exponential_buckets(0.001, 4.0, 10)?,
            )?,
        })
    }
}
