//! The stages this binary knows: how to run each built one, and the contract metrics of
//! those whose issues have not landed yet.

use anyhow::bail;
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::KafkaClients;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::StageRuntime;
use futures::future::BoxFuture;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Runs a built stage until its runtime's shutdown token is cancelled; the stage
/// registers its own metrics.
pub type Launch = fn(StageRuntime) -> BoxFuture<'static, anyhow::Result<()>>;

pub enum Status {
    Built(Launch),
    /// Refuses to run; `codelupe run` serves its contract metrics (at zero) and a
    /// not-ready `/readyz` saying which issue builds it.
    NotBuilt {
        issue: u32,
        contract_metrics: fn(&Registry) -> prometheus::Result<()>,
    },
}

pub struct StageEntry {
    pub name: &'static str,
    pub status: Status,
    /// What `codelupe run` shows of the stage: (label, metric summed over its series).
    pub progress: &'static [(&'static str, &'static str)],
}

/// Progress of a stage that runs the runtime's consume loop.
const LOOP_PROGRESS: &[(&str, &str)] = &[
    ("in", "codelupe_records_consumed_total"),
    ("out", "codelupe_records_produced_total"),
    ("dead", "codelupe_dead_letters_total"),
    ("in flight", "codelupe_records_in_flight"),
    ("lag", "codelupe_consumer_lag"),
];

pub const STAGES: &[StageEntry] = &[
    StageEntry {
        name: codelupe_crawler::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_crawler::run(runtime))),
        progress: &[
            ("scraped", "crawler_repos_scraped_total"),
            ("published", "crawler_repos_indexed_total"),
            ("errors", "crawler_scrape_errors_total"),
        ],
    },
    StageEntry {
        name: codelupe_downloader::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_downloader::run(runtime))),
        progress: LOOP_PROGRESS,
    },
    StageEntry {
        name: codelupe_processor::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_processor::run(runtime))),
        progress: LOOP_PROGRESS,
    },
    StageEntry {
        name: codelupe_batcher::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_batcher::run(runtime))),
        progress: &[
            ("files", "batcher_files_consumed_total"),
            ("duplicates", "batcher_duplicates_dropped_total"),
            ("batches", "batcher_batches_produced_total"),
            ("tokens", "batcher_tokens_produced_total"),
            ("lag", "codelupe_consumer_lag"),
        ],
    },
    StageEntry {
        name: codelupe_trainer::STAGE,
        status: Status::NotBuilt {
            issue: codelupe_trainer::BUILT_BY_ISSUE,
            contract_metrics: |r| codelupe_trainer::metrics::TrainerMetrics::register(r).map(drop),
        },
        progress: LOOP_PROGRESS,
    },
];

pub fn entry(name: &str) -> anyhow::Result<&'static StageEntry> {
    match STAGES.iter().find(|s| s.name == name) {
        Some(entry) => Ok(entry),
        None => bail!(
            "unknown stage {name}; stages are {}",
            STAGES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `codelupe stage NAME`: one replica, metrics server included, until shutdown.
pub async fn run_one(
    name: &str,
    topology: &Topology,
    config: &Config,
    clients: KafkaClients,
    shutdown: CancellationToken,
    once: bool,
) -> anyhow::Result<()> {
    let entry = entry(name)?;
    let launch = match entry.status {
        Status::Built(launch) => launch,
        Status::NotBuilt { issue, .. } => bail!("stage {name} is not built yet (issue #{issue})"),
    };
    let mut runtime = StageRuntime::resolve(name, topology, config, clients, shutdown.clone())?;
    runtime.once = once;
    let server = runtime.serve_metrics().await?;
    let result = launch(runtime).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
