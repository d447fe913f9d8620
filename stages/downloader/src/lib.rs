//! Downloader: filters `repo-urls` by metadata, makes bare shallow clones into the
//! clone store, and publishes a `repo-clones` reference per clone. Failures are
//! dead-lettered with their reason by the runtime; the stage goes on.

pub mod clone;
pub mod filter;
pub mod metrics;
pub mod store;

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelupe_runtime::descriptor::{Runs, StageDescriptor, LOOP_FLOW, LOOP_PROGRESS};
use codelupe_runtime::records::{now_ms, RepoClone, RepoUrl};
use codelupe_runtime::{Keyed, StageRuntime, Transform, TransformError};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::clone::{CloneFailure, Limits, Source, Token, UrlPolicy};
use crate::filter::FilterOptions;
use crate::metrics::{DownloaderMetrics, Failure};
use crate::store::{CloneStore, Marker, TempClone};
use codelupe_runtime::tree::TreeLimits;

pub const STAGE: &str = "downloader";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    progress: LOOP_PROGRESS,
    flow: LOOP_FLOW,
    // The crawler's local repositories, cloned over the local transport into the
    // working directory, whatever their stars or language.
    offline_options: "{store: .codelupe/clones, urls: {allow_local: true}, \
        filter: {min_stars: 0, languages: [], exclude_words: []}}",
    prepare_offline: None,
    summarize: |seen| {
        vec![format!(
            "clones        {} cloned and published",
            seen.produced as u64
        )]
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloaderOptions {
    pub filter: FilterOptions,
    pub urls: UrlPolicy,
    pub store: PathBuf,
    pub max_concurrent: NonZeroUsize,
    pub clone_timeout_s: u64,
    /// Transfer cap: a clone is aborted once it has received more.
    pub max_clone_bytes: u64,
    /// Attempts at a clone failing with a network error.
    pub max_attempts: NonZeroU32,
    /// Clones older than this are deleted by the sweep.
    pub retention_hours: u64,
    /// Oldest clones are deleted while the store holds more.
    pub max_store_bytes: Option<u64>,
    pub sweep_interval_s: NonZeroU64,
    /// Consumer groups that read the clones this stage publishes (the processor's):
    /// the sweep deletes nothing while one of them has clones left to read.
    pub store_readers: Vec<String>,
    /// Clones placed this recently are never swept (their record may still be on its
    /// way to `repo-clones`).
    pub sweep_grace_s: u64,
    /// A server that sends nothing for this long fails the clone (a network error,
    /// retried): a stalled server cannot hold a clone slot for good.
    pub read_timeout_s: u64,
    /// The host `GITHUB_TOKEN` is given to, over https only.
    pub token_host: String,
    /// Caps on the walk over a clone's tree.
    pub tree: TreeLimits,
}

impl Default for DownloaderOptions {
    fn default() -> Self {
        Self {
            filter: FilterOptions::default(),
            urls: UrlPolicy::default(),
            store: PathBuf::from("/var/lib/codelupe/clones"),
            max_concurrent: NonZeroUsize::new(4).expect("positive"),
            clone_timeout_s: 600,
            max_clone_bytes: 1 << 30,
            max_attempts: NonZeroU32::new(3).expect("positive"),
            retention_hours: 72,
            max_store_bytes: None,
            sweep_interval_s: NonZeroU64::new(600).expect("positive"),
            store_readers: vec!["codelupe-processor".into()],
            sweep_grace_s: 600,
            read_timeout_s: 60,
            token_host: "github.com".into(),
            tree: TreeLimits::default(),
        }
    }
}

pub struct Downloader {
    options: DownloaderOptions,
    store: Arc<CloneStore>,
    metrics: DownloaderMetrics,
    slots: Arc<Semaphore>,
    /// From `GITHUB_TOKEN`, given to libgit2 through the credentials callback only.
    token: Option<String>,
}

impl Downloader {
    pub fn new(options: DownloaderOptions, metrics: DownloaderMetrics) -> anyhow::Result<Self> {
        let store = Arc::new(CloneStore::open(&options.store)?);
        metrics
            .max_concurrent
            .set(options.max_concurrent.get() as i64);
        clone::set_server_timeout(Duration::from_secs(options.read_timeout_s))?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(options.max_concurrent.get())),
            token: std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty()),
            options,
            store,
            metrics,
        })
    }

    pub fn store(&self) -> &CloneStore {
        &self.store
    }

    fn failed(&self, reason: Failure, message: String) -> TransformError<Failure> {
        self.metrics.repos_failed.inc(reason);
        TransformError::permanent(reason, message)
    }

    /// Clones `repo` (one of `max_concurrent` at a time), measures it and places it at
    /// `dest` with its marker.
    async fn clone_into_store(
        &self,
        repo: &RepoUrl,
        source: &Source,
        dest: &std::path::Path,
    ) -> Result<Marker, TransformError<Failure>> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.metrics.active_downloads.inc();
        let started = Instant::now();
        let result = self.clone_with_retries(source).await;
        self.metrics.active_downloads.dec();
        let (temporary, stats) = result.map_err(|f| {
            if f.transient {
                // A host down or throttling: the record waits, it is not dead-lettered.
                self.metrics.repos_failed.inc(f.reason);
                TransformError::transient(f.reason, f.message)
            } else {
                self.failed(f.reason, f.message)
            }
        })?;
        let marker = Marker {
            full_name: repo.full_name.clone(),
            commit_id: stats.commit_id.clone(),
            default_branch: stats.default_branch.clone().or(repo.default_branch.clone()),
            pushed_at_ms: repo.pushed_at_ms,
            size_bytes: stats.size_bytes,
            file_count: stats.file_count,
            lines_by_language: stats.lines_by_language.clone(),
            cloned_at_ms: now_ms(),
        };
        if let Err(e) = self.store.commit(temporary, dest, &marker) {
            return Err(TransformError::retryable(
                Failure::Store,
                format!("cannot place clone in the store: {e:#}"),
            ));
        }
        self.metrics
            .clone_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .last_repo_size_kb
            .set(stats.size_bytes as f64 / 1024.0);
        self.metrics
            .repo_lines_of_code
            .observe(stats.lines_of_code() as f64);
        self.metrics.repos_downloaded.inc();
        Ok(marker)
    }

    async fn clone_with_retries(
        &self,
        source: &Source,
    ) -> Result<(TempClone, clone::TreeStats), CloneFailure> {
        let limits = Limits {
            max_bytes: self.options.max_clone_bytes,
            timeout: Duration::from_secs(self.options.clone_timeout_s),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let temporary = self.store.temporary().map_err(|e| CloneFailure {
                reason: Failure::Store,
                message: format!("{e:#}"),
                transient: true,
            })?;
            let (source_c, temp_c, token) = (
                source.clone(),
                temporary.path().to_path_buf(),
                self.token.clone(),
            );
            let (token_host, tree_limits) = (self.options.token_host.clone(), self.options.tree);
            let result = tokio::task::spawn_blocking(move || {
                let token = token.as_deref().map(|secret| Token {
                    secret,
                    host: &token_host,
                });
                let repo = clone::clone_bare(&source_c, &temp_c, limits, token)?;
                clone::measure(&repo, &tree_limits)
            })
            .await
            .unwrap_or_else(|e| {
                Err(CloneFailure {
                    reason: Failure::Network,
                    message: format!("clone task failed: {e}"),
                    transient: false,
                })
            });
            match result {
                Ok(stats) => return Ok((temporary, stats)),
                Err(failure) => {
                    // Nothing of a failed clone stays behind.
                    temporary.discard();
                    if !failure.transient || attempt >= self.options.max_attempts.get() {
                        return Err(failure);
                    }
                    tracing::warn!(url = %source.url, attempt, reason = %failure.reason, error = %failure, "clone failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                }
            }
        }
    }
}

fn output(
    repo: &RepoUrl,
    dest: &std::path::Path,
    marker: &Marker,
    score: f64,
) -> Vec<Keyed<RepoClone>> {
    vec![Keyed {
        key: repo.full_name.clone(),
        value: RepoClone {
            full_name: repo.full_name.clone(),
            clone_uri: format!("file://{}", dest.display()),
            commit_id: marker.commit_id.clone(),
            default_branch: marker.default_branch.clone(),
            size_bytes: marker.size_bytes,
            file_count: marker.file_count,
            lines_by_language: marker.lines_by_language.clone(),
            quality_score: score,
            cloned_at_ms: marker.cloned_at_ms,
            license_reported: repo.license_spdx.clone(),
        },
    }]
}

impl Transform for Downloader {
    type Input = RepoUrl;
    type Output = RepoClone;
    type Reason = Failure;

    async fn transform(
        &self,
        repo: RepoUrl,
    ) -> Result<Vec<Keyed<RepoClone>>, TransformError<Failure>> {
        if let Err(rejection) = filter::check(&repo, &self.options.filter) {
            self.metrics.quality_filtered.inc();
            self.metrics.quality_filtered_reasons.inc(rejection);
            return Ok(Vec::new());
        }
        let score = filter::quality_score(&repo, now_ms());
        self.metrics.quality_passed.inc();
        self.metrics.repo_quality_score.observe(score);

        let source = self
            .options
            .urls
            .check(&repo.clone_url)
            .map_err(|why| self.failed(Failure::RefusedUrl, why))?;
        let dest = self
            .store
            .path_for(&source.host, &repo.full_name)
            .ok_or_else(|| {
                self.failed(
                    Failure::RefusedUrl,
                    format!("unsafe repository name {:?}", repo.full_name),
                )
            })?;

        // Cloned already and nothing pushed since: publish again without the network.
        let marker = match CloneStore::marker(&dest).filter(|m| m.is_current_for(&repo)) {
            Some(marker) => marker,
            None => self.clone_into_store(&repo, &source, &dest).await?,
        };
        Ok(output(&repo, &dest, &marker, score))
    }
}

/// None when every reader group has committed every clone record published so far
/// (so every clone in the store has been read); else which group is behind, and by
/// how much. Blocks.
fn unread_clones(
    clients: &codelupe_runtime::kafka::KafkaClients,
    published: Option<&str>,
    readers: &[String],
) -> anyhow::Result<Option<String>> {
    let Some(topic) = published else {
        return Ok(None);
    };
    for group in readers {
        let lag = codelupe_runtime::kafka::LagReader::new(clients, group, topic)?.lag()?;
        if lag > 0 {
            return Ok(Some(format!(
                "group {group} has {lag} records of {topic} to read"
            )));
        }
    }
    Ok(None)
}

/// Runs the stage until shutdown, sweeping the clone store on an interval.
pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: DownloaderOptions = runtime.settings.options(STAGE)?;
    let metrics = DownloaderMetrics::register(&runtime.registry)?;
    let downloader = Downloader::new(options.clone(), metrics)?;
    let store = downloader.store.clone();
    let shutdown = runtime.shutdown.clone();
    let (clients, published) = (runtime.clients.clone(), runtime.output.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(options.sweep_interval_s.get()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let (store, retention, budget) = (store.clone(), Duration::from_secs(options.retention_hours * 3600), options.max_store_bytes);
                    let grace = Duration::from_secs(options.sweep_grace_s);
                    let (clients, published, readers) = (clients.clone(), published.clone(), options.store_readers.clone());
                    let swept = tokio::task::spawn_blocking(move || {
                        if let Some(unread) = unread_clones(&clients, published.as_deref(), &readers)? {
                            tracing::info!(%unread, "clone store sweep postponed: clones not read yet");
                            return Ok(0);
                        }
                        store.sweep(retention, budget, grace)
                    });
                    match swept.await {
                        Ok(Ok(0)) => {}
                        Ok(Ok(n)) => tracing::info!(deleted = n, "clone store swept"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "clone store sweep failed"),
                        Err(e) => tracing::warn!(error = %e, "clone store sweep panicked"),
                    }
                }
            }
        }
    });
    codelupe_runtime::pipeline::run(downloader, &runtime).await
}
