//! The batcher on the real broker, as its own process: batches decode back to exactly
//! the source files, reruns are byte-identical, and a SIGKILL mid-stream loses nothing.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use codelupe_batcher::document::{self, DocumentOptions};
use codelupe_runtime::records::{CodeFile, TrainingBatch};
use codelupe_runtime::AvroRecord;
use codelupe_tokenizer::CodeTokenizer;
use support::*;

const SEQUENCE_LENGTH: usize = 512;
const SEQUENCES_PER_BATCH: usize = 4;
const BATCH_LEN: usize = SEQUENCE_LENGTH * SEQUENCES_PER_BATCH;

fn document_options() -> DocumentOptions {
    DocumentOptions {
        eval_share: 0.05,
        ..DocumentOptions::default()
    }
}

/// Files shorter than a batch, so each lies in at most two batches.
fn shorter_than_a_batch(
    files: Vec<CodeFile>,
    tok: &CodeTokenizer,
    options: &DocumentOptions,
) -> Vec<CodeFile> {
    files
        .into_iter()
        .filter(|f| document::tokens(tok, f, options).unwrap().len() < BATCH_LEN - 1)
        .collect()
}

fn fit_tokenizer(dir: &Path, sources: &[PathBuf]) -> PathBuf {
    let out = dir.join("tokenizer.json");
    let printed = train_tokenizer(sources, 4000, &out);
    assert!(printed.contains("fingerprint"), "{printed}");
    out
}

struct Run {
    suffix: String,
    topology: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Run {
    fn new(dir: &Path, tokenizer: &Path) -> Self {
        Self::with_delivery(dir, tokenizer, "at_least_once")
    }

    fn with_delivery(dir: &Path, tokenizer: &Path, delivery: &str) -> Self {
        let dir = dir.join(unique("run"));
        std::fs::create_dir_all(&dir).unwrap();
        let (suffix, topology) = fresh_topics(&dir, "b");
        let port = free_port();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                // A killed member's partitions move on after 6 s, not the default 45.
                "kafka:\n  brokers: {}\n  dead_letter_topic: dead-letters-{suffix}\n  consumer: {{session.timeout.ms: '6000'}}\n\
                 stages:\n  batcher:\n    group: batcher-{suffix}\n    metrics_port: {port}\n    metrics_bind: 127.0.0.1\n    delivery: {delivery}\n\
                 \x20   options:\n      tokenizer: {}\n      sequence_length: {SEQUENCE_LENGTH}\n      sequences_per_batch: {SEQUENCES_PER_BATCH}\n\
                 \x20     seen_topic: batcher-seen-{suffix}\n      flush_idle_ms: 3000\n      document: {{eval_share: 0.05}}\n\
                 \x20     mix: {{shuffle_buffer: 16}}\n",
                brokers(),
                tokenizer.display(),
            ),
        )
        .unwrap();
        Run {
            suffix,
            topology,
            config,
            port,
        }
    }

    fn input(&self) -> String {
        format!("distinct-files-{}", self.suffix)
    }

    fn output(&self) -> String {
        format!("training-batches-{}", self.suffix)
    }

    fn start(&self) -> KillOnDrop {
        let child: Child = codelupe()
            .arg("--config")
            .arg(&self.config)
            .arg("--topology")
            .arg(&self.topology)
            .args(["stage", "batcher"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    }

    /// A metric of the running stage, summed over its series; None while unreachable.
    fn metric(&self, name: &str) -> Option<f64> {
        scraped(self.port, name)
    }

    /// Until every consumed input is released (its batches acknowledged, partial ones
    /// flushed after the input paused).
    fn wait_until_done(&self, consumed: usize) {
        wait_for("batcher done", Duration::from_secs(240), || {
            self.metric("codelupe_records_consumed_total") >= Some(consumed as f64)
                && self.metric("codelupe_records_in_flight") == Some(0.0)
        });
    }

    fn batches(&self) -> Vec<(String, Vec<u8>)> {
        read_all(&self.output(), Duration::from_secs(2))
    }
}

fn stop(mut stage: KillOnDrop) {
    let pid = stage.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = stage.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

async fn produce_files(topic: &str, files: &[CodeFile]) {
    let records = files
        .iter()
        .map(|f| (f.content_hash.clone(), f.encode().unwrap()))
        .collect();
    produce_all(topic, records).await;
}

/// Each file's document tokens as the batches hold them. A document lies whole in one
/// batch or runs across several, its last piece holding its end-of-text; one the
/// batcher resumed after a kill goes on wherever its next batch has room, so its
/// pieces are not at the start of a batch. Batches are consumed in no particular
/// order, so every piece without an end-of-text (up to two of them) is tried before
/// every last piece.
fn documents_in(tok: &CodeTokenizer, batches: &[TrainingBatch]) -> HashMap<String, Vec<Vec<u32>>> {
    let eot = tok.end_of_text as i32;
    let mut heads: HashMap<String, Vec<Vec<u32>>> = HashMap::new();
    let mut tails: HashMap<String, Vec<Vec<u32>>> = HashMap::new();
    for batch in batches {
        for (hash, _, piece) in document_pieces(batch) {
            let ids = |s: &[i32]| s.iter().map(|&t| t as u32).collect::<Vec<_>>();
            match piece.iter().position(|&t| t == eot) {
                Some(at) => tails
                    .entry(hash.to_string())
                    .or_default()
                    .push(ids(&piece[..at])),
                None => heads.entry(hash.to_string()).or_default().push(ids(piece)),
            }
        }
    }
    let mut documents: HashMap<String, Vec<Vec<u32>>> = HashMap::new();
    for (hash, tails) in tails {
        let heads = heads.get(&hash).map_or(&[][..], Vec::as_slice);
        let mut fronts: Vec<Vec<u32>> = vec![Vec::new()];
        for (i, first) in heads.iter().enumerate() {
            fronts.push(first.clone());
            for (j, second) in heads.iter().enumerate() {
                if i != j {
                    fronts.push([first.clone(), second.clone()].concat());
                }
            }
        }
        let candidates = documents.entry(hash).or_default();
        for tail in &tails {
            candidates.extend(
                fronts
                    .iter()
                    .map(|front| [front.clone(), tail.clone()].concat()),
            );
        }
    }
    documents
}

/// Copies share a hash and partition; the batcher keeps the first one it reads.
fn first_of_each_hash(files: &[CodeFile]) -> HashMap<&str, &CodeFile> {
    let mut first = HashMap::new();
    for f in files {
        first.entry(f.content_hash.as_str()).or_insert(f);
    }
    first
}

fn decode_batches(records: &[(String, Vec<u8>)], fingerprint: &str) -> Vec<TrainingBatch> {
    records
        .iter()
        .map(|(key, value)| {
            let batch = TrainingBatch::decode(value).unwrap();
            assert_eq!(&batch.batch_id, key);
            assert_eq!(batch.tokenizer_fingerprint, fingerprint);
            assert_eq!(batch.sequence_length as usize, SEQUENCE_LENGTH);
            assert_eq!(batch.token_ids.len(), BATCH_LEN);
            assert_eq!(batch.document_starts.len(), batch.content_hashes.len());
            assert_eq!(batch.document_starts.first(), Some(&0));
            assert!(batch.document_starts.windows(2).all(|w| w[0] < w[1]));
            batch
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_decode_to_exactly_the_source_files_and_a_rerun_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let crates = registry_crates(&["serde_json-1", "regex-syntax-0", "tokio-1"]);
    assert!(crates.len() >= 2, "crate sources: {crates:?}");
    let tokenizer_path = fit_tokenizer(dir.path(), &crates);
    let tok = CodeTokenizer::load(&tokenizer_path).unwrap();
    let options = document_options();
    let mut files = shorter_than_a_batch(code_files(&crates, is_rust), &tok, &options);
    let distinct = files.len();
    assert!(distinct > 150, "{distinct} files");
    // Exact copies under another repository: same hash, so dropped.
    let copies: Vec<CodeFile> = files[..20]
        .iter()
        .map(|f| CodeFile {
            repo_full_name: "someone/vendored".into(),
            ..f.clone()
        })
        .collect();
    files.extend(copies);

    let mut outputs = Vec::new();
    for round in 0..2 {
        let run = Run::new(dir.path(), &tokenizer_path);
        produce_files(&run.input(), &files).await;
        if round == 0 {
            // A tokenizer can also be fitted on what the processor published.
            produce_files(&format!("code-files-{}", run.suffix), &files).await;
            let out = dir.path().join("from-topic.json");
            let result = codelupe()
                .arg("--topology")
                .arg(&run.topology)
                .arg("--config")
                .arg(&run.config)
                .args(["tokenizer", "train", "--from-topic"])
                .args(["--vocab-size", "1000", "--max-files", "60", "-o"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(result.status.success(), "{}", text(&result));
            assert!(text(&result).contains("on 60 files"), "{}", text(&result));
            let vocabulary = CodeTokenizer::load(&out).unwrap().vocab_size();
            assert!((500..=1000).contains(&vocabulary), "{vocabulary}");
        }
        let stage = run.start();
        run.wait_until_done(files.len());
        assert_eq!(
            run.metric("batcher_duplicates_dropped_total"),
            Some(20.0),
            "copies dropped"
        );
        assert_eq!(run.metric("codelupe_dead_letters_total"), Some(0.0));
        stop(stage);
        let mut records = run.batches();
        records.sort();
        outputs.push(records);
    }
    assert!(!outputs[0].is_empty());
    assert!(
        outputs[0] == outputs[1],
        "a rerun over the same input makes byte-identical batches"
    );

    let batches = decode_batches(&outputs[0], &tok.fingerprint);
    let by_hash = first_of_each_hash(&files);
    let documents = documents_in(&tok, &batches);
    assert_eq!(documents.len(), distinct, "every distinct file, once");
    let (mut rearranged, mut eval) = (0, 0);
    for (hash, candidates) in &documents {
        let file = by_hash[hash.as_str()];
        let expected = document::tokens(&tok, file, &options).unwrap();
        assert!(
            candidates.contains(&expected),
            "{}: the batches hold its tokens",
            file.path
        );
        assert_eq!(
            document::restore(&tok, hash, &expected, &options).unwrap(),
            file.content,
            "decodes back to the file"
        );
        rearranged += expected.contains(&tok.fim_middle) as usize;
    }
    for batch in &batches {
        let in_eval = batch
            .content_hashes
            .iter()
            .map(|h| document::is_eval(h, options.eval_share))
            .collect::<HashSet<_>>();
        assert_eq!(in_eval.len(), 1, "a batch holds one split");
        assert_eq!(in_eval.contains(&true), batch.split == "eval");
        eval += (batch.split == "eval") as usize;
        // The text of a batch is the files' text plus the special tokens.
        let text = tok
            .decode(
                &batch
                    .token_ids
                    .iter()
                    .map(|&t| t as u32)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        assert!(text.contains(codelupe_tokenizer::END_OF_TEXT));
    }
    assert!(
        rearranged > distinct / 4 && rearranged < distinct * 3 / 4,
        "{rearranged} of {distinct} rearranged for FIM"
    );
    assert!(eval > 0, "some eval batches");
}

/// SIGKILLs a batcher in `delivery` mode a third of the way through real crates,
/// restarts it, and checks every file's document is in the output; returns how many
/// documents are there more than once (read_committed).
async fn killed_mid_stream_and_restarted(delivery: &str) -> Duplicates {
    let dir = tempfile::tempdir().unwrap();
    let crates = registry_crates(&[
        "regex-syntax-0",
        "hyper-1",
        "tokio-1",
        "syn-2",
        "regex-automata-0",
    ]);
    assert!(crates.len() >= 2, "crate sources: {crates:?}");
    let tokenizer_path = fit_tokenizer(dir.path(), &crates[..1]);
    let tok = CodeTokenizer::load(&tokenizer_path).unwrap();
    let options = document_options();
    let files = shorter_than_a_batch(code_files(&crates, is_rust), &tok, &options);
    let hashes: HashSet<&str> = files.iter().map(|f| f.content_hash.as_str()).collect();
    assert!(files.len() > 300, "{} files", files.len());

    let run = Run::with_delivery(dir.path(), &tokenizer_path, delivery);
    produce_files(&run.input(), &files).await;
    let first = run.start();
    let third = files.len() as f64 / 3.0;
    wait_for("a third consumed", Duration::from_secs(240), || {
        run.metric("batcher_files_consumed_total")
            .is_some_and(|n| n >= third)
    });
    drop(first); // SIGKILL
    let before = run.batches().len();

    let second = run.start();
    wait_for(
        "the restarted batcher is done",
        Duration::from_secs(240),
        || {
            // Lag is reported per partition once assigned; 0 everywhere means all read.
            run.metric("codelupe_records_consumed_total") > Some(0.0)
                && run.metric("codelupe_consumer_lag{") == Some(0.0)
                && run.metric("codelupe_records_in_flight") == Some(0.0)
        },
    );
    stop(second);

    let by_hash = first_of_each_hash(&files);
    let missing_from = |batches: &[TrainingBatch]| -> Vec<&str> {
        let documents = documents_in(&tok, batches);
        hashes
            .iter()
            .filter(|h| {
                let expected = document::tokens(&tok, by_hash[**h], &options).unwrap();
                !documents
                    .get(**h)
                    .is_some_and(|candidates| candidates.contains(&expected))
            })
            .copied()
            .collect()
    };
    // Under exactly_once a read_committed reader sees past the killed batcher's open
    // transaction only once the broker aborts it (transaction.timeout.ms, 10 s, then its
    // next clean-up pass, up to 10 s more): the restarted batcher has a transactional id
    // of its own and does not fence it. Read until every file is there, or a minute.
    let reading = std::time::Instant::now();
    let deadline = reading + Duration::from_secs(60);
    let mut reads = 0;
    let (batches, missing) = loop {
        reads += 1;
        let batches = decode_batches(&run.batches(), &tok.fingerprint);
        let missing = missing_from(&batches);
        if missing.is_empty() || std::time::Instant::now() >= deadline {
            break (batches, missing);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(
        missing.is_empty(),
        "{} of {} files missing: {:?}",
        missing.len(),
        hashes.len(),
        missing.iter().map(|h| &by_hash[h].path).collect::<Vec<_>>()
    );
    assert!(
        before > 0 && batches.len() > before,
        "{before} then {}",
        batches.len()
    );
    let packed: usize = batches.iter().map(|b| b.content_hashes.len()).sum();
    let twice = Duplicates::in_batches(&tok, &batches, &by_hash, &options);
    eprintln!(
        "{delivery}: {} files, {} batches ({before} before the kill), {packed} document pieces, {twice:?}, all read in {reads} reads, {:.0} s",
        hashes.len(),
        batches.len(),
        reading.elapsed().as_secs_f64()
    );
    twice
}

/// What a kill made the batcher publish twice.
#[derive(Debug, PartialEq)]
struct Duplicates {
    /// Documents whose last piece is in the output more than once.
    ended_twice: usize,
    /// Documents with more tokens in the output than they have: any piece twice.
    packed_twice: usize,
}

impl Duplicates {
    /// Every piece counts, not only the last: a head packed twice is a duplicate too.
    fn in_batches(
        tok: &CodeTokenizer,
        batches: &[TrainingBatch],
        files: &HashMap<&str, &CodeFile>,
        options: &DocumentOptions,
    ) -> Self {
        let lengths: HashMap<&str, usize> = files
            .iter()
            .map(|(hash, file)| (*hash, document::tokens(tok, file, options).unwrap().len()))
            .collect();
        let ended = documents_ended(batches, tok.end_of_text);
        Duplicates {
            ended_twice: ended.values().map(|n| n - 1).sum(),
            packed_twice: packed_twice(batches, tok.end_of_text, &lengths),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_every_file_reaches_the_output() {
    killed_mid_stream_and_restarted("at_least_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_killed_mid_stream_every_file_reaches_the_output_once() {
    assert_eq!(
        killed_mid_stream_and_restarted("exactly_once").await,
        Duplicates {
            ended_twice: 0,
            packed_twice: 0
        }
    );
}
