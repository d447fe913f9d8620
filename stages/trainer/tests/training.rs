//! The trainer on the CPU with the tiny preset, on batches made from real code: it
//! learns, its checkpoints restore it exactly, and `generate` samples from them.

mod corpus;

use codelupe_trainer::checkpoint;
use codelupe_trainer::model::ModelConfig;
use codelupe_trainer::optim::OptimizerOptions;
use codelupe_trainer::train::Trainer;
use tch::Device;

fn optimizer() -> OptimizerOptions {
    OptimizerOptions {
        learning_rate: 3e-3,
        min_learning_rate: 3e-4,
        warmup_steps: 10,
        decay_steps: 400,
        ..OptimizerOptions::default()
    }
}

fn trainer(corpus: &corpus::Corpus, seed: i64) -> Trainer {
    let config = ModelConfig::preset("tiny", corpus.tokenizer.vocab_size() as i64).unwrap();
    Trainer::new(config, optimizer(), Device::Cpu, seed, false)
}

#[test]
fn eval_loss_falls_well_below_its_step_zero_value_and_generate_samples_text() {
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 200);
    let (train, eval) = (
        corpus::sequences(&corpus.train),
        corpus::sequences(&corpus.eval[..4]),
    );
    let mut trainer = trainer(&corpus, 0);
    let before = trainer.evaluate(&eval).unwrap();
    for step in 0..300 {
        trainer.accumulate(&train[step % train.len()], 1);
        trainer.step();
    }
    let after = trainer.evaluate(&eval).unwrap();
    eprintln!("eval loss {before:.3} at step 0, {after:.3} after 300 steps");
    assert!(
        after < before * 0.75,
        "eval loss {before:.3} → {after:.3}: not clearly lower"
    );

    let root = dir.path().join("checkpoints");
    std::fs::create_dir_all(&root).unwrap();
    checkpoint::write(
        &root,
        &corpus::state(&trainer, &corpus),
        &trainer,
        &corpus.tokenizer_path,
        2,
    )
    .unwrap();
    let generate = |args: &[&str]| {
        codelupe_testkit::stdout_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_codelupe-trainer"))
                .args(["generate", "--device", "cpu", "--checkpoint"])
                .arg(&root)
                .args(args),
        )
    };
    let completion = generate(&["--prompt", "fn parse(", "--max-tokens", "40", "--seed", "3"]);
    assert!(completion.trim().len() > 5, "completion: {completion:?}");
    let filled = generate(&[
        "--prefix",
        "fn main() {\n",
        "--suffix",
        "\n}\n",
        "--max-tokens",
        "20",
    ]);
    assert!(
        filled.starts_with("fn main() {\n") && filled.trim_end().ends_with('}'),
        "fill: {filled:?}"
    );
}

#[test]
fn a_resumed_trainer_equals_the_saved_one_and_takes_the_same_next_step() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus::build(dir.path(), 12);
    let train = corpus::sequences(&corpus.train);
    let mut uninterrupted = trainer(&corpus, 0);
    for s in &train[..10] {
        uninterrupted.accumulate(s, 1);
        uninterrupted.step();
    }
    let root = dir.path().join("checkpoints");
    std::fs::create_dir_all(&root).unwrap();
    checkpoint::write(
        &root,
        &corpus::state(&uninterrupted, &corpus),
        &uninterrupted,
        &corpus.tokenizer_path,
        2,
    )
    .unwrap();

    // A newer-named folder without state.json (a partial copy, say) is not a
    // checkpoint: it neither stops the trainer nor hides the real one.
    std::fs::create_dir_all(root.join("step-9999999999")).unwrap();

    // A fresh process would start from other random weights; loading replaces them.
    let mut resumed = trainer(&corpus, 99);
    let (dir_, saved) = checkpoint::latest(&root).unwrap().unwrap();
    resumed.load(&dir_, saved.step).unwrap();
    assert_eq!(resumed.optimizer.step, 10);
    let same = |a: &Trainer, b: &Trainer| {
        let (a, b) = (a.snapshot(), b.snapshot());
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{name} differs");
        }
        assert!(
            a.iter().any(|(n, _)| n.starts_with("m.")),
            "optimiser moments compared"
        );
    };
    same(&uninterrupted, &resumed);

    for t in [&mut uninterrupted, &mut resumed] {
        t.accumulate(&train[10], 1);
        t.step();
    }
    same(&uninterrupted, &resumed);
}
