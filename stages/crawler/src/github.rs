//! GitHub REST Search API source (`/search/repositories`).
//!
//! The API returns at most 1,000 results per query, so each language's date range is
//! split in halves until a window reports fewer than 1,000 (`total_count`); windows are
//! published in order and the cursor moves past a window only once all its pages are
//! committed. Rate limits are waited out, 5xx/network/malformed responses retried with
//! backoff, and a page that still fails stops the pass with an error: no page is ever
//! skipped.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use codelupe_runtime::language;
use codelupe_runtime::records::{now_ms, RepoUrl};
use codelupe_runtime::retry::{self, Backoff};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CrawlerMetrics, ScrapeError};
use crate::sink::Sink;

/// The API's hard cap on results reachable through one query.
pub const SEARCH_CAP: u64 = 1000;

/// Reads of a one-second window whose results shifted while paging, before moving on:
/// a wider one is halved instead, so that no repository is missed by every read.
const WINDOW_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum WindowField {
    /// Last push; a repository pushed again moves into a later window and is found again.
    Pushed,
    Created,
}

impl WindowField {
    fn qualifier(self) -> &'static str {
        match self {
            WindowField::Pushed => "pushed",
            WindowField::Created => "created",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubOptions {
    /// `https://api.github.com`, or a GitHub Enterprise `https://host/api/v3`.
    pub api_url: String,
    pub languages: Vec<String>,
    pub min_stars: Option<u64>,
    pub max_stars: Option<u64>,
    pub max_size_kb: Option<u64>,
    /// SPDX-like license keys as GitHub's `license:` qualifier takes them (`mit`, `apache-2.0`).
    pub licenses: Vec<String>,
    pub include_forks: bool,
    pub include_archived: bool,
    pub window_field: WindowField,
    /// First day of the range (YYYY-MM-DD).
    pub since: NaiveDate,
    /// Last day of the range; absent means now less `until_lag_s`.
    pub until: Option<NaiveDate>,
    /// How far behind now an open range ends: GitHub's search index lags pushes, and a
    /// repository not indexed yet when its window is read would never be seen.
    pub until_lag_s: u64,
    /// Languages take turns: each crawls this many days of its range from its cursor,
    /// then the next one does, so the stream mixes languages from the start instead of
    /// holding one language's whole backlog before the next; 0: one turn per language
    /// for its whole range.
    pub turn_days: u32,
    pub per_page: u32,
    /// Pause when a token has this many requests left or fewer, until its reset.
    pub min_remaining: u32,
    /// Attempts at a page that fails with a retryable error before the pass stops.
    pub max_attempts: u32,
    pub max_backoff_s: u64,
    /// Request timeout.
    pub timeout_s: u64,
}

impl Default for GithubOptions {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            languages: codelupe_runtime::language::DEFAULT_LANGUAGES
                .iter()
                .map(|l| l.to_string())
                .collect(),
            min_stars: Some(10),
            max_stars: None,
            max_size_kb: None,
            licenses: Vec::new(),
            include_forks: false,
            include_archived: false,
            window_field: WindowField::Pushed,
            since: NaiveDate::from_ymd_opt(2008, 1, 1).expect("valid date"),
            until: None,
            until_lag_s: 900,
            turn_days: 30,
            per_page: 100,
            min_remaining: 1,
            max_attempts: 6,
            max_backoff_s: 60,
            timeout_s: 30,
        }
    }
}

/// A token that never shows itself in logs, errors or debug output.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug)]
struct TokenBudget {
    token: Option<Token>,
    remaining: Option<u64>,
    reset_at: Option<i64>,
}

/// Tokens from `GITHUB_TOKENS` (comma-separated) or `GITHUB_TOKEN`; none means the
/// anonymous limit.
fn tokens_from_env() -> Vec<TokenBudget> {
    let raw = std::env::var("GITHUB_TOKENS")
        .or_else(|_| std::env::var("GITHUB_TOKEN"))
        .unwrap_or_default();
    let mut tokens: Vec<_> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| TokenBudget {
            token: Some(Token(t.to_string())),
            remaining: None,
            reset_at: None,
        })
        .collect();
    if tokens.is_empty() {
        tokens.push(TokenBudget {
            token: None,
            remaining: None,
            reset_at: None,
        });
    }
    tokens
}

#[derive(Debug, Deserialize)]
struct SearchResponse {
    total_count: u64,
    #[serde(default)]
    incomplete_results: bool,
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    full_name: String,
    clone_url: String,
    default_branch: Option<String>,
    language: Option<String>,
    #[serde(default)]
    stargazers_count: i64,
    #[serde(default)]
    forks_count: i64,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    topics: Vec<String>,
    license: Option<License>,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    fork: bool,
    created_at: Option<DateTime<Utc>>,
    pushed_at: Option<DateTime<Utc>>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct License {
    spdx_id: Option<String>,
}

impl Item {
    fn into_record(self) -> RepoUrl {
        RepoUrl {
            full_name: self.full_name,
            clone_url: self.clone_url,
            default_branch: self.default_branch,
            language: self.language,
            stars: self.stargazers_count,
            forks: self.forks_count,
            size_kb: self.size,
            topics: self.topics,
            license_spdx: self
                .license
                .and_then(|l| l.spdx_id)
                .filter(|id| id != "NOASSERTION"),
            archived: self.archived,
            fork: self.fork,
            created_at_ms: self.created_at.map(|t| t.timestamp_millis()),
            pushed_at_ms: self.pushed_at.map(|t| t.timestamp_millis()),
            description: self.description,
            source: "github".into(),
            discovered_at_ms: now_ms(),
        }
    }
}

/// One page of search results, as read from the response.
pub struct Page {
    pub total_count: u64,
    items: Vec<Item>,
    pub next: Option<Url>,
}

/// Why a response with status 200 is not a page to use.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The search timed out on GitHub's side: the page is asked for again.
    #[error("incomplete results")]
    Incomplete,
    #[error("malformed JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A `Link` header that cannot be followed (the token would travel with it).
    #[error(transparent)]
    Link(#[from] anyhow::Error),
}

impl Page {
    /// Reads a 200 response's body and `Link` header; `base` is the API's origin, the
    /// only one a next link may point to.
    pub fn read(body: &[u8], link: Option<&str>, base: &Url) -> Result<Self, PageError> {
        let parsed: SearchResponse = serde_json::from_slice(body)?;
        if parsed.incomplete_results {
            return Err(PageError::Incomplete);
        }
        Ok(Page {
            total_count: parsed.total_count,
            items: parsed.items,
            next: next_link(base, link)?,
        })
    }

    /// The repositories, as records.
    pub fn into_records(self) -> Vec<RepoUrl> {
        self.items.into_iter().map(Item::into_record).collect()
    }
}

pub struct GithubSource<'a> {
    options: &'a GithubOptions,
    http: reqwest::Client,
    base: Url,
    tokens: Vec<TokenBudget>,
    turn: usize,
    metrics: &'a CrawlerMetrics,
    shutdown: CancellationToken,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("shutting down")]
    Shutdown,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl<'a> GithubSource<'a> {
    pub fn new(
        options: &'a GithubOptions,
        metrics: &'a CrawlerMetrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        // GitHub's `language:` qualifier takes Linguist's names and aliases.
        language::resolve(
            &options.languages,
            "stages.crawler.options.github.languages",
        )
        .map_err(anyhow::Error::msg)?;
        let mut base = Url::parse(&options.api_url).with_context(|| {
            format!("stages.crawler.options.github.api_url: {}", options.api_url)
        })?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("codelupe-crawler/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(options.timeout_s))
            .build()?;
        Ok(Self {
            options,
            http,
            base,
            tokens: tokens_from_env(),
            turn: 0,
            metrics,
            shutdown,
        })
    }

    /// The stable name of a language's query, under which its cursor is kept.
    fn cursor_key(&self, language: &str) -> String {
        format!(
            "github/{}/{}",
            language.to_lowercase(),
            self.qualifiers().join(" ")
        )
    }

    fn qualifiers(&self) -> Vec<String> {
        let o = self.options;
        let mut q = Vec::new();
        match (o.min_stars, o.max_stars) {
            (Some(min), Some(max)) => q.push(format!("stars:{min}..{max}")),
            (Some(min), None) => q.push(format!("stars:>={min}")),
            (None, Some(max)) => q.push(format!("stars:<={max}")),
            (None, None) => {}
        }
        if let Some(size) = o.max_size_kb {
            q.push(format!("size:<={size}"));
        }
        if !o.include_forks {
            q.push("fork:false".into());
        }
        if !o.include_archived {
            q.push("archived:false".into());
        }
        for license in &o.licenses {
            q.push(format!("license:{license}"));
        }
        q
    }

    fn query(&self, language: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
        let mut q = vec![format!("language:\"{language}\"")];
        q.extend(self.qualifiers());
        q.push(format!(
            "{}:{}..{}",
            self.options.window_field.qualifier(),
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        ));
        q.join(" ")
    }

    fn first_page_url(&self, query: &str) -> anyhow::Result<Url> {
        let mut url = self.base.join("search/repositories")?;
        // A fixed order (best match reorders as scores change); pushes still move a
        // repository, which the item count catches.
        url.query_pairs_mut()
            .append_pair("q", query)
            .append_pair("sort", "updated")
            .append_pair("order", "asc")
            .append_pair("per_page", &self.options.per_page.to_string())
            .append_pair("page", "1");
        Ok(url)
    }

    /// One pass over every language's range, the languages taking turns; returns the
    /// repositories published.
    pub async fn crawl(&mut self, sink: &mut Sink<'_>) -> Result<usize, Stopped> {
        let until = match self.options.until {
            Some(day) => Utc.from_utc_datetime(&day.and_hms_opt(23, 59, 59).expect("valid time")),
            None => Utc::now() - chrono::Duration::seconds(self.options.until_lag_s as i64),
        };
        let since =
            Utc.from_utc_datetime(&self.options.since.and_hms_opt(0, 0, 0).expect("valid time"));
        let turn = match self.options.turn_days {
            0 => until - since,
            days => chrono::Duration::days(i64::from(days)),
        };
        let mut published = 0;
        // Turns until every language's cursor has reached the end of the range.
        loop {
            let mut crawled = false;
            for language in self.options.languages.clone() {
                let key = self.cursor_key(&language);
                let from = match sink.state.cursor(&key) {
                    Some(done) => Utc
                        .timestamp_millis_opt(done)
                        .single()
                        .map(|t| t + chrono::Duration::seconds(1))
                        .unwrap_or(since),
                    None => since,
                };
                if from > until {
                    continue;
                }
                let to = (from + turn).min(until);
                tracing::info!(%language, %from, %to, %until, "crawling");
                published += self.crawl_language(&language, &key, from, to, sink).await?;
                crawled = true;
            }
            if !crawled {
                return Ok(published);
            }
        }
    }

    async fn crawl_language(
        &mut self,
        language: &str,
        cursor_key: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        sink: &mut Sink<'_>,
    ) -> Result<usize, Stopped> {
        let mut published = 0;
        // Windows to do, latest last: popping takes them in chronological order, so
        // the cursor only ever moves past fully published windows.
        let mut windows = vec![(from, until)];
        let mut attempt = 0;
        while let Some((a, b)) = windows.pop() {
            attempt += 1;
            let query = self.query(language, a, b);
            let mut page = self.fetch(self.first_page_url(&query)?).await?;
            let span = b - a;
            let splittable = span > chrono::Duration::seconds(1);
            if page.total_count >= SEARCH_CAP {
                if splittable {
                    windows.extend(halves(a, b));
                    attempt = 0;
                    continue;
                }
                self.metrics.scrape_errors.inc(ScrapeError::WindowTooDense);
                tracing::warn!(%query, total = page.total_count, "a one-second window holds 1,000 or more repositories; only the first 1,000 are reachable");
            }
            // A repository pushed while the window is paged leaves it and shifts the
            // rest of the pages: one of them is never served. Fewer distinct items
            // than total_count means the window is read again, in halves, before the
            // cursor moves: under heavy churn every read of one window can miss the
            // same repository, while a window of one page is served whole at once.
            let expected = page.total_count.min(SEARCH_CAP);
            let mut seen = std::collections::HashSet::new();
            loop {
                let next = page.next.take();
                let repos: Vec<RepoUrl> = page.into_records();
                self.metrics.repos_scraped.inc_by(repos.len() as u64);
                seen.extend(repos.iter().map(|r| r.full_name.clone()));
                let short = next.is_none() && (seen.len() as u64) < expected;
                let again = short && (splittable || attempt < WINDOW_ATTEMPTS);
                // The last page of a window carries the cursor in its transaction.
                let cursor = (next.is_none() && !again).then(|| (cursor_key, b.timestamp_millis()));
                published += sink.publish(repos, cursor).await?;
                if short {
                    self.metrics.scrape_errors.inc(ScrapeError::WindowShifted);
                    tracing::warn!(%query, expected, fetched = seen.len(), attempt, again, "the window's results shifted while paging");
                    if splittable {
                        windows.extend(halves(a, b));
                    } else if again {
                        windows.push((a, b));
                    }
                }
                match next {
                    None => break,
                    Some(url) => page = self.fetch(url).await?,
                }
            }
            if windows.last() != Some(&(a, b)) {
                attempt = 0;
            }
        }
        Ok(published)
    }

    /// GETs one page, waiting out rate limits and retrying transient failures.
    async fn fetch(&mut self, url: Url) -> Result<Page, Stopped> {
        let mut attempt = 0;
        let ceiling = Duration::from_secs(self.options.max_backoff_s);
        let mut backoff = Backoff::new(Duration::from_secs(1), ceiling);
        loop {
            let failure = match self.get_page(&url).await? {
                Ok(page) => return Ok(page),
                Err(failure) => failure,
            };
            self.metrics.scrape_errors.inc(failure.reason);
            let pause = match failure.wait {
                // A rate limit is not a failure of the page: wait it out, no attempt used.
                Some(wait) => {
                    tracing::warn!(wait_s = wait.as_secs_f64(), "rate limited; waiting");
                    wait
                }
                None => {
                    attempt += 1;
                    if attempt >= self.options.max_attempts {
                        return Err(Stopped::Failed(anyhow!(
                            "page {} failed {attempt} times, last: {}",
                            page_label(&url),
                            failure.message
                        )));
                    }
                    tracing::warn!(page = %page_label(&url), attempt, error = %failure.message, "retrying page");
                    backoff.next_pause()
                }
            };
            self.sleep(pause).await?;
        }
    }

    /// One GET of a page with the next token, classified: the page, a failure to
    /// retry or wait out, or (Stopped) an answer no retry can change.
    async fn get_page(&mut self, url: &Url) -> Result<Result<Page, Failure>, Stopped> {
        let slot = self.pick_token().await?;
        let mut request = self
            .http
            .get(url.clone())
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(token) = &self.tokens[slot].token {
            request = request.bearer_auth(&token.0);
        }
        let started = Instant::now();
        let response = request.send().await;
        self.metrics
            .scrape_duration
            .observe(started.elapsed().as_secs_f64());
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                let message = format!("request failed: {}", without_url(&e));
                return Ok(Err(Failure::retry(ScrapeError::Network, message)));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        self.note_budget(slot, &headers);
        match status {
            StatusCode::OK => match response.bytes().await {
                Ok(body) => {
                    let link = headers.get("link").and_then(|v| v.to_str().ok());
                    read_page(&body, link, &self.base)
                }
                Err(e) => {
                    let message = format!("reading body: {}", without_url(&e));
                    Ok(Err(Failure::retry(ScrapeError::Network, message)))
                }
            },
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                Ok(Err(refusal(status, &headers)))
            }
            s if s.is_server_error() => Ok(Err(Failure::retry(
                ScrapeError::ServerError,
                format!("HTTP {status}"),
            ))),
            s => {
                self.metrics.scrape_errors.inc(ScrapeError::BadRequest);
                let body = response.text().await.unwrap_or_default();
                Err(Stopped::Failed(anyhow!(
                    "GitHub refused the search ({s}): {}",
                    body.chars().take(300).collect::<String>()
                )))
            }
        }
    }

    /// Round-robin over tokens with budget left; when none has, wait for the earliest reset.
    async fn pick_token(&mut self) -> Result<usize, Stopped> {
        let floor = self.options.min_remaining as u64;
        for _ in 0..self.tokens.len() {
            let slot = self.turn % self.tokens.len();
            self.turn += 1;
            let budget = &self.tokens[slot];
            let exhausted = budget.remaining.is_some_and(|r| r <= floor)
                && budget
                    .reset_at
                    .is_some_and(|reset| reset > Utc::now().timestamp());
            if !exhausted {
                return Ok(slot);
            }
        }
        let (slot, reset) = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i, t.reset_at.unwrap_or(0)))
            .min_by_key(|(_, reset)| *reset)
            .expect("at least one token slot");
        let wait = until_epoch(reset);
        tracing::info!(
            wait_s = wait.as_secs(),
            "every token is near its rate limit; pausing until reset"
        );
        self.sleep(wait).await?;
        self.tokens[slot].remaining = None;
        Ok(slot)
    }

    fn note_budget(&mut self, slot: usize, headers: &HeaderMap) {
        if let Some(remaining) = header_u64(headers, "x-ratelimit-remaining") {
            self.tokens[slot].remaining = Some(remaining);
            self.metrics.rate_limit_remaining.set(remaining as f64);
        }
        if let Some(reset) = header_u64(headers, "x-ratelimit-reset") {
            self.tokens[slot].reset_at = Some(reset as i64);
        }
    }

    async fn sleep(&self, pause: Duration) -> Result<(), Stopped> {
        retry::sleep(pause, &self.shutdown)
            .await
            .map_err(|_| Stopped::Shutdown)
    }
}

/// The two halves of a window, in the order `crawl_language` pops them: the earlier
/// one last.
fn halves(a: DateTime<Utc>, b: DateTime<Utc>) -> [(DateTime<Utc>, DateTime<Utc>); 2] {
    let mid = a + (b - a) / 2;
    [(mid + chrono::Duration::seconds(1), b), (a, mid)]
}

/// A page that could not be had this time, and why.
struct Failure {
    reason: ScrapeError,
    message: String,
    /// A rate limit's wait: no attempt used.
    wait: Option<Duration>,
}

impl Failure {
    fn retry(reason: ScrapeError, message: String) -> Self {
        Self {
            reason,
            message,
            wait: None,
        }
    }

    fn wait(wait: Duration) -> Self {
        Self {
            reason: ScrapeError::RateLimited,
            message: "rate limited".into(),
            wait: Some(wait),
        }
    }
}

/// A 200's body as a page: incomplete or malformed results are retried, a next link
/// off the API's origin stops the pass.
fn read_page(
    body: &[u8],
    link: Option<&str>,
    base: &Url,
) -> Result<Result<Page, Failure>, Stopped> {
    match Page::read(body, link, base) {
        Ok(page) => Ok(Ok(page)),
        Err(PageError::Incomplete) => {
            tracing::warn!(
                "GitHub reported incomplete results (search timed out); retrying the page"
            );
            let message = "incomplete results".into();
            Ok(Err(Failure::retry(ScrapeError::Incomplete, message)))
        }
        Err(e @ PageError::Malformed(_)) => {
            Ok(Err(Failure::retry(ScrapeError::Malformed, e.to_string())))
        }
        Err(PageError::Link(e)) => Err(Stopped::Failed(e)),
    }
}

/// A 403 or 429: a rate limit to wait out (Retry-After, or no requests left until
/// the reset), else a refusal to retry.
fn refusal(status: StatusCode, headers: &HeaderMap) -> Failure {
    if let Some(wait) = retry_after(headers) {
        Failure::wait(wait)
    } else if header_u64(headers, "x-ratelimit-remaining") == Some(0) {
        let reset = header_u64(headers, "x-ratelimit-reset").unwrap_or(0) as i64;
        Failure::wait(until_epoch(reset))
    } else {
        Failure::retry(ScrapeError::Forbidden, format!("HTTP {status}"))
    }
}

/// The `rel="next"` link, only if it stays on the API's own origin (the token is sent
/// with it).
fn next_link(base: &Url, link: Option<&str>) -> anyhow::Result<Option<Url>> {
    let Some(link) = link else {
        return Ok(None);
    };
    for part in link.split(',') {
        let mut pieces = part.split(';');
        let target = pieces.next().unwrap_or_default().trim();
        if !pieces.any(|p| p.trim() == "rel=\"next\"") {
            continue;
        }
        let target = target.trim_start_matches('<').trim_end_matches('>');
        let url = Url::parse(target).with_context(|| format!("bad next link {target}"))?;
        if url.origin() != base.origin() {
            bail!(
                "next link leaves the API origin: {}",
                url.origin().ascii_serialization()
            );
        }
        return Ok(Some(url));
    }
    Ok(None)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_u64(headers, "retry-after").map(Duration::from_secs)
}

/// Time until a Unix-seconds reset, plus a second of slack; at least a second.
fn until_epoch(reset: i64) -> Duration {
    let wait = reset - Utc::now().timestamp() + 1;
    Duration::from_secs(wait.clamp(1, 3600) as u64)
}

/// A page for messages: the page number only (the query can be long; no token is in URLs).
fn page_label(url: &Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "page")
        .map(|(_, v)| format!("page {v}"))
        .unwrap_or_else(|| url.path().to_string())
}

/// reqwest errors print the URL; keep messages short and free of query strings.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_prints() {
        let t = Token("ghp_secret".into());
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn query_carries_the_configured_qualifiers_and_window() {
        let options = GithubOptions {
            licenses: vec!["mit".into()],
            max_size_kb: Some(5000),
            ..Default::default()
        };
        let metrics = CrawlerMetrics::register(&prometheus::Registry::new()).unwrap();
        let source = GithubSource::new(&options, &metrics, CancellationToken::new()).unwrap();
        let a = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2024, 1, 31, 23, 59, 59).unwrap();
        assert_eq!(
            source.query("C++", a, b),
            "language:\"C++\" stars:>=10 size:<=5000 fork:false archived:false license:mit pushed:2024-01-01T00:00:00Z..2024-01-31T23:59:59Z"
        );
    }
}
