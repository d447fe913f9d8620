//! Metrics on :9092/metrics, names and meanings from the original system.

use codelupe_runtime::labels::CounterBy;
use codelupe_runtime::telemetry::register;
use prometheus::{Gauge, Histogram, IntCounter, Registry};

codelupe_runtime::label_set! {
    /// Why reading a source went wrong (`crawler_scrape_errors_total{reason}`).
    pub enum ScrapeError {
        /// A rate limit answered (403/429 with a reset or Retry-After): waited out.
        RateLimited => "rate_limited",
        ServerError => "server_error",
        Network => "network",
        /// A page that is not the Search API's JSON.
        Malformed => "malformed",
        /// GitHub's `incomplete_results` (its search timed out).
        Incomplete => "incomplete",
        /// 403 without a rate limit.
        Forbidden => "forbidden",
        /// Another 4xx: the pass stops.
        BadRequest => "bad_request",
        /// A url_list line that is no repository URL.
        InvalidInput => "invalid_input",
        /// A window served fewer repositories than its total_count: read again.
        WindowShifted => "window_shifted",
        /// A one-second window with 1,000 or more repositories: only 1,000 reachable.
        WindowTooDense => "window_too_dense",
    }
}

codelupe_runtime::label_set! {
    /// Why publishing repositories failed (`crawler_index_errors_total{reason}`).
    pub enum IndexError {
        Encode => "encode",
        Produce => "produce",
    }
}

pub const REPOS_SCRAPED: &str = "crawler_repos_scraped_total";
pub const REPOS_INDEXED: &str = "crawler_repos_indexed_total";
pub const SCRAPE_ERRORS: &str = "crawler_scrape_errors_total";

pub struct CrawlerMetrics {
    /// Repositories read from a source.
    pub repos_scraped: IntCounter,
    /// Repositories published to `repo-urls` and acknowledged.
    pub repos_indexed: IntCounter,
    pub scrape_errors: CounterBy<ScrapeError>,
    pub index_errors: CounterBy<IndexError>,
    pub last_repo_stars: Gauge,
    /// Per API request.
    pub scrape_duration: Histogram,
    pub rate_limit_remaining: Gauge,
}

impl CrawlerMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            repos_scraped: register::counter(r, REPOS_SCRAPED, "Repositories read from a source")?,
            repos_indexed: register::counter(
                r,
                REPOS_INDEXED,
                "Repositories published to repo-urls and acknowledged",
            )?,
            scrape_errors: CounterBy::register(
                r,
                SCRAPE_ERRORS,
                "Errors reading a source",
                "reason",
            )?,
            index_errors: CounterBy::register(
                r,
                "crawler_index_errors_total",
                "Errors publishing repositories",
                "reason",
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
