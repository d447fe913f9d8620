//! Export: the curated dataset out of Kafka. Reads `distinct-files` and writes Parquet
//! to an object store laid out as a Hugging Face dataset (`data/<language>/*.parquet`),
//! which `datasets`, DuckDB, Spark or pandas read as they are; beside it the catalogue
//! (`repositories/` from `repo-summaries`, `near-duplicates/`), each table from its
//! own topic by a consume loop of its own, all written the same way.
//!
//! Exactly once by construction, as Kafka Connect's S3 sink does it: a partition's rows
//! gather until a file's worth (or the input pauses); each language's rows are then put
//! whole, named after the partition and offset range they hold, and only then are those
//! inputs finished and their offsets committed. A flush that crashed before its commit
//! left files from an offset the group has not committed: when the partition is next
//! assigned, its first record comes from the group's committed offset, and every file of
//! the partition from that offset on is deleted before the record is gathered, so no row
//! is written twice and none is lost.

pub mod card;
pub mod catalogue;
pub mod metrics;
pub mod rows;
pub mod store;
pub mod table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use codelupe_runtime::consume::aggregate::{self, Aggregate, InputPosition, Preparer, Step};
use codelupe_runtime::descriptor::{Bound, Flow, Runs, StageDescriptor};
use codelupe_runtime::records::{NearDuplicate, RepoSummary};
use codelupe_runtime::stage::LoopSpec;
use codelupe_runtime::{StageRuntime, TransformError};

use crate::catalogue::{NearDuplicates, Repositories};
use crate::metrics::{ExportError, ExportMetrics};
use crate::rows::Files;
use crate::store::{DataFile, DatasetStore};
use crate::table::{parquet_file, Table};

pub const STAGE: &str = "export";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Io,
    progress: &[
        ("rows", metrics::ROWS_EXPORTED),
        ("files", metrics::FILES_WRITTEN),
        ("bytes", metrics::BYTES_WRITTEN),
        ("lag", codelupe_runtime::consume::CONSUMER_LAG),
    ],
    flow: Some(Flow {
        consumed: metrics::ROWS_EXPORTED,
        produced: metrics::FILES_WRITTEN,
    }),
    // Into the working directory, flushed soon after the input pauses.
    offline_options: "{dataset: .codelupe/dataset, flush_idle_ms: 3000}",
    prepare_offline: None,
    summarize: |seen| {
        vec![format!(
            "dataset       {} rows in {} Parquet files ({} bytes)",
            seen.progress("rows"),
            seen.progress("files"),
            seen.progress("bytes"),
        )]
    },
};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportOptions {
    /// The dataset's root: a URL (`s3://bucket/prefix`, `file:///path`, `gs://…`,
    /// `az://…`) or a local path.
    pub dataset: String,
    /// A partition's rows are written once they hold this much content…
    pub file_max_bytes: usize,
    /// …or this many rows.
    pub file_max_rows: usize,
    /// A row group closes once it holds this much content.
    pub row_group_bytes: usize,
    /// Rows gathered are written once the input has paused this long.
    pub flush_idle_ms: u64,
    /// The repositories table's topic; by default the topic of `repo-summaries.avsc`.
    pub repositories_topic: Option<String>,
    /// The near-duplicates table's topic; by default the topic of
    /// `near-duplicates.avsc`.
    pub near_duplicates_topic: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dataset: "dataset".into(),
            file_max_bytes: 256 << 20,
            file_max_rows: 200_000,
            row_group_bytes: 32 << 20,
            flush_idle_ms: 60_000,
            repositories_topic: None,
            near_duplicates_topic: None,
        }
    }
}

/// One partition's rows not written yet, in offset order.
struct Gathering<R> {
    rows: Vec<(InputPosition, R)>,
    bytes: usize,
}

impl<R> Default for Gathering<R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
        }
    }
}

/// Writes one table, `T`, from its topic.
pub struct Exporter<T: Table> {
    store: Arc<DatasetStore>,
    options: ExportOptions,
    metrics: ExportMetrics,
    gathering: HashMap<i32, Gathering<T::Record>>,
    /// Partitions whose uncommitted files are deleted since they were assigned.
    checked: HashSet<i32>,
    /// Partitions whose last write failed part way: the files it did put are deleted
    /// before the rows are written again (under other names if more rows came).
    failed: HashSet<i32>,
    card_written: Option<Instant>,
}

/// How often a stream that never pauses rewrites the card (it reads every file's
/// figures).
const CARD_EVERY: Duration = Duration::from_secs(60);

impl<T: Table> Exporter<T> {
    pub fn new(
        store: Arc<DatasetStore>,
        options: ExportOptions,
        metrics: ExportMetrics,
    ) -> anyhow::Result<Self> {
        if options.file_max_bytes == 0 || options.file_max_rows == 0 {
            bail!("stages.export.options: file_max_bytes and file_max_rows must be > 0");
        }
        Ok(Self {
            store,
            options,
            metrics,
            gathering: HashMap::new(),
            checked: HashSet::new(),
            failed: HashSet::new(),
            card_written: None,
        })
    }

    /// Before a newly assigned partition's first record (read from the group's committed
    /// offset): deletes its files from that offset on, left by a flush never committed.
    async fn delete_uncommitted(&mut self, at: InputPosition) -> anyhow::Result<()> {
        if self.checked.contains(&at.partition) {
            return Ok(());
        }
        let deleted = self
            .store
            .delete_uncommitted(T::ROOT, at.partition, at.offset)
            .await?;
        if deleted > 0 {
            tracing::info!(
                partition = at.partition,
                from = at.offset,
                deleted,
                "deleted the files of a flush never committed"
            );
            self.metrics.uncommitted_deleted.inc_by(deleted as u64);
        }
        self.checked.insert(at.partition);
        Ok(())
    }

    /// Writes a partition's rows, one file per folder, and finishes their inputs.
    /// On an error the rows stay gathered (and their inputs uncommitted).
    async fn write(&mut self, partition: i32) -> anyhow::Result<Vec<InputPosition>> {
        let written = self.write_files(partition).await;
        if written.is_err() {
            self.failed.insert(partition);
        }
        written
    }

    async fn write_files(&mut self, partition: i32) -> anyhow::Result<Vec<InputPosition>> {
        let Some(gathering) = self.gathering.get(&partition) else {
            return Ok(Vec::new());
        };
        let (Some((first, _)), Some((last, _))) = (gathering.rows.first(), gathering.rows.last())
        else {
            return Ok(Vec::new());
        };
        if self.failed.contains(&partition) {
            self.store
                .delete_uncommitted(T::ROOT, partition, first.offset)
                .await?;
            self.failed.remove(&partition);
        }
        let started = Instant::now();
        let mut by_folder: BTreeMap<String, Vec<&T::Record>> = BTreeMap::new();
        for (_, row) in &gathering.rows {
            by_folder.entry(T::folder(row)).or_default().push(row);
        }
        for (folder, rows) in by_folder {
            let name = DataFile {
                folder,
                partition,
                first: first.offset,
                last: last.offset,
            };
            let bytes = parquet_file::<T>(&rows, self.options.row_group_bytes)
                .with_context(|| format!("cannot write {}", name.key()))?;
            let size = bytes.len();
            self.store.put(&name.key(), bytes).await?;
            self.store.put_stats(&name, &T::stats(&rows)).await?;
            self.metrics.files_written.inc();
            self.metrics.bytes_written.inc_by(size as u64);
        }
        let gathering = self.gathering.remove(&partition).expect("present above");
        self.metrics
            .rows_exported
            .inc_by(gathering.rows.len() as u64);
        self.metrics
            .flush_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(gathering.rows.into_iter().map(|(at, _)| at).collect())
    }

    /// Rewrites the dataset's README.md from every table's figures. A card not
    /// written is only stale: the next flush writes it again.
    async fn write_card(&mut self) {
        match crate::card::rewrite(&self.store).await {
            Ok(()) => {
                self.metrics.card_writes.inc();
                self.card_written = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the dataset card was not rewritten")
            }
        }
    }
}

impl<T: Table> Aggregate for Exporter<T> {
    type Input = T::Record;
    /// It publishes nothing to Kafka: its outputs are files.
    type Output = T::Record;
    type Reason = ExportError;
    type Prepared = ();

    fn preparer(&self) -> Preparer<T::Record, ()> {
        Arc::new(|_| ())
    }

    async fn push(
        &mut self,
        at: InputPosition,
        row: T::Record,
        _: (),
    ) -> Result<Step<T::Record>, TransformError<ExportError>> {
        // The store did not answer: stop with the input uncommitted, to go on after the
        // restart (what was put before the error is deleted then).
        let store_error =
            |e: anyhow::Error| TransformError::retryable(ExportError::Store, format!("{e:#}"));
        self.delete_uncommitted(at).await.map_err(store_error)?;
        let gathering = self.gathering.entry(at.partition).or_default();
        gathering.bytes += T::size(&row);
        gathering.rows.push((at, row));
        let full = gathering.bytes >= self.options.file_max_bytes
            || gathering.rows.len() >= self.options.file_max_rows;
        if !full {
            return Ok(Step::default());
        }
        let finished = self.write(at.partition).await.map_err(store_error)?;
        // A stream that never pauses still gets a current card, once a minute at most.
        if self
            .card_written
            .is_none_or(|at| at.elapsed() >= CARD_EVERY)
        {
            self.write_card().await;
        }
        Ok(Step {
            finished,
            ..Step::default()
        })
    }

    /// Writes every partition's rows, then the card, so a card is current whenever
    /// the input has paused.
    async fn flush(&mut self) -> Step<T::Record> {
        let mut step = Step::default();
        let mut partitions: Vec<i32> = self.gathering.keys().copied().collect();
        partitions.sort_unstable();
        for partition in partitions {
            match self.write(partition).await {
                Ok(finished) => step.finished.extend(finished),
                // Kept gathered: written at the next flush or when full.
                Err(e) => tracing::warn!(partition, error = %format!("{e:#}"), "flush failed"),
            }
        }
        if !step.finished.is_empty() {
            self.write_card().await;
        }
        step
    }

    fn flush_after(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.options.flush_idle_ms.max(1)))
    }

    fn revoke(&mut self, partitions: &[i32]) {
        // Their new owner reads the uncommitted rows again, and checks their files.
        for p in partitions {
            self.gathering.remove(p);
            self.checked.remove(p);
            self.failed.remove(p);
        }
    }

    /// Nothing to load: a partition's files are checked at its first record.
    async fn assign(&mut self, _: &[i32]) -> anyhow::Result<()> {
        Ok(())
    }
}

pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: ExportOptions = runtime.settings.options(STAGE)?;
    let (input, group) = runtime.require_input()?;
    let repositories = runtime
        .topic_of::<RepoSummary>(options.repositories_topic.as_deref())
        .context("stages.export.options.repositories_topic")?;
    let near_duplicates = runtime
        .topic_of::<NearDuplicate>(options.near_duplicates_topic.as_deref())
        .context("stages.export.options.near_duplicates_topic")?;
    let store = Arc::new(DatasetStore::open(&options.dataset)?);
    tracing::info!(
        dataset = store.url(),
        "exporting {input}, {repositories} and {near_duplicates} as Parquet"
    );
    let spec = |name, input: &str, group: String| LoopSpec {
        name,
        input: input.to_string(),
        output: None,
        group,
    };
    let loops = runtime.loops(&[
        spec("files", input, group.to_string()),
        spec(
            "repositories",
            &repositories,
            format!("{group}-repositories"),
        ),
        spec(
            "near-duplicates",
            &near_duplicates,
            format!("{group}-near-duplicates"),
        ),
    ])?;
    let metrics = |prefix, r: &StageRuntime| ExportMetrics::register(&r.registry, prefix);
    let files = Exporter::<Files>::new(
        store.clone(),
        options.clone(),
        metrics("export", &loops[0])?,
    )?;
    let repositories = Exporter::<Repositories>::new(
        store.clone(),
        options.clone(),
        metrics("export_repositories", &loops[1])?,
    )?;
    let dropped = Exporter::<NearDuplicates>::new(
        store,
        options,
        metrics("export_near_duplicates", &loops[2])?,
    )?;
    tokio::try_join!(
        aggregate::run_aggregate(files, &loops[0]),
        aggregate::run_aggregate(repositories, &loops[1]),
        aggregate::run_aggregate(dropped, &loops[2]),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use codelupe_runtime::records::CodeFile;

    fn exporter(dir: &std::path::Path) -> Exporter<Files> {
        let options = ExportOptions {
            dataset: dir.display().to_string(),
            ..ExportOptions::default()
        };
        let metrics = ExportMetrics::register(&prometheus::Registry::new(), "export").unwrap();
        Exporter::new(
            Arc::new(DatasetStore::open(&options.dataset).unwrap()),
            options,
            metrics,
        )
        .unwrap()
    }

    fn file(language: &str, i: usize) -> CodeFile {
        CodeFile {
            content_hash: format!("{i:064x}"),
            repo_full_name: "a/b".into(),
            commit_id: "c".into(),
            path: format!("{i}"),
            language: language.into(),
            content: format!("line {i}\n"),
            size_bytes: 7,
            lines: 1,
            quality_score: 50.0,
            quality_components: Default::default(),
            parse_stats: None,
            redactions: Default::default(),
            license: Default::default(),
        }
    }

    fn at(offset: i64) -> InputPosition {
        InputPosition {
            partition: 0,
            offset,
        }
    }

    /// A flush that put one language's file and failed on the next leaves no file
    /// behind once the rows are written again, with one more row and so other names.
    #[tokio::test]
    async fn a_write_that_failed_part_way_leaves_no_file_to_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut exporter = exporter(dir.path());
        exporter.push(at(0), file("Python", 0), ()).await.unwrap();
        exporter.push(at(1), file("Rust", 1), ()).await.unwrap();
        // The Rust folder cannot be made: its put fails after Python's succeeded.
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/rust"), b"in the way").unwrap();
        assert!(
            exporter.flush().await.finished.is_empty(),
            "nothing finished"
        );
        let files = exporter.store.files("data").await.unwrap();
        assert_eq!(files.len(), 1, "the Python file was put: {files:?}");

        std::fs::remove_file(dir.path().join("data/rust")).unwrap();
        exporter.push(at(2), file("Python", 2), ()).await.unwrap();
        assert_eq!(exporter.flush().await.finished.len(), 3);
        let mut names: Vec<String> = exporter
            .store
            .files("data")
            .await
            .unwrap()
            .iter()
            .map(|f| f.key().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "data/python/p000-000000000000-000000000002.parquet",
                "data/rust/p000-000000000000-000000000002.parquet",
            ]
        );
    }
}
