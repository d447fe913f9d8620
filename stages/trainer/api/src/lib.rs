//! What other crates know of the trainer: it runs as its own binary (the only one that
//! links libtorch), exports the original system's trainer metrics, and reports what it
//! made in the run summary.

pub mod checkpoints;
pub mod hf;
pub mod metrics;
pub mod model;

use codelupe_runtime::descriptor::{Bound, Observed, Runs, StageDescriptor};

pub const STAGE: &str = "trainer";
/// The trainer's executable, built from `stages/trainer`.
pub const BINARY: &str = "codelupe-trainer";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::External {
        binary: BINARY,
        contract_metrics: |r| metrics::TrainerMetrics::register(r).map(drop),
    },
    bound_by: Bound::Cpu,
    // It reports through its own /status (steps, losses, checkpoints).
    progress: &[],
    flow: None,
    // The tiny model on a CPU checkpoints and evaluates within a minute or two of its
    // first batch, with a short warm-up so the loss visibly falls over the few hundred
    // steps a working directory gives; every run reads the embedded broker's topic
    // from its start (that broker starts empty each time). Completions for HumanEval
    // are cut at 128 tokens so a checkpoint's score comes within the run.
    offline_options: "{tokenizer: .codelupe/tokenizer.json, checkpoint_dir: .codelupe/checkpoints, \
        resume_offsets: false, steps_per_run: 10, idle_checkpoint_ms: 10000, eval_batches: 2, \
        pass_at_k: {max_tokens: 128}, \
        optimizer: {learning_rate: 0.001, min_learning_rate: 0.0001, warmup_steps: 5, decay_steps: 2000}}",
    prepare_offline: None,
    summarize,
};

/// Steps, tokens and losses of the newest checkpoint, where it is and how to try it.
fn summarize(seen: &Observed<'_>) -> Vec<String> {
    if let Some(why) = seen.not_running {
        return vec![format!("training      none: {why}")];
    }
    let root = checkpoints::root(seen.options);
    let Some((dir, state)) = checkpoints::latest(&root) else {
        return vec![format!(
            "training      no checkpoint yet in {} (it is written every steps_per_run steps, \
             when input pauses, and at shutdown)",
            root.display()
        )];
    };
    let first_eval = seen.eval_losses.first().map(|p| p.1);
    let last_eval = state.eval_loss.or(seen.eval_losses.last().map(|p| p.1));
    let eval = match (first_eval, last_eval) {
        (Some(first), Some(last)) => format!("eval loss {first:.3} → {last:.3}"),
        (None, Some(last)) => format!("eval loss {last:.3}"),
        _ => "no eval batches yet".into(),
    };
    let train = state
        .train_loss
        .map(|l| format!(", last train loss {l:.3}"))
        .unwrap_or_default();
    let mut lines = vec![
        format!(
            "training      {} optimiser steps, {} tokens; {eval}{train}",
            state.step, state.tokens_seen
        ),
        format!("checkpoint    {}", dir.display()),
    ];
    if !state.eval_loss_by_language.is_empty() {
        let losses: Vec<String> = state
            .eval_loss_by_language
            .iter()
            .map(|(language, loss)| format!("{language} {loss:.3}"))
            .collect();
        lines.push(format!("eval by lang  {}", losses.join(", ")));
    }
    if let Some((scored, score)) = checkpoints::latest_score(&root, "humaneval") {
        lines.push(format!(
            "by execution  HumanEval {} on {} problems ({})",
            score.describe(),
            score.problems,
            scored.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    lines.extend([
        format!(
            "try it        ./codelupe generate --checkpoint {} --prompt 'fn main('",
            root.display()
        ),
        format!(
            "score it      ./codelupe eval --checkpoint {} (HumanEval pass@k by execution)",
            root.display()
        ),
    ]);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_newest_complete_checkpoint_and_the_losses_seen() {
        let root = tempfile::tempdir().unwrap();
        for (step, eval) in [(10, 6.5), (22, 5.25)] {
            let dir = root.path().join(format!("step-{step:010}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("state.json"),
                format!(r#"{{"step": {step}, "tokens_seen": 1000, "eval_loss": {eval}, "train_loss": 5.0, "offsets": {{}}, "eval_loss_by_language": {{"Rust": {eval}, "Go": 7.0}}}}"#),
            )
            .unwrap();
        }
        std::fs::create_dir_all(root.path().join("step-0000000010/eval")).unwrap();
        std::fs::write(
            root.path().join("step-0000000010/eval/humaneval.json"),
            r#"{"problems": 164, "pass_at_k": {"1": 0.0061}}"#,
        )
        .unwrap();
        // A checkpoint being written has no state.json yet and is not the newest.
        std::fs::create_dir_all(root.path().join("step-0000000030")).unwrap();
        let options: serde_yaml::Value =
            serde_yaml::from_str(&format!("{{checkpoint_dir: {}}}", root.path().display()))
                .unwrap();
        let text = summarize(&Observed {
            options: Some(&options),
            eval_losses: &[(10, 7.125)],
            ..Observed::default()
        })
        .join("\n");
        assert!(text.contains("22 optimiser steps"), "{text}");
        assert!(text.contains("eval loss 7.125 → 5.250"), "{text}");
        assert!(
            text.contains("eval by lang  Go 7.000, Rust 5.250"),
            "{text}"
        );
        assert!(text.contains("step-0000000022"), "{text}");
        assert!(text.contains("generate --checkpoint"), "{text}");
        assert!(
            text.contains("HumanEval pass@1 0.006 on 164 problems (step-0000000010)"),
            "{text}"
        );
    }

    #[test]
    fn says_why_there_is_no_model() {
        let root = tempfile::tempdir().unwrap();
        let text = summarize(&Observed {
            not_running: Some("codelupe-trainer is not built"),
            ..Observed::default()
        });
        assert_eq!(text, ["training      none: codelupe-trainer is not built"]);
        let options: serde_yaml::Value =
            serde_yaml::from_str(&format!("{{checkpoint_dir: {}}}", root.path().display()))
                .unwrap();
        let text = summarize(&Observed {
            options: Some(&options),
            ..Observed::default()
        });
        assert!(text[0].contains("no checkpoint yet"), "{text:?}");
    }
}
