//! Metrics on :9093/metrics, names from the original system. `processor_active_files`
//! is a gauge (the original listed it among counters, but it goes down).

use codelupe_runtime::labels::CounterBy;
use codelupe_runtime::telemetry::register;
use prometheus::{Histogram, IntCounter, IntGauge, Registry};

pub use crate::license::LicenseOutcome;
pub use crate::redact::Redaction;

/// Why a file was not published: the reasons are the `repo-summaries` contract's.
pub use codelupe_runtime::records::SkipReason as Skip;

codelupe_runtime::label_set! {
    /// Why a clone record is dead-lettered.
    pub enum CloneError {
        /// A clone URI outside the clone store.
        RefusedClone => "refused_clone",
        MissingClone => "missing_clone",
        /// An object that cannot be read, even one file's.
        CorruptClone => "corrupt_clone",
        /// A tree past the `tree.*` caps.
        TreeBomb => "tree_bomb",
        /// A worker thread failed (retried first).
        Worker => "worker",
        /// The clone store did not answer (the record waits; counted, not dead-lettered).
        StoreUnavailable => "store_unavailable",
    }
}

pub const FILES_PROCESSED: &str = "processor_files_processed_total";

pub struct ProcessorMetrics {
    pub files_processed: IntCounter,
    pub files_skipped: CounterBy<Skip>,
    pub redactions: CounterBy<Redaction>,
    pub repositories_by_license: CounterBy<LicenseOutcome>,
    pub license_files_unread: IntCounter,
    pub active_files: IntGauge,
    pub worker_count: IntGauge,
    pub file_duration: Histogram,
    pub file_quality_score: Histogram,
}

impl ProcessorMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            files_processed: register::counter(
                r,
                FILES_PROCESSED,
                "Files published to code-files",
            )?,
            files_skipped: CounterBy::register(
                r,
                "processor_files_skipped_total",
                "Files not published, by reason",
                "reason",
            )?,
            redactions: CounterBy::register(
                r,
                "processor_redactions_total",
                "Secrets and personal data replaced by placeholders in published files, by kind",
                "kind",
            )?,
            repositories_by_license: CounterBy::register(
                r,
                "processor_repositories_by_license_total",
                "Clones judged by the license policy, by outcome",
                "outcome",
            )?,
            license_files_unread: register::counter(
                r,
                "processor_license_files_unread_total",
                "License files not read: past licenses.max_files, or larger than licenses.max_file_bytes",
            )?,
            active_files: register::int_gauge(
                r,
                "processor_active_files",
                "Files being processed now",
            )?,
            worker_count: register::int_gauge(r, "processor_worker_count", "Worker threads")?,
            file_duration: register::histogram(
                r,
                "processor_file_duration_seconds",
                "Time to process one file",
                prometheus::exponential_buckets(0.0001, 4.0, 10)?,
            )?,
            file_quality_score: register::histogram(
                r,
                "processor_file_quality_score",
                "File quality score, 0 to 100",
                prometheus::linear_buckets(10.0, 10.0, 10)?,
            )?,
        })
    }
}
