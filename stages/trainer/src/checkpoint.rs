//! Checkpoints and the fixed eval set, on disk. A checkpoint is a folder
//! `step-NNNNNNNNNN/` holding the weights and optimiser moments (safetensors), the
//! tokenizer, and `state.json` (step, learning-rate position, the input offsets it
//! includes, the batches trained since the previous one). It is written under a
//! temporary name, synced, then renamed, so a crash leaves either the whole checkpoint
//! or none of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use codelupe_runtime::records::TrainingBatch;

use crate::model::ModelConfig;
use crate::train::{Sequences, Trainer};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Optimiser steps taken.
    pub step: u64,
    pub tokens_seen: u64,
    /// Per input partition, the next offset to read: everything before it is in this
    /// checkpoint (trained on, or deliberately skipped).
    pub offsets: BTreeMap<i32, i64>,
    pub learning_rate: f64,
    pub train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// Eval loss on each language's tokens (none in checkpoints written before).
    #[serde(default)]
    pub eval_loss_by_language: BTreeMap<String, f64>,
    pub preset: String,
    pub model: ModelConfig,
    pub tokenizer_fingerprint: String,
    /// The longest sequence trained on (the Hugging Face export's context length);
    /// None in checkpoints written before it was recorded.
    #[serde(default)]
    pub context: Option<i64>,
    /// Batch ids trained on since the previous checkpoint, in order.
    pub batches: Vec<String>,
    pub written_at_ms: i64,
}

use codelupe_trainer_api::checkpoints::{self, PREFIX};

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Writes a checkpoint of `trainer` under `root` and keeps the newest `keep`.
pub fn write(
    root: &Path,
    state: &CheckpointState,
    trainer: &Trainer,
    tokenizer: &Path,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    let name = format!("{PREFIX}{:010}", state.step);
    let temporary = root.join(format!(".tmp-{name}"));
    let target = root.join(&name);
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary)?;
    }
    std::fs::create_dir_all(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    trainer.save(&temporary)?;
    std::fs::write(
        temporary.join("state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    std::fs::copy(tokenizer, temporary.join("tokenizer.json"))
        .with_context(|| format!("copying {}", tokenizer.display()))?;
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "tokenizer.json",
    ] {
        sync_file(&temporary.join(file))?;
    }
    sync_dir(&temporary)?;
    if target.exists() {
        // The same step again (a run that ended without an optimiser step).
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&temporary, &target)
        .with_context(|| format!("renaming {} into place", temporary.display()))?;
    sync_dir(root)?;
    for (old, _) in list(root)?.into_iter().rev().skip(keep.max(1)) {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(target)
}

/// Every complete checkpoint under `root`, oldest first.
pub fn list(root: &Path) -> anyhow::Result<Vec<(PathBuf, CheckpointState)>> {
    let mut found = Vec::new();
    for path in checkpoints::dirs(root).with_context(|| format!("reading {}", root.display()))? {
        // Every checkpoint this trainer writes has its state.json (written before the
        // rename); a folder without one was put there some other way and is not one.
        if !path.join("state.json").exists() {
            tracing::warn!(folder = %path.display(), "no state.json: not a checkpoint, ignored");
            continue;
        }
        let state = read_state(&path)?;
        found.push((path, state));
    }
    Ok(found)
}

pub fn read_state(dir: &Path) -> anyhow::Result<CheckpointState> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

pub fn latest(root: &Path) -> anyhow::Result<Option<(PathBuf, CheckpointState)>> {
    Ok(list(root)?.pop())
}

/// The fixed eval set, kept on disk so every evaluation, across runs and restarts,
/// uses the same sequences: the first `base` eval-split batches the trainer reads,
/// then (up to `max`) each later one that holds a language the set has no token of,
/// so every language seen has a loss of its own. Once kept, a batch stays.
#[derive(Default)]
pub struct EvalSet {
    pub batch_ids: Vec<String>,
    pub sequences: Vec<Sequences>,
    /// Per batch, each token's language as an index into `languages` ([S, L]); None
    /// for a batch whose record named no languages.
    pub token_languages: Vec<Option<Tensor>>,
    /// The languages the set holds, in the order they came.
    pub languages: Vec<String>,
}

/// Each token's language in `batch`: the language of the document it belongs to.
/// None when the record does not name one language per document.
fn languages_of_tokens(batch: &TrainingBatch) -> Option<Vec<&str>> {
    if batch.languages.is_empty() || batch.languages.len() != batch.document_starts.len() {
        return None;
    }
    let mut document = 0;
    let starts = &batch.document_starts;
    Some(
        (0..batch.token_ids.len())
            .map(|i| {
                while document + 1 < starts.len() && starts[document + 1] as usize <= i {
                    document += 1;
                }
                batch.languages[document].as_str()
            })
            .collect(),
    )
}

impl EvalSet {
    const TENSORS: &'static str = "eval-set.safetensors";
    const IDS: &'static str = "eval-set.json";
    const LANGUAGES: &'static str = "eval-set-languages.json";

    /// Keeps `batch` (as `sequences`) when the rule above says so; whether it did.
    pub fn offer(
        &mut self,
        batch: &TrainingBatch,
        sequences: Sequences,
        base: usize,
        max: usize,
    ) -> bool {
        if self.batch_ids.contains(&batch.batch_id) || self.batch_ids.len() >= max {
            return false;
        }
        let tokens = languages_of_tokens(batch);
        let new_language = tokens
            .as_ref()
            .is_some_and(|t| t.iter().any(|l| !self.languages.iter().any(|k| k == l)));
        if self.batch_ids.len() >= base && !new_language {
            return false;
        }
        let indices = tokens.map(|tokens| {
            let ids: Vec<i64> = tokens
                .into_iter()
                .map(|language| {
                    let index = self.languages.iter().position(|k| k == language);
                    index.unwrap_or_else(|| {
                        self.languages.push(language.to_string());
                        self.languages.len() - 1
                    }) as i64
                })
                .collect();
            Tensor::from_slice(&ids).view_as(&sequences.tokens)
        });
        self.batch_ids.push(batch.batch_id.clone());
        self.sequences.push(sequences);
        self.token_languages.push(indices);
        true
    }

    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let ids = root.join(Self::IDS);
        if !ids.exists() {
            return Ok(Self::default());
        }
        let batch_ids: Vec<String> = serde_json::from_slice(&std::fs::read(&ids)?)
            .with_context(|| format!("parsing {}", ids.display()))?;
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(root.join(Self::TENSORS))
            .context("reading the eval set")?
            .into_iter()
            .collect();
        let sequences = (0..batch_ids.len())
            .map(|i| {
                let get = |what: &str| {
                    tensors
                        .get(&format!("{what}.{i}"))
                        .map(|t| t.shallow_clone())
                        .ok_or_else(|| anyhow::anyhow!("eval set lacks {what}.{i}"))
                };
                Ok(Sequences {
                    tokens: get("tokens")?,
                    positions: get("positions")?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // Eval sets written before languages were recorded have none.
        let names = root.join(Self::LANGUAGES);
        let languages: Vec<String> = if names.exists() {
            serde_json::from_slice(&std::fs::read(&names)?)
                .with_context(|| format!("parsing {}", names.display()))?
        } else {
            Vec::new()
        };
        let token_languages = (0..batch_ids.len())
            .map(|i| {
                tensors
                    .get(&format!("languages.{i}"))
                    .map(|t| t.shallow_clone())
            })
            .collect();
        Ok(Self {
            batch_ids,
            sequences,
            token_languages,
            languages,
        })
    }

    /// Tensors first, then the id list that makes them visible, each atomically.
    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(root)?;
        let mut tensors = Vec::new();
        for (i, s) in self.sequences.iter().enumerate() {
            tensors.push((format!("tokens.{i}"), s.tokens.shallow_clone()));
            tensors.push((format!("positions.{i}"), s.positions.shallow_clone()));
            if let Some(languages) = &self.token_languages[i] {
                tensors.push((format!("languages.{i}"), languages.shallow_clone()));
            }
        }
        let temporary = root.join(format!(".tmp-{}", Self::TENSORS));
        Tensor::write_safetensors(&tensors, &temporary)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::TENSORS))?;
        let temporary = root.join(format!(".tmp-{}", Self::LANGUAGES));
        std::fs::write(&temporary, serde_json::to_vec(&self.languages)?)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::LANGUAGES))?;
        let temporary = root.join(format!(".tmp-{}", Self::IDS));
        std::fs::write(&temporary, serde_json::to_vec(&self.batch_ids)?)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::IDS))?;
        sync_dir(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::BatchLimits;

    /// A batch of one 8-token sequence: documents starting at `starts`, in `languages`.
    fn batch(id: &str, starts: Vec<i32>, languages: &[&str]) -> (TrainingBatch, Sequences) {
        let batch = TrainingBatch {
            batch_id: id.into(),
            split: "eval".into(),
            sequence_length: 8,
            token_ids: (0..8).collect(),
            content_hashes: languages.iter().map(|l| format!("{l}-file")).collect(),
            languages: languages.iter().map(|l| l.to_string()).collect(),
            document_starts: starts,
            tokenizer_fingerprint: "f".into(),
        };
        let limits = BatchLimits {
            vocab_size: 8,
            max_sequence_length: 8,
        };
        let sequences = Sequences::from_batch(&batch, limits).unwrap();
        (batch, sequences)
    }

    #[test]
    fn the_eval_set_keeps_a_batch_for_every_language_and_then_stays_fixed() {
        let mut set = EvalSet::default();
        let mut offer = |id: &str, starts: Vec<i32>, languages: &[&str]| {
            let (b, s) = batch(id, starts, languages);
            set.offer(&b, s, 1, 3)
        };
        assert!(offer("rust", vec![0], &["Rust"]));
        assert!(!offer("rust", vec![0], &["Rust"]), "a batch is kept once");
        assert!(
            !offer("more-rust", vec![0], &["Rust"]),
            "past base, only new languages"
        );
        assert!(offer("mixed", vec![0, 5], &["Rust", "Python"]));
        // A batch whose record names no languages adds none.
        assert!(!offer("unnamed", vec![0], &[]));
        assert!(offer("go", vec![0], &["Go"]));
        assert!(!offer("c", vec![0], &["C"]), "max reached");
        assert_eq!(set.languages, ["Rust", "Python", "Go"]);
        let mixed: Vec<i64> =
            Vec::try_from(set.token_languages[1].as_ref().unwrap().view([-1])).unwrap();
        assert_eq!(mixed, [0, 0, 0, 0, 0, 1, 1, 1]);

        let root = tempfile::tempdir().unwrap();
        set.save(root.path()).unwrap();
        let loaded = EvalSet::load(root.path()).unwrap();
        assert_eq!(loaded.batch_ids, ["rust", "mixed", "go"]);
        assert_eq!(loaded.languages, set.languages);
        let reloaded: Vec<i64> =
            Vec::try_from(loaded.token_languages[1].as_ref().unwrap().view([-1])).unwrap();
        assert_eq!(reloaded, mixed);
    }

    #[test]
    fn tokens_belong_to_the_document_they_lie_in() {
        let (b, _) = batch("b", vec![0, 3, 6], &["A", "B", "C"]);
        assert_eq!(
            languages_of_tokens(&b).unwrap(),
            ["A", "A", "A", "B", "B", "B", "C", "C"]
        );
        let (mut b, _) = batch("b", vec![0, 3], &["A", "B"]);
        b.languages.pop();
        assert!(
            languages_of_tokens(&b).is_none(),
            "one language per document or none"
        );
    }
}
