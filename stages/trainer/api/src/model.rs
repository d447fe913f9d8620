//! The model's sizes, as checkpoints record them: what the trainer builds its network
//! from, and what the Hugging Face export writes into `config.json`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: i64,
    pub d_model: i64,
    pub n_layers: i64,
    pub n_heads: i64,
    pub d_ff: i64,
    pub rope_theta: f64,
    /// RMSNorm's epsilon (not recorded by checkpoints before it was a field: theirs
    /// was this default).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

fn default_norm_eps() -> f64 {
    1e-6
}

/// A named model size: `tiny` trains on a CPU in tests; `125m` and `350m` are for a
/// GPU (their parameter counts at a 32k vocabulary). Parsed when the config loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Preset {
    Tiny,
    M125,
    M350,
}

impl std::str::FromStr for Preset {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "tiny" => Ok(Preset::Tiny),
            "125m" => Ok(Preset::M125),
            "350m" => Ok(Preset::M350),
            other => Err(format!(
                "unknown model preset {other:?}; presets are tiny, 125m, 350m"
            )),
        }
    }
}

impl TryFrom<String> for Preset {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Tiny => "tiny",
            Preset::M125 => "125m",
            Preset::M350 => "350m",
        })
    }
}

impl ModelConfig {
    /// The sizes of `preset` at this vocabulary.
    pub fn of(preset: Preset, vocab_size: i64) -> Self {
        let (d_model, n_layers, n_heads, d_ff) = match preset {
            Preset::Tiny => (64, 2, 4, 176),
            Preset::M125 => (768, 12, 12, 2048),
            Preset::M350 => (1024, 24, 16, 2816),
        };
        Self {
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            d_ff,
            rope_theta: 10_000.0,
            norm_eps: default_norm_eps(),
        }
    }

    /// The sizes of the preset named `name` (tiny, 125m or 350m).
    pub fn preset(name: &str, vocab_size: i64) -> anyhow::Result<Self> {
        let preset: Preset = name.parse().map_err(anyhow::Error::msg)?;
        Ok(Self::of(preset, vocab_size))
    }

    /// Parameters (the tied embedding counted once).
    pub fn parameters(&self) -> i64 {
        let per_layer =
            4 * self.d_model * self.d_model + 3 * self.d_model * self.d_ff + 2 * self.d_model;
        self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model
    }

    /// Training FLOPs per token at `context` (forward and backward: 6 per parameter-token
    /// plus attention's 12·layers·d·context), for model-FLOPs utilisation.
    pub fn flops_per_token(&self, context: i64) -> f64 {
        6.0 * self.parameters() as f64 + 12.0 * (self.n_layers * self.d_model * context) as f64
    }
}
