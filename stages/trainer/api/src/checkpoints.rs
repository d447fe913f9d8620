//! Where the trainer's checkpoints are and what the run summary reads of them, without
//! libtorch: `<checkpoint_dir>/step-NNNNNNNNNN/` with its `state.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A checkpoint folder's name: this and the step, zero-padded to sort in step order.
pub const PREFIX: &str = "step-";

/// `checkpoint_dir` when the options give none.
pub const DEFAULT_DIR: &str = "checkpoints";

/// Every `step-*` folder under `root`, oldest first (none when `root` is missing).
pub fn dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str());
        if name.is_some_and(|n| n.starts_with(PREFIX)) {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The fields of a checkpoint's `state.json` the summary reports.
#[derive(Debug, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub tokens_seen: u64,
    pub eval_loss: Option<f64>,
    pub train_loss: Option<f64>,
    #[serde(default)]
    pub eval_loss_by_language: std::collections::BTreeMap<String, f64>,
}

/// The newest complete checkpoint under `root` (one with its state.json).
pub fn latest(root: &Path) -> Option<(PathBuf, Progress)> {
    newest_with(root, |dir| dir.join("state.json"))
}

/// The newest checkpoint under `root` whose file `file(dir)` reads as a `T`, and it.
fn newest_with<T: serde::de::DeserializeOwned>(
    root: &Path,
    file: impl Fn(&Path) -> PathBuf,
) -> Option<(PathBuf, T)> {
    dirs(root).ok()?.into_iter().rev().find_map(|dir| {
        let text = std::fs::read(file(&dir)).ok()?;
        Some((dir, serde_json::from_slice(&text).ok()?))
    })
}

/// The checkpoint `path` names: a checkpoint folder, or the newest one under a
/// checkpoint root.
pub fn checkpoint_at(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join("state.json").exists() {
        return Ok(path.to_path_buf());
    }
    latest(path)
        .map(|(dir, _)| dir)
        .ok_or_else(|| anyhow::anyhow!("no checkpoint in {}", path.display()))
}

/// Where a checkpoint's execution score on `benchmark` (its name) is written.
pub fn eval_report(checkpoint: &Path, benchmark: &str) -> PathBuf {
    checkpoint.join("eval").join(format!("{benchmark}.json"))
}

/// The fields of an execution score the trainer and the summary report.
#[derive(Debug, Deserialize)]
pub struct Score {
    pub problems: usize,
    pub pass_at_k: std::collections::BTreeMap<String, f64>,
}

impl Score {
    /// "pass@1 0.006, pass@10 0.031".
    pub fn describe(&self) -> String {
        let ks: Vec<String> = self
            .pass_at_k
            .iter()
            .map(|(k, v)| format!("pass@{k} {v:.3}"))
            .collect();
        ks.join(", ")
    }
}

/// The newest checkpoint under `root` scored on `benchmark`, and its score.
pub fn latest_score(root: &Path, benchmark: &str) -> Option<(PathBuf, Score)> {
    newest_with(root, |dir| eval_report(dir, benchmark))
}

/// `checkpoint_dir` of the trainer's options.
pub fn root(options: Option<&serde_yaml::Value>) -> PathBuf {
    options
        .and_then(|o| o.get("checkpoint_dir"))
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_DIR)
        .into()
}
