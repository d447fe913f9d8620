//! Batcher: tokenizes `code-files`, deduplicates and packs them into fixed-length
//! sequences on `training-batches`. Built by issue #6. Here so far: the tokenizer
//! (train or load), one file as tokens (metadata, fill-in-the-middle, eval split) and
//! packing. Still to come: the Kafka wiring (an input completes only when every batch
//! holding its tokens is acknowledged), the dedup state and `codelupe tokenizer train`;
//! until then the stage refuses to run rather than pretend.

pub mod document;
pub mod metrics;
pub mod pack;
pub mod tokenizer;

pub const STAGE: &str = "batcher";
pub const BUILT_BY_ISSUE: u32 = 6;
