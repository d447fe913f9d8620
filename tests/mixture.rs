//! The language mixture through every stage: 30 repositories each of Rust, C and shell
//! (real files from the local cargo registry) that the fake GitHub API lists with their
//! pushes spread over a year, crawled, cloned, processed, deduplicated, batched and
//! trained on by `codelupe run` on the test broker. Each language's share of the tokens
//! of the first 50 training batches made is within 10 points of its share of all of
//! them; the trainer's eval set holds every language, and `trainer_eval_loss` has a
//! series per language in Prometheus and on the live page. The same corpus without the
//! crawler's turns and the batcher's shuffle is the control: its first batches are far
//! from the corpus's mixture.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use codelupe_runtime::language;
use codelupe_runtime::records::TrainingBatch;
use codelupe_runtime::AvroRecord;
use codelupe_tokenizer::CodeTokenizer;
use support::fake_github::{FakeGithub, FakeRepo};
use support::*;

/// (GitHub's name, extension, registry crates the files come from; none: every crate).
const LANGUAGES: [(&str, &str, &[&str]); 3] = [
    (
        "Rust",
        "rs",
        &["regex-syntax-0", "serde_json-1", "syn-2", "tokio-1"],
    ),
    ("C", "c", &["openssl-src-300", "libgit2-sys-0"]),
    ("Shell", "sh", &[]),
];
const REPOS_PER_LANGUAGE: usize = 30;
const FILES_PER_REPO: usize = 3;
const FIRST_BATCHES: usize = 50;
/// The most time for the whole corpus to reach the trainer.
const DRAINED_WITHIN: Duration = Duration::from_secs(900);

/// Distinct files of `extension` between 200 bytes and 6 KB that GitHub Linguist gives
/// the extension's language (jemalloc's `#!/bin/tcsh` scripts named `.sh` are Tcsh), as
/// many as the language's repositories hold (the registry has about 90 such shell
/// scripts).
fn files_of(extension: &str, crates: &[&str]) -> Vec<(String, Vec<u8>)> {
    let roots = match crates {
        [] => all_registry_crates(),
        some => registry_crates(some),
    };
    let language = language::of_path(&format!("file.{extension}"));
    let mut seen = BTreeSet::new();
    let mut files: Vec<(String, Vec<u8>)> =
        code_files(&roots, |p| p.extension().is_some_and(|e| e == extension))
            .into_iter()
            .filter(|f| {
                (200..6_000).contains(&f.content.len())
                    && language::of_file(&f.path, &f.content) == language
                    && seen.insert(f.content_hash.clone())
            })
            .map(|f| (f.path.clone(), f.content.into_bytes()))
            .collect();
    // Seeded, so a language's early repositories are like its late ones (in path order,
    // one crate's large files would come first) and every run has the same corpus.
    fastrand::Rng::with_seed(35).shuffle(&mut files);
    files.truncate(REPOS_PER_LANGUAGE * FILES_PER_REPO);
    assert_eq!(
        files.len(),
        REPOS_PER_LANGUAGE * FILES_PER_REPO,
        ".{extension} files in the registry"
    );
    files
}

/// The repositories on `git daemon` and the fake GitHub listing them: each language's
/// i-th repository pushed on day 12·i of 2024, so every stretch of the year holds all
/// three languages and the crawler's turns (30 days) must alternate between them. The
/// files are also laid out under `sources/` for the tokenizer.
fn corpus(dir: &Path) -> (FakeGithub, GitDaemon) {
    let srv = dir.join("srv");
    let mut listed = Vec::new();
    let start = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    for (language, extension, crates) in LANGUAGES {
        let files = files_of(extension, crates);
        for (i, repo_files) in files.chunks(FILES_PER_REPO).enumerate() {
            let name = format!("{}/repo-{i:02}", language.to_lowercase());
            // Distinct paths: the same file name comes from several crates.
            let paths: Vec<String> = (repo_files.iter().enumerate())
                .map(|(k, (path, _))| {
                    let file = Path::new(path).file_name().unwrap().to_string_lossy();
                    format!("src/{k}-{file}")
                })
                .collect();
            let files: Vec<(&str, Vec<u8>)> = (paths.iter().zip(repo_files))
                .map(|(path, (_, content))| (path.as_str(), content.clone()))
                .collect();
            bare_repo(&srv.join(format!("{name}.git")), &files, None);
            for (path, content) in &files {
                let source = dir.join("sources").join(&name).join(path);
                std::fs::create_dir_all(source.parent().unwrap()).unwrap();
                std::fs::write(source, content).unwrap();
            }
            listed.push((name, language, start + (i as i64) * 12 * 86_400));
        }
    }
    let daemon = GitDaemon::start(&srv);
    let repos = listed
        .into_iter()
        .map(|(full_name, language, pushed_at)| FakeRepo {
            clone_url: Some(daemon.url(&format!("{full_name}.git"))),
            full_name,
            language: language.into(),
            pushed_at,
            stars: 100,
        })
        .collect();
    (FakeGithub::start(repos, Duration::ZERO), daemon)
}

/// How the pipeline orders languages: the crawler's turns and the batcher's shuffle.
struct Mixture {
    turn_days: u32,
    shuffle_buffer: usize,
}

/// The config of a run in `dir` (its store, checkpoints and dataset) with `tokenizer`.
fn write_config(
    dir: &Path,
    tokenizer: &Path,
    topics: &Topics,
    api: &str,
    mixture: &Mixture,
) -> PathBuf {
    let path = dir.join("codelupe.yaml");
    let (suffix, ports, store) = (&topics.suffix, &topics.ports, dir.join("store"));
    let text = format!(
        "kafka:
  brokers: {brokers}
  dead_letter_topic: dead-letters-{suffix}
clone_store: {{url: {store}}}
stages:
  crawler:
    metrics_port: {crawler}
    options:
      source: github
      github: {{api_url: '{api}', languages: [Rust, C, Shell], since: 2024-01-01, until: 2024-12-31, turn_days: {turn_days}, max_backoff_s: 1}}
      state_topic: crawler-state-{suffix}
      transactional_id: crawler-{suffix}
      interval_s: 3600
  downloader:
    metrics_port: {downloader}
    options:
      urls: {{allowed_schemes: [git], allowed_hosts: [127.0.0.1]}}
      filter: {{min_stars: 0, languages: [], exclude_words: []}}
      store_readers: [codelupe-processor-{suffix}]
  processor:
    metrics_port: {processor}
    options: {{licenses: {{enabled: false}}}}
  neardup:
    metrics_port: {neardup}
    options: {{probes_topic: neardup-probes-{suffix}, index_topic: neardup-index-{suffix}, gather_topic: neardup-gather-{suffix}, dropped_topic: near-duplicates-{suffix}}}
  batcher:
    metrics_port: {batcher}
    options: {{tokenizer: {tokenizer}, sequence_length: 256, sequences_per_batch: 4, document: {{eval_share: 0.1}}, mix: {{shuffle_buffer: {shuffle_buffer}}}, seen_topic: batcher-seen-{suffix}, flush_idle_ms: 2000}}
  export:
    metrics_port: {export}
    options: {{dataset: {dataset}}}
  trainer:
    metrics_port: {trainer}
    options: {{tokenizer: {tokenizer}, checkpoint_dir: {checkpoints}, device: cpu, bf16: false, steps_per_run: 20, idle_checkpoint_ms: 3000, eval_batches: 2, pass_at_k: {{enabled: false}}}}
",
        brokers = brokers(),
        store = store.display(),
        tokenizer = tokenizer.display(),
        checkpoints = dir.join("checkpoints").display(),
        dataset = dir.join("dataset").display(),
        crawler = ports["crawler"],
        downloader = ports["downloader"],
        processor = ports["processor"],
        neardup = ports["neardup"],
        batcher = ports["batcher"],
        export = ports["export"],
        trainer = ports["trainer"],
        turn_days = mixture.turn_days,
        shuffle_buffer = mixture.shuffle_buffer,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Each language's share of the tokens of `batches` (end-of-text tokens and padding
/// left out).
fn shares<'a>(
    batches: impl Iterator<Item = &'a TrainingBatch>,
    end_of_text: u32,
) -> BTreeMap<String, f64> {
    let mut tokens: BTreeMap<String, f64> = BTreeMap::new();
    for batch in batches {
        for ((_, _, piece), language) in document_pieces(batch).zip(&batch.languages) {
            let counted = piece.iter().filter(|&&t| t != end_of_text as i32).count();
            *tokens.entry(language.clone()).or_default() += counted as f64;
        }
    }
    let total: f64 = tokens.values().sum();
    tokens.values_mut().for_each(|t| *t /= total);
    tokens
}

/// Waits until every repository has been crawled and every group's lag stays 0 while
/// the batcher makes no new batch for 10 s.
fn wait_until_drained(run: &Run) {
    let (suffix, ports) = (&run.topics.suffix, &run.topics.ports);
    // The export's groups commit when their files are written, which is not this test's
    // business.
    let mut readers = lag_readers(
        suffix,
        &["export", "export-repositories", "export-near-duplicates"],
    );
    let batches = || scraped(ports["batcher"], "batcher_batches_produced_total");
    let (mut quiet_since, mut last) = (Instant::now(), None);
    wait_for("the corpus to reach the trainer", DRAINED_WITHIN, || {
        let crawled = scraped(ports["crawler"], "crawler_repos_indexed_total").unwrap_or(0.0);
        let lags: Vec<i64> = (readers.iter_mut())
            .map(|(_, r)| r.lag().unwrap_or(-1))
            .collect();
        let now = batches();
        if now != last || lags.iter().any(|&l| l != 0) {
            (quiet_since, last) = (Instant::now(), now);
        }
        crawled >= (LANGUAGES.len() * REPOS_PER_LANGUAGE) as f64
            && quiet_since.elapsed() >= Duration::from_secs(10)
    });
}

/// The live page's languages with an eval curve, once it draws one for each of
/// `languages`.
fn eval_curves_on_the_live_page(page_port: u16, languages: usize) -> String {
    wait_for(
        "an eval curve per language",
        Duration::from_secs(120),
        || {
            let Ok((200, board)) = http_get(page_port, "/api/board") else {
                return false;
            };
            let board: serde_json::Value = serde_json::from_str(&board).unwrap();
            board["eval_loss_by_language"]
                .as_object()
                .is_some_and(|curves| curves.len() == languages)
        },
    );
    let dom = chromium(&["--dump-dom"], &format!("http://127.0.0.1:{page_port}/"));
    let dom = String::from_utf8_lossy(&dom.stdout);
    dom.split("data-eval-languages=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// The suffix of a run's topics and groups, and its stages' metrics ports.
struct Topics {
    suffix: String,
    ports: BTreeMap<String, u16>,
}

/// `codelupe run` of the whole pipeline on topics, groups and ports of its own.
struct Run {
    topics: Topics,
    page_port: u16,
    _process: KillOnDrop,
}

impl Run {
    fn start(dir: &Path, tokenizer: &Path, api: &str, mixture: &Mixture) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let suffix = unique("mixture");
        let topology = topology_of_its_own(dir, &suffix);
        let topics = Topics {
            suffix,
            ports: (pipeline_stages().into_iter())
                .map(|stage| (stage, free_port()))
                .collect(),
        };
        let page_port = free_port();
        let config = write_config(dir, tokenizer, &topics, api, mixture);
        let log = std::fs::File::create(dir.join("run.log")).unwrap();
        let process = codelupe()
            .arg("--config")
            .arg(&config)
            .arg("--topology")
            .arg(&topology)
            .args(["run", "--page-port", &page_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Run {
            topics,
            page_port,
            _process: KillOnDrop(process),
        }
    }

    /// The training split's batches, in the order they were made, once the corpus is
    /// through.
    fn training_batches(&self) -> Vec<TrainingBatch> {
        let started = Instant::now();
        wait_until_drained(self);
        let batches: Vec<TrainingBatch> = read_in_produced_order(
            &format!("training-batches-{}", self.topics.suffix),
            Duration::from_secs(3),
        )
        .iter()
        .map(|value| TrainingBatch::decode(value).unwrap())
        .filter(|batch| batch.split == "train")
        .collect();
        eprintln!(
            "mixture: {} training batches, the corpus through in {:.0?}",
            batches.len(),
            started.elapsed()
        );
        assert!(
            batches.len() >= 2 * FIRST_BATCHES,
            "{} training batches",
            batches.len()
        );
        batches
    }
}

/// The largest gap, in points, between a language's share of the first batches and
/// its share of all of them.
fn largest_gap(batches: &[TrainingBatch], end_of_text: u32) -> (BTreeMap<String, f64>, f64) {
    let corpus = shares(batches.iter(), end_of_text);
    let first = shares(batches.iter().take(FIRST_BATCHES), end_of_text);
    eprintln!(
        "mixture: shares of the corpus {corpus:.3?}; of the first {FIRST_BATCHES} batches {first:.3?}"
    );
    let gap = (corpus.iter())
        .map(|(language, share)| (first.get(language).copied().unwrap_or(0.0) - share).abs())
        .fold(0.0, f64::max);
    (corpus, gap)
}

#[test]
fn every_language_is_in_every_stretch_of_training_and_of_its_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (github, _daemon) = corpus(dir);
    let tokenizer = dir.join("tokenizer.json");
    train_tokenizer(&[dir.join("sources")], 2000, &tokenizer);
    let end_of_text = CodeTokenizer::load(&tokenizer).unwrap().end_of_text;

    // Without turns or shuffle, as before: one language's backlog after another, and
    // the first batches far from the corpus's mixture (the check below can fail).
    let sequence = Mixture {
        turn_days: 0,
        shuffle_buffer: 0,
    };
    let unmixed = Run::start(&dir.join("unmixed"), &tokenizer, &github.url, &sequence);
    let (_, gap) = largest_gap(&unmixed.training_batches(), end_of_text);
    assert!(
        gap > 0.10,
        "without the mixture the first batches were off by only {gap:.3}"
    );
    drop(unmixed);

    let defaults = Mixture {
        turn_days: 30,
        shuffle_buffer: 256,
    };
    let run = Run::start(&dir.join("mixed"), &tokenizer, &github.url, &defaults);
    let (corpus, gap) = largest_gap(&run.training_batches(), end_of_text);
    assert_eq!(
        corpus.keys().collect::<Vec<_>>(),
        ["C", "Rust", "Shell"],
        "languages trained on"
    );
    assert!(
        gap <= 0.10,
        "a language's share of the first {FIRST_BATCHES} batches is {gap:.3} from its share of the corpus"
    );

    // The eval set, the trainer's series and the live page's curves: every language.
    wait_for(
        "trainer_eval_loss for every language",
        Duration::from_secs(120),
        || {
            let Ok((200, exposition)) = http_get(run.topics.ports["trainer"], "/prometheus") else {
                return false;
            };
            corpus.keys().all(|language| {
                exposition.contains(&format!("trainer_eval_loss{{language=\"{language}\"}}"))
            })
        },
    );
    let eval_set: Vec<String> = serde_json::from_slice(
        &std::fs::read(dir.join("mixed/checkpoints/eval-set-languages.json")).unwrap(),
    )
    .unwrap();
    let eval_set: BTreeSet<&String> = eval_set.iter().collect();
    assert_eq!(
        eval_set,
        corpus.keys().collect(),
        "the eval set's languages"
    );
    let drawn = eval_curves_on_the_live_page(run.page_port, corpus.len());
    for language in corpus.keys() {
        assert!(
            drawn.split(' ').any(|l| l == language),
            "no eval curve of {language} on the live page: {drawn:?}"
        );
    }
}
