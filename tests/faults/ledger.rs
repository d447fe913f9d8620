//! The harness's account of a run: every topic read to its end with a read_committed
//! consumer, each stage's inputs set against its outputs and dead letters, and the
//! files the processor keeps (judged again here, by the processor's own library) set
//! against the documents in `training-batches`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use codelupe_batcher::document::{self, DocumentOptions};
use codelupe_processor::metrics::ProcessorMetrics;
use codelupe_processor::{Processor, ProcessorOptions};
use codelupe_runtime::records::{
    CodeFile, DeadLetter, NearDuplicate, RepoClone, RepoSummary, RepoUrl, TrainingBatch,
};
use codelupe_runtime::{AvroRecord, Transform};
use codelupe_tokenizer::CodeTokenizer;

use crate::corpus::Expect;
use crate::support::{documents_ended, read_all};

#[derive(Debug, Default)]
pub struct Row {
    pub stage: &'static str,
    pub inputs: usize,
    pub outputs: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub dead_lettered: usize,
}

impl Row {
    /// A row of a stage that writes each input as one output, exactly once by
    /// construction: lost and duplicated are where the outputs' multiplicities differ
    /// from the inputs' (an input on its topic twice is rightly written twice).
    fn exported(stage: &'static str, inputs: &[String], outputs: &[String]) -> Self {
        let tally = |items: &[String]| {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for item in items {
                *counts.entry(item.clone()).or_default() += 1;
            }
            counts
        };
        let (wanted, written) = (tally(inputs), tally(outputs));
        let count = |map: &HashMap<String, usize>, key: &str| map.get(key).copied().unwrap_or(0);
        let keys: HashSet<&String> = wanted.keys().chain(written.keys()).collect();
        Row {
            stage,
            inputs: inputs.len(),
            outputs: outputs.len(),
            lost: keys
                .iter()
                .map(|k| count(&wanted, k).saturating_sub(count(&written, k)))
                .sum(),
            duplicated: keys
                .iter()
                .map(|k| count(&written, k).saturating_sub(count(&wanted, k)))
                .sum(),
            dead_lettered: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub rows: Vec<Row>,
    /// (topic, poison kind) → what became of it.
    pub poison: BTreeMap<(String, String), String>,
    /// Every departure from what must hold, in words.
    pub problems: Vec<String>,
    /// The largest dead letter a stage wrote, key and value, in bytes.
    pub largest_letter: usize,
}

fn decoded<T: AvroRecord>(records: &[(String, Vec<u8>)]) -> Vec<T> {
    records
        .iter()
        .filter_map(|(_, v)| T::decode(v).ok())
        .collect()
}

pub struct Topics {
    pub repo_urls: String,
    pub repo_clones: String,
    pub code_files: String,
    pub distinct_files: String,
    pub near_duplicates: String,
    pub repo_summaries: String,
    pub training_batches: String,
    pub dead_letters: String,
}

impl Ledger {
    pub async fn read(
        topics: &Topics,
        corpus: &[(String, Expect)],
        store: &Path,
        tokenizer: &Path,
        dataset: &Path,
    ) -> Self {
        let idle = Duration::from_secs(3);
        let mut ledger = Ledger::default();
        let letter_records = read_all(&topics.dead_letters, idle);
        // Of the letters the stages wrote, naming one of the run's topics: the harness's
        // own poison in this topic is none.
        let suffix = topics.dead_letters.trim_start_matches("dead-letters");
        ledger.largest_letter = letter_records
            .iter()
            .filter(|(_, v)| DeadLetter::decode(v).is_ok_and(|l| l.topic.ends_with(suffix)))
            .map(|(k, v)| k.len() + v.len())
            .max()
            .unwrap_or(0);
        let letters: Vec<DeadLetter> = decoded(&letter_records);
        let lettered = |stage: &str| -> HashMap<String, &DeadLetter> {
            letters
                .iter()
                .filter(|l| l.stage == stage)
                .map(|l| {
                    let key = String::from_utf8_lossy(l.key.as_deref().unwrap_or_default());
                    (key.into_owned(), l)
                })
                .collect()
        };

        // Crawler: every listed repository published once.
        // The forged URL (forged/huge-url) is no repository of the corpus.
        let urls: Vec<RepoUrl> = decoded(&read_all(&topics.repo_urls, idle))
            .into_iter()
            .filter(|u: &RepoUrl| !u.full_name.starts_with("forged/"))
            .collect();
        let names: HashSet<&str> = urls.iter().map(|u| u.full_name.as_str()).collect();
        ledger.rows.push(Row {
            stage: "crawler",
            inputs: corpus.len(),
            outputs: urls.len(),
            lost: corpus
                .iter()
                .filter(|(n, _)| !names.contains(n.as_str()))
                .count(),
            duplicated: urls.len() - names.len(),
            dead_lettered: 0,
        });

        // Downloader: a clone or a dead letter for each repository, as the corpus says.
        let clones: Vec<RepoClone> = decoded(&read_all(&topics.repo_clones, idle));
        let downloader_letters = lettered("downloader");
        let cloned: HashMap<&str, &RepoClone> =
            clones.iter().map(|c| (c.full_name.as_str(), c)).collect();
        for (name, expect) in corpus {
            let letter = downloader_letters.get(name);
            let as_expected = match (cloned.contains_key(name.as_str()), letter, expect) {
                (true, _, Expect::Kept) => true,
                (false, Some(letter), Expect::DeadLetter(reason)) => letter.reason == *reason,
                _ => false,
            };
            if !as_expected {
                let what = match (cloned.contains_key(name.as_str()), letter) {
                    (true, _) => "cloned".to_string(),
                    (false, Some(l)) => format!("dead-lettered {}: {}", l.reason, l.error),
                    (false, None) => "neither cloned nor dead-lettered".to_string(),
                };
                ledger
                    .problems
                    .push(format!("{name}: {what}, expected {expect:?}"));
            }
        }
        ledger.rows.push(Row {
            stage: "downloader",
            inputs: names.len(),
            outputs: clones.len(),
            lost: names
                .iter()
                .filter(|n| !cloned.contains_key(*n) && !downloader_letters.contains_key(**n))
                .count(),
            duplicated: clones.len() - cloned.len(),
            dead_lettered: downloader_letters
                .keys()
                .filter(|k| !k.starts_with("poison-"))
                .count(),
        });

        // Processor: the files its own library keeps from each clone, each published once.
        let registry = prometheus::Registry::new();
        let judge = Processor::new(
            ProcessorOptions {
                store: store.display().to_string(),
                work_dir: store.with_file_name("ledger-work"),
                parse_timeout_ms: crate::PARSE_TIMEOUT_MS,
                ..Default::default()
            },
            ProcessorMetrics::register(&registry).unwrap(),
        )
        .unwrap();
        let mut expected: HashMap<(String, String), CodeFile> = HashMap::new();
        for clone in cloned.values() {
            match judge.transform((*clone).clone()).await {
                Ok(published) => expected.extend(
                    published
                        .into_iter()
                        .filter_map(|p| p.value.into_file())
                        .map(|f| ((f.repo_full_name.clone(), f.path.clone()), f)),
                ),
                Err(e) => ledger.problems.push(format!(
                    "{}: the processor's judgement failed: {e}",
                    clone.full_name
                )),
            }
        }
        let files: Vec<CodeFile> = decoded(&read_all(&topics.code_files, idle));
        let published: HashSet<(&str, &str)> = files
            .iter()
            .map(|f| (f.repo_full_name.as_str(), f.path.as_str()))
            .collect();
        for f in &files {
            if f.content.contains("root:x:0:0") || f.path.ends_with("passwd.rs") {
                ledger.problems.push(format!(
                    "{}/{}: content from outside the clone",
                    f.repo_full_name, f.path
                ));
            }
        }
        let processor_lost: Vec<_> = expected
            .keys()
            .filter(|(r, p)| !published.contains(&(r.as_str(), p.as_str())))
            .collect();
        for (repo, path) in processor_lost.iter().take(10) {
            ledger
                .problems
                .push(format!("{repo}/{path}: kept but not in code-files"));
        }
        ledger.rows.push(Row {
            stage: "processor",
            inputs: cloned.len(),
            outputs: files.len(),
            lost: processor_lost.len(),
            duplicated: files.len() - published.len(),
            dead_lettered: lettered("processor")
                .keys()
                .filter(|k| !k.starts_with("poison-"))
                .count(),
        });
        if !expected.keys().any(|(_, p)| p == "src/big.c") {
            ledger
                .problems
                .push("mallory/big-c: src/big.c was not kept".into());
        }

        // Near-duplicates: every distinct file of code-files passed on to distinct-files
        // or dropped for another file of code-files, never both.
        let distinct: Vec<CodeFile> = decoded(&read_all(&topics.distinct_files, idle));
        let dropped: Vec<NearDuplicate> = decoded(&read_all(&topics.near_duplicates, idle));
        let in_code_files: HashSet<&str> = files.iter().map(|f| f.content_hash.as_str()).collect();
        let passed: HashSet<&str> = distinct.iter().map(|f| f.content_hash.as_str()).collect();
        let dropped_for: HashMap<&str, &str> = dropped
            .iter()
            .map(|d| (d.content_hash.as_str(), d.representative.as_str()))
            .collect();
        for (file, representative) in &dropped_for {
            if passed.contains(file) {
                ledger
                    .problems
                    .push(format!("{file}: both passed on and dropped"));
            }
            if file == representative || !in_code_files.contains(representative) {
                ledger.problems.push(format!(
                    "{file}: dropped for {representative}, not another file of code-files"
                ));
            }
        }
        ledger.rows.push(Row {
            stage: "neardup",
            inputs: in_code_files.len(),
            outputs: distinct.len(),
            lost: in_code_files
                .iter()
                .filter(|h| !passed.contains(*h) && !dropped_for.contains_key(*h))
                .count(),
            duplicated: distinct.len() - passed.len(),
            dead_lettered: lettered("neardup")
                .keys()
                .filter(|k| !k.starts_with("poison-"))
                .count(),
        });

        // Batcher: every distinct kept file's document that is no near-duplicate ends in
        // training-batches once.
        let tok = CodeTokenizer::load(tokenizer).unwrap();
        // The forged batch (poison-forged-token-id) copies a real one: not the batcher's.
        let batches: Vec<TrainingBatch> = decoded(&read_all(&topics.training_batches, idle))
            .into_iter()
            .filter(|b: &TrainingBatch| !b.batch_id.starts_with("poison-"))
            .collect();
        let ended = documents_ended(&batches, tok.end_of_text);
        let kept: HashMap<&str, &CodeFile> = expected
            .values()
            .map(|f| (f.content_hash.as_str(), f))
            .filter(|(h, _)| !dropped_for.contains_key(h))
            .collect();
        let batcher_lost = kept.keys().filter(|h| !ended.contains_key(**h)).count();
        ledger.rows.push(Row {
            stage: "batcher",
            inputs: passed.len(),
            outputs: batches.len(),
            lost: batcher_lost,
            duplicated: packed_twice(&tok, &batches, &kept),
            dead_lettered: lettered("batcher")
                .keys()
                .filter(|k| !k.starts_with("poison-"))
                .count(),
        });
        // Export: every record of distinct-files is a row of the dataset exactly as often
        // as it is on the topic (twice only where the topic has it twice); the same for
        // each repository summary and its row of the repositories table.
        let hashes: Vec<String> = distinct.iter().map(|f| f.content_hash.clone()).collect();
        let rows = codelupe_testkit::dataset::content_hashes(dataset);
        ledger.rows.push(Row {
            dead_lettered: lettered("export")
                .keys()
                .filter(|k| !k.starts_with("poison-"))
                .count(),
            ..Row::exported("export", &hashes, &rows)
        });
        let summaries: Vec<RepoSummary> = decoded(&read_all(&topics.repo_summaries, idle));
        let summarised: Vec<String> = summaries
            .iter()
            .map(|s| format!("{}@{}", s.full_name, s.commit_id))
            .collect();
        let column = |name| codelupe_testkit::dataset::column(dataset, "repositories", name);
        let catalogued: Vec<String> = column("repository")
            .into_iter()
            .zip(column("commit"))
            .map(|(name, commit)| format!("{name}@{commit}"))
            .collect();
        ledger.rows.push(Row::exported(
            "export-repositories",
            &summarised,
            &catalogued,
        ));
        ledger.rows.push(Row {
            stage: "trainer",
            inputs: batches.len(),
            ..Default::default()
        });

        for letter in &letters {
            let key = String::from_utf8_lossy(letter.key.as_deref().unwrap_or_default());
            if let Some(kind) = key.strip_prefix("poison-") {
                ledger.poison.insert(
                    (letter.topic.clone(), kind.to_string()),
                    format!("dead-lettered by {}: {}", letter.stage, letter.reason),
                );
            }
        }
        ledger
    }

    /// The lost-files total: kept files of the corpus whose tokens never reach
    /// `training-batches` (the batcher's lost column, the processor's before it).
    pub fn lost(&self) -> usize {
        self.rows.iter().map(|r| r.lost).sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        writeln!(
            out,
            "{:<11} {:>7} {:>8} {:>5} {:>10} {:>13}",
            "stage", "inputs", "outputs", "lost", "duplicated", "dead-lettered"
        )
        .unwrap();
        for r in &self.rows {
            writeln!(
                out,
                "{:<11} {:>7} {:>8} {:>5} {:>10} {:>13}",
                r.stage, r.inputs, r.outputs, r.lost, r.duplicated, r.dead_lettered
            )
            .unwrap();
        }
        writeln!(out, "\npoison record                           outcome").unwrap();
        for ((topic, kind), outcome) in &self.poison {
            writeln!(out, "{:<39} {outcome}", format!("{topic} {kind}")).unwrap();
        }
        out
    }
}

/// Documents of `kept` the batches hold more than once, counting every piece: one that
/// ends twice, or ends once but holds more tokens than it has (a head packed twice).
fn packed_twice(
    tok: &CodeTokenizer,
    batches: &[TrainingBatch],
    kept: &HashMap<&str, &CodeFile>,
) -> usize {
    let options = DocumentOptions::default();
    let lengths: HashMap<&str, usize> = kept
        .iter()
        .map(|(hash, file)| {
            let length = document::tokens(tok, file, &options).map_or(0, |t| t.len());
            (*hash, length)
        })
        .collect();
    crate::support::packed_twice(batches, tok.end_of_text, &lengths)
}
