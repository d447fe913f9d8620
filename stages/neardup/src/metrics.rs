//! Metrics on :9095/metrics. The loop metrics (`codelupe_records_*`, lag, dead letters)
//! come once per loop, labelled `loop="route"`, `"lookup"` or `"judge"`.

use codelupe_runtime::labels::CounterBy;
use codelupe_runtime::telemetry::register;
use prometheus::{Histogram, IntCounter, IntGaugeVec, Registry};

codelupe_runtime::label_set! {
    /// Why a file is not passed on (`neardup_files_skipped_total{reason}`).
    pub enum Skip {
        /// Its sketch estimates a Jaccard similarity ≥ the threshold with an earlier file.
        NearDuplicate => "near_duplicate",
    }
}

codelupe_runtime::label_set! {
    /// Why the judge judged a file before every shard had answered
    /// (`neardup_files_judged_incomplete_total{reason}`): on the answers it had, so a
    /// near-duplicate only a missing shard knew of is kept.
    pub enum Incomplete {
        /// The file waited `answer_timeout_ms` (a probe dead-lettered, a shard stalled).
        AnswerTimeout => "answer_timeout",
        /// The files waiting held more than `max_waiting_bytes`: the longest waiting go.
        WaitingBytes => "waiting_bytes",
    }
}

codelupe_runtime::label_set! {
    /// Why a record of one of the stage's own topics is dead-lettered.
    pub enum NeardupError {
        /// A probe whose sketch is not 256 bytes.
        BadSketch => "bad_sketch",
        /// A file on neardup-gather that does not decode as a code-files record.
        BadFile => "bad_file",
        /// The shard's index could not be read (retried: the stage stops).
        IndexState => "index_state",
        /// A code file whose gather record would exceed its topic's limit.
        TooLarge => "too_large",
    }
}

pub const FILES_CHECKED: &str = "neardup_files_checked_total";
pub const FILES_KEPT: &str = "neardup_files_kept_total";
pub const FILES_SKIPPED: &str = "neardup_files_skipped_total";

pub struct NeardupMetrics {
    pub files_checked: IntCounter,
    pub files_kept: IntCounter,
    pub files_skipped: CounterBy<Skip>,
    pub files_judged_incomplete: CounterBy<Incomplete>,
    /// Files in each shard's index held by this replica.
    pub index_files: IntGaugeVec,
    pub lookup_seconds: Histogram,
    pub probe_seconds: Histogram,
}

impl NeardupMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            files_checked: register::counter(r, FILES_CHECKED, "Files judged")?,
            files_kept: register::counter(
                r,
                FILES_KEPT,
                "Files judged unique and passed on to distinct-files",
            )?,
            files_skipped: CounterBy::register(
                r,
                FILES_SKIPPED,
                "Files not passed on, by reason",
                "reason",
            )?,
            files_judged_incomplete: CounterBy::register(
                r,
                "neardup_files_judged_incomplete_total",
                "Files judged before every shard answered, by reason",
                "reason",
            )?,
            index_files: register::gauge_vec(
                r,
                "neardup_index_files",
                "Files in the index of each shard (partition of neardup-probes) this replica holds",
                &["shard"],
            )?,
            lookup_seconds: register::histogram(
                r,
                "neardup_lookup_seconds",
                "From a file routed to its verdict: every shard probed and answered",
                prometheus::exponential_buckets(0.001, 2.0, 14)?,
            )?,
            probe_seconds: register::histogram(
                r,
                "neardup_probe_seconds",
                "Time to probe and index one file's bands on one shard",
                prometheus::exponential_buckets(0.000_005, 4.0, 10)?,
            )?,
        })
    }
}
