//! Batcher: tokenizes `code-files`, deduplicates and packs them into fixed-length
//! sequences on `training-batches`. Built by issue #6; until then the stage refuses
//! to run rather than pretend.

pub mod metrics;

pub const STAGE: &str = "batcher";
pub const BUILT_BY_ISSUE: u32 = 6;
