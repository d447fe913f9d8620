//! Metrics on :8090/prometheus, names and labels from the original system. Training
//! runs take minutes to hours, so the duration buckets do too (the original's stopped
//! at 10 s).

use codelupe_runtime::consume::LoopMetrics;
use codelupe_runtime::labels::{CounterBy, GaugeBy, NoReason};
use codelupe_runtime::records::Split;
use codelupe_runtime::telemetry::register;
use prometheus::{Gauge, GaugeVec, Histogram, IntCounter, Registry};

codelupe_runtime::label_set! {
    /// Why a batch was not trained on (`trainer_batches_skipped_total{reason}`).
    pub enum Skip {
        /// An eval batch beyond the `eval_batches` kept as the fixed eval set.
        EvalSetFull => "eval_set_full",
        /// Made with another tokenizer than the trainer's.
        TokenizerMismatch => "tokenizer_mismatch",
        /// Not a training batch (also dead-lettered).
        Decode => "decode",
    }
}

pub struct TrainerMetrics {
    pub training_runs: IntCounter,
    pub files_trained: IntCounter,
    pub samples_trained: IntCounter,
    pub current_loss: Gauge,
    pub current_eval_loss: Gauge,
    /// Loss on the eval set's tokens of each language.
    pub eval_loss: GaugeVec,
    /// The newest scored checkpoint's pass@k, by benchmark and k.
    pub eval_pass_at_k: GaugeVec,
    pub gpu_memory_bytes: Gauge,
    pub dataset_size: GaugeBy<Split>,
    pub training_duration: Histogram,
    pub tokens_per_second: Gauge,
    pub learning_rate: Gauge,
    pub tokens_trained: IntCounter,
    pub batches_skipped: CounterBy<Skip>,
    /// The `codelupe_*` metrics every consuming stage exports; its only dead-letter
    /// reasons are the loop's (`decode`).
    pub records: LoopMetrics,
}

impl TrainerMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            training_runs: register::counter(
                r,
                "trainer_training_runs_total",
                "Training runs completed",
            )?,
            files_trained: register::counter(
                r,
                "trainer_files_trained_total",
                "Files whose tokens were trained on",
            )?,
            samples_trained: register::counter(
                r,
                "trainer_samples_trained_total",
                "Sequences trained on",
            )?,
            current_loss: register::gauge(
                r,
                "trainer_current_loss",
                "Training loss of the last step",
            )?,
            current_eval_loss: register::gauge(
                r,
                "trainer_current_eval_loss",
                "Loss on the fixed eval set at the last evaluation",
            )?,
            eval_loss: register::gauge_vec(
                r,
                "trainer_eval_loss",
                "Loss on the fixed eval set's tokens of each language at the last evaluation",
                &["language"],
            )?,
            eval_pass_at_k: register::gauge_vec(
                r,
                "trainer_eval_pass_at_k",
                "pass@k of the newest checkpoint scored by execution",
                &["benchmark", "k"],
            )?,
            gpu_memory_bytes: register::gauge(r, "trainer_gpu_memory_bytes", "GPU memory in use")?,
            dataset_size: GaugeBy::register(
                r,
                "trainer_dataset_size",
                "Sequences available, by split",
                "split",
            )?,
            training_duration: register::histogram(
                r,
                "trainer_training_duration_seconds",
                "Duration of one training run",
                vec![
                    10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                ],
            )?,
            tokens_per_second: register::gauge(
                r,
                "trainer_tokens_per_second",
                "Training throughput over the last logging interval",
            )?,
            learning_rate: register::gauge(
                r,
                "trainer_learning_rate",
                "Learning rate of the last optimiser step",
            )?,
            tokens_trained: register::counter(
                r,
                "trainer_tokens_trained_total",
                "Tokens trained on",
            )?,
            batches_skipped: CounterBy::register(
                r,
                "trainer_batches_skipped_total",
                "Batches not trained on, by reason",
                "reason",
            )?,
            records: LoopMetrics::register::<NoReason>(r)?,
        })
    }
}
