//! Metrics on :9091/metrics, names and meanings from the original system.
//!
//! `downloader_quality_filtered_total` stays unlabelled so the original dashboards'
//! filter-rate query (`filtered / (passed + filtered)`) still matches label sets; the
//! per-reason breakdown is `downloader_quality_filtered_reasons_total{reason}`.

use codelupe_runtime::labels::CounterBy;
use codelupe_runtime::telemetry::register;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge, Registry};

pub use crate::filter::Rejection;

codelupe_runtime::label_set! {
    /// Why a repository was not cloned (`downloader_repos_failed_total{reason}`, and
    /// the reason of its dead letter).
    pub enum Failure {
        NotFound => "not_found",
        /// The host asked for credentials it did not get or refused them.
        Auth => "auth",
        /// The clone took longer than `clone_timeout_s`, or the server went silent.
        Timeout => "timeout",
        /// The transfer passed `max_clone_bytes`.
        TooLarge => "too_large",
        /// A URL (or a redirect) the URL policy refuses, or an unsafe name.
        RefusedUrl => "refused_url",
        Corrupt => "corrupt",
        Network => "network",
        /// The clone store could not be written.
        Store => "store",
        /// A repository without a HEAD.
        Empty => "empty",
        /// A tree past the `tree.*` caps.
        TreeBomb => "tree_bomb",
    }
}

#[derive(Clone)]
pub struct DownloaderMetrics {
    pub repos_downloaded: IntCounter,
    pub repos_failed: CounterBy<Failure>,
    pub quality_passed: IntCounter,
    pub quality_filtered: IntCounter,
    pub quality_filtered_reasons: CounterBy<Rejection>,
    pub active_downloads: IntGauge,
    pub max_concurrent: IntGauge,
    pub last_repo_size_kb: Gauge,
    pub clone_duration: Histogram,
    pub repo_quality_score: Histogram,
    pub repo_lines_of_code: Histogram,
    pub waiting_for_store: IntGauge,
    pub clone_store_bytes: IntGauge,
}

impl DownloaderMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            repos_downloaded: register::counter(
                r,
                "downloader_repos_downloaded_total",
                "Repositories cloned and published",
            )?,
            repos_failed: CounterBy::register(
                r,
                "downloader_repos_failed_total",
                "Repositories that could not be cloned",
                "reason",
            )?,
            quality_passed: register::counter(
                r,
                "downloader_quality_passed_total",
                "Repositories that passed the quality filter",
            )?,
            quality_filtered: register::counter(
                r,
                "downloader_quality_filtered_total",
                "Repositories the quality filter rejected",
            )?,
            quality_filtered_reasons: CounterBy::register(
                r,
                "downloader_quality_filtered_reasons_total",
                "Repositories the quality filter rejected, by first failed rule",
                "reason",
            )?,
            active_downloads: register::int_gauge(
                r,
                "downloader_active_downloads",
                "Clones in progress",
            )?,
            max_concurrent: register::int_gauge(
                r,
                "downloader_max_concurrent",
                "Configured maximum of concurrent clones",
            )?,
            last_repo_size_kb: register::gauge(
                r,
                "downloader_last_repo_size_kb",
                "Size of the last cloned repository in KiB",
            )?,
            clone_duration: register::histogram(
                r,
                "downloader_clone_duration_seconds",
                "Time to clone one repository",
                prometheus::exponential_buckets(0.05, 2.0, 14)?,
            )?,
            repo_quality_score: register::histogram(
                r,
                "downloader_repo_quality_score",
                "Repository quality score, 0 to 100",
                prometheus::linear_buckets(10.0, 10.0, 10)?,
            )?,
            repo_lines_of_code: register::histogram(
                r,
                "downloader_repo_lines_of_code",
                "Lines of code in a cloned repository's HEAD tree",
                prometheus::exponential_buckets(100.0, 4.0, 10)?,
            )?,
            waiting_for_store: register::int_gauge(
                r,
                "downloader_waiting_for_store",
                "Packs waiting for room in the clone store (over its byte budget)",
            )?,
            clone_store_bytes: register::int_gauge(
                r,
                "downloader_clone_store_bytes",
                "Bytes of packs in the clone store after the last sweep",
            )?,
        })
    }
}
