//! Training batches made from real code (crate sources Cargo downloaded for this build)
//! with the batcher's own tokenizer, documents and packer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use codelupe_batcher::document::{self, DocumentOptions};
use codelupe_batcher::pack::Packer;
use codelupe_runtime::records::{CodeFile, TrainingBatch};
use codelupe_tokenizer::CodeTokenizer;
use codelupe_trainer::checkpoint::{self, CheckpointState};
use codelupe_trainer::model::ModelConfig;
use codelupe_trainer::optim::OptimizerOptions;
use codelupe_trainer::train::{BatchLimits, Sequences, Trainer};
use tch::Device;

pub const SEQUENCE_LENGTH: usize = 64;
pub const SEQUENCES_PER_BATCH: usize = 8;

pub struct Corpus {
    pub tokenizer_path: PathBuf,
    pub tokenizer: CodeTokenizer,
    pub train: Vec<TrainingBatch>,
    pub eval: Vec<TrainingBatch>,
}

pub fn files() -> Vec<CodeFile> {
    let crates = codelupe_testkit::registry_crates(&["regex-syntax-0", "serde_json-1"]);
    let files = codelupe_testkit::code_files(&crates, codelupe_testkit::is_rust);
    assert!(files.len() > 50, "{} files of real code", files.len());
    files
}

/// Rust files, then zstd's C sources (vendored by zstd-sys): two languages.
pub fn mixed_files() -> Vec<CodeFile> {
    let zstd = codelupe_testkit::registry_crates(&["zstd-sys-2"]);
    let c = codelupe_testkit::code_files(&zstd, |p| p.extension().is_some_and(|e| e == "c"));
    assert!(c.len() > 20, "{} C files", c.len());
    files().into_iter().chain(c).collect()
}

/// A 512-token tokenizer fitted on the files, and up to `max_train` train batches plus
/// the eval batches (a tenth of the files) they make.
pub fn build(dir: &Path, max_train: usize) -> Corpus {
    build_from(dir, files(), max_train)
}

/// As [`build`], from `files`.
pub fn build_from(dir: &Path, files: Vec<CodeFile>, max_train: usize) -> Corpus {
    let tokenizer = CodeTokenizer::train(files.iter().map(|f| f.content.as_str()), 512).unwrap();
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer.save(&tokenizer_path).unwrap();
    let options = DocumentOptions {
        eval_share: 0.1,
        ..DocumentOptions::default()
    };
    let mut packers = [
        Packer::new(SEQUENCE_LENGTH, SEQUENCES_PER_BATCH, tokenizer.end_of_text),
        Packer::new(SEQUENCE_LENGTH, SEQUENCES_PER_BATCH, tokenizer.end_of_text),
    ];
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for file in &files {
        let eval_file = document::is_eval(&file.content_hash, options.eval_share);
        let tokens = document::tokens(&tokenizer, file, &options).unwrap();
        let tag = (file.content_hash.clone(), file.language.clone());
        for packed in packers[eval_file as usize].push(&tokens, tag) {
            let batch = TrainingBatch {
                batch_id: packed.batch_id,
                split: if eval_file { "eval" } else { "train" }.into(),
                sequence_length: SEQUENCE_LENGTH as i32,
                token_ids: packed.token_ids,
                document_starts: packed.document_starts,
                languages: packed.members.iter().map(|((_, l), _)| l.clone()).collect(),
                content_hashes: packed.members.into_iter().map(|((h, _), _)| h).collect(),
                tokenizer_fingerprint: tokenizer.fingerprint.clone(),
            };
            if eval_file {
                eval.push(batch);
            } else if train.len() < max_train {
                train.push(batch);
            }
        }
    }
    assert!(eval.len() >= 4, "{} eval batches", eval.len());
    Corpus {
        tokenizer_path,
        tokenizer,
        train,
        eval,
    }
}

/// The batches as the trainer's tensors.
pub fn sequences(batches: &[TrainingBatch]) -> Vec<Sequences> {
    let limits = BatchLimits {
        vocab_size: usize::MAX,
        max_sequence_length: usize::MAX,
    };
    batches
        .iter()
        .map(|b| Sequences::from_batch(b, limits).unwrap())
        .collect()
}

/// What a checkpoint of `trainer` on this corpus records.
pub fn state(trainer: &Trainer, corpus: &Corpus) -> CheckpointState {
    CheckpointState {
        step: trainer.optimizer.step,
        tokens_seen: 0,
        offsets: Default::default(),
        learning_rate: 0.0,
        train_loss: None,
        eval_loss: None,
        eval_loss_by_language: Default::default(),
        preset: "tiny".into(),
        model: trainer.model.config,
        tokenizer_fingerprint: corpus.tokenizer.fingerprint.clone(),
        context: Some(SEQUENCE_LENGTH as i64),
        batches: Vec::new(),
        written_at_ms: 0,
    }
}

/// A tiny model trained 200 steps on real code, checkpointed under `root`.
pub fn trained_checkpoint(root: &Path, corpus: &Corpus) -> PathBuf {
    let mut config = ModelConfig::preset("tiny", corpus.tokenizer.vocab_size() as i64).unwrap();
    config.rope_theta = 50_000.0;
    config.norm_eps = 1e-5;
    let options = OptimizerOptions {
        learning_rate: 3e-3,
        warmup_steps: 5,
        ..OptimizerOptions::default()
    };
    let mut trainer = Trainer::new(config, options, Device::Cpu, 11, false);
    let train = sequences(&corpus.train);
    for step in 0..200 {
        trainer.accumulate(&train[step % train.len()], 1);
        trainer.step();
    }
    let state = state(&trainer, corpus);
    std::fs::create_dir_all(root).unwrap();
    checkpoint::write(root, &state, &trainer, &corpus.tokenizer_path, 1).unwrap()
}
