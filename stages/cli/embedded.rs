//! `codelupe run`: every stage of topology.yaml in one process (the trainer, which
//! links libtorch, as a child process when its binary is built), each with its own
//! metrics port, on an embedded broker unless brokers are given; progress on stderr,
//! a live page on its own port, and a summary at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codelupe_runtime::config::Config;
use codelupe_runtime::descriptor::{Runs, StageDescriptor};
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
    /// Where the live page and every stage's metrics listen (config's `metrics_bind`
    /// is for `codelupe stage`).
    pub bind: std::net::IpAddr,
}

pub async fn run_all(
    options: RunOptions,
    at: stages::Setup<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let topology = at.topology;
    let mut config = at.config.clone();
    // The embedded broker lives until every stage has left its group.
    let (clients, _embedded) = connect(options.brokers.as_deref(), &mut config, topology).await?;
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(2));
    let mut tasks = JoinSet::new();
    let mut launched = Vec::new();
    for name in &pipeline_order(topology) {
        let mut runtime =
            StageRuntime::resolve(name, topology, &config, clients.clone(), shutdown.clone())?;
        runtime.metrics_addr.set_ip(options.bind);
        let stage = launch(runtime, &at, &config, &clients, &mut tasks, &shutdown).await?;
        launched.push(stage);
    }
    let watched: Vec<Watched> = launched
        .iter()
        .map(|stage| Watched::new(stage, &progress))
        .collect();
    let tracked = launched.iter().map(Launched::tracked).collect();
    let status_url = launched.iter().find_map(|s| s.status_url.clone());
    let page_stop = CancellationToken::new();
    let page = live::start(
        std::net::SocketAddr::new(options.bind, options.page_port),
        tracked,
        topology,
        clients.clone(),
        status_url,
        page_stop.clone(),
    )
    .await?;
    eprintln!("live page: http://localhost:{}/", options.page_port);

    let failure = supervise_stages(&mut tasks, &watched, &progress, options.limit, &shutdown).await;
    for w in watched {
        w.bar.finish_with_message(w.line());
    }
    for stage in &mut launched {
        if let Some(server) = stage.server.take() {
            let _ = server.await;
        }
    }
    page_stop.cancel();
    let board = page.await.context("the live page's task panicked")?;
    let parts: Vec<summary::Part> = launched
        .iter()
        .map(|stage| summary::Part {
            stage: stage.descriptor,
            options: config
                .stages
                .get(stage.descriptor.name)
                .map(|s| &s.options)
                .filter(|o| !o.is_null()),
            not_running: stage.not_running.as_deref(),
        })
        .collect();
    print!("{}", summary::render(&board, started.elapsed(), &parts));
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Clients for `brokers`; without them, an embedded broker (returned, to keep it alive)
/// with every stage's embedded-default options filled in and prepared.
async fn connect(
    brokers: Option<&str>,
    config: &mut Config,
    topology: &codelupe_runtime::topology::Topology,
) -> anyhow::Result<(KafkaClients, Option<(EmbeddedBroker, AddressFile)>)> {
    if let Some(brokers) = brokers {
        return Ok((KafkaClients::connect(brokers, config).await?, None));
    }
    offline_defaults(config);
    for stage in stages::STAGES {
        if let Some(prepare) = stage.prepare_offline {
            prepare(config)
                .await
                .with_context(|| format!("preparing {} for the embedded default", stage.name))?;
        }
    }
    let broker = EmbeddedBroker::start(topology)?;
    tracing::info!(bootstrap = %broker.bootstrap_servers(), "embedded Kafka broker started (no brokers configured)");
    let address_file = AddressFile::write(&broker.bootstrap_servers())?;
    let clients = KafkaClients::new(broker.bootstrap_servers(), &config.kafka);
    Ok((clients, Some((broker, address_file))))
}

/// One stage as `codelupe run` started it.
struct Launched {
    descriptor: &'static StageDescriptor,
    registry: Registry,
    endpoint: String,
    /// Set when it does not run in this process: `own process …` or `not running: …`.
    note: Option<String>,
    /// Why it is not running at all.
    not_running: Option<String>,
    /// Its metrics server, when it runs in this process (or stands in for it).
    server: Option<tokio::task::JoinHandle<()>>,
    /// Its `/status`, when it runs as its own process.
    status_url: Option<String>,
}

impl Launched {
    fn tracked(&self) -> live::Tracked {
        live::Tracked {
            name: self.descriptor.name.to_string(),
            registry: self.server.is_some().then(|| self.registry.clone()),
            flow: self.descriptor.flow.as_ref(),
            progress: self.descriptor.progress,
            note: self.note.clone(),
        }
    }
}

/// Starts one stage: in this process, as its own process, or (its binary missing) as
/// its contract metrics at zero with a not-ready `/readyz` saying what is missing.
async fn launch(
    runtime: StageRuntime,
    at: &stages::Setup<'_>,
    config: &Config,
    clients: &KafkaClients,
    tasks: &mut JoinSet<(String, anyhow::Result<()>)>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Launched> {
    let descriptor = stages::entry(&runtime.name)?;
    let name = runtime.name.clone();
    let mut stage = Launched {
        descriptor,
        registry: runtime.registry.clone(),
        endpoint: format!("http://{}{}", runtime.metrics_addr, runtime.metrics_path),
        note: None,
        not_running: None,
        server: None,
        status_url: None,
    };
    match descriptor.runs {
        Runs::InProcess(launch) => {
            stage.server = Some(runtime.serve_metrics().await?);
            let fut = launch(runtime);
            let stage_name = name.clone();
            tasks.spawn(async move { (stage_name, fut.await) });
        }
        Runs::External {
            binary,
            contract_metrics,
        } => match stages::find_binary(binary) {
            Ok(path) => {
                let bind = runtime.metrics_addr.ip();
                let child = external_stage(&path, &name, bind, at, config, clients)?;
                let pid = child.id().unwrap_or(0);
                stage.note = Some(format!("own process {binary} (pid {pid})"));
                let port = runtime.metrics_addr.port();
                stage.status_url = Some(format!("http://127.0.0.1:{port}/status"));
                let stop = shutdown.clone();
                let stage_name = name.clone();
                tasks.spawn(async move {
                    let result = supervise(child, &stage_name, stop).await;
                    (stage_name, result)
                });
            }
            Err(e) => {
                // Its metrics stay scrapeable (at zero); /readyz says what is missing.
                contract_metrics(&runtime.registry)?;
                runtime.readiness.set_not_ready(format!("{e:#}"));
                stage.not_running = Some(format!("{binary} is not built"));
                stage.note = Some(format!("not running: {binary} is not built"));
                stage.server = Some(runtime.serve_metrics().await?);
            }
        },
    }
    let status = stage.note.as_deref().unwrap_or("running");
    tracing::info!(stage = %name, endpoint = %stage.endpoint, status, "stage started");
    Ok(stage)
}

/// Draws progress until Ctrl-C, the time limit or a stage's failure, then stops every
/// stage and waits for them; the first failure, if any.
async fn supervise_stages(
    tasks: &mut JoinSet<(String, anyhow::Result<()>)>,
    watched: &[Watched],
    progress: &MultiProgress,
    limit: Option<Duration>,
    shutdown: &CancellationToken,
) -> Option<anyhow::Error> {
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
            Some(joined) = tasks.join_next() => match joined {
                Ok((_, Ok(()))) => {}
                Ok((stage, Err(e))) => {
                    failure = Some(e.context(format!("stage {stage} failed")));
                    break;
                }
                Err(e) => {
                    failure = Some(anyhow::Error::from(e).context("a stage task panicked"));
                    break;
                }
            },
            _ = tick.tick() => watched.iter().for_each(Watched::draw),
            _ = report.tick(), if progress.is_hidden() => {
                for w in watched {
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
    failure
}

/// Starts an external stage against the same brokers, topology and config, with its
/// (possibly embedded-default) options passed through the environment.
fn external_stage(
    binary: &std::path::Path,
    name: &str,
    bind: std::net::IpAddr,
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
        .env(
            format!(
                "CODELUPE_STAGES__{}__METRICS_BIND",
                name.to_ascii_uppercase()
            ),
            bind.to_string(),
        )
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

/// Options a stage gets on the embedded default when the config gives none: with no
/// network, each stage's `offline_options` (the crawler reads the git repositories
/// under the working directory, the downloader clones them locally, …), and the clone
/// store in `.codelupe/clones`.
fn offline_defaults(config: &mut Config) {
    if config.clone_store.url.is_none() {
        let url = ".codelupe/clones";
        tracing::info!(%url, "embedded default (set clone_store.url to change)");
        config.clone_store.url = Some(url.into());
    }
    for stage in stages::STAGES {
        let settings = config.stages.entry(stage.name.to_string()).or_default();
        if settings.options.is_null() {
            let options = stage.offline_options;
            settings.options = serde_yaml::from_str(options).expect("static YAML");
            let name = stage.name;
            tracing::info!(stage = name, %options, "embedded default (set stages.{name}.options to change)");
        }
    }
}

struct Watched {
    bar: ProgressBar,
    endpoint: String,
    status: Option<String>,
    progress: &'static [(&'static str, &'static str)],
    registry: Registry,
}

impl Watched {
    fn new(stage: &Launched, bars: &MultiProgress) -> Self {
        let style =
            ProgressStyle::with_template("{prefix:>11} {spinner} {msg}").expect("static template");
        let bar = bars.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(stage.descriptor.name),
        );
        Self {
            bar,
            endpoint: stage.endpoint.clone(),
            status: stage.note.clone(),
            progress: stage.descriptor.progress,
            registry: stage.registry.clone(),
        }
    }

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
