//! Metrics on :9093/metrics, names from the original system. `processor_active_files`
//! is a gauge (the original listed it among counters, but it goes down).

use codelupe_runtime::telemetry::register;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

pub const SKIP_REASONS: &[&str] = &[
    "vendored",
    "generated_name",
    "minified",
    "binary",
    "too_small",
    "too_large",
    "too_many_lines",
    "long_lines",
    "low_alpha",
    "auto_generated",
    "encoded_data",
    "unknown_language",
    "low_quality",
    "unreadable",
];

pub struct ProcessorMetrics {
    pub files_processed: IntCounter,
    pub files_skipped: IntCounterVec,
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
                "processor_files_processed_total",
                "Files published to code-files",
            )?,
            files_skipped: register::counter_vec(
                r,
                "processor_files_skipped_total",
                "Files not published, by reason",
                "reason",
                SKIP_REASONS,
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
