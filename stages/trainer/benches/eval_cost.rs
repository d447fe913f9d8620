//! What scoring checkpoints by execution costs training: tokens per second of full
//! optimiser steps with no evaluation running, against the same steps while the
//! trainer's background evaluator (a niced `codelupe-trainer eval` child, as the stage
//! runs it) scores a checkpoint on all of HumanEval, rounds alternating.
//!
//!     cargo bench -p codelupe-trainer --bench eval_cost     # ROUNDS, STEPS, SEQ, ROWS, NICENESS

use std::time::Instant;

use codelupe_trainer::model::ModelConfig;
use codelupe_trainer::optim::OptimizerOptions;
use codelupe_trainer::pass_at_k::{Evaluator, PassAtKOptions};
use codelupe_trainer::train::Trainer;
use tch::Device;

#[path = "../tests/corpus/mod.rs"]
mod corpus;

mod common;

use common::{env, random_batch};

fn main() {
    let (rounds, steps, seq, rows): (usize, usize, i64, i64) = (
        env("ROUNDS", 4),
        env("STEPS", 30),
        env("SEQ", 256),
        env("ROWS", 8),
    );
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 40);
    let checkpoint = corpus::trained_checkpoint(&dir.path().join("checkpoints"), &corpus);
    let gauge =
        prometheus::GaugeVec::new(prometheus::Opts::new("g", "g"), &["benchmark", "k"]).unwrap();
    let options = PassAtKOptions {
        niceness: env("NICENESS", PassAtKOptions::default().niceness),
        ..PassAtKOptions::default()
    };
    let mut evaluator = Evaluator::new(
        &options,
        env!("CARGO_BIN_EXE_codelupe-trainer").into(),
        "cpu".into(),
        gauge,
    )
    .unwrap()
    .expect("HumanEval is where setup/benchmarks.sh puts it");

    let vocab = 32_768;
    let config = ModelConfig::preset("tiny", vocab).unwrap();
    let mut trainer = Trainer::new(config, OptimizerOptions::default(), Device::Cpu, 0, false);
    let batch = random_batch(vocab, rows, seq);
    let tokens_per_second = |trainer: &mut Trainer| {
        let started = Instant::now();
        for _ in 0..steps {
            trainer.accumulate(&batch, 1);
            trainer.step();
        }
        (steps as i64 * rows * seq) as f64 / started.elapsed().as_secs_f64()
    };
    tokens_per_second(&mut trainer); // warm-up
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    let mut scored = 0;
    for round in 0..rounds {
        alone.push(tokens_per_second(&mut trainer));
        if !evaluator.busy() {
            evaluator.offer(&checkpoint);
        }
        beside.push(tokens_per_second(&mut trainer));
        let finished = evaluator.poll();
        scored += usize::from(finished.is_some());
        println!(
            "round {round}: {:.0} tokens/s alone, {:.0} beside an evaluation{}",
            alone[round],
            beside[round],
            finished
                .map(|s| format!(" (finished: {})", s.headline))
                .unwrap_or_default()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "training beside a background HumanEval evaluation at niceness {}: {:.3}x the tokens/s of training alone \
         ({:.0} vs {:.0}, {rounds} alternating rounds of {steps} steps of {rows}x{seq}, {scored} evaluations finished)",
        options.niceness,
        mean(&beside) / mean(&alone),
        mean(&beside),
        mean(&alone)
    );
}
