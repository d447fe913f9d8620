//! Metrics on :9094/metrics (a stage the original did not have).

use codelupe_runtime::labels::CounterBy;
use codelupe_runtime::records::Split;
use codelupe_runtime::telemetry::register;
use prometheus::{Histogram, IntCounter, Registry};

codelupe_runtime::label_set! {
    /// Why a file is dead-lettered.
    pub enum FileError {
        /// A content_hash that is not a hex SHA-256 (the dedup key).
        BadContentHash => "bad_content_hash",
        /// The partition's dedup state could not be read (retried: the stage stops).
        DedupState => "dedup_state",
        Tokenize => "tokenize",
    }
}

pub const FILES_CONSUMED: &str = "batcher_files_consumed_total";
pub const TOKENS_PRODUCED: &str = "batcher_tokens_produced_total";
pub const BATCHES_PRODUCED: &str = "batcher_batches_produced_total";
pub const DUPLICATES_DROPPED: &str = "batcher_duplicates_dropped_total";

pub struct BatcherMetrics {
    pub files_consumed: IntCounter,
    pub tokens_produced: IntCounter,
    pub batches_produced: CounterBy<Split>,
    pub duplicates_dropped: IntCounter,
    /// Files left out by the language weights.
    pub files_downsampled: IntCounter,
    pub tokenize_duration: Histogram,
}

impl BatcherMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            files_consumed: register::counter(r, FILES_CONSUMED, "Files read from code-files")?,
            tokens_produced: register::counter(
                r,
                TOKENS_PRODUCED,
                "Tokens in batches sealed for publishing (padding included)",
            )?,
            batches_produced: CounterBy::register(
                r,
                BATCHES_PRODUCED,
                "Batches sealed for publishing, by split",
                "split",
            )?,
            duplicates_dropped: register::counter(
                r,
                DUPLICATES_DROPPED,
                "Files dropped as exact duplicates",
            )?,
            files_downsampled: register::counter(
                r,
                "batcher_files_downsampled_total",
                "Files left out by the language weights (mix.language_weights)",
            )?,
            tokenize_duration: register::histogram(
                r,
                "batcher_tokenize_duration_seconds",
                "Time to tokenize one file",
                prometheus::exponential_buckets(0.0001, 4.0, 10)?,
            )?,
        })
    }
}
