//! The export stage on the real broker, as its own processes: `distinct-files` out as
//! Parquet that Hugging Face `datasets` and DuckDB (PyPI, in the test venv of
//! setup/datatools.sh) read; two replicas, one SIGKILLed mid-stream and restarted, and
//! every file exported exactly once, with no file of an uncommitted flush left behind,
//! into a local folder and into the S3 server (SeaweedFS) as a cluster's export does.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use codelupe_export::store::{DataFile, DatasetStore};
use codelupe_runtime::records::{now_ms, CodeFile, NearDuplicate, RepoSummary};
use codelupe_runtime::AvroRecord;
use codelupe_testkit::dataset::{data_files, strings_in};
use support::*;

struct Export {
    suffix: String,
    topology: PathBuf,
    config: PathBuf,
    /// The dataset's location: a folder or an `s3://` URL.
    dataset: String,
    ports: Vec<u16>,
}

impl Export {
    fn new(dir: &Path, replicas: usize, dataset: String) -> Self {
        let (suffix, topology) = fresh_topics(dir, "x");
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                // Small files, so a run writes many and a kill lands between them.
                "kafka:\n  brokers: {}\n  dead_letter_topic: dead-letters-{suffix}\n  consumer: {{session.timeout.ms: '6000'}}\n\
                 stages:\n  export:\n    group: export-{suffix}\n    metrics_bind: 127.0.0.1\n\
                 \x20   options:\n      dataset: {}\n      file_max_rows: 40\n      flush_idle_ms: 1000\n",
                brokers(),
                dataset,
            ),
        )
        .unwrap();
        Export {
            suffix,
            topology,
            config,
            dataset,
            ports: (0..replicas).map(|_| free_port()).collect(),
        }
    }

    fn start(&self, replica: usize) -> KillOnDrop {
        start_stage("export", &self.config, &self.topology, self.ports[replica])
    }

    fn rows(&self, replica: usize) -> f64 {
        scraped(self.ports[replica], "export_rows_total").unwrap_or(0.0)
    }

    fn store(&self) -> DatasetStore {
        DatasetStore::open(&self.dataset).unwrap()
    }

    /// Every row's content hash, read through the store as a reader of it would (a
    /// file deleted meanwhile is skipped).
    async fn exported(&self) -> Vec<String> {
        self.column("data", "content_hash").await
    }

    /// A text column of every row of one table.
    async fn column(&self, table: &str, column: &str) -> Vec<String> {
        let store = self.store();
        let mut values = Vec::new();
        for file in store.files(table).await.unwrap() {
            if let Some(bytes) = store.read(&file).await.unwrap() {
                values.extend(strings_in(bytes, file.key().as_ref(), column));
            }
        }
        values
    }
}

/// The processor's summary of each repository of `files`, all of them published, and
/// one vendored file skipped each.
fn summaries(files: &[CodeFile]) -> Vec<RepoSummary> {
    let mut by_repository: BTreeMap<&str, Vec<&CodeFile>> = BTreeMap::new();
    for file in files {
        by_repository
            .entry(&file.repo_full_name)
            .or_default()
            .push(file);
    }
    by_repository
        .into_iter()
        .map(|(name, files)| RepoSummary {
            full_name: name.to_string(),
            commit_id: files[0].commit_id.clone(),
            stars: Some(42),
            quality_score: 50.0,
            license_reported: Some("MIT".into()),
            licenses_detected: vec!["MIT".into()],
            license_outcome: Some("allowed".into()),
            files_seen: files.len() as i64 + 1,
            files_published: files.len() as i64,
            bytes_published: files.iter().map(|f| f.size_bytes).sum(),
            published_by_language: BTreeMap::from([("Rust".to_string(), files.len() as i64)]),
            files_skipped: BTreeMap::from([("vendored".to_string(), 1)]),
            redactions: BTreeMap::new(),
            cloned_at_ms: now_ms(),
        })
        .collect()
}

/// `n` files dropped as near-duplicates of the corpus's first.
fn near_duplicates(files: &[CodeFile], n: usize) -> Vec<NearDuplicate> {
    (0..n)
        .map(|i| NearDuplicate {
            content_hash: format!("{i:064x}"),
            repo_full_name: "elsewhere/copy".into(),
            path: format!("copy{i}.rs"),
            representative: files[0].content_hash.clone(),
            similarity: 0.9,
            judged_at_ms: now_ms(),
        })
        .collect()
}

/// Near-duplicates the export tests drop.
const DROPPED: usize = 7;

fn corpus() -> Vec<CodeFile> {
    let mut seen = std::collections::BTreeSet::new();
    let mut files = codelupe_testkit::code_files(
        &codelupe_testkit::registry_crates(&["serde_json-1", "regex-syntax-0", "tokio-1"]),
        |_| true,
    );
    files.retain(|f| seen.insert(f.content_hash.clone()));
    for (i, file) in files.iter_mut().enumerate() {
        file.redactions = BTreeMap::from([("email".to_string(), (i % 2) as i64)]);
    }
    files
}

/// What `datasets` and DuckDB read of the dataset, and the card's configs and table:
/// each file once, rows per language as the corpus has them. Returns those counts.
fn check_real_clients(dataset: &Path, files: &[CodeFile]) -> BTreeMap<String, usize> {
    let seen = read_with_python_clients(dataset);
    assert_eq!(seen["datasets_rows"], files.len());
    let mut by_datasets: Vec<String> =
        serde_json::from_value(seen["datasets_hashes"].clone()).unwrap();
    let mut by_duckdb: Vec<String> = serde_json::from_value(seen["duckdb_hashes"].clone()).unwrap();
    let mut expected: Vec<String> = files.iter().map(|f| f.content_hash.clone()).collect();
    by_datasets.sort();
    by_duckdb.sort();
    expected.sort();
    assert_eq!(by_datasets, expected, "datasets reads every file once");
    assert_eq!(by_duckdb, expected, "DuckDB reads every file once");
    assert_eq!(
        seen["duckdb_emails"],
        files.len() / 2,
        "redaction counts as columns"
    );
    let mut per_language: BTreeMap<String, usize> = BTreeMap::new();
    for file in files {
        *per_language.entry(file.language.clone()).or_default() += 1;
    }
    assert_eq!(seen["duckdb_per_language"], serde_json::json!(per_language));
    // The card: a config per language that `datasets` loads from its YAML header, and a
    // table row per language with the same rows.
    let card = std::fs::read_to_string(dataset.join("README.md")).unwrap();
    let configs = &seen["card_configs"];
    assert_eq!(configs["default"], files.len(), "{card}");
    for (language, rows) in &per_language {
        let folder = codelupe_export::rows::language_folder(language);
        assert_eq!(configs[folder.as_str()], *rows, "config {folder}: {card}");
        let line = card
            .lines()
            .find(|l| l.starts_with(&format!("| {folder} | {language} |")))
            .unwrap_or_else(|| panic!("no row for {language}:\n{card}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells[4], rows.to_string(), "{line}");
    }
    assert!(
        card.contains(&format!("| email | {} |", files.len() / 2)),
        "{card}"
    );
    check_catalogue(&seen, &card, files);
    per_language
}

/// The repositories and near-duplicates tables as `datasets` and DuckDB read them, and
/// the card's filter counts summed from them.
fn check_catalogue(seen: &serde_json::Value, card: &str, files: &[CodeFile]) {
    let repositories = summaries(files);
    let catalogue = &seen["repositories"];
    assert_eq!(catalogue["datasets_rows"], repositories.len());
    assert_eq!(seen["card_configs"]["repositories"], repositories.len());
    assert_eq!(seen["near_duplicates_rows"], DROPPED);
    for summary in &repositories {
        // "Is my repository in it, and which files?": one join of the two tables.
        let row = &catalogue["rows"][&summary.full_name];
        assert_eq!(row["published"], summary.files_published, "{row}");
        assert_eq!(row["in_dataset"], summary.files_published, "{row}");
        assert_eq!(row["vendored"], 1, "{row}");
    }
    let seen_files: i64 = repositories.iter().map(|r| r.files_seen).sum();
    for line in [
        format!("| in the repositories' trees | {seen_files} |"),
        format!("| skipped: vendored | {} |", repositories.len()),
        format!("| published by the processor | {} |", files.len()),
        format!("| dropped as near-duplicates | {DROPPED} |"),
        format!("| in this dataset | {} |", files.len()),
    ] {
        assert!(card.contains(&line), "{line}\n{card}");
    }
}

/// Two replicas export the corpus, one SIGKILLed mid-stream and restarted, after a
/// file of a flush that never committed was planted; every file comes out once and the
/// planted one is gone.
async fn export_with_a_kill(run: &Export, files: &[CodeFile]) {
    // Rows of offsets the group never committed, as a replica killed between its put
    // and its commit leaves them: the stage must delete the file, not leave its rows to
    // be read twice.
    let orphan = DataFile {
        folder: "data/rust".into(),
        partition: 0,
        first: 0,
        last: 7,
    };
    let store = run.store();
    let left_behind: Vec<&CodeFile> = files[..8].iter().collect();
    let parquet =
        codelupe_export::table::parquet_file::<codelupe_export::rows::Files>(&left_behind, 1 << 20)
            .unwrap();
    store.put(&orphan.key(), parquet).await.unwrap();
    let half = files.len() / 2;
    let records = |files: &[CodeFile]| {
        files
            .iter()
            .map(|f| (f.content_hash.clone(), f.encode().unwrap()))
            .collect()
    };
    let input = format!("distinct-files-{}", run.suffix);
    let first = run.start(0);
    let _second = run.start(1);
    let repositories = summaries(files);
    let summaries_topic = format!("repo-summaries-{}", run.suffix);
    let summaries_records = repositories
        .iter()
        .map(|r| (r.full_name.clone(), r.encode().unwrap()))
        .collect();
    produce_all(&summaries_topic, summaries_records).await;
    let dropped_topic = format!("near-duplicates-{}", run.suffix);
    let dropped_records = near_duplicates(files, DROPPED)
        .iter()
        .map(|d| (d.content_hash.clone(), d.encode().unwrap()))
        .collect();
    produce_all(&dropped_topic, dropped_records).await;
    produce_all(&input, records(&files[..half])).await;
    wait_for("some rows exported", Duration::from_secs(60), || {
        run.rows(0) >= 40.0
    });
    drop(first); // SIGKILL, mid-stream
    produce_all(&input, records(&files[half..])).await;
    let _restarted = run.start(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while run.exported().await.len() < files.len()
        || store.files("data").await.unwrap().contains(&orphan)
        || run.column("repositories", "repository").await.len() < repositories.len()
        || run.column("near-duplicates", "path").await.len() < DROPPED
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every file exported within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exported = run.exported().await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for hash in &exported {
        *counts.entry(hash.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "exported twice: {twice:?}");
    for file in files {
        assert!(
            counts.contains_key(file.content_hash.as_str()),
            "{} lost",
            file.path
        );
    }
    assert_eq!(exported.len(), files.len());
    let mut catalogued = run.column("repositories", "repository").await;
    catalogued.sort();
    let expected: Vec<String> = repositories.iter().map(|r| r.full_name.clone()).collect();
    assert_eq!(
        catalogued, expected,
        "each repository once in the catalogue"
    );
    assert_eq!(run.column("near-duplicates", "path").await.len(), DROPPED);
    let left = store.files("data").await.unwrap();
    assert!(
        !left.contains(&orphan),
        "the uncommitted flush's file is still there"
    );
    println!(
        "{} files in {} Parquet files at {}",
        files.len(),
        left.len(),
        run.dataset
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_export_every_file_once_read_by_datasets_and_duckdb() {
    let files = corpus();
    assert!(files.len() > 300, "only {} files", files.len());
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("dataset");
    let run = Export::new(dir.path(), 2, dataset.display().to_string());
    export_with_a_kill(&run, &files).await;
    let per_language = check_real_clients(&dataset, &files);
    println!(
        "per language {per_language:?}, {} Parquet files",
        data_files(&dataset).len()
    );
}

/// The cluster's case: the dataset in S3 (the test server, signed requests only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_s3_every_file_once_under_a_kill() {
    let bucket = std::env::var("TEST_S3_BUCKET").expect(
        "TEST_S3_BUCKET is not set: this test needs the S3 server; run `bash tests/run` \
         (or `tests/s3/server.sh up` and `eval \"$(tests/s3/server.sh env)\"`)",
    );
    let files = corpus();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("export");
    let run = Export::new(dir.path(), 2, format!("s3://{bucket}/{prefix}/dataset"));
    export_with_a_kill(&run, &files).await;
}
