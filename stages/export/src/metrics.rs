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
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            rows_exported: register::counter(r, ROWS_EXPORTED, "Rows in Parquet files written")?,
            files_written: register::counter(r, FILES_WRITTEN, "Parquet files written whole")?,
            bytes_written: register::counter(
                r,
                BYTES_WRITTEN,
                "Bytes of the Parquet files written",
            )?,
            uncommitted_deleted: register::counter(
                r,
                "export_uncommitted_files_deleted_total",
                "Files of a flush that crashed before its commit, deleted at assignment",
            )?,
            card_writes: register::counter(
                r,
                "export_card_writes_total",
                "Times the dataset card (README.md) was rewritten",
            )?,
            flush_duration: register::histogram(
                r,
                "export_flush_duration_seconds",
                "Time to encode and put one partition's files",
                prometheus::exponential_buckets(0.001, 4.0, 10)?,
            )?,
        })
    }
}
