//! What the trainer's benches share: settings from the environment and random batches.

use codelupe_trainer::train::Sequences;
use tch::{Device, Kind, Tensor};

/// The environment variable `name` parsed, or `default`.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `rows` sequences of `seq` random token ids below `vocab`, each one document.
pub fn random_batch(vocab: i64, rows: i64, seq: i64) -> Sequences {
    Sequences {
        tokens: Tensor::randint(vocab, [rows, seq], (Kind::Int64, Device::Cpu)),
        positions: Tensor::arange(seq, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .repeat([rows, 1]),
    }
}
