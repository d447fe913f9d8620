//! Checkpoints on disk. A checkpoint is a folder `step-NNNNNNNNNN/` holding the weights
//! and optimiser moments (safetensors), the tokenizer, and `state.json` (step,
//! learning-rate position, the input offsets it includes, the batches trained since the
//! previous one). It is written under a temporary name, synced, then renamed, so a
//! crash leaves either the whole checkpoint or none of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::train::Trainer;

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

pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

pub(crate) fn sync_file(path: &Path) -> anyhow::Result<()> {
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
