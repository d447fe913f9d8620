//! The stages this binary knows: how to run each one, in this process or, for the
//! trainer (which links libtorch), as its own executable.

use std::path::PathBuf;

use anyhow::bail;
use codelupe_runtime::config::Config;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::StageRuntime;
use futures::future::BoxFuture;
use prometheus::Registry;

/// Runs a built stage until its runtime's shutdown token is cancelled; the stage
/// registers its own metrics.
pub type Launch = fn(StageRuntime) -> BoxFuture<'static, anyhow::Result<()>>;

pub enum Status {
    Built(Launch),
    /// Runs as `binary`, found next to this executable or on PATH. When it is missing,
    /// `codelupe run` serves its contract metrics (at zero) and a not-ready `/readyz`
    /// saying how to build it.
    External {
        binary: &'static str,
        contract_metrics: fn(&Registry) -> prometheus::Result<()>,
    },
}

pub struct StageEntry {
    pub name: &'static str,
    pub status: Status,
    /// What `codelupe run` shows of the stage: (label, metric summed over its series).
    pub progress: &'static [(&'static str, &'static str)],
    /// The counters of what it takes in and what it puts out, for the live page's
    /// rates (an external stage reports through its own `/status` instead).
    pub flow: Option<Flow>,
}

pub struct Flow {
    pub consumed: &'static str,
    pub produced: &'static str,
}

/// The flow of a stage that runs the runtime's consume loop.
const LOOP_FLOW: Option<Flow> = Some(Flow {
    consumed: "codelupe_records_consumed_total",
    produced: "codelupe_records_produced_total",
});

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
        flow: Some(Flow {
            consumed: "crawler_repos_scraped_total",
            produced: "crawler_repos_indexed_total",
        }),
    },
    StageEntry {
        name: codelupe_downloader::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_downloader::run(runtime))),
        progress: LOOP_PROGRESS,
        flow: LOOP_FLOW,
    },
    StageEntry {
        name: codelupe_processor::STAGE,
        status: Status::Built(|runtime| Box::pin(codelupe_processor::run(runtime))),
        progress: LOOP_PROGRESS,
        flow: LOOP_FLOW,
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
        flow: Some(Flow {
            consumed: "batcher_files_consumed_total",
            produced: "batcher_batches_produced_total",
        }),
    },
    StageEntry {
        name: codelupe_trainer_api::STAGE,
        status: Status::External {
            binary: codelupe_trainer_api::BINARY,
            contract_metrics: |r| {
                codelupe_trainer_api::metrics::TrainerMetrics::register(r).map(drop)
            },
        },
        progress: &[],
        flow: None,
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

/// An external stage's executable: next to this one (as cargo builds them), else on PATH.
pub fn find_binary(binary: &str) -> anyhow::Result<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(binary)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(binary));
    match sibling.into_iter().chain(on_path).find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!(
            "{binary} was not found next to codelupe or on PATH; build it with \
             `cargo build --release -p codelupe-trainer` (it links libtorch: see README)"
        ),
    }
}

/// The config and topology a stage runs with, and the files they came from (passed on
/// to an external stage).
pub struct Setup<'a> {
    pub topology_file: &'a std::path::Path,
    pub topology: &'a Topology,
    pub config_file: Option<&'a std::path::Path>,
    pub config: &'a Config,
}

/// `codelupe stage NAME`: one replica, metrics server included, until shutdown. An
/// external stage replaces this process (so signals reach it directly).
pub async fn run_one(name: &str, brokers: &str, once: bool, at: Setup<'_>) -> anyhow::Result<()> {
    match entry(name)?.status {
        Status::Built(launch) => {
            codelupe_runtime::stage::run_stage(name, brokers, at.topology, at.config, once, launch)
                .await
        }
        Status::External { binary, .. } => {
            let mut command = std::process::Command::new(find_binary(binary)?);
            command.arg("--topology").arg(at.topology_file);
            if let Some(file) = at.config_file {
                command.arg("--config").arg(file);
            }
            command.args(["stage", "--brokers", brokers]);
            Err(std::os::unix::process::CommandExt::exec(&mut command).into())
        }
    }
}
