//! `codelupe-trainer eval` on a trained tiny checkpoint and on HumanEval's canonical
//! solutions, through the binary a user runs: the report lands in the checkpoint's
//! folder, every completion was run and judged, and completions stop where a
//! top-level statement would begin.

mod corpus;

use std::path::Path;
use std::process::Command;

use codelupe_eval::Benchmark;

fn eval(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_codelupe-trainer"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "eval failed: {stderr}");
    eprintln!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_checkpoint_is_scored_by_running_its_completions() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 40);
    let checkpoint = corpus::trained_checkpoint(&dir.path().join("checkpoints"), &corpus);
    eval(&[
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--limit",
        "8",
        "--max-tokens",
        "48",
        "--device",
        "cpu",
    ]);
    let report = report(&checkpoint.join("eval/humaneval.json"));
    assert_eq!(report["problems"], 8);
    assert_eq!(report["samples_per_problem"], 1);
    let pass_at_1 = report["pass_at_k"]["1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&pass_at_1), "{report}");
    assert_eq!(report["generated_by"]["step"], 200);
    let stops = Benchmark::HumanEval.stop_sequences();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    for result in results {
        let sample = &result["samples"][0];
        let completion = sample["completion"].as_str().unwrap();
        assert!(
            !stops.iter().any(|s| completion.contains(s)),
            "{completion:?}"
        );
        assert!(["passed", "failed", "timed_out"].contains(&sample["verdict"].as_str().unwrap()));
    }
    eprintln!("tiny checkpoint: pass@1 {pass_at_1} on 8 problems");
}

#[test]
fn a_completions_file_is_scored_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let problems = Benchmark::HumanEval
        .load(&Benchmark::HumanEval.setup_file())
        .unwrap();
    let samples = dir.path().join("samples.jsonl");
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            serde_json::json!({"task_id": p.task_id, "completion": p.canonical_solution})
                .to_string()
        })
        .collect();
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let out = dir.path().join("canonical.json");
    eval(&[
        "--completions",
        samples.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let report = report(&out);
    assert_eq!(report["problems"], 164);
    assert_eq!(report["pass_at_k"]["1"], 1.0);
    assert!(report["generated_by"].is_null());
}
