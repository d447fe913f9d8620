//! The fixed eval set, on disk beside the checkpoints, and the losses measured on it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use codelupe_runtime::records::TrainingBatch;
use tch::{Kind, Tensor};

use crate::checkpoint::{sync_dir, sync_file};
use crate::train::{Sequences, Trainer};

/// What one evaluation measured.
pub struct EvalLosses {
    /// The mean of the eval batches' mean losses; None without eval batches.
    pub overall: Option<f64>,
    pub by_language: BTreeMap<String, f64>,
}

/// The fixed eval set, kept on disk so every evaluation, across runs and restarts,
/// uses the same sequences: the first `base` eval-split batches the trainer reads,
/// then (up to `max`) each later one that holds a language the set has no token of,
/// so every language seen has a loss of its own. Once kept, a batch stays.
#[derive(Default)]
pub struct EvalSet {
    pub batch_ids: Vec<String>,
    pub sequences: Vec<Sequences>,
    /// Per batch, each token's language as an index into `languages` ([S, L]); None
    /// for a batch whose record named no languages.
    pub token_languages: Vec<Option<Tensor>>,
    /// The languages the set holds, in the order they came.
    pub languages: Vec<String>,
}

/// Each token's language in `batch`: the language of the document it belongs to.
/// None when the record does not name one language per document.
fn languages_of_tokens(batch: &TrainingBatch) -> Option<Vec<&str>> {
    if batch.languages.is_empty() || batch.languages.len() != batch.document_starts.len() {
        return None;
    }
    let mut document = 0;
    let starts = &batch.document_starts;
    Some(
        (0..batch.token_ids.len())
            .map(|i| {
                while document + 1 < starts.len() && starts[document + 1] as usize <= i {
                    document += 1;
                }
                batch.languages[document].as_str()
            })
            .collect(),
    )
}

impl EvalSet {
    const TENSORS: &'static str = "eval-set.safetensors";
    const IDS: &'static str = "eval-set.json";
    const LANGUAGES: &'static str = "eval-set-languages.json";

    /// Keeps `batch` (as `sequences`) when the rule above says so; whether it did.
    pub fn offer(
        &mut self,
        batch: &TrainingBatch,
        sequences: Sequences,
        base: usize,
        max: usize,
    ) -> bool {
        if self.batch_ids.contains(&batch.batch_id) || self.batch_ids.len() >= max {
            return false;
        }
        let tokens = languages_of_tokens(batch);
        let new_language = tokens
            .as_ref()
            .is_some_and(|t| t.iter().any(|l| !self.languages.iter().any(|k| k == l)));
        if self.batch_ids.len() >= base && !new_language {
            return false;
        }
        let indices = tokens.map(|tokens| {
            let ids: Vec<i64> = tokens
                .into_iter()
                .map(|language| {
                    let index = self.languages.iter().position(|k| k == language);
                    index.unwrap_or_else(|| {
                        self.languages.push(language.to_string());
                        self.languages.len() - 1
                    }) as i64
                })
                .collect();
            Tensor::from_slice(&ids).view_as(&sequences.tokens)
        });
        self.batch_ids.push(batch.batch_id.clone());
        self.sequences.push(sequences);
        self.token_languages.push(indices);
        true
    }

    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let ids = root.join(Self::IDS);
        if !ids.exists() {
            return Ok(Self::default());
        }
        let batch_ids: Vec<String> = serde_json::from_slice(&std::fs::read(&ids)?)
            .with_context(|| format!("parsing {}", ids.display()))?;
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(root.join(Self::TENSORS))
            .context("reading the eval set")?
            .into_iter()
            .collect();
        let sequences = (0..batch_ids.len())
            .map(|i| {
                let get = |what: &str| {
                    tensors
                        .get(&format!("{what}.{i}"))
                        .map(|t| t.shallow_clone())
                        .ok_or_else(|| anyhow::anyhow!("eval set lacks {what}.{i}"))
                };
                Ok(Sequences {
                    tokens: get("tokens")?,
                    positions: get("positions")?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // Eval sets written before languages were recorded have none.
        let names = root.join(Self::LANGUAGES);
        let languages: Vec<String> = if names.exists() {
            serde_json::from_slice(&std::fs::read(&names)?)
                .with_context(|| format!("parsing {}", names.display()))?
        } else {
            Vec::new()
        };
        let token_languages = (0..batch_ids.len())
            .map(|i| {
                tensors
                    .get(&format!("languages.{i}"))
                    .map(|t| t.shallow_clone())
            })
            .collect();
        Ok(Self {
            batch_ids,
            sequences,
            token_languages,
            languages,
        })
    }

    /// Tensors first, then the id list that makes them visible, each atomically.
    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(root)?;
        let mut tensors = Vec::new();
        for (i, s) in self.sequences.iter().enumerate() {
            tensors.push((format!("tokens.{i}"), s.tokens.shallow_clone()));
            tensors.push((format!("positions.{i}"), s.positions.shallow_clone()));
            if let Some(languages) = &self.token_languages[i] {
                tensors.push((format!("languages.{i}"), languages.shallow_clone()));
            }
        }
        let temporary = root.join(format!(".tmp-{}", Self::TENSORS));
        Tensor::write_safetensors(&tensors, &temporary)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::TENSORS))?;
        let temporary = root.join(format!(".tmp-{}", Self::LANGUAGES));
        std::fs::write(&temporary, serde_json::to_vec(&self.languages)?)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::LANGUAGES))?;
        let temporary = root.join(format!(".tmp-{}", Self::IDS));
        std::fs::write(&temporary, serde_json::to_vec(&self.batch_ids)?)?;
        sync_file(&temporary)?;
        std::fs::rename(&temporary, root.join(Self::IDS))?;
        sync_dir(root)
    }

    /// One pass over the set: the mean of its batches' losses (as
    /// [`Trainer::evaluate`]) and the loss on each language's tokens (the mean over every
    /// token of it, wherever it lies; batches whose record named no languages count
    /// only in the first).
    pub fn losses(&self, trainer: &Trainer) -> EvalLosses {
        let languages = self.languages.len() as i64;
        let mut sums = vec![0.0f64; self.languages.len()];
        let mut counts = vec![0i64; self.languages.len()];
        let mut batch_means = 0.0;
        for (sequences, token_languages) in self.sequences.iter().zip(&self.token_languages) {
            let losses = trainer.token_losses(sequences);
            batch_means += losses.mean(Kind::Float).double_value(&[]);
            let Some(token_languages) = token_languages else {
                continue;
            };
            // A token's loss is its language's: the language of the predicted token.
            let t = token_languages.size()[1];
            let predicted = token_languages.narrow(1, 1, t - 1).reshape([-1]);
            let by_language =
                predicted.bincount(Some(losses.reshape([-1]).to_kind(Kind::Double)), languages);
            let tokens = predicted.bincount::<Tensor>(None, languages);
            for i in 0..self.languages.len() {
                sums[i] += by_language.double_value(&[i as i64]);
                counts[i] += tokens.int64_value(&[i as i64]);
            }
        }
        EvalLosses {
            overall: (!self.sequences.is_empty())
                .then(|| batch_means / self.sequences.len() as f64),
            by_language: self
                .languages
                .iter()
                .zip(sums.into_iter().zip(counts))
                .filter(|(_, (_, count))| *count > 0)
                .map(|(name, (sum, count))| (name.clone(), sum / count as f64))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::optim::OptimizerOptions;
    use crate::train::BatchLimits;
    use tch::Device;

    /// A batch of one 8-token sequence: documents starting at `starts`, in `languages`.
    fn batch(id: &str, starts: Vec<i32>, languages: &[&str]) -> (TrainingBatch, Sequences) {
        let batch = TrainingBatch {
            batch_id: id.into(),
            split: "eval".into(),
            sequence_length: 8,
            token_ids: (0..8).collect(),
            content_hashes: languages.iter().map(|l| format!("{l}-file")).collect(),
            languages: languages.iter().map(|l| l.to_string()).collect(),
            document_starts: starts,
            tokenizer_fingerprint: "f".into(),
        };
        let limits = BatchLimits {
            vocab_size: 8,
            max_sequence_length: 8,
        };
        let sequences = Sequences::from_batch(&batch, limits).unwrap();
        (batch, sequences)
    }

    #[test]
    fn the_eval_set_keeps_a_batch_for_every_language_and_then_stays_fixed() {
        let mut set = EvalSet::default();
        let mut offer = |id: &str, starts: Vec<i32>, languages: &[&str]| {
            let (b, s) = batch(id, starts, languages);
            set.offer(&b, s, 1, 3)
        };
        assert!(offer("rust", vec![0], &["Rust"]));
        assert!(!offer("rust", vec![0], &["Rust"]), "a batch is kept once");
        assert!(
            !offer("more-rust", vec![0], &["Rust"]),
            "past base, only new languages"
        );
        assert!(offer("mixed", vec![0, 5], &["Rust", "Python"]));
        // A batch whose record names no languages adds none.
        assert!(!offer("unnamed", vec![0], &[]));
        assert!(offer("go", vec![0], &["Go"]));
        assert!(!offer("c", vec![0], &["C"]), "max reached");
        assert_eq!(set.languages, ["Rust", "Python", "Go"]);
        let mixed: Vec<i64> =
            Vec::try_from(set.token_languages[1].as_ref().unwrap().view([-1])).unwrap();
        assert_eq!(mixed, [0, 0, 0, 0, 0, 1, 1, 1]);

        let root = tempfile::tempdir().unwrap();
        set.save(root.path()).unwrap();
        let loaded = EvalSet::load(root.path()).unwrap();
        assert_eq!(loaded.batch_ids, ["rust", "mixed", "go"]);
        assert_eq!(loaded.languages, set.languages);
        let reloaded: Vec<i64> =
            Vec::try_from(loaded.token_languages[1].as_ref().unwrap().view([-1])).unwrap();
        assert_eq!(reloaded, mixed);
    }

    #[test]
    fn tokens_belong_to_the_document_they_lie_in() {
        let (b, _) = batch("b", vec![0, 3, 6], &["A", "B", "C"]);
        assert_eq!(
            languages_of_tokens(&b).unwrap(),
            ["A", "A", "A", "B", "B", "B", "C", "C"]
        );
        let (mut b, _) = batch("b", vec![0, 3], &["A", "B"]);
        b.languages.pop();
        assert!(
            languages_of_tokens(&b).is_none(),
            "one language per document or none"
        );
    }

    #[test]
    fn losses_by_language_split_the_mean_loss_by_token() {
        let config = ModelConfig::preset("tiny", 8).unwrap();
        let trainer = Trainer::new(config, OptimizerOptions::default(), Device::Cpu, 3, false);
        let batch = TrainingBatch {
            batch_id: "b".into(),
            split: "eval".into(),
            sequence_length: 8,
            token_ids: vec![1, 2, 3, 4, 5, 6, 7, 1],
            document_starts: vec![0, 5],
            content_hashes: vec!["a".into(), "b".into()],
            languages: vec!["Rust".into(), "Python".into()],
            tokenizer_fingerprint: "f".into(),
        };
        let limits = BatchLimits {
            vocab_size: 8,
            max_sequence_length: 8,
        };
        let mut eval = EvalSet::default();
        assert!(eval.offer(&batch, Sequences::from_batch(&batch, limits).unwrap(), 1, 1));
        let losses = eval.losses(&trainer);
        let by_language = losses.by_language;
        assert_eq!(by_language.len(), 2, "{by_language:?}");
        // Of the 7 predicted tokens, 4 are Rust's (positions 1-4) and 3 Python's.
        let mean = (4.0 * by_language["Rust"] + 3.0 * by_language["Python"]) / 7.0;
        let overall = trainer.evaluate(&eval.sequences).unwrap();
        assert!(
            (losses.overall.unwrap() - overall).abs() < 1e-5,
            "one pass, the same loss"
        );
        assert!((mean - overall).abs() < 1e-5, "{mean} vs {overall}");
        assert!((by_language["Rust"] - by_language["Python"]).abs() > 1e-6);
    }
}
