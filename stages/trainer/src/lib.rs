//! Trainer: continuous training of a code model from `training-batches`, with
//! crash-safe checkpoints. Built by issue #7 (which adds libtorch, in its own binary so
//! no other stage links it); until then the stage refuses to run rather than pretend.

pub mod metrics;

pub const STAGE: &str = "trainer";
pub const BUILT_BY_ISSUE: u32 = 7;
