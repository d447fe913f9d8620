//! `codelupe run`: every stage of topology.yaml in one process (the trainer, which
//! links libtorch, as a child process when its binary is built), each with its own
//! metrics port, on an embedded broker unless brokers are given; progress on stderr,
//! a live page on its own port, and a summary at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::{EmbeddedBroker, KafkaClients};
use codelupe_runtime::StageRuntime;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prometheus::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{live, stages, summary, tail};

pub struct RunOptions {
    pub brokers: Option<String>,
    /// Stop after this long instead of at Ctrl-C.
    pub limit: Option<Duration>,
    /// The live page's port.
    pub page_port: u16,
}

pub async fn run_all(
    options: RunOptions,
    at: stages::Setup<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let RunOptions {
        brokers,
        limit,
        page_port,
    } = options;
    let started = Instant::now();
    let topology = at.topology;
    // The embedded broker lives until every stage has left its group.
    let mut config = at.config.clone();
    let (clients, _embedded, _address_file) = match brokers {
        Some(brokers) => (KafkaClients::connect(&brokers, &config).await?, None, None),
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
            let address_file = AddressFile::write(&broker.bootstrap_servers())?;
            (
                KafkaClients::new(broker.bootstrap_servers(), &config.kafka),
                Some(broker),
                Some(address_file),
            )
        }
    };

    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(2));
    let style =
        ProgressStyle::with_template("{prefix:>11} {spinner} {msg}").expect("static template");
    let mut tasks = JoinSet::new();
    let mut watched = Vec::new();
    let mut tracked = Vec::new();
    let mut trainer_status_url = None;
    let mut trainer_missing = None;
    for name in &pipeline_order(topology) {
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
                    trainer_status_url = Some(format!(
                        "http://127.0.0.1:{}/status",
                        runtime.metrics_addr.port()
                    ));
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
                    trainer_missing = Some(format!("{binary} is not built"));
                    let server = runtime.serve_metrics().await?;
                    (
                        Some(format!("not running: {binary} is not built")),
                        Some(server),
                    )
                }
            },
        };
        tracing::info!(stage = %name, %endpoint, status = status.as_deref().unwrap_or("running"), "stage started");
        tracked.push(live::Tracked {
            name: name.clone(),
            registry: server.is_some().then(|| runtime.registry.clone()),
            flow: entry.flow.as_ref(),
            progress: entry.progress,
            note: status.clone(),
        });
        watched.push(Watched {
            bar,
            endpoint,
            status,
            progress: entry.progress,
            registry: runtime.registry.clone(),
            server,
        });
    }

    let page_stop = CancellationToken::new();
    let page = live::start(
        page_port,
        tracked,
        topology,
        clients.clone(),
        trainer_status_url,
        page_stop.clone(),
    )
    .await?;
    eprintln!("live page: http://localhost:{page_port}/");

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
    page_stop.cancel();
    let board = page.await.context("the live page's task panicked")?;
    let checkpoint_root = config
        .stage(codelupe_trainer_api::STAGE)
        .options
        .get("checkpoint_dir")
        .and_then(|v| v.as_str())
        .map_or_else(|| PathBuf::from("checkpoints"), PathBuf::from);
    print!(
        "{}",
        summary::render(
            &board,
            started.elapsed(),
            &checkpoint_root,
            trainer_missing.as_deref()
        )
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Options a stage gets on the embedded default when the config gives none: with no
/// network, the crawler reads the git repositories under the working directory, the
/// downloader clones them locally into `.codelupe/clones`, the processor reads them there
/// and the batcher uses a tokenizer fitted on the working directory. Batches are small
/// and a tenth of the files held out, so the tiny model on a CPU checkpoints and
/// evaluates within a minute or two of its first batch, with a short warm-up so the
/// loss visibly falls over the few hundred steps a working directory gives.
const OFFLINE_DEFAULTS: &[(&str, &str)] = &[
    ("crawler", "{source: local_folder, local_folder: ., interval_s: 60}"),
    (
        "downloader",
        "{store: .codelupe/clones, urls: {allow_local: true}, filter: {min_stars: 0, languages: [], exclude_words: []}}",
    ),
    ("processor", "{store: .codelupe/clones}"),
    (
        "batcher",
        "{tokenizer: .codelupe/tokenizer.json, sequence_length: 512, flush_idle_ms: 5000, document: {eval_share: 0.1}}",
    ),
    (
        "trainer",
        "{tokenizer: .codelupe/tokenizer.json, checkpoint_dir: .codelupe/checkpoints, resume_offsets: false, steps_per_run: 10, idle_checkpoint_ms: 10000, eval_batches: 2, optimizer: {learning_rate: 0.001, min_learning_rate: 0.0001, warmup_steps: 5, decay_steps: 2000}}",
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

/// The stages from the source down the topics (topology.yaml lists them by name).
fn pipeline_order(topology: &codelupe_runtime::topology::Topology) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut next: Option<String> = None;
    while order.len() < topology.stages.len() {
        let found = topology.stages.iter().find(|(name, stage)| {
            !order.contains(name)
                && match &next {
                    Some(topic) => stage.input.as_deref() == Some(topic.as_str()),
                    None => stage.input.is_none(),
                }
        });
        match found {
            Some((name, stage)) => {
                order.push(name.clone());
                next = stage.output.clone();
            }
            // Not a single chain: the rest in name order.
            None => {
                let rest: Vec<String> = topology
                    .stages
                    .keys()
                    .filter(|n| !order.contains(n))
                    .cloned()
                    .collect();
                order.extend(rest);
            }
        }
    }
    order
}

/// `.codelupe/broker` while the embedded broker runs, so `codelupe tail` finds it;
/// removed when the run ends.
struct AddressFile(PathBuf);

impl AddressFile {
    fn write(bootstrap: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from(tail::EMBEDDED_BROKER_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, format!("{bootstrap}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for AddressFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
            let total = live::metric_total(&families, name);
            line.push_str(&format!("  {label} {}", total as i64));
        }
        line
    }
}
