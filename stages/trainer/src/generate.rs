//! Sampling from a checkpoint: complete a prompt, or fill the middle between a prefix
//! and a suffix (the batcher's prefix-suffix-middle format).

use std::path::Path;

use anyhow::{bail, Context as _};
use codelupe_tokenizer::CodeTokenizer;
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint;
use crate::model::Transformer;

pub enum Prompt {
    Complete(String),
    FillMiddle { prefix: String, suffix: String },
}

pub struct Sampling {
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f64,
    /// Sample among the k likeliest tokens; 0: all.
    pub top_k: i64,
    pub seed: i64,
    pub device: Device,
}

/// The longest context fed to the model; older tokens are dropped.
const MAX_CONTEXT: usize = 2048;

pub struct Generator {
    tokenizer: CodeTokenizer,
    model: Transformer,
    _vs: nn::VarStore,
}

impl Generator {
    /// From a checkpoint folder, or the newest checkpoint in a checkpoint root.
    pub fn load(path: &Path, device: Device) -> anyhow::Result<Self> {
        let dir = codelupe_trainer_api::checkpoints::checkpoint_at(path)?;
        let state = checkpoint::read_state(&dir)?;
        let tokenizer = CodeTokenizer::load(&dir.join("tokenizer.json"))?;
        if tokenizer.fingerprint != state.tokenizer_fingerprint {
            bail!("{}: tokenizer does not match the checkpoint", dir.display());
        }
        let mut vs = nn::VarStore::new(device);
        let model = Transformer::new(&vs.root(), state.model);
        tch::no_grad(|| vs.read_safetensors(dir.join("model.safetensors")))
            .with_context(|| format!("loading {}", dir.display()))?;
        vs.freeze();
        Ok(Self {
            tokenizer,
            model,
            _vs: vs,
        })
    }

    /// The text the model produces for `prompt`: the continuation, or for a fill the
    /// whole file (prefix + generated middle + suffix).
    pub fn generate(&self, prompt: &Prompt, sampling: &Sampling) -> anyhow::Result<String> {
        let t = &self.tokenizer;
        let ids: Vec<u32> = match prompt {
            Prompt::Complete(text) => t.encode(text)?,
            Prompt::FillMiddle { prefix, suffix } => [
                vec![t.fim_prefix],
                t.encode(prefix)?,
                vec![t.fim_suffix],
                t.encode(suffix)?,
                vec![t.fim_middle],
            ]
            .concat(),
        };
        let generated = self.continue_ids(&ids, sampling);
        let generated = t.decode(&generated)?;
        Ok(match prompt {
            Prompt::Complete(_) => generated,
            Prompt::FillMiddle { prefix, suffix } => format!("{prefix}{generated}{suffix}"),
        })
    }

    /// The token ids the model produces after `prompt` (up to `max_tokens`, stopping
    /// at the end of text, which is not included).
    pub fn continue_ids(&self, prompt: &[u32], sampling: &Sampling) -> Vec<u32> {
        self.continue_while(prompt, sampling, |_| true)
    }

    /// A completion of `prompt` cut at the first of `stops` (which is not included):
    /// generation ends as soon as one appears.
    pub fn complete(
        &self,
        prompt: &str,
        sampling: &Sampling,
        stops: &[&str],
    ) -> anyhow::Result<String> {
        let ids = self.tokenizer.encode(prompt)?;
        let t = &self.tokenizer;
        let stopped = |generated: &[u32]| {
            t.decode(generated)
                .is_ok_and(|text| stops.iter().any(|s| text.contains(s)))
        };
        let generated = self.continue_while(&ids, sampling, |g| !stopped(g));
        let text = t.decode(&generated)?;
        let end = stops.iter().filter_map(|s| text.find(s)).min();
        Ok(text[..end.unwrap_or(text.len())].to_string())
    }

    /// Generated ids after `prompt` while `go_on(generated so far)` holds, up to
    /// `max_tokens` or the end of text (not included).
    fn continue_while(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        mut go_on: impl FnMut(&[u32]) -> bool,
    ) -> Vec<u32> {
        let mut ids = prompt.to_vec();
        tch::manual_seed(sampling.seed);
        tch::no_grad(|| {
            for _ in 0..sampling.max_tokens {
                let next = self.next_token(&ids, sampling);
                if next == self.tokenizer.end_of_text {
                    break;
                }
                ids.push(next);
                if !go_on(&ids[prompt.len()..]) {
                    break;
                }
            }
        });
        ids.split_off(prompt.len())
    }

    /// The next token after `ids`: the likeliest, or sampled.
    fn next_token(&self, ids: &[u32], sampling: &Sampling) -> u32 {
        let context = &ids[ids.len().saturating_sub(MAX_CONTEXT)..];
        let logits = self
            .logits(context, sampling.device)
            .get(context.len() as i64 - 1)
            .to_kind(Kind::Float);
        let next = if sampling.temperature <= 0.0 {
            logits.argmax(0, false)
        } else {
            let mut scaled = logits / sampling.temperature;
            if sampling.top_k > 0 && sampling.top_k < scaled.size()[0] {
                let (top, _) = scaled.topk(sampling.top_k, 0, true, true);
                let floor = top.get(sampling.top_k - 1);
                scaled = scaled.where_self(
                    &scaled.ge_tensor(&floor),
                    &Tensor::from(f64::NEG_INFINITY).to_device(sampling.device),
                );
            }
            scaled.softmax(0, Kind::Float).multinomial(1, false).get(0)
        };
        next.int64_value(&[]) as u32
    }

    /// The model's logits [T, vocab] for `ids` as one document.
    pub fn logits(&self, ids: &[u32], device: Device) -> Tensor {
        let n = ids.len() as i64;
        let tokens = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .view([1, n])
            .to_device(device);
        let positions = Tensor::arange(n, (Kind::Int64, device)).view([1, n]);
        tch::no_grad(|| self.model.forward(&tokens, &positions, false).get(0))
    }

    pub fn tokenizer(&self) -> &CodeTokenizer {
        &self.tokenizer
    }
}
