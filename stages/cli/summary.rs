//! What `codelupe run` prints when it ends: each stage's own lines (what went through
//! it; the trainer: what it made, where the model is and how to try it) and the dead
//! letters.

use std::fmt::Write as _;
use std::time::Duration;

use codelupe_runtime::descriptor::{counts_line, Observed, StageDescriptor};

use crate::live::Board;

/// One stage of the run, for its part of the summary.
pub struct Part<'a> {
    pub stage: &'static StageDescriptor,
    /// The options it ran with.
    pub options: Option<&'a serde_yaml::Value>,
    /// Why it did not run, when it did not.
    pub not_running: Option<&'a str>,
}

/// The stage's skip reasons seen on the board: its `*_skipped_total` series.
fn skipped(board: &Board, stage: &str) -> Vec<(String, f64)> {
    board
        .skips
        .iter()
        .filter(|s| s.stage == stage && s.metric.ends_with("_skipped_total"))
        .map(|s| (s.reason.clone(), s.count))
        .collect()
}

/// The summary's lines, in pipeline order.
pub fn render(board: &Board, elapsed: Duration, parts: &[Part<'_>]) -> String {
    let mut out = String::new();
    let elapsed = Duration::from_secs(elapsed.as_secs());
    let _ = writeln!(
        out,
        "summary after {}:",
        humantime::format_duration(elapsed)
    );
    let no_card = Default::default();
    for part in parts {
        let name = part.stage.name;
        let card = board
            .stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or(&no_card);
        let skipped = skipped(board, name);
        let seen = Observed {
            consumed: card.consumed,
            produced: card.produced,
            progress: &card.progress,
            skipped: &skipped,
            options: part.options,
            not_running: part.not_running,
            eval_losses: &board.eval_loss,
        };
        for line in (part.stage.summarize)(&seen) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let dead: f64 = board.stages.iter().map(|s| s.dead_letters).sum();
    if dead > 0.0 {
        let letters: Vec<(String, f64)> = board
            .skips
            .iter()
            .filter(|s| s.metric == codelupe_runtime::consume::DEAD_LETTERS)
            .map(|s| (s.reason.clone(), s.count))
            .collect();
        let _ = writeln!(
            out,
            "  dead letters  {} ({})",
            dead as u64,
            counts_line(&letters)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{Skip, StageCard};
    use crate::stages::STAGES;

    fn card(name: &str, consumed: f64, produced: f64) -> StageCard {
        StageCard {
            name: name.into(),
            consumed,
            produced,
            ..StageCard::default()
        }
    }

    fn skip(stage: &str, metric: &str, reason: &str, count: f64) -> Skip {
        Skip {
            stage: stage.into(),
            metric: metric.into(),
            reason: reason.into(),
            count,
        }
    }

    #[test]
    fn every_stage_reports_its_own_lines_and_dead_letters_come_last() {
        let board = Board {
            stages: vec![
                card("crawler", 3.0, 3.0),
                card("downloader", 3.0, 2.0),
                StageCard {
                    dead_letters: 1.0,
                    ..card("processor", 2.0, 75.0)
                },
                StageCard {
                    progress: vec![("tokens".into(), 90_112.0), ("duplicates".into(), 2.0)],
                    ..card("batcher", 75.0, 22.0)
                },
            ],
            skips: vec![
                skip(
                    "processor",
                    "processor_files_skipped_total",
                    "vendored",
                    4.0,
                ),
                skip("processor", "codelupe_dead_letters_total", "tree_bomb", 1.0),
            ],
            ..Board::default()
        };
        let parts: Vec<Part> = STAGES
            .iter()
            .map(|stage| Part {
                stage,
                options: None,
                not_running: (stage.name == "trainer").then_some("codelupe-trainer is not built"),
            })
            .collect();
        let text = render(&board, Duration::from_secs(65), &parts);
        assert!(text.starts_with("summary after 1m 5s:"), "{text}");
        assert!(text.contains("repositories  3 found"), "{text}");
        assert!(text.contains("2 cloned"), "{text}");
        assert!(text.contains("75 kept; skipped: vendored 4"), "{text}");
        assert!(
            text.contains("22 holding 90112 tokens, from 75 files (2 exact duplicates dropped)"),
            "{text}"
        );
        assert!(
            text.contains("training      none: codelupe-trainer is not built"),
            "{text}"
        );
        assert!(
            text.trim_end().ends_with("dead letters  1 (tree_bomb 1)"),
            "{text}"
        );
    }
}
