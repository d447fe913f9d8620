//! Processor: reads each clone's pack from the clone store by the record's reference
//! (size and checksum checked), indexes it into a private temporary repository, reads
//! the tree at the published commit from it (no checkout), selects, filters, parses
//! and scores every file, and
//! publishes one `code-files` record per file worth training on, keyed by content
//! hash. Exact duplicates across repositories are dropped downstream by the batcher,
//! whose state partitions like `code-files` (same key); within one clone a content is
//! published once.

pub mod decontaminate;
pub mod generated;
pub mod license;
pub mod macros;
pub mod metrics;
pub mod notebook;
pub mod parse;
pub mod parsed;
pub mod redact;
pub mod score;
pub mod select;
pub mod summary;
pub mod text;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codelupe_clone_store::tree::{self, TreeError, TreeLimits};
use codelupe_clone_store::work_dir::WorkDir;
use codelupe_clone_store::{CloneStore, ReadError};
use codelupe_runtime::descriptor::{Bound, Flow, Runs, StageDescriptor, LOOP_PROGRESS};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::language::{Kept, Selection};
use codelupe_runtime::records::{CodeFile, RepoClone, RepoLicense, RepoSummary};
use codelupe_runtime::{Keyed, StageRuntime, Transform, TransformError};
use rayon::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::decontaminate::{Benchmarks, DecontaminationOptions};
use crate::license::{FileLicenses, LicenseOptions, LicenseOutcome};
use crate::metrics::{CloneError, ProcessorMetrics, Skip};
use crate::select::PathVerdict;
use crate::summary::{Published, Summarizing};

pub const STAGE: &str = "processor";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Cpu,
    progress: LOOP_PROGRESS,
    // Files, not records: a clone's summary is a record too.
    flow: Some(Flow {
        consumed: codelupe_runtime::consume::RECORDS_CONSUMED,
        produced: metrics::FILES_PROCESSED,
    }),
    // A work folder of its own; the clone store is the run's (`.codelupe/clones`).
    offline_options: "{work_dir: .codelupe/work/processor}",
    prepare_offline: None,
    summarize: |seen| {
        vec![format!(
            "files         {} kept; skipped: {}",
            seen.produced as u64,
            seen.skipped()
        )]
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorOptions {
    /// The clone store's URL: the config's `clone_store.url`, which the stage sets here
    /// (the downloader and the processor share one setting); references outside it are
    /// refused.
    #[serde(skip)]
    pub store: String,
    /// Gone: the clone store is `clone_store.url` at the top of the config. Kept only to
    /// refuse it by name.
    #[serde(rename = "store")]
    pub moved_store: Option<serde::de::IgnoredAny>,
    /// This replica's own folder for packs being read (shared with no one).
    pub work_dir: PathBuf,
    pub workers: NonZeroUsize,
    pub min_bytes: usize,
    pub max_bytes: usize,
    /// A notebook's own size cap: outputs (plots as base64) make a notebook far
    /// larger than its script, which `max_bytes` then bounds.
    pub notebook_max_bytes: usize,
    pub min_quality: f64,
    pub parse_timeout_ms: u64,
    /// Caps on the walk over a clone's tree.
    pub tree: TreeLimits,
    /// The most bytes of a clone's files read at once: they are read and examined in
    /// batches of this size, so a clone's files (up to `tree.max_read_bytes`) are not
    /// all held at once.
    pub read_batch_bytes: u64,
    /// Benchmarks whose prompts and solutions no kept file may hold.
    pub decontamination: DecontaminationOptions,
    /// Replace secrets and personal data in kept files with placeholders.
    pub redact: bool,
    /// Which repositories' code is kept, by license.
    pub licenses: LicenseOptions,
    /// Which languages are kept, by GitHub Linguist's names and kinds.
    pub languages: Selection,
    /// Where each clone's summary goes (the dataset's repositories table), in the
    /// transaction of its files; by default the topic of `repo-summaries.avsc` records.
    pub summaries_topic: Option<String>,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            store: "/var/lib/codelupe/clones".into(),
            work_dir: std::env::temp_dir().join("codelupe-processor"),
            workers: std::thread::available_parallelism()
                .unwrap_or(NonZeroUsize::new(2).expect("positive")),
            min_bytes: 100,
            max_bytes: 1 << 20,
            notebook_max_bytes: 16 << 20,
            min_quality: 30.0,
            parse_timeout_ms: 2_000,
            tree: TreeLimits::default(),
            read_batch_bytes: 64 << 20,
            decontamination: DecontaminationOptions::default(),
            redact: true,
            licenses: LicenseOptions::default(),
            languages: Selection::default(),
            summaries_topic: None,
            moved_store: None,
        }
    }
}

/// Every file of a clone with its verdict, in tree order, and the license that decided
/// whether any is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Examined {
    pub verdicts: Verdicts,
    pub license: RepoLicense,
    /// The policy's verdict; None when the policy is off.
    pub outcome: Option<LicenseOutcome>,
}

/// Where a clone's objects are.
pub enum CloneObjects {
    /// Its pack, streamed from the clone store into a temporary repository in this
    /// replica's working folder (every record since the clone store became a claim
    /// check); the folder goes when this does.
    Indexed(git2::Repository, codelupe_clone_store::work_dir::TempDir),
    /// A bare repository in the store's folder (a record of the shared-folder release).
    Bare(PathBuf),
}

/// The outcome for one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep(Box<CodeFile>),
    Skip(Skip),
}

#[derive(Clone)]
pub struct Processor {
    options: ProcessorOptions,
    store: Arc<CloneStore>,
    work: Arc<WorkDir>,
    pool: Arc<rayon::ThreadPool>,
    /// Clones being examined at once: one per worker. Each holds its selected files
    /// read whole, and beyond the pool's width more would only wait for it, holding
    /// theirs: memory grew with the corpus (up to `max_in_flight` clones).
    examining: Arc<Semaphore>,
    metrics: Arc<ProcessorMetrics>,
    benchmarks: Arc<Benchmarks>,
    /// `options.languages` resolved.
    kept: Arc<Kept>,
    /// License files' matches by blob id.
    license_cache: Arc<Mutex<HashMap<git2::Oid, FileLicenses>>>,
}

impl Processor {
    pub fn new(options: ProcessorOptions, metrics: ProcessorMetrics) -> anyhow::Result<Self> {
        if options.moved_store.is_some() {
            return Err(codelupe_clone_store::moved_store(STAGE));
        }
        let workers = options.workers.get();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("processor-{i}"))
            .build()?;
        metrics.worker_count.set(workers as i64);
        let store = Arc::new(CloneStore::open(&options.store)?);
        let work = Arc::new(WorkDir::open(&options.work_dir)?);
        let benchmarks = Benchmarks::load(&options.decontamination)
            .context("stages.processor.options.decontamination")?;
        let kept = options
            .languages
            .resolve("stages.processor.options.languages")
            .map_err(anyhow::Error::msg)?;
        if !options.decontamination.benchmarks.is_empty() {
            tracing::info!(
                texts = benchmarks.len(),
                "benchmark texts loaded for decontamination"
            );
        }
        Ok(Self {
            store,
            work,
            options,
            pool: Arc::new(pool),
            examining: Arc::new(Semaphore::new(workers)),
            metrics: Arc::new(metrics),
            benchmarks: Arc::new(benchmarks),
            kept: Arc::new(kept),
            license_cache: Arc::default(),
        })
    }

    /// Where the objects of `clone` are: its pack, streamed from the clone store into
    /// a temporary repository and checked; or, for a record of the shared-folder
    /// release (no pack), the bare repository it names in the store's folder.
    pub async fn objects(
        &self,
        clone: &RepoClone,
    ) -> Result<CloneObjects, TransformError<CloneError>> {
        let read = if clone.pack_sha256.is_empty() {
            self.store
                .legacy_repository(&clone.clone_uri)
                .map(CloneObjects::Bare)
        } else {
            let dir = self.work.temporary().map_err(|e| {
                TransformError::retryable(CloneError::Worker, format!("working folder: {e:#}"))
            })?;
            self.store
                .unpack_pack(&codelupe_clone_store::PackRef::from(clone), dir.path())
                .await
                .map(|repo| CloneObjects::Indexed(repo, dir))
        };
        read.map_err(|e| match e {
            ReadError::Refused(why) => TransformError::permanent(CloneError::RefusedClone, why),
            ReadError::Missing(why) => TransformError::permanent(CloneError::MissingClone, why),
            ReadError::Corrupt(why) => TransformError::permanent(CloneError::CorruptClone, why),
            // The store briefly away: the record waits, it is not dead-lettered.
            ReadError::Unavailable(why) => {
                TransformError::transient(CloneError::StoreUnavailable, why)
            }
        })
    }

    /// Every file of `clone` with its verdict, in tree order, from its objects.
    pub fn examine_objects(
        &self,
        objects: &CloneObjects,
        clone: &RepoClone,
    ) -> Result<Examined, TransformError<CloneError>> {
        match objects {
            CloneObjects::Indexed(repo, _) => self.examine(repo, clone),
            CloneObjects::Bare(path) => {
                let repo = git2::Repository::open_bare(path).map_err(|e| corrupt(clone, e))?;
                self.examine(&repo, clone)
            }
        }
    }

    /// Every file of `clone` at its commit in `repo`, with its verdict, in tree order.
    pub fn examine(
        &self,
        repo: &git2::Repository,
        clone: &RepoClone,
    ) -> Result<Examined, TransformError<CloneError>> {
        let corrupt = |e: git2::Error| corrupt(clone, e);
        let oid = git2::Oid::from_str(&clone.commit_id).map_err(corrupt)?;
        let tree = repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(corrupt)?;
        let bomb = |why: String| {
            TransformError::permanent(CloneError::TreeBomb, format!("{}: {why}", clone.clone_uri))
        };
        // Path rules first (cheap), then sizes from object headers, then read the blobs
        // that survive both: a blob is inflated only when it may be kept.
        let listed = tree::files(repo, &tree, &self.options.tree).map_err(|e| match e {
            TreeError::Bomb(why) => bomb(why),
            TreeError::Corrupt(e) => corrupt(e),
        })?;
        let (outcome, license) = self.license_of(repo, &listed, clone).map_err(corrupt)?;
        if !outcome.is_none_or(LicenseOutcome::keeps) {
            let refused = |f: tree::FileEntry| (f.path, Verdict::Skip(Skip::License));
            return Ok(Examined {
                verdicts: listed.into_iter().map(refused).collect(),
                license,
                outcome,
            });
        }
        let (to_read, mut verdicts) = self.select(listed);
        tree::check_read_budget(to_read.iter().map(|(f, _)| f), &self.options.tree)
            .map_err(|e| bomb(e.to_string()))?;
        for batch in batches(to_read, self.options.read_batch_bytes) {
            let examined = self.examine_batch(repo, clone, batch).map_err(corrupt)?;
            verdicts.extend(examined.into_iter().map(|(path, mut verdict)| {
                if let Verdict::Keep(file) = &mut verdict {
                    file.license = license.clone();
                }
                (path, verdict)
            }));
        }
        Ok(Examined {
            verdicts,
            license,
            outcome,
        })
    }

    /// Reads the blobs of `batch` and examines them on every worker.
    fn examine_batch(
        &self,
        repo: &git2::Repository,
        clone: &RepoClone,
        batch: Vec<(tree::FileEntry, Guess)>,
    ) -> Result<Verdicts, git2::Error> {
        let mut files = Vec::with_capacity(batch.len());
        for (file, language) in batch {
            // Listed a moment ago: a blob that cannot be read now is damage, not a skip.
            let blob = repo.find_blob(file.id)?;
            files.push((file.path, language, blob.content().to_vec()));
        }
        Ok(self.pool.install(|| {
            files
                .into_par_iter()
                .map(|(path, language, bytes)| {
                    let verdict = self.examine_file(clone, &path, language, &bytes);
                    (path, verdict)
                })
                .collect()
        }))
    }

    /// The licenses of one license file, by its blob id: the same text (a stock
    /// Apache-2.0 or MIT file) is one blob in every repository that ships it, and
    /// matching is by far the dearest step, so results are kept (up to
    /// `LICENSE_CACHE_ENTRIES`, then forgotten at once).
    fn licenses_of_file(
        &self,
        repo: &git2::Repository,
        id: git2::Oid,
    ) -> Result<FileLicenses, git2::Error> {
        if let Some(found) = self.license_cache.lock().expect("cache lock").get(&id) {
            return Ok(found.clone());
        }
        let blob = repo.find_blob(id)?;
        let text = String::from_utf8_lossy(blob.content());
        let found = license::detect_file(&text, self.options.licenses.min_confidence);
        let mut cache = self.license_cache.lock().expect("cache lock");
        if cache.len() >= LICENSE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, found.clone());
        Ok(found)
    }

    /// The license of `clone` from its top-level license files and GitHub's word, and
    /// the policy's verdict on it (None when the policy is off: every file may be kept).
    fn license_of(
        &self,
        repo: &git2::Repository,
        listed: &[tree::FileEntry],
        clone: &RepoClone,
    ) -> Result<(Option<LicenseOutcome>, RepoLicense), git2::Error> {
        let o = &self.options.licenses;
        if !o.enabled {
            let reported = clone.license_reported.clone();
            return Ok((
                None,
                RepoLicense {
                    reported,
                    ..RepoLicense::default()
                },
            ));
        }
        let mut named: Vec<&tree::FileEntry> = listed
            .iter()
            .filter(|file| license::is_license_file(&file.path))
            .collect();
        named.sort_by(|a, b| (a.path.len(), &a.path).cmp(&(b.path.len(), &b.path)));
        let mut files = Vec::new();
        for file in named {
            if files.len() < o.max_files && file.size <= o.max_file_bytes {
                files.push(self.licenses_of_file(repo, file.id)?);
            } else {
                self.metrics.license_files_unread.inc();
            }
        }
        let detected = license::Detected::of_files(files);
        let outcome = license::decide(&detected, clone.license_reported.as_deref(), o);
        self.metrics.repositories_by_license.inc(outcome);
        let license = RepoLicense {
            detected: detected.licenses.into_iter().collect(),
            // Three decimals: the score is an estimate, not a measurement.
            confidence: detected
                .confidence
                .map(|c| (f64::from(c) * 1000.0).round() / 1000.0),
            reported: clone.license_reported.clone(),
        };
        Ok((Some(outcome), license))
    }

    /// Splits listed files into those to read (with their language) and those skipped
    /// by path or size, with their verdicts.
    fn select(&self, listed: Vec<tree::FileEntry>) -> (Vec<(tree::FileEntry, Guess)>, Verdicts) {
        let mut to_read = Vec::new();
        let mut skipped = Vec::new();
        for file in listed {
            let verdict = match select::by_path(&file.path, &self.kept) {
                PathVerdict::Skip(reason) => Verdict::Skip(reason),
                PathVerdict::Keep(_) if file.size < self.options.min_bytes as u64 => {
                    Verdict::Skip(Skip::TooSmall)
                }
                PathVerdict::Keep(language) if file.size > self.size_cap(language) as u64 => {
                    Verdict::Skip(Skip::TooLarge)
                }
                PathVerdict::Keep(language) => {
                    to_read.push((file, language));
                    continue;
                }
            };
            skipped.push((file.path, verdict));
        }
        (to_read, skipped)
    }

    /// Filters, parses and scores one file (runs on a worker thread).
    pub fn examine_file(
        &self,
        clone: &RepoClone,
        path: &str,
        language: Guess,
        bytes: &[u8],
    ) -> Verdict {
        self.metrics.active_files.inc();
        let started = Instant::now();
        let verdict = self.judge(clone, path, language, bytes);
        self.metrics
            .file_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.active_files.dec();
        verdict
    }

    /// The most bytes a file of `language` may have as stored.
    fn size_cap(&self, language: Guess) -> usize {
        if language == Some(notebook::NOTEBOOK) {
            self.options.notebook_max_bytes
        } else {
            self.options.max_bytes
        }
    }

    fn judge(&self, clone: &RepoClone, path: &str, language: Guess, bytes: &[u8]) -> Verdict {
        if bytes.len() < self.options.min_bytes {
            return Verdict::Skip(Skip::TooSmall);
        }
        if bytes.len() > self.size_cap(language) {
            return Verdict::Skip(Skip::TooLarge);
        }
        if bytes.contains(&0) {
            return Verdict::Skip(Skip::Binary);
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Verdict::Skip(Skip::Binary);
        };
        if language != Some(notebook::NOTEBOOK) {
            return match select::by_content(path, text, &self.kept) {
                Ok(language) => self.judge_text(clone, path, language, text),
                Err(reason) => Verdict::Skip(reason),
            };
        }
        match notebook::to_script(text) {
            Ok(script) if script.text.len() < self.options.min_bytes => {
                Verdict::Skip(Skip::TooSmall)
            }
            Ok(script) if script.text.len() > self.options.max_bytes => {
                Verdict::Skip(Skip::TooLarge)
            }
            Ok(script) if !self.kept.keeps(script.language) => Verdict::Skip(Skip::LanguageNotKept),
            Ok(script) => self.judge_text(clone, path, script.language, &script.text),
            Err(e) => {
                tracing::debug!(%path, error = %e, "notebook not converted");
                Verdict::Skip(match e {
                    notebook::Malformed::NotJson(_) => Skip::MalformedNotebook,
                    notebook::Malformed::NoCode => Skip::TooSmall,
                    notebook::Malformed::Language(_) => Skip::UnknownLanguage,
                })
            }
        }
    }

    /// Filters, redacts, parses and scores a file's text (a notebook's script).
    fn judge_text(&self, clone: &RepoClone, path: &str, language: Language, text: &str) -> Verdict {
        let o = &self.options;
        let stats = text::stats(text);
        if let Some(reason) = text::reject(path, text, language, &stats) {
            return Verdict::Skip(reason);
        }
        if let Some(problem) = self.benchmarks.find(text) {
            tracing::debug!(%path, %problem, "holds a benchmark's text");
            return Verdict::Skip(Skip::Decontaminated);
        }
        // Secrets and personal data out before anything is parsed or published: the
        // record's content, hash, size and statistics are the redacted file's.
        let redacted = if o.redact { redact::redact(text) } else { None };
        let (text, stats) = match &redacted {
            Some(r) => (r.text.as_str(), text::stats(&r.text)),
            None => (text, stats),
        };
        let parse =
            match parse::parse_stats(language, text, Duration::from_millis(o.parse_timeout_ms)) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => return Verdict::Skip(Skip::ParseFailed),
            };
        let components = score::components(&stats, parse.as_ref());
        let parse = parse.map(|p| p.stats);
        let quality = score::score(&components);
        self.metrics.file_quality_score.observe(quality);
        if quality < o.min_quality {
            return Verdict::Skip(Skip::LowQuality);
        }
        let counts = redacted
            .as_ref()
            .map(|r| r.counts.clone())
            .unwrap_or_default();
        for (&kind, &n) in &counts {
            self.metrics.redactions.inc_by(kind, u64::from(n));
        }
        Verdict::Keep(Box::new(CodeFile {
            content_hash: format!("{:x}", Sha256::digest(text.as_bytes())),
            repo_full_name: clone.full_name.clone(),
            commit_id: clone.commit_id.clone(),
            path: path.to_string(),
            language: language.to_string(),
            content: text.to_string(),
            size_bytes: text.len() as i64,
            lines: stats.lines as i64,
            quality_score: quality,
            quality_components: components,
            parse_stats: parse,
            redactions: counts
                .into_iter()
                .map(|(kind, n)| (kind.label().to_string(), i64::from(n)))
                .collect(),
            // Set for the whole clone once every file is judged.
            license: RepoLicense::default(),
        }))
    }
}

impl Transform for Processor {
    type Input = RepoClone;
    type Output = Published;
    type Reason = CloneError;

    /// The clone's files worth training on, each content once, then its summary.
    async fn transform(
        &self,
        clone: RepoClone,
    ) -> Result<Vec<Keyed<Published>>, TransformError<CloneError>> {
        let permit = self.examining.clone().acquire_owned().await.map_err(|e| {
            TransformError::retryable(CloneError::Worker, format!("worker failed: {e}"))
        })?;
        let objects = self.objects(&clone).await?;
        let this = self.clone();
        let for_worker = clone.clone();
        let examined = tokio::task::spawn_blocking(move || {
            let _examining = permit;
            this.examine_objects(&objects, &for_worker)
        })
        .await
        .map_err(|e| {
            TransformError::retryable(CloneError::Worker, format!("worker failed: {e}"))
        })??;
        let mut summary = Summarizing::new(
            &clone,
            &examined.license,
            examined.outcome,
            examined.verdicts.len(),
        );
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (_, verdict) in examined.verdicts {
            let reason = match verdict {
                Verdict::Keep(file) if seen.insert(file.content_hash.clone()) => {
                    self.metrics.files_processed.inc();
                    summary.published(&file);
                    out.push(Keyed {
                        key: file.content_hash.clone(),
                        value: Published::File(file),
                    });
                    continue;
                }
                Verdict::Keep(_) => Skip::Duplicate,
                Verdict::Skip(reason) => reason,
            };
            self.metrics.files_skipped.inc(reason);
            summary.skipped(reason);
        }
        let topic = self.options.summaries_topic.as_deref();
        out.push(summary.finish(topic.unwrap_or(SUMMARIES_TOPIC)));
        Ok(out)
    }
}

/// The summaries' topic where the stage was not started from a topology (a library
/// user's `Processor`).
const SUMMARIES_TOPIC: &str = "repo-summaries";

/// License files whose matches the processor keeps (a few hundred bytes each).
const LICENSE_CACHE_ENTRIES: usize = 10_000;

/// A bound on a `code-files` record beyond the file's content: path, repository, hash,
/// language, scores and parse statistics.
pub const RECORD_METADATA_BYTES: usize = 64 * 1024;

/// A Linguist language name.
type Language = &'static str;

/// The language a file's path suggests before it is read (`select::by_path`).
type Guess = Option<Language>;

/// Files by path with their verdicts.
type Verdicts = Vec<(String, Verdict)>;

/// `files` in order, in batches whose sizes add up to at most `budget` bytes (a file
/// larger than that alone): the blobs of one batch are read while the workers are
/// between batches, so a clone's raw files are never all in memory at once.
fn batches(
    files: Vec<(tree::FileEntry, Guess)>,
    budget: u64,
) -> Vec<Vec<(tree::FileEntry, Guess)>> {
    let mut batches: Vec<Vec<(tree::FileEntry, Guess)>> = Vec::new();
    let mut room = 0;
    for file in files {
        let size = file.0.size;
        match batches.last_mut() {
            Some(batch) if size <= room => {
                batch.push(file);
                room -= size;
            }
            _ => {
                batches.push(vec![file]);
                room = budget.saturating_sub(size);
            }
        }
    }
    batches
}

/// A clone whose objects cannot be read, even one file's.
fn corrupt(clone: &RepoClone, e: git2::Error) -> TransformError<CloneError> {
    TransformError::permanent(
        CloneError::CorruptClone,
        format!("{}: {}", clone.clone_uri, e.message()),
    )
}

/// Runs the stage until shutdown.
pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let mut options: ProcessorOptions = runtime.settings.options(STAGE)?;
    options.store = codelupe_clone_store::url(&runtime.clone_store);
    let summaries = runtime
        .topic_of::<RepoSummary>(options.summaries_topic.as_deref())
        .context("stages.processor.options.summaries_topic")?;
    options.summaries_topic = Some(summaries);
    runtime.check_output_fits(
        options.max_bytes + RECORD_METADATA_BYTES,
        "stages.processor.options.max_bytes plus the record's metadata",
    )?;
    let metrics = ProcessorMetrics::register(&runtime.registry)?;
    let processor = Processor::new(options, metrics)?;
    codelupe_runtime::consume::run(processor, &runtime).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> (tree::FileEntry, Guess) {
        let id = git2::Oid::hash_object(git2::ObjectType::Blob, path.as_bytes()).unwrap();
        let path = path.to_string();
        (tree::FileEntry { path, id, size }, None)
    }

    /// Batches keep the files' order, never pass the budget but with one file larger
    /// than it, which goes alone.
    #[test]
    fn files_are_read_in_batches_within_the_byte_budget() {
        let files = vec![
            entry("a", 40),
            entry("b", 50),
            entry("c", 20),
            entry("huge", 500),
            entry("d", 100),
            entry("e", 1),
        ];
        let paths: Vec<Vec<String>> = batches(files, 100)
            .into_iter()
            .map(|batch| batch.into_iter().map(|(f, _)| f.path).collect())
            .collect();
        assert_eq!(
            paths,
            [
                vec!["a", "b"],
                vec!["c"],
                vec!["huge"],
                vec!["d"],
                vec!["e"]
            ]
        );
    }
}
