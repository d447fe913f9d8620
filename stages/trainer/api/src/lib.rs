//! What other crates know of the trainer: it runs as its own binary (the only one that
//! links libtorch) and exports the original system's trainer metrics.

pub mod metrics;

pub const STAGE: &str = "trainer";
/// The trainer's executable, built from `stages/trainer`.
pub const BINARY: &str = "codelupe-trainer";
