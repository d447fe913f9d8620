//! Downloader: filters `repo-urls` by metadata, makes bare shallow clones in its
//! private working folder, writes a pack of each clone's commit to the clone store
//! (an object store: `codelupe_clone_store`) and publishes a `repo-clones`
//! reference to it. Failures are dead-lettered with their reason by the runtime; the
//! stage goes on.

pub mod clone;
pub mod filter;
pub mod metrics;
pub mod store;

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use codelupe_clone_store::work_dir::WorkDir;
use codelupe_clone_store::{self as clone_store, CloneStore};
use codelupe_runtime::descriptor::{Bound, Runs, StageDescriptor, LOOP_FLOW, LOOP_PROGRESS};
use codelupe_runtime::language;
use codelupe_runtime::records::{now_ms, RepoClone, RepoUrl};
use codelupe_runtime::{Keyed, StageRuntime, Transform, TransformError};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::clone::{CloneFailure, Limits, Source, Token, UrlPolicy};
use crate::filter::FilterOptions;
use crate::metrics::{DownloaderMetrics, Failure};
use crate::store::{Budget, Marker, Retention};
use codelupe_clone_store::tree::TreeLimits;

pub const STAGE: &str = "downloader";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Io,
    progress: LOOP_PROGRESS,
    flow: LOOP_FLOW,
    // The crawler's local repositories, cloned over the local transport into the
    // working directory, whatever their stars or language.
    offline_options: "{work_dir: .codelupe/work/downloader, \
        urls: {allow_local: true}, filter: {min_stars: 0, languages: [], exclude_words: []}}",
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
    /// The clone store's URL: the config's `clone_store.url`, which the stage sets here
    /// (the downloader and the processor share one setting).
    #[serde(skip)]
    pub store: String,
    /// Gone: the clone store is `clone_store.url` at the top of the config. Kept only to
    /// refuse it by name.
    #[serde(rename = "store")]
    pub moved_store: Option<serde::de::IgnoredAny>,
    /// This replica's own folder for clones in progress (shared with no one).
    pub work_dir: PathBuf,
    pub max_concurrent: NonZeroUsize,
    pub clone_timeout_s: u64,
    /// Transfer cap: a clone is aborted once it has received more.
    pub max_clone_bytes: u64,
    /// Gone: a clone failing with a network error returns to the runtime, which tries
    /// the record again (as `transient_give_up_s` says). Kept only to refuse it by name.
    pub max_attempts: Option<serde::de::IgnoredAny>,
    /// Packs older than this are deleted by the sweep (unless still unread).
    pub retention_hours: u64,
    /// Oldest read packs are deleted while the store holds more, and uploads wait
    /// while it is over.
    pub max_store_bytes: Option<u64>,
    pub sweep_interval_s: NonZeroU64,
    /// Consumer groups that read the packs this stage publishes: no pack a record they
    /// have not committed references is ever deleted. None: every group topology.yaml
    /// has reading the stage's output.
    pub store_readers: Option<Vec<String>>,
    /// Packs written this recently are never swept (their record may still be on its
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
            store: "/var/lib/codelupe/clones".into(),
            work_dir: std::env::temp_dir().join("codelupe-downloader"),
            max_concurrent: NonZeroUsize::new(4).expect("positive"),
            clone_timeout_s: 600,
            max_clone_bytes: 1 << 30,
            max_attempts: None,
            moved_store: None,
            retention_hours: 72,
            max_store_bytes: None,
            sweep_interval_s: NonZeroU64::new(600).expect("positive"),
            store_readers: None,
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
    work: Arc<WorkDir>,
    budget: Arc<Budget>,
    metrics: DownloaderMetrics,
    slots: Arc<Semaphore>,
    /// From `GITHUB_TOKEN`, given to libgit2 through the credentials callback only.
    token: Option<String>,
}

/// A clone packed and measured, ready to go into the store.
struct Packed {
    pack: Bytes,
    stats: clone::TreeStats,
}

impl Downloader {
    pub fn new(mut options: DownloaderOptions, metrics: DownloaderMetrics) -> anyhow::Result<Self> {
        if options.moved_store.is_some() {
            return Err(codelupe_clone_store::moved_store(STAGE));
        }
        if options.max_attempts.is_some() {
            bail!(
                "stages.downloader.options.max_attempts is gone: a clone that fails with a \
                 network error is tried again by the runtime until \
                 stages.downloader.transient_give_up_s; remove the key"
            );
        }
        // GitHub names a repository's language as Linguist does: `cpp` would match none.
        options.filter.languages = language::resolve(
            &options.filter.languages,
            "stages.downloader.options.filter.languages",
        )
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(String::from)
        .collect();
        let store = Arc::new(CloneStore::open(&options.store)?);
        let work = Arc::new(WorkDir::open(&options.work_dir)?);
        metrics
            .max_concurrent
            .set(options.max_concurrent.get() as i64);
        clone::set_server_timeout(Duration::from_secs(options.read_timeout_s))?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(options.max_concurrent.get())),
            token: std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty()),
            budget: Arc::new(Budget::new(options.max_store_bytes)),
            options,
            store,
            work,
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

    /// Clones `repo` (one of `max_concurrent` at a time), packs and measures it, waits
    /// for room in the store, writes the pack and then its marker.
    async fn clone_into_store(
        &self,
        repo: &RepoUrl,
        source: &Source,
        marker_key: &str,
    ) -> Result<Marker, TransformError<Failure>> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.metrics.active_downloads.inc();
        let started = Instant::now();
        let result = self.clone_packed(source).await;
        self.metrics.active_downloads.dec();
        let Packed { pack, stats } = result.map_err(|f| {
            if f.transient {
                // A host down or throttling: the record waits, it is not dead-lettered.
                self.metrics.repos_failed.inc(f.reason);
                TransformError::transient(f.reason, f.message)
            } else {
                self.failed(f.reason, f.message)
            }
        })?;
        let room = self
            .budget
            .room_for(pack.len() as u64, &self.metrics.waiting_for_store)
            .await;
        let store_error = |e: anyhow::Error| {
            self.metrics.repos_failed.inc(Failure::Store);
            TransformError::transient(
                Failure::Store,
                format!("cannot write to the clone store: {e:#}"),
            )
        };
        let written = self.store.put_pack(pack).await.map_err(store_error)?;
        room.written();
        let marker = Marker {
            full_name: repo.full_name.clone(),
            commit_id: stats.commit_id.clone(),
            default_branch: stats.default_branch.clone().or(repo.default_branch.clone()),
            pushed_at_ms: repo.pushed_at_ms,
            size_bytes: stats.size_bytes,
            file_count: stats.file_count,
            lines_by_language: stats.lines_by_language.clone(),
            cloned_at_ms: now_ms(),
            pack_uri: written.uri,
            pack_bytes: written.bytes,
            pack_sha256: written.sha256,
        };
        self.store
            .write_json(marker_key, &marker)
            .await
            .map_err(store_error)?;
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

    /// One clone, packed and measured. A transient failure goes back to the runtime,
    /// whose retry (with its backoff, ended by shutdown) tries the record again.
    async fn clone_packed(&self, source: &Source) -> Result<Packed, CloneFailure> {
        let limits = Limits {
            max_bytes: self.options.max_clone_bytes,
            timeout: Duration::from_secs(self.options.clone_timeout_s),
        };
        let temporary = self.work.temporary().map_err(|e| CloneFailure {
            reason: Failure::Store,
            message: format!("{e:#}"),
            transient: true,
        })?;
        let (source_c, token) = (source.clone(), self.token.clone());
        let (token_host, tree_limits) = (self.options.token_host.clone(), self.options.tree);
        // The temporary clone is removed when the task ends, whatever the outcome.
        tokio::task::spawn_blocking(move || {
            let token = token.as_deref().map(|secret| Token {
                secret,
                host: &token_host,
            });
            let repo = clone::clone_bare(&source_c, temporary.path(), limits, token)?;
            let stats = clone::measure(&repo, &tree_limits)?;
            let commit = git2::Oid::from_str(&stats.commit_id)
                .and_then(|oid| clone_store::pack_of(&repo, oid))
                .map_err(|e| CloneFailure {
                    reason: Failure::Store,
                    message: format!("cannot pack the clone: {}", e.message()),
                    transient: false,
                })?;
            Ok(Packed {
                pack: Bytes::from(commit),
                stats,
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(CloneFailure {
                reason: Failure::Network,
                message: format!("clone task failed: {e}"),
                transient: false,
            })
        })
    }
}

fn output(repo: &RepoUrl, marker: &Marker, score: f64) -> Vec<Keyed<RepoClone>> {
    vec![Keyed {
        key: repo.full_name.clone(),
        value: RepoClone {
            full_name: repo.full_name.clone(),
            clone_uri: marker.pack_uri.clone(),
            commit_id: marker.commit_id.clone(),
            default_branch: marker.default_branch.clone(),
            size_bytes: marker.size_bytes,
            file_count: marker.file_count,
            lines_by_language: marker.lines_by_language.clone(),
            quality_score: score,
            cloned_at_ms: marker.cloned_at_ms,
            license_reported: repo.license_spdx.clone(),
            pack_bytes: marker.pack_bytes,
            pack_sha256: marker.pack_sha256.clone(),
            stars: Some(repo.stars),
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
        let marker_key = store::marker_key(&source.host, &repo.full_name).ok_or_else(|| {
            self.failed(
                Failure::RefusedUrl,
                format!("unsafe repository name {:?}", repo.full_name),
            )
        })?;

        // In the store already and nothing pushed since: publish again without the
        // network (if the pack is still there, and no sweep has marked it to go).
        let known = match self.store.read_json::<Marker>(&marker_key).await {
            Ok(Some(marker)) if marker.is_current_for(&repo) => {
                let usable = self.store.has_pack(&marker.pack_uri).await
                    && !store::is_doomed(&self.store, &marker.pack_uri).await;
                usable.then_some(marker)
            }
            _ => None,
        };
        let marker = match known {
            Some(marker) => marker,
            None => self.clone_into_store(&repo, &source, &marker_key).await?,
        };
        Ok(output(&repo, &marker, score))
    }
}

/// How young a pack the sweep never deletes: `sweep_grace_s`, or, in `exactly_once`,
/// at least as long as a finished record may wait in memory for an earlier one (the
/// earlier record's clone, tried again for up to `transient_give_up_s`) before its
/// transaction publishes it: until then no reader sees its record, so only its age
/// keeps its pack. With `transient_give_up_s` 0 that wait has no end, so no grace is
/// long enough: refused.
fn sweep_grace(
    options: &DownloaderOptions,
    settings: &codelupe_runtime::config::StageSettings,
) -> anyhow::Result<Duration> {
    let configured = Duration::from_secs(options.sweep_grace_s);
    if settings.delivery != codelupe_runtime::config::Delivery::ExactlyOnce {
        return Ok(configured);
    }
    if settings.transient_give_up_s == 0 {
        anyhow::bail!(
            "stages.{STAGE}: with delivery exactly_once, transient_give_up_s 0 lets a \
             finished record wait for ever behind an earlier one before its transaction \
             publishes it, and the clone store's sweep could delete its pack meanwhile; \
             set transient_give_up_s (3600 by default), or use at_least_once"
        );
    }
    // The runtime gives up on a record that failed transiently for
    // `transient_give_up_s`; its last clone attempt may have begun just before.
    let held = Duration::from_secs(settings.transient_give_up_s + options.clone_timeout_s);
    Ok(configured.max(held + Duration::from_secs(60)))
}

/// Runs the stage until shutdown, sweeping the clone store on an interval and
/// whenever an upload waits for room.
pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let mut options: DownloaderOptions = runtime.settings.options(STAGE)?;
    options.store = codelupe_clone_store::url(&runtime.clone_store);
    let published = runtime.output.clone();
    let readers = match (&options.store_readers, &published) {
        (Some(readers), _) => readers.clone(),
        (None, Some(topic)) => runtime.groups_reading(topic),
        (None, None) => Vec::new(),
    };
    let metrics = DownloaderMetrics::register(&runtime.registry)?;
    let downloader = Downloader::new(options.clone(), metrics.clone())?;
    let (store, budget) = (downloader.store.clone(), downloader.budget.clone());
    let shutdown = runtime.shutdown.clone();
    let clients = runtime.clients.clone();
    let retention = Retention {
        max_age: Duration::from_secs(options.retention_hours * 3600),
        budget_bytes: options.max_store_bytes,
        grace: sweep_grace(&options, &runtime.settings)?,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(options.sweep_interval_s.get()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = budget.sweep_now.notified() => {}
            }
            budget.listing();
            let swept = store::sweep(
                &store,
                &clients,
                published.as_deref(),
                &readers,
                &retention,
                budget.wanted(),
            )
            .await;
            match swept {
                Ok((deleted, kept)) => {
                    budget.swept(kept);
                    metrics.clone_store_bytes.set(kept as i64);
                    if deleted > 0 {
                        tracing::info!(deleted, kept, "clone store swept");
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "clone store sweep failed"),
            }
        }
    });
    codelupe_runtime::consume::run(downloader, &runtime).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelupe_runtime::config::{Delivery, StageSettings};

    /// In exactly_once a finished record can wait for an earlier one through its
    /// transient retries and a last clone; its pack must outlive that wait.
    #[test]
    fn the_sweep_spares_packs_whose_records_may_still_wait_for_a_transaction() {
        let options = DownloaderOptions::default();
        let mut settings = StageSettings::default();
        let grace = |options: &DownloaderOptions, settings: &StageSettings| {
            sweep_grace(options, settings).unwrap()
        };
        assert_eq!(grace(&options, &settings), Duration::from_secs(600));
        settings.delivery = Delivery::ExactlyOnce;
        // 3600 s of transient retries, a last clone of up to 600 s, a minute's margin.
        assert_eq!(grace(&options, &settings), Duration::from_secs(4260));
        let patient = DownloaderOptions {
            sweep_grace_s: 7200,
            ..DownloaderOptions::default()
        };
        assert_eq!(grace(&patient, &settings), Duration::from_secs(7200));
        // Retried for ever, a record may wait for ever: no grace covers that.
        settings.transient_give_up_s = 0;
        let refused = sweep_grace(&options, &settings).unwrap_err().to_string();
        assert!(refused.contains("transient_give_up_s 0"), "{refused}");
        settings.delivery = Delivery::AtLeastOnce;
        assert_eq!(grace(&options, &settings), Duration::from_secs(600));
    }

    #[test]
    fn languages_are_linguists_names_and_an_unknown_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let options = |languages: &[&str]| DownloaderOptions {
            store: dir.path().join("store").display().to_string(),
            work_dir: dir.path().join("work"),
            filter: FilterOptions {
                languages: languages.iter().map(|l| l.to_string()).collect(),
                ..FilterOptions::default()
            },
            ..DownloaderOptions::default()
        };
        let metrics = || DownloaderMetrics::register(&prometheus::Registry::new()).unwrap();
        let downloader = Downloader::new(options(&["cpp", "golang", "Rust"]), metrics()).unwrap();
        assert_eq!(downloader.options.filter.languages, ["C++", "Go", "Rust"]);
        let error = Downloader::new(options(&["Rust", "Klingon"]), metrics())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("filter.languages: \"Klingon\""), "{error}");
    }

    /// The clone's own retry is gone (the runtime's retries the record): a config that
    /// still sets it is told so by name, not silently given other behaviour.
    #[test]
    fn the_old_max_attempts_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "work_dir": dir.path().join("work"),
            "max_attempts": 3,
        });
        let options: DownloaderOptions = serde_json::from_value(config).unwrap();
        let metrics = DownloaderMetrics::register(&prometheus::Registry::new()).unwrap();
        let error = Downloader::new(options, metrics).err().unwrap().to_string();
        assert!(error.contains("max_attempts is gone"), "{error}");
        assert!(error.contains("transient_give_up_s"), "{error}");
    }

    /// The clone store is configured once, for the downloader and the processor: a
    /// config still naming it among a stage's options is told where it went.
    #[test]
    fn the_old_store_option_is_refused_by_name() {
        let config = serde_json::json!({"store": "s3://codelupe/clones"});
        let options: DownloaderOptions = serde_json::from_value(config).unwrap();
        let metrics = DownloaderMetrics::register(&prometheus::Registry::new()).unwrap();
        let error = Downloader::new(options, metrics).err().unwrap().to_string();
        assert!(
            error.contains("stages.downloader.options.store is gone"),
            "{error}"
        );
        assert!(error.contains("`clone_store.url`"), "{error}");
    }
}
