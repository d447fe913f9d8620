//! The stages this binary knows: how to register each one's contract metrics and, once
//! its issue has landed, how to run it.

use anyhow::bail;
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::KafkaClients;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::StageRuntime;
use futures::future::BoxFuture;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Runs a built stage until its runtime's shutdown token is cancelled.
pub type Launch = fn(StageRuntime) -> BoxFuture<'static, anyhow::Result<()>>;

pub struct StageEntry {
    pub name: &'static str,
    /// The issue that builds the stage's logic.
    pub issue: u32,
    pub register_metrics: fn(&Registry) -> prometheus::Result<()>,
    /// None until the stage is built: it then refuses to run instead of pretending.
    pub launch: Option<Launch>,
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
        issue: codelupe_crawler::BUILT_BY_ISSUE,
        // The stage registers its own metrics when it runs.
        register_metrics: |_| Ok(()),
        launch: Some(|runtime| Box::pin(codelupe_crawler::run(runtime))),
        progress: &[
            ("scraped", "crawler_repos_scraped_total"),
            ("published", "crawler_repos_indexed_total"),
            ("errors", "crawler_scrape_errors_total"),
        ],
    },
    StageEntry {
        name: codelupe_downloader::STAGE,
        issue: codelupe_downloader::BUILT_BY_ISSUE,
        register_metrics: |_| Ok(()),
        launch: Some(|runtime| Box::pin(codelupe_downloader::run(runtime))),
        progress: LOOP_PROGRESS,
    },
    StageEntry {
        name: codelupe_processor::STAGE,
        issue: codelupe_processor::BUILT_BY_ISSUE,
        register_metrics: |_| Ok(()),
        launch: Some(|runtime| Box::pin(codelupe_processor::run(runtime))),
        progress: LOOP_PROGRESS,
    },
    StageEntry {
        name: codelupe_batcher::STAGE,
        issue: codelupe_batcher::BUILT_BY_ISSUE,
        register_metrics: |r| codelupe_batcher::metrics::BatcherMetrics::register(r).map(drop),
        launch: None,
        progress: LOOP_PROGRESS,
    },
    StageEntry {
        name: codelupe_trainer::STAGE,
        issue: codelupe_trainer::BUILT_BY_ISSUE,
        register_metrics: |r| codelupe_trainer::metrics::TrainerMetrics::register(r).map(drop),
        launch: None,
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

impl StageEntry {
    pub fn not_built(&self) -> String {
        format!(
            "stage {} is not built yet (issue #{})",
            self.name, self.issue
        )
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
    let Some(launch) = entry.launch else {
        bail!("{}", entry.not_built());
    };
    let mut runtime = StageRuntime::resolve(name, topology, config, clients, shutdown.clone())?;
    runtime.once = once;
    (entry.register_metrics)(&runtime.registry)?;
    let server = runtime.serve_metrics().await?;
    let result = launch(runtime).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
