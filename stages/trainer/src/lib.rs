//! Trainer: continuous training of a decoder-only code model from `training-batches`
//! with tch (libtorch), crash-safe checkpoints, and sampling from them. The only crate
//! that links libtorch; it ships as its own binary, `codelupe-trainer`.

pub mod checkpoint;
pub mod eval_set;
pub mod evaluate;
pub mod generate;
pub mod model;
pub mod optim;
pub mod pass_at_k;
pub mod stage;
pub mod train;

pub use codelupe_trainer_api::{metrics, BINARY, STAGE};
