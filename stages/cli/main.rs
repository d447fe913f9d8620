//! `codelupe`: runs one stage against a Kafka cluster (`stage`), every stage in one
//! process (`run`, on an embedded broker by default), and publishes topics from
//! topology.yaml (`topology`).

mod embedded;
mod stages;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::{apply_topology, KafkaClients};
use codelupe_runtime::topology::{Discovery, Topology};
use codelupe_runtime::StageRuntime;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "codelupe",
    version,
    about = "A streaming pipeline from public repositories to a continuously trained code model"
)]
struct Cli {
    /// Config file (YAML); `CODELUPE_*` environment variables override it.
    #[arg(long, global = true, env = "CODELUPE_CONFIG")]
    config: Option<PathBuf>,
    /// topology.yaml to use instead of the config's `topology` key.
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every stage in one process: on an embedded broker, or on --brokers.
    Run {
        /// Kafka bootstrap servers; without them (and without kafka.brokers) an
        /// embedded broker is started in-process.
        #[arg(long)]
        brokers: Option<String>,
        /// Stop after this many seconds instead of at Ctrl-C.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Run one replica of one stage against a Kafka cluster.
    Stage {
        name: String,
        #[arg(long)]
        brokers: Option<String>,
        /// Source stages: one pass, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Validate, publish, or render scrape config from topology.yaml.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Validate the file: declared topics, schemas that parse, ports, replicas.
    Check,
    /// Create missing topics and grow partitions; report config drift. Idempotent.
    Apply {
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Print a Prometheus config scraping every stage (every replica, via DNS).
    Prometheus {
        /// Scrape HOST:port for each stage instead of discovering replicas by DNS.
        #[arg(long, value_name = "HOST")]
        static_host: Option<String>,
        /// Rule files to list in the config.
        #[arg(long = "rule-file")]
        rule_files: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CODELUPE_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let topology_path = cli
        .topology
        .clone()
        .unwrap_or_else(|| config.topology.clone());
    let topology = Topology::load(&topology_path)?;
    StageRuntime::check_stage_sections(&topology, &config)?;
    match cli.command {
        Command::Topology { action } => {
            topology_command(action, &config, &topology, &topology_path).await
        }
        Command::Stage {
            name,
            brokers,
            once,
        } => {
            let brokers = brokers.or(config.kafka.brokers.clone()).with_context(|| {
                format!("stage {name} needs Kafka: pass --brokers or set kafka.brokers (the embedded broker is for `codelupe run`)")
            })?;
            let clients = connect(&brokers, &config).await?;
            let shutdown = shutdown_on_signal();
            stages::run_one(&name, &topology, &config, clients, shutdown, once).await
        }
        Command::Run { brokers, seconds } => {
            embedded::run_all(
                brokers.or(config.kafka.brokers.clone()),
                seconds.map(Duration::from_secs),
                &topology,
                &config,
                shutdown_on_signal(),
            )
            .await
        }
    }
}

async fn topology_command(
    action: TopologyAction,
    config: &Config,
    topology: &Topology,
    path: &Path,
) -> anyhow::Result<()> {
    match action {
        TopologyAction::Check => {
            println!(
                "{}: {} topics, {} stages: ok",
                path.display(),
                topology.topics.len(),
                topology.stages.len()
            );
            for topic in topology.unfed_inputs() {
                println!("note: no stage writes {topic}, which a stage reads");
            }
            Ok(())
        }
        TopologyAction::Apply { brokers } => {
            let Some(brokers) = brokers.or(config.kafka.brokers.clone()) else {
                bail!("topology apply needs Kafka: pass --brokers or set kafka.brokers");
            };
            let clients = connect(&brokers, config).await?;
            let report = apply_topology(&clients, topology).await?;
            for name in &report.created {
                println!("created {name}");
            }
            for name in &report.grown {
                println!(
                    "grew {name} to {} partitions",
                    topology.topics[name].partitions
                );
            }
            for line in &report.drift {
                println!("drift: {line}");
            }
            if !report.changed() {
                println!("no changes: {} topics match", report.unchanged.len());
            }
            Ok(())
        }
        TopologyAction::Prometheus {
            static_host,
            rule_files,
        } => {
            let discovery = match static_host {
                Some(host) => Discovery::Static { host },
                None => Discovery::Dns { rule_files },
            };
            print!("{}", topology.prometheus_config(&discovery));
            Ok(())
        }
    }
}

async fn connect(brokers: &str, config: &Config) -> anyhow::Result<KafkaClients> {
    let clients = KafkaClients::new(brokers, &config.kafka);
    clients
        .wait_until_reachable(
            config.kafka.connect_attempts,
            Duration::from_millis(config.kafka.connect_backoff_ms),
        )
        .await?;
    Ok(clients)
}

/// Cancelled on the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        for round in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round > 0 {
                eprintln!("second signal: exiting without waiting");
                std::process::exit(130);
            }
            tracing::info!("shutting down: finishing in-flight records (signal again to exit now)");
            cancel.cancel();
        }
    });
    token
}
