//! Metrics on :9091/metrics, names and meanings from the original system.
//!
//! `downloader_quality_filtered_total` stays unlabelled so the original dashboards'
//! filter-rate query (`filtered / (passed + filtered)`) still matches label sets; the
//! per-reason breakdown is `downloader_quality_filtered_reasons_total{reason}`.

use codelupe_runtime::telemetry::register;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

pub const FILTER_REASONS: &[&str] = &[
    "stars",
    "forks",
    "language",
    "license",
    "archived",
    "fork",
    "size",
    "stale",
    "excluded_word",
];
pub const FAILURE_REASONS: &[&str] = &[
    "not_found",
    "auth",
    "timeout",
    "too_large",
    "refused_url",
    "corrupt",
    "network",
];

pub struct DownloaderMetrics {
    pub repos_downloaded: IntCounter,
    pub repos_failed: IntCounterVec,
    pub quality_passed: IntCounter,
    pub quality_filtered: IntCounter,
    pub quality_filtered_reasons: IntCounterVec,
    pub active_downloads: IntGauge,
    pub max_concurrent: IntGauge,
    pub last_repo_size_kb: Gauge,
    pub clone_duration: Histogram,
    pub repo_quality_score: Histogram,
    pub repo_lines_of_code: Histogram,
}

impl DownloaderMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            repos_downloaded: register::counter(
                r,
                "downloader_repos_downloaded_total",
                "Repositories cloned and published",
            )?,
            repos_failed: register::counter_vec(
                r,
                "downloader_repos_failed_total",
                "Repositories that could not be cloned",
                "reason",
                FAILURE_REASONS,
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
            quality_filtered_reasons: register::counter_vec(
                r,
                "downloader_quality_filtered_reasons_total",
                "Repositories the quality filter rejected, by first failed rule",
                "reason",
                FILTER_REASONS,
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
        })
    }
}
