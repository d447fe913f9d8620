//! The model, its optimiser and one training step; batches as tensors.

use std::path::Path;

use anyhow::{bail, Context as _};
use codelupe_runtime::records::TrainingBatch;
use tch::{nn, Device, Kind, Tensor};

use crate::model::{ModelConfig, Transformer};
use crate::optim::{AdamW, OptimizerOptions};

/// A batch's sequences as tensors: tokens [S, L] and the position of each token within
/// its document [S, L] (0 at each document start and at each sequence start).
pub struct Sequences {
    pub tokens: Tensor,
    pub positions: Tensor,
}

/// What a batch must satisfy before it becomes tensors: a record that decodes can
/// still carry ids the embedding has no row for or a length no sequence has, and
/// either would panic inside libtorch on every restart (a crash loop) instead of being
/// dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Token ids run 0..vocab_size (the tokenizer's).
    pub vocab_size: usize,
    /// The longest sequence trained on: attention's memory grows with its square.
    pub max_sequence_length: usize,
}

impl Sequences {
    pub fn from_batch(batch: &TrainingBatch, limits: BatchLimits) -> anyhow::Result<Self> {
        let length = usize::try_from(batch.sequence_length).unwrap_or(0);
        if !(2..=limits.max_sequence_length).contains(&length) {
            bail!(
                "batch {}: sequence length {} is outside 2..={}",
                batch.batch_id,
                batch.sequence_length,
                limits.max_sequence_length
            );
        }
        if batch.token_ids.is_empty() || !batch.token_ids.len().is_multiple_of(length) {
            bail!(
                "batch {}: {} tokens do not make sequences of {length}",
                batch.batch_id,
                batch.token_ids.len()
            );
        }
        if let Some(id) = batch
            .token_ids
            .iter()
            .find(|&&id| usize::try_from(id).map_or(true, |id| id >= limits.vocab_size))
        {
            bail!(
                "batch {}: token id {id} is outside the vocabulary (0..{})",
                batch.batch_id,
                limits.vocab_size
            );
        }
        let mut starts = batch.document_starts.iter().map(|&s| s as usize).peekable();
        let mut positions = Vec::with_capacity(batch.token_ids.len());
        let mut start = 0;
        for i in 0..batch.token_ids.len() {
            while starts.peek().is_some_and(|&s| s <= i) {
                start = starts.next().expect("peeked");
            }
            let sequence_start = i - i % length;
            positions.push((i - start.max(sequence_start)) as i64);
        }
        let rows = (batch.token_ids.len() / length) as i64;
        let tokens: Vec<i64> = batch.token_ids.iter().map(|&t| t as i64).collect();
        Ok(Self {
            tokens: Tensor::from_slice(&tokens).view([rows, length as i64]),
            positions: Tensor::from_slice(&positions).view([rows, length as i64]),
        })
    }

    pub fn to(&self, device: Device) -> Self {
        Self {
            tokens: self.tokens.to_device(device),
            positions: self.positions.to_device(device),
        }
    }

    pub fn tokens(&self) -> i64 {
        self.tokens.numel() as i64
    }
}

pub struct Trainer {
    pub vs: nn::VarStore,
    pub model: Transformer,
    pub optimizer: AdamW,
    /// bf16 autocast (CUDA only).
    pub bf16: bool,
    /// Attention stays within documents (see [`Transformer::forward`]).
    pub mask_documents: bool,
}

impl Trainer {
    pub fn new(
        config: ModelConfig,
        options: OptimizerOptions,
        device: Device,
        seed: i64,
        bf16: bool,
    ) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let model = Transformer::new(&vs.root(), config);
        let named = vs.variables().into_iter().collect();
        let optimizer = AdamW::new(named, options);
        Self {
            vs,
            model,
            optimizer,
            bf16: bf16 && device.is_cuda(),
            mask_documents: false,
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The forward pass: `sequences` moved to the device, their mean loss (under bf16
    /// autocast where enabled).
    pub fn loss(&self, sequences: &Sequences) -> Tensor {
        let on_device = sequences.to(self.device());
        tch::autocast(self.bf16, || {
            self.model
                .loss(&on_device.tokens, &on_device.positions, self.mask_documents)
        })
    }

    /// Forward and backward of one micro-batch, its gradient scaled by 1/`accumulation`;
    /// returns its loss.
    pub fn accumulate(&mut self, sequences: &Sequences, accumulation: u32) -> f64 {
        let loss = self.loss(sequences);
        (&loss / accumulation.max(1) as f64).backward();
        loss.double_value(&[])
    }

    /// One optimiser update from the accumulated gradients; returns (learning rate,
    /// gradient norm).
    pub fn step(&mut self) -> (f64, f64) {
        let result = self.optimizer.step();
        self.optimizer.zero_grad();
        result
    }

    /// Mean loss over `eval`, without gradients.
    pub fn evaluate(&self, eval: &[Sequences]) -> Option<f64> {
        if eval.is_empty() {
            return None;
        }
        let total: f64 = tch::no_grad(|| eval.iter().map(|s| self.loss(s).double_value(&[])).sum());
        Some(total / eval.len() as f64)
    }

    /// Each predicted token's loss on `sequences` ([S, L - 1]), on the CPU, without
    /// gradients.
    pub fn token_losses(&self, sequences: &Sequences) -> Tensor {
        tch::no_grad(|| {
            let on_device = sequences.to(self.device());
            tch::autocast(self.bf16, || {
                self.model.token_losses(
                    &on_device.tokens,
                    &on_device.positions,
                    self.mask_documents,
                )
            })
            .to_device(Device::Cpu)
        })
    }

    /// Weights and optimiser moments into `dir` (which exists).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let cpu = |named: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
            named
                .into_iter()
                .map(|(n, t)| (n, t.to_device(Device::Cpu)))
                .collect()
        };
        let mut weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&cpu(weights), dir.join("model.safetensors"))?;
        Tensor::write_safetensors(
            &cpu(self.optimizer.state()),
            dir.join("optimizer.safetensors"),
        )?;
        Ok(())
    }

    /// Restores what [`Self::save`] wrote, and the optimiser's step count.
    pub fn load(&mut self, dir: &Path, step: u64) -> anyhow::Result<()> {
        // In-place copies into parameters that require gradients: outside autograd.
        tch::no_grad(|| self.vs.read_safetensors(dir.join("model.safetensors")))
            .with_context(|| format!("loading weights from {}", dir.display()))?;
        let state = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .with_context(|| format!("loading optimiser state from {}", dir.display()))?;
        self.optimizer.load_state(&state, step)
    }

    /// Every weight and moment, named, on the CPU (for comparisons).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .chain(self.optimizer.state())
            .map(|(n, t)| (n, t.to_device(Device::Cpu).to_kind(Kind::Float)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        vocab_size: 8,
        max_sequence_length: 16,
    };

    fn batch(sequence_length: i32, token_ids: Vec<i32>) -> TrainingBatch {
        TrainingBatch {
            batch_id: "b".into(),
            split: "train".into(),
            sequence_length,
            document_starts: vec![0],
            content_hashes: vec!["a".into()],
            languages: vec!["Rust".into()],
            token_ids,
            tokenizer_fingerprint: "f".into(),
        }
    }

    #[test]
    fn ids_outside_the_vocabulary_and_impossible_lengths_are_refused() {
        let refused = |b: TrainingBatch| match Sequences::from_batch(&b, LIMITS) {
            Ok(_) => panic!("batch accepted: {b:?}"),
            Err(e) => e.to_string(),
        };
        assert!(refused(batch(4, vec![0, 1, 2, 8])).contains("token id 8"));
        assert!(refused(batch(4, vec![0, 1, 2, 1_000_000])).contains("token id 1000000"));
        assert!(refused(batch(4, vec![0, -1, 2, 3])).contains("token id -1"));
        assert!(refused(batch(-1, vec![])).contains("sequence length -1"));
        assert!(refused(batch(4, vec![])).contains("0 tokens"));
        assert!(refused(batch(32, vec![0; 32])).contains("sequence length 32"));
        assert!(refused(batch(4, vec![0; 6])).contains("6 tokens"));
        assert!(Sequences::from_batch(&batch(4, vec![7; 8]), LIMITS).is_ok());
    }

    #[test]
    fn positions_restart_at_documents_and_sequences() {
        let batch = TrainingBatch {
            batch_id: "b".into(),
            split: "train".into(),
            sequence_length: 4,
            token_ids: (0..8).collect(),
            document_starts: vec![0, 3, 6],
            content_hashes: vec!["a".into(), "b".into(), "c".into()],
            languages: vec!["Rust".into(); 3],
            tokenizer_fingerprint: "f".into(),
        };
        let s = Sequences::from_batch(&batch, LIMITS).unwrap();
        assert_eq!(s.tokens.size(), [2, 4]);
        let positions: Vec<i64> = s.positions.view([-1]).try_into().unwrap();
        // Document b runs 3..6 across the sequence boundary at 4.
        assert_eq!(positions, [0, 1, 2, 0, 0, 1, 0, 1]);
    }
}
