//! `codelupe run`: every stage of topology.yaml in one process (the trainer, which
//! links libtorch, as a child process when its binary is built), each with its own
//! metrics port, on an embedded broker unless brokers are given; progress on stderr.

use std::time::Duration;

use anyhow::Context as _;
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::{EmbeddedBroker, KafkaClients};
use codelupe_runtime::StageRuntime;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prometheus::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stages;

pub async fn run_all(
    brokers: Option<String>,
    limit: Option<Duration>,
    at: stages::Setup<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = at.topology;
    // The embedded broker lives until every stage has left its group.
    let mut config = at.config.clone();
    let (clients, _embedded) = match brokers {
        Some(brokers) => (KafkaClients::connect(&brokers, &config).await?, None),
        None => {
            offline_defaults(&mut config);
            let batcher: codelupe_batcher::BatcherOptions = config
                .stage(codelupe_batcher::STAGE)
                .options(codelupe_batcher::STAGE)?;
            let tokenizer = batcher.tokenizer.as_path();
            if tokenizer == std::path::Path::new(OFFLINE_TOKENIZER) && !tokenizer.exists() {
                tracing::info!(
                    "no {OFFLINE_TOKENIZER} yet: fitting one on the working directory's sources"
                );
                let sample = codelupe_batcher::sample::from_dirs(&[".".into()], 5_000)?;
                crate::train_tokenizer(sample, 8_192, tokenizer).await?;
            }
            let broker = EmbeddedBroker::start(topology)?;
            tracing::info!(bootstrap = %broker.bootstrap_servers(), "embedded Kafka broker started (no brokers configured)");
            (
                KafkaClients::new(broker.bootstrap_servers(), &config.kafka),
                Some(broker),
            )
        }
    };

    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(2));
    let style =
        ProgressStyle::with_template("{prefix:>11} {spinner} {msg}").expect("static template");
    let mut tasks = JoinSet::new();
    let mut watched = Vec::new();
    for name in topology.stages.keys() {
        let entry = stages::entry(name)?;
        let runtime =
            StageRuntime::resolve(name, topology, &config, clients.clone(), shutdown.clone())?;
        let endpoint = format!("http://{}{}", runtime.metrics_addr, runtime.metrics_path);
        let bar = progress.add(
            ProgressBar::new_spinner()
                .with_style(style.clone())
                .with_prefix(name.clone()),
        );
        let (status, server) = match entry.status {
            stages::Status::Built(launch) => {
                let server = runtime.serve_metrics().await?;
                let stage = name.clone();
                let fut = launch(runtime.clone());
                tasks.spawn(async move { (stage, fut.await) });
                (None, Some(server))
            }
            stages::Status::External {
                binary,
                contract_metrics,
            } => match stages::find_binary(binary) {
                Ok(path) => {
                    let child = external_stage(&path, name, &at, &config, &clients)?;
                    let why = format!("own process {} (pid {})", binary, child.id().unwrap_or(0));
                    let stage = name.clone();
                    let stop = shutdown.clone();
                    tasks.spawn(
                        async move { (stage.clone(), supervise(child, &stage, stop).await) },
                    );
                    (Some(why), None)
                }
                Err(e) => {
                    // Its metrics stay scrapeable (at zero); /readyz says what is missing.
                    contract_metrics(&runtime.registry)?;
                    runtime.readiness.set_not_ready(format!("{e:#}"));
                    let server = runtime.serve_metrics().await?;
                    (
                        Some(format!("not running: {binary} is not built")),
                        Some(server),
                    )
                }
            },
        };
        tracing::info!(stage = %name, %endpoint, status = status.as_deref().unwrap_or("running"), "stage started");
        watched.push(Watched {
            bar,
            endpoint,
            status,
            progress: entry.progress,
            registry: runtime.registry.clone(),
            server,
        });
    }

    let deadline = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut report = tokio::time::interval(Duration::from_secs(10));
    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => {
                tracing::info!("time limit reached");
                break;
            }
            Some(joined) = tasks.join_next() => {
                let (stage, result) = joined.context("a stage task panicked")?;
                if let Err(e) = result {
                    failure = Some(e.context(format!("stage {stage} failed")));
                    break;
                }
            }
            _ = tick.tick() => watched.iter().for_each(Watched::draw),
            _ = report.tick(), if progress.is_hidden() => {
                for w in &watched {
                    tracing::info!("{}", w.line());
                }
            }
        }
    }
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((stage, Err(e))) = joined {
            failure.get_or_insert(e.context(format!("stage {stage} failed")));
        }
    }
    for w in watched {
        w.bar.finish_with_message(w.line());
        if let Some(server) = w.server {
            let _ = server.await;
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Options a stage gets on the embedded default when the config gives none: with no
/// network, the crawler reads the git repositories under the working directory, the
/// downloader clones them locally into `.codelupe/clones`, the processor reads them there
/// and the batcher uses a tokenizer fitted on the working directory.
const OFFLINE_DEFAULTS: &[(&str, &str)] = &[
    ("crawler", "{source: local_folder, local_folder: ., interval_s: 60}"),
    (
        "downloader",
        "{store: .codelupe/clones, urls: {allow_local: true}, filter: {min_stars: 0, languages: [], exclude_words: []}}",
    ),
    ("processor", "{store: .codelupe/clones}"),
    (
        "batcher",
        "{tokenizer: .codelupe/tokenizer.json, sequence_length: 1024, flush_idle_ms: 5000}",
    ),
    (
        "trainer",
        "{tokenizer: .codelupe/tokenizer.json, checkpoint_dir: .codelupe/checkpoints, steps_per_run: 20, idle_checkpoint_ms: 10000, eval_batches: 2}",
    ),
];

/// The embedded default's tokenizer: fitted once on the working directory's sources.
const OFFLINE_TOKENIZER: &str = ".codelupe/tokenizer.json";

/// Starts an external stage against the same brokers, topology and config, with its
/// (possibly embedded-default) options passed through the environment.
fn external_stage(
    binary: &std::path::Path,
    name: &str,
    at: &stages::Setup<'_>,
    config: &Config,
    clients: &KafkaClients,
) -> anyhow::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(binary);
    command.arg("--topology").arg(at.topology_file);
    if let Some(file) = at.config_file {
        command.arg("--config").arg(file);
    }
    command
        .args(["stage", "--brokers", &clients.brokers])
        .env(
            "CODELUPE_LOG",
            std::env::var("CODELUPE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env(codelupe_runtime::stage::EXIT_WITH_PARENT_ENV, "1")
        .kill_on_drop(true);
    let options = &config.stage(name).options;
    if !options.is_null() {
        let var = format!("CODELUPE_STAGES__{}__OPTIONS", name.to_ascii_uppercase());
        command.env(var, serde_yaml::to_string(options)?);
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// Waits for an external stage; on shutdown asks it to stop (SIGTERM) and waits.
async fn supervise(
    mut child: tokio::process::Child,
    stage: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = shutdown.cancelled() => {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            child.wait().await?
        }
    };
    if status.success() {
        Ok(())
    } else {
        anyhow::bail!("{stage} exited with {status}")
    }
}

fn offline_defaults(config: &mut Config) {
    for (stage, options) in OFFLINE_DEFAULTS {
        let settings = config.stages.entry(stage.to_string()).or_default();
        if settings.options.is_null() {
            settings.options = serde_yaml::from_str(options).expect("static YAML");
            tracing::info!(%stage, %options, "embedded default (set stages.{stage}.options to change)");
        }
    }
}

struct Watched {
    bar: ProgressBar,
    endpoint: String,
    status: Option<String>,
    progress: &'static [(&'static str, &'static str)],
    registry: Registry,
    /// None when the stage is another process, which serves its own metrics.
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Watched {
    fn draw(&self) {
        self.bar.set_message(self.line());
        self.bar.tick();
    }

    fn line(&self) -> String {
        if let Some(status) = &self.status {
            return format!("{}  {status}", self.endpoint);
        }
        let families = self.registry.gather();
        let mut line = self.endpoint.clone();
        for (label, name) in self.progress {
            let total: f64 = families
                .iter()
                .filter(|f| f.name() == *name)
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
                .sum();
            line.push_str(&format!("  {label} {}", total as i64));
        }
        line
    }
}
