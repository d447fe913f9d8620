//! Crawler: discovers repositories (GitHub Search API, a URL list, or a local folder
//! of git repositories) and publishes each to `repo-urls`, keyed by full name. Output
//! and progress are written in one Kafka transaction per page, so a crash never
//! publishes a repository twice nor loses the cursor.

pub mod github;
pub mod metrics;
pub mod sink;
pub mod sources;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use codelupe_runtime::consume::transaction::Transactions;
use codelupe_runtime::records::RepoUrl;
use codelupe_runtime::StageRuntime;
use serde::Deserialize;

use codelupe_runtime::descriptor::{Bound, Flow, Runs, StageDescriptor};

use crate::github::{GithubOptions, GithubSource, Stopped};
use crate::metrics::{CrawlerMetrics, ScrapeError};
use crate::sink::Sink;
use crate::state::CrawlState;

pub const STAGE: &str = "crawler";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Io,
    progress: &[
        ("scraped", metrics::REPOS_SCRAPED),
        ("published", metrics::REPOS_INDEXED),
        ("errors", metrics::SCRAPE_ERRORS),
    ],
    flow: Some(Flow {
        consumed: metrics::REPOS_SCRAPED,
        produced: metrics::REPOS_INDEXED,
    }),
    // With no network: the git repositories under the working directory.
    offline_options: "{source: local_folder, local_folder: ., interval_s: 60}",
    prepare_offline: None,
    summarize: |seen| vec![format!("repositories  {} found", seen.produced as u64)],
};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Github,
    UrlList,
    LocalFolder,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrawlerOptions {
    pub source: SourceKind,
    pub github: GithubOptions,
    /// File of URLs or owner/name lines; `-` reads standard input.
    pub url_list: Option<PathBuf>,
    pub local_folder: Option<PathBuf>,
    /// How deep to look for repositories under `local_folder`.
    pub local_depth: usize,
    /// Compacted topic holding what was published and the per-query cursors.
    pub state_topic: String,
    /// Fences a crashed predecessor; give each concurrently running crawler its own.
    pub transactional_id: String,
    /// Seconds between passes when not run with --once.
    pub interval_s: u64,
}

impl Default for CrawlerOptions {
    fn default() -> Self {
        Self {
            source: SourceKind::Github,
            github: GithubOptions::default(),
            url_list: None,
            local_folder: None,
            local_depth: 3,
            state_topic: "crawler-state".into(),
            transactional_id: "codelupe-crawler".into(),
            interval_s: 3600,
        }
    }
}

/// Runs passes until shutdown, or one pass with `--once`.
pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: CrawlerOptions = runtime.settings.options(STAGE)?;
    let metrics = CrawlerMetrics::register(&runtime.registry)?;
    let output = runtime
        .output
        .clone()
        .context("the crawler needs an output topic")?;
    if let Some(input) = &runtime.input {
        bail!("the crawler reads no topic, but input {input} is configured");
    }
    runtime
        .readiness
        .set_not_ready("initialising transactions and loading crawl state");
    let publisher = Transactions::init(&runtime, &options.transactional_id).await?;
    let state = CrawlState::load(&runtime.clients, &options.state_topic).await?;
    runtime.readiness.set_ready();
    let mut sink = Sink::new(&publisher, state, &output, &options.state_topic, &metrics);
    loop {
        match pass(&options, &mut sink, &metrics, &runtime).await {
            Ok(published) => tracing::info!(
                published,
                known = sink.state.published_count(),
                "crawl pass done"
            ),
            Err(Stopped::Shutdown) => return Ok(()),
            Err(Stopped::Failed(e)) if runtime.once => return Err(e),
            Err(Stopped::Failed(e)) => {
                tracing::error!(error = %format!("{e:#}"), "crawl pass stopped; the next pass resumes from the cursor")
            }
        }
        if runtime.once {
            return Ok(());
        }
        tokio::select! {
            _ = runtime.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(options.interval_s)) => {}
        }
    }
}

async fn pass(
    options: &CrawlerOptions,
    sink: &mut Sink<'_>,
    metrics: &CrawlerMetrics,
    runtime: &StageRuntime,
) -> Result<usize, Stopped> {
    match options.source {
        SourceKind::Github => {
            GithubSource::new(&options.github, metrics, runtime.shutdown.clone())?
                .crawl(sink)
                .await
        }
        SourceKind::UrlList => {
            let path = options
                .url_list
                .clone()
                .context("stages.crawler.options.url_list is required for source url_list")?;
            // File reads and folder walks block: keep them off the async workers.
            let list = path.clone();
            let (repos, bad) = tokio::task::spawn_blocking(move || sources::read_url_list(&list))
                .await
                .map_err(anyhow::Error::from)??;
            for problem in &bad {
                metrics.scrape_errors.inc(ScrapeError::InvalidInput);
                tracing::warn!(
                    "{}: line {}: skipped: {}",
                    path.display(),
                    problem.line,
                    problem.message
                );
            }
            publish_all(sink, metrics, repos).await
        }
        SourceKind::LocalFolder => {
            let root = options.local_folder.clone().context(
                "stages.crawler.options.local_folder is required for source local_folder",
            )?;
            let depth = options.local_depth;
            let repos = tokio::task::spawn_blocking(move || sources::scan_folder(&root, depth))
                .await
                .map_err(anyhow::Error::from)??;
            publish_all(sink, metrics, repos).await
        }
    }
}

async fn publish_all(
    sink: &mut Sink<'_>,
    metrics: &CrawlerMetrics,
    repos: Vec<RepoUrl>,
) -> Result<usize, Stopped> {
    metrics.repos_scraped.inc_by(repos.len() as u64);
    let mut published = 0;
    for chunk in repos.chunks(100) {
        published += sink.publish(chunk.to_vec(), None).await?;
    }
    Ok(published)
}
