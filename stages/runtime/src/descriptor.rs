//! What a stage tells the `codelupe` binary about itself: how it runs, what its
//! progress line and the live page show, its options on the embedded default, and its
//! part of the run's summary. Each stage crate exports one [`StageDescriptor`]; the
//! binary lists them, one line per stage, and holds no stage's option, metric name or
//! default of its own.

use std::fmt::Write as _;

use futures::future::BoxFuture;
use prometheus::Registry;

use crate::config::Config;
use crate::consume::metrics;
use crate::StageRuntime;

/// Runs a built stage until its runtime's shutdown token is cancelled; the stage
/// registers its own metrics.
pub type Launch = fn(StageRuntime) -> BoxFuture<'static, anyhow::Result<()>>;

/// Work a stage needs done before it starts on the embedded default, given the config
/// with the embedded defaults filled in (the batcher fits its tokenizer).
pub type Prepare = fn(&Config) -> BoxFuture<'static, anyhow::Result<()>>;

/// A stage's lines of the run summary, from what the run saw of it.
pub type Summarize = fn(&Observed<'_>) -> Vec<String>;

pub enum Runs {
    /// In the `codelupe` process.
    InProcess(Launch),
    /// As `binary`, found next to the `codelupe` executable or on PATH. When it is
    /// missing, `codelupe run` serves its contract metrics (at zero) and a not-ready
    /// `/readyz` saying how to build it.
    External {
        binary: &'static str,
        contract_metrics: fn(&Registry) -> prometheus::Result<()>,
    },
}

/// What a stage mostly spends its time on. A process that runs one I/O-bound stage
/// has its allocators give freed memory back at once: its work comes in bursts between
/// waits, and what they kept for reuse grew with the work done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Cpu,
    Io,
}

/// The counters of what a stage takes in and puts out (the live page's rates).
pub struct Flow {
    pub consumed: &'static str,
    pub produced: &'static str,
}

pub struct StageDescriptor {
    /// Its name in topology.yaml and config.yaml.
    pub name: &'static str,
    pub runs: Runs,
    pub bound_by: Bound,
    /// Its progress line: (label, metric summed over its series).
    pub progress: &'static [(&'static str, &'static str)],
    /// None: the stage reports through its own `/status` instead.
    pub flow: Option<Flow>,
    /// Its options (YAML) on the embedded default when the config gives none.
    pub offline_options: &'static str,
    pub prepare_offline: Option<Prepare>,
    pub summarize: Summarize,
}

/// The flow of a stage that runs the runtime's consume loop.
pub const LOOP_FLOW: Option<Flow> = Some(Flow {
    consumed: metrics::RECORDS_CONSUMED,
    produced: metrics::RECORDS_PRODUCED,
});

/// The progress line of a stage that runs the runtime's consume loop.
pub const LOOP_PROGRESS: &[(&str, &str)] = &[
    ("in", metrics::RECORDS_CONSUMED),
    ("out", metrics::RECORDS_PRODUCED),
    ("dead", metrics::DEAD_LETTERS),
    ("in flight", metrics::RECORDS_IN_FLIGHT),
    ("lag", metrics::CONSUMER_LAG),
];

/// What the run saw of one stage, for its summary lines.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub consumed: f64,
    pub produced: f64,
    /// Its progress counters, by label.
    pub progress: &'a [(String, f64)],
    /// Its skip reasons (labelled `*_skipped_total` series) with their counts.
    pub skipped: &'a [(String, f64)],
    /// The options it ran with.
    pub options: Option<&'a serde_yaml::Value>,
    /// Why it did not run, when it did not.
    pub not_running: Option<&'a str>,
    /// The eval losses it reported while the run watched: (step, loss).
    pub eval_losses: &'a [(u64, f64)],
}

impl Observed<'_> {
    /// The progress counter with this label, or 0.
    pub fn progress(&self, label: &str) -> u64 {
        self.progress
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0.0, |(_, v)| *v) as u64
    }

    /// Its skip reasons as [`counts_line`] writes them.
    pub fn skipped(&self) -> String {
        counts_line(self.skipped)
    }
}

/// "reason count, …", largest first, or "none".
pub fn counts_line(counts: &[(String, f64)]) -> String {
    let mut sorted: Vec<&(String, f64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    if sorted.is_empty() {
        return "none".into();
    }
    let mut out = String::new();
    for (i, (reason, count)) in sorted.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{reason} {}", *count as u64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_read_largest_first_and_progress_by_label() {
        let skipped = [("vendored".to_string(), 4.0), ("binary".to_string(), 9.0)];
        let progress = [("tokens".to_string(), 90_112.0)];
        let seen = Observed {
            skipped: &skipped,
            progress: &progress,
            ..Observed::default()
        };
        assert_eq!(seen.skipped(), "binary 9, vendored 4");
        assert_eq!(seen.progress("tokens"), 90_112);
        assert_eq!(seen.progress("duplicates"), 0);
        assert_eq!(Observed::default().skipped(), "none");
    }
}
