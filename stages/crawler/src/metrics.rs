//! Metrics on :9092/metrics, names and meanings from the original system.

use codelupe_runtime::telemetry::register;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, Registry};

pub const ERROR_REASONS: &[&str] = &[
    "rate_limited",
    "server_error",
    "network",
    "malformed",
    "invalid_input",
    "window_shifted",
];

pub struct CrawlerMetrics {
    /// Repositories read from a source.
    pub repos_scraped: IntCounter,
    /// Repositories published to `repo-urls` and acknowledged.
    pub repos_indexed: IntCounter,
    pub scrape_errors: IntCounterVec,
    pub index_errors: IntCounterVec,
    pub last_repo_stars: Gauge,
    /// Per API request.
    pub scrape_duration: Histogram,
    pub rate_limit_remaining: Gauge,
}

impl CrawlerMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            repos_scraped: register::counter(
                r,
                "crawler_repos_scraped_total",
                "Repositories read from a source",
            )?,
            repos_indexed: register::counter(
                r,
                "crawler_repos_indexed_total",
                "Repositories published to repo-urls and acknowledged",
            )?,
            scrape_errors: register::counter_vec(
                r,
                "crawler_scrape_errors_total",
                "Errors reading a source",
                "reason",
                ERROR_REASONS,
            )?,
            index_errors: register::counter_vec(
                r,
                "crawler_index_errors_total",
                "Errors publishing repositories",
                "reason",
                &["encode", "produce"],
            )?,
            last_repo_stars: register::gauge(
                r,
                "crawler_last_repo_stars",
                "Stars of the last repository published",
            )?,
            scrape_duration: register::histogram(
                r,
                "crawler_scrape_duration_seconds",
                "Duration of one source request",
                prometheus::exponential_buckets(0.01, 2.0, 12)?,
            )?,
            rate_limit_remaining: register::gauge(
                r,
                "crawler_rate_limit_remaining",
                "Requests left in the current GitHub rate-limit window",
            )?,
        })
    }
}
