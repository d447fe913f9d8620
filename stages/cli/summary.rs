//! What `codelupe run` prints when it ends: what went through each stage, what the
//! trainer made of it, where the model is and how to try it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::live::Board;

/// The fields of a trainer checkpoint's `state.json` the summary reports.
#[derive(Debug, Deserialize)]
pub struct CheckpointState {
    pub step: u64,
    pub tokens_seen: u64,
    pub eval_loss: Option<f64>,
    pub train_loss: Option<f64>,
}

/// The newest complete checkpoint under `root` (a `step-*` folder with its state.json).
pub fn latest_checkpoint(root: &Path) -> Option<(PathBuf, CheckpointState)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|dir| {
        let text = std::fs::read(dir.join("state.json")).ok()?;
        Some((dir, serde_json::from_slice(&text).ok()?))
    })
}

fn count(board: &Board, stage: &str, pick: impl Fn(&crate::live::StageCard) -> f64) -> u64 {
    board
        .stages
        .iter()
        .find(|s| s.name == stage)
        .map_or(0.0, pick) as u64
}

fn skipped(board: &Board, metric: &str) -> String {
    let mut reasons: Vec<_> = board.skips.iter().filter(|s| s.metric == metric).collect();
    reasons.sort_by(|a, b| b.count.total_cmp(&a.count));
    if reasons.is_empty() {
        return "none".into();
    }
    reasons
        .iter()
        .map(|s| format!("{} {}", s.reason, s.count as u64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The summary's lines. `checkpoint_root` is the trainer's checkpoint_dir; `trained`
/// says whether the trainer ran at all (and if not, why).
pub fn render(
    board: &Board,
    elapsed: Duration,
    checkpoint_root: &Path,
    trainer_missing: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "summary after {}:",
        humantime::format_duration(round(elapsed))
    );
    let _ = writeln!(
        out,
        "  repositories  {} found, {} cloned and published",
        count(board, "crawler", |s| s.produced),
        count(board, "downloader", |s| s.produced),
    );
    let _ = writeln!(
        out,
        "  files         {} kept; skipped: {}",
        count(board, "processor", |s| s.produced),
        skipped(board, "processor_files_skipped_total"),
    );
    let dead: f64 = board.stages.iter().map(|s| s.dead_letters).sum();
    if dead > 0.0 {
        let _ = writeln!(
            out,
            "  dead letters  {} ({})",
            dead as u64,
            skipped(board, "codelupe_dead_letters_total")
        );
    }
    let _ = writeln!(
        out,
        "  batches       {} holding {} tokens, from {} files ({} exact duplicates dropped)",
        count(board, "batcher", |s| s.produced),
        count(board, "batcher", |s| s.progress("tokens")),
        count(board, "batcher", |s| s.consumed),
        count(board, "batcher", |s| s.progress("duplicates")),
    );
    if let Some(why) = trainer_missing {
        let _ = writeln!(out, "  training      none: {why}");
        return out;
    }
    let Some((dir, state)) = latest_checkpoint(checkpoint_root) else {
        let _ = writeln!(
            out,
            "  training      no checkpoint yet in {} (it is written every steps_per_run steps, \
             when input pauses, and at shutdown)",
            checkpoint_root.display()
        );
        return out;
    };
    let first_eval = board.eval_loss.first().map(|p| p.1);
    let last_eval = state.eval_loss.or(board.eval_loss.last().map(|p| p.1));
    let eval = match (first_eval, last_eval) {
        (Some(first), Some(last)) => format!("eval loss {first:.3} → {last:.3}"),
        (None, Some(last)) => format!("eval loss {last:.3}"),
        _ => "no eval batches yet".into(),
    };
    let train = state
        .train_loss
        .map(|l| format!(", last train loss {l:.3}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  training      {} optimiser steps, {} tokens; {eval}{train}",
        state.step, state.tokens_seen
    );
    let _ = writeln!(out, "  checkpoint    {}", dir.display());
    let _ = writeln!(
        out,
        "  try it        ./codelupe generate --checkpoint {} --prompt 'fn main('",
        checkpoint_root.display()
    );
    out
}

fn round(elapsed: Duration) -> Duration {
    Duration::from_secs(elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{Skip, StageCard};

    fn card(name: &str, consumed: f64, produced: f64) -> StageCard {
        StageCard {
            name: name.into(),
            consumed,
            produced,
            ..StageCard::default()
        }
    }

    #[test]
    fn reports_every_stage_the_losses_and_the_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        for (step, eval) in [(10, 6.5), (22, 5.25)] {
            let dir = root.path().join(format!("step-{step:010}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("state.json"),
                format!(r#"{{"step": {step}, "tokens_seen": 1000, "eval_loss": {eval}, "train_loss": 5.0, "offsets": {{}}}}"#),
            )
            .unwrap();
        }
        // A checkpoint being written has no state.json yet and is not the newest.
        std::fs::create_dir_all(root.path().join("step-0000000030")).unwrap();
        let board = Board {
            stages: vec![
                card("crawler", 3.0, 3.0),
                card("downloader", 3.0, 2.0),
                card("processor", 2.0, 75.0),
                StageCard {
                    progress: vec![("tokens".into(), 90_112.0), ("duplicates".into(), 2.0)],
                    ..card("batcher", 75.0, 22.0)
                },
            ],
            skips: vec![Skip {
                stage: "processor".into(),
                metric: "processor_files_skipped_total".into(),
                reason: "vendored".into(),
                count: 4.0,
            }],
            eval_loss: vec![(10, 7.125)],
            ..Board::default()
        };
        let text = render(&board, Duration::from_secs(65), root.path(), None);
        assert!(text.contains("3 found, 2 cloned"), "{text}");
        assert!(text.contains("75 kept; skipped: vendored 4"), "{text}");
        assert!(
            text.contains("22 holding 90112 tokens, from 75 files (2 exact duplicates dropped)"),
            "{text}"
        );
        assert!(text.contains("22 optimiser steps"), "{text}");
        assert!(text.contains("eval loss 7.125 → 5.250"), "{text}");
        assert!(text.contains("step-0000000022"), "{text}");
        assert!(text.contains("generate --checkpoint"), "{text}");
    }

    #[test]
    fn says_why_there_is_no_model() {
        let root = tempfile::tempdir().unwrap();
        let text = render(
            &Board::default(),
            Duration::from_secs(5),
            root.path(),
            Some("codelupe-trainer is not built"),
        );
        assert!(
            text.contains("training      none: codelupe-trainer is not built"),
            "{text}"
        );
        let text = render(&Board::default(), Duration::from_secs(5), root.path(), None);
        assert!(text.contains("no checkpoint yet"), "{text}");
    }
}
