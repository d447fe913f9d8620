//! A decoder-only transformer: token embedding (tied with the output head), blocks of
//! RMSNorm → causal self-attention with rotary positions (libtorch's fused scaled-dot-
//! product attention) → RMSNorm → SwiGLU, and a final RMSNorm.

use tch::{nn, Kind, Tensor};

pub use codelupe_trainer_api::model::{ModelConfig, Preset};

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.ones("weight", &[dim]),
            eps,
        }
    }

    /// libtorch's rms_norm: one fused kernel on CUDA, where the written-out form
    /// (square, mean, add, rsqrt, two products) was six passes over the activations.
    fn forward(&self, x: &Tensor) -> Tensor {
        x.rms_norm(self.weight.size().as_slice(), Some(&self.weight), self.eps)
    }
}

struct Block {
    attention_norm: RmsNorm,
    qkv: nn::Linear,
    out: nn::Linear,
    mlp_norm: RmsNorm,
    gate: nn::Linear,
    up: nn::Linear,
    down: nn::Linear,
    n_heads: i64,
}

fn linear(p: nn::Path, inputs: i64, outputs: i64) -> nn::Linear {
    nn::linear(
        p,
        inputs,
        outputs,
        nn::LinearConfig {
            bias: false,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        },
    )
}

/// Rotates channel pairs (i, i + D/2) by position-dependent angles: `x` is [B, H, T, D];
/// `cos` is [cos, cos] and `sin` [-sin, sin] over the head's width, so the rotation is
/// one product and one fused multiply-add (three kernels, where the pairwise form took
/// seven).
fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let swapped = Tensor::cat(&[x.narrow(3, half, half), x.narrow(3, 0, half)], 3);
    (x * cos).addcmul(&swapped, sin)
}

impl Block {
    fn new(p: nn::Path, c: &ModelConfig) -> Self {
        Self {
            attention_norm: RmsNorm::new(&p / "attention_norm", c.d_model, c.norm_eps),
            qkv: linear(&p / "qkv", c.d_model, 3 * c.d_model),
            out: linear(&p / "out", c.d_model, c.d_model),
            mlp_norm: RmsNorm::new(&p / "mlp_norm", c.d_model, c.norm_eps),
            gate: linear(&p / "gate", c.d_model, c.d_ff),
            up: linear(&p / "up", c.d_model, c.d_ff),
            down: linear(&p / "down", c.d_ff, c.d_model),
            n_heads: c.n_heads,
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, t, d) = x.size3().expect("[batch, time, channels]");
        let head = d / self.n_heads;
        let qkv = self.attention_norm.forward(x).apply(&self.qkv);
        // In the projections' precision: under autocast, fp32 angles would promote every
        // rotary product to fp32 (twice the memory traffic, and casts back for attention).
        let (cos, sin) = (cos.to_kind(qkv.kind()), sin.to_kind(qkv.kind()));
        let split = |i: i64| {
            qkv.narrow(2, i * d, d)
                .view([b, t, self.n_heads, head])
                .transpose(1, 2)
        };
        let (q, k, v) = (
            rotary(&split(0), &cos, &sin),
            rotary(&split(1), &cos, &sin),
            split(2),
        );
        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            mask.is_none(),
            None,
            false,
        )
        .transpose(1, 2)
        .contiguous()
        .view([b, t, d]);
        let x = x + attended.apply(&self.out);
        let h = self.mlp_norm.forward(&x);
        let mlp = (h.apply(&self.gate).silu() * h.apply(&self.up)).apply(&self.down);
        x + mlp
    }
}

pub struct Transformer {
    pub config: ModelConfig,
    embedding: nn::Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    inverse_frequencies: Tensor,
}

impl Transformer {
    pub fn new(p: &nn::Path, config: ModelConfig) -> Self {
        let embedding = nn::embedding(
            p / "embedding",
            config.vocab_size,
            config.d_model,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let blocks = (0..config.n_layers)
            .map(|i| Block::new(p / "blocks" / i, &config))
            .collect();
        let head = config.d_model / config.n_heads;
        let inverse_frequencies = Tensor::arange_start_step(0, head, 2, (Kind::Float, p.device()))
            .divide_scalar(head as f64)
            .multiply_scalar(-config.rope_theta.ln())
            .exp();
        Self {
            config,
            embedding,
            blocks,
            final_norm: RmsNorm::new(p / "final_norm", config.d_model, config.norm_eps),
            inverse_frequencies,
        }
    }

    /// Logits [B, T, vocab] for `tokens` [B, T] at `positions` [B, T] (positions restart
    /// at every document, so a document's first token is at 0 wherever it is packed).
    /// With `mask_documents`, a token attends only to earlier tokens of its own document
    /// (an explicit mask: slower than the fused causal kernel).
    pub fn forward(&self, tokens: &Tensor, positions: &Tensor, mask_documents: bool) -> Tensor {
        let mask = mask_documents.then(|| {
            // Documents numbered from where positions restart.
            let documents = positions.eq(0).cumsum(1, Kind::Int64);
            let same = documents.unsqueeze(2).eq_tensor(&documents.unsqueeze(1));
            let t = positions.size()[1];
            let causal = Tensor::ones([t, t], (Kind::Bool, positions.device())).tril(0);
            same.logical_and(&causal).unsqueeze(1)
        });
        let angles = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inverse_frequencies;
        let angles = angles.unsqueeze(1); // [B, 1, T, D/2], shared by the heads
        let (cos, sin) = (angles.cos(), angles.sin());
        let (cos, sin) = (Tensor::cat(&[&cos, &cos], 3), Tensor::cat(&[-&sin, sin], 3));
        let mut x = tokens.apply(&self.embedding);
        for block in &self.blocks {
            x = block.forward(&x, &cos, &sin, mask.as_ref());
        }
        self.final_norm
            .forward(&x)
            .matmul(&self.embedding.ws.transpose(0, 1))
    }

    /// Mean next-token cross-entropy of `tokens` [B, T]: positions 0..T-1 predict 1..T.
    pub fn loss(&self, tokens: &Tensor, positions: &Tensor, mask_documents: bool) -> Tensor {
        let (logits, targets) = self.predictions(tokens, positions, mask_documents);
        logits.cross_entropy_for_logits(&targets)
    }

    /// The loss of each predicted token, [B, T-1] (the token at position j+1 given
    /// those before it), for losses split by what the tokens are.
    pub fn token_losses(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask_documents: bool,
    ) -> Tensor {
        let (rows, t) = (tokens.size()[0], tokens.size()[1]);
        let (logits, targets) = self.predictions(tokens, positions, mask_documents);
        logits
            .cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::None, -100, 0.0)
            .view([rows, t - 1])
    }

    /// fp32 logits [B·(T-1), vocab] of positions 0..T-1 and the tokens they predict.
    fn predictions(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask_documents: bool,
    ) -> (Tensor, Tensor) {
        let t = tokens.size()[1];
        let inputs = tokens.narrow(1, 0, t - 1);
        let targets = tokens.narrow(1, 1, t - 1).reshape([-1]);
        let logits = self.forward(&inputs, &positions.narrow(1, 0, t - 1), mask_documents);
        let logits = logits
            .to_kind(Kind::Float)
            .view([-1, self.config.vocab_size]);
        (logits, targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_count_matches_the_variables() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = ModelConfig::preset("tiny", 300).unwrap();
        let _model = Transformer::new(&vs.root(), config);
        let counted: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(counted, config.parameters());
        assert!(ModelConfig::preset("125m", 32_768).unwrap().parameters() > 100_000_000);
        assert!(ModelConfig::preset("huge", 1).is_err());
    }

    #[test]
    fn attention_is_causal() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Transformer::new(&vs.root(), ModelConfig::preset("tiny", 50).unwrap());
        let a = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let b = Tensor::from_slice(&[1i64, 2, 3, 9, 9, 9]).view([1, 6]);
        let positions = Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).view([1, 6]);
        let (la, lb) = (
            model.forward(&a, &positions, false),
            model.forward(&b, &positions, false),
        );
        // The first three positions see only the shared prefix.
        assert!(la
            .narrow(1, 0, 3)
            .allclose(&lb.narrow(1, 0, 3), 1e-5, 1e-6, false));
        assert!(!la
            .narrow(1, 3, 1)
            .allclose(&lb.narrow(1, 3, 1), 1e-5, 1e-6, false));
        // Within one document the explicit mask equals the fused causal kernel.
        assert!(model
            .forward(&a, &positions, true)
            .allclose(&la, 1e-5, 1e-6, false));
    }

    #[test]
    fn with_document_masking_a_document_ignores_the_one_before_it() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Transformer::new(&vs.root(), ModelConfig::preset("tiny", 50).unwrap());
        // Two documents, 0..3 and 3..6; only the first differs between a and b.
        let a = Tensor::from_slice(&[1i64, 2, 3, 7, 8, 9]).view([1, 6]);
        let b = Tensor::from_slice(&[4i64, 5, 6, 7, 8, 9]).view([1, 6]);
        let positions = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]).view([1, 6]);
        let second =
            |tokens: &Tensor, mask| model.forward(tokens, &positions, mask).narrow(1, 3, 3);
        assert!(second(&a, true).allclose(&second(&b, true), 1e-5, 1e-6, false));
        assert!(!second(&a, false).allclose(&second(&b, false), 1e-5, 1e-6, false));
    }

    #[test]
    fn rotary_rotates_each_channel_pair_by_its_angle() {
        tch::manual_seed(3);
        let x = Tensor::randn([2, 3, 5, 8], (Kind::Float, tch::Device::Cpu));
        let angles = Tensor::randn([2, 1, 5, 4], (Kind::Float, tch::Device::Cpu));
        let (cos, sin) = (angles.cos(), angles.sin());
        let rotated = rotary(
            &x,
            &Tensor::cat(&[&cos, &cos], 3),
            &Tensor::cat(&[-&sin, sin.shallow_clone()], 3),
        );
        // Channel i pairs with channel i + 4: (a, b) turns into (a cos - b sin, a sin + b cos).
        let (a, b) = (x.narrow(3, 0, 4), x.narrow(3, 4, 4));
        let expected = Tensor::cat(&[&a * &cos - &b * &sin, &a * &sin + &b * &cos], 3);
        assert!(rotated.allclose(&expected, 1e-6, 1e-6, false));
    }
}
