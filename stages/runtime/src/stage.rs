//! What one stage process (or one stage inside `codelupe run`) is handed: its resolved
//! topics and group, Kafka clients, metrics registry, readiness and shutdown signal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{CloneStoreConfig, Config, StageSettings};
use crate::kafka::KafkaClients;
use crate::records::DeadLetter;
use crate::telemetry::{self, Readiness};
use crate::topology::Topology;

#[derive(Clone)]
pub struct StageRuntime {
    pub name: String,
    pub input: Option<String>,
    pub output: Option<String>,
    pub group: Option<String>,
    pub metrics_addr: SocketAddr,
    pub metrics_path: String,
    pub dead_letter_topic: String,
    /// The largest record each topic of topology.yaml takes (its `max.message.bytes`).
    pub topic_max_bytes: Arc<BTreeMap<String, usize>>,
    /// The topology the stage was resolved from.
    pub topology: Arc<Topology>,
    pub settings: StageSettings,
    /// The clone store's place, the same for every stage that uses it.
    pub clone_store: CloneStoreConfig,
    pub clients: KafkaClients,
    pub registry: Registry,
    pub readiness: Arc<Readiness>,
    pub shutdown: CancellationToken,
    /// One pass, then exit (source stages; `--once`).
    pub once: bool,
}

impl StageRuntime {
    /// The consumer groups topology.yaml has reading `topic`.
    pub fn groups_reading(&self, topic: &str) -> Vec<String> {
        let stages = self.topology.stages.values();
        let reading = stages.filter(|spec| spec.input.as_deref() == Some(topic));
        reading.filter_map(|spec| spec.group.clone()).collect()
    }

    /// Refuses to start a stage whose records can be larger than its output topic
    /// takes: such a record would be refused and dead-lettered at run time instead.
    /// `largest` is the stage's bound on one record; `bound_by` names the option.
    pub fn check_output_fits(&self, largest: usize, bound_by: &str) -> anyhow::Result<()> {
        let (Some(topic), Some(limit)) = (&self.output, self.output_max_bytes()) else {
            return Ok(());
        };
        if largest > limit {
            bail!(
                "stage {}: a record can reach {largest} bytes ({bound_by}), but topic {topic} \
                 takes at most {limit} (max.message.bytes): raise the topic's \
                 max.message.bytes in topology.yaml or lower the option",
                self.name
            );
        }
        Ok(())
    }

    /// The largest record the output topic takes.
    pub fn output_max_bytes(&self) -> Option<usize> {
        self.topic_max_bytes(self.output.as_deref()?)
    }

    /// The topic of `R` records: `chosen` (a stage's option) when set, else the one
    /// topology.yaml gives `R`'s schema. For a stage that reads or writes a kind of
    /// record beside its input and output (the processor's summaries).
    pub fn topic_of<R: crate::AvroRecord>(&self, chosen: Option<&str>) -> anyhow::Result<String> {
        let topic = match chosen {
            Some(topic) => topic,
            None => self.topology.topic_of::<R>().ok_or_else(|| {
                anyhow!(
                    "stage {}: no topic of topology.yaml holds {} records",
                    self.name,
                    R::SCHEMA_FILE
                )
            })?,
        };
        if !self.topic_max_bytes.contains_key(topic) {
            bail!(
                "stage {}: topic {topic} is not declared in topology.yaml",
                self.name
            );
        }
        Ok(topic.to_string())
    }

    /// The largest record the input topic takes.
    pub fn input_max_bytes(&self) -> Option<usize> {
        self.topic_max_bytes(self.input.as_deref()?)
    }

    /// The largest record `topic` takes, if topology.yaml declares it.
    pub fn topic_max_bytes(&self, topic: &str) -> Option<usize> {
        self.topic_max_bytes.get(topic).copied()
    }

    /// Topology entry overridden by the config's `stages.<name>` section.
    pub fn resolve(
        name: &str,
        topology: &Topology,
        config: &Config,
        clients: KafkaClients,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let spec = topology
            .stage(name)
            .ok_or_else(|| anyhow!("stage {name} is not declared in topology.yaml"))?;
        let settings = config.stage(name);
        let input = settings.input.clone().or_else(|| spec.input.clone());
        let output = settings.output.clone().or_else(|| spec.output.clone());
        for topic in input.iter().chain(output.iter()) {
            if !topology.topics.contains_key(topic) {
                bail!("stage {name}: topic {topic} is not declared in topology.yaml");
            }
        }
        if !topology
            .topics
            .contains_key(&config.kafka.dead_letter_topic)
        {
            bail!(
                "config key `kafka.dead_letter_topic`: topic {} is not declared in topology.yaml",
                config.kafka.dead_letter_topic
            );
        }
        let letters_take = topology.topics[&config.kafka.dead_letter_topic].max_message_bytes();
        if letters_take < DeadLetter::MAX_BYTES {
            bail!(
                "topic {}: its max.message.bytes ({letters_take}) is below the largest dead \
                 letter ({} bytes): a refused letter would stop the stage",
                config.kafka.dead_letter_topic,
                DeadLetter::MAX_BYTES
            );
        }
        let port = settings.metrics_port.unwrap_or(spec.metrics.port);
        Ok(Self {
            name: name.to_string(),
            group: settings.group.clone().or_else(|| spec.group.clone()),
            input,
            output,
            topic_max_bytes: Arc::new(
                topology
                    .topics
                    .iter()
                    .map(|(name, spec)| (name.clone(), spec.max_message_bytes()))
                    .collect(),
            ),
            topology: Arc::new(topology.clone()),
            metrics_addr: SocketAddr::new(settings.metrics_bind, port),
            metrics_path: spec.metrics.path.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            settings,
            clone_store: config.clone_store.clone(),
            clients,
            registry: telemetry::new_registry(),
            readiness: Readiness::new("starting"),
            shutdown,
            once: false,
        })
    }

    /// Config keys under `stages.<name>` that a stage did not expect are caught when
    /// the stage reads its options; this checks the section names themselves.
    pub fn check_stage_sections(topology: &Topology, config: &Config) -> anyhow::Result<()> {
        for name in config.stages.keys() {
            if topology.stage(name).is_none() {
                bail!("config key `stages.{name}`: no stage of that name in topology.yaml");
            }
        }
        Ok(())
    }

    pub async fn serve_metrics(&self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        telemetry::serve(
            self.metrics_addr,
            self.metrics_path.clone(),
            self.registry.clone(),
            self.readiness.clone(),
            self.shutdown.clone(),
        )
        .await
    }

    pub fn require_input(&self) -> anyhow::Result<(&str, &str)> {
        match (&self.input, &self.group) {
            (Some(input), Some(group)) => Ok((input, group)),
            _ => bail!(
                "stage {} needs an input topic and a consumer group",
                self.name
            ),
        }
    }

    /// Cancelled `drain_timeout_ms` after shutdown starts: what is still running then
    /// is abandoned uncommitted (the next owner of its partition replays it).
    pub fn drain_deadline(&self) -> CancellationToken {
        let deadline = CancellationToken::new();
        let (shutdown, expire) = (self.shutdown.clone(), deadline.clone());
        let drain = std::time::Duration::from_millis(self.settings.drain_timeout_ms);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
            expire.cancel();
        });
        deadline
    }

    pub fn client_id(&self) -> String {
        format!("codelupe-{}", self.name)
    }
}

/// One of several consume loops in one stage process: its own input, output and group.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    /// The value of the `loop` label on its loop metrics.
    pub name: &'static str,
    pub input: String,
    /// None: a loop that publishes nothing (the export's).
    pub output: Option<String>,
    pub group: String,
}

impl StageRuntime {
    /// Runtimes for several consume loops in this stage's process (the near-duplicate
    /// stage runs three). Each loop registers the loop metrics in a registry of its own,
    /// served on the stage's port with `loop="<name>"` added; the stage is ready when
    /// every loop is, and shutting it down shuts them all. A stage calls this once.
    pub fn loops(&self, specs: &[LoopSpec]) -> anyhow::Result<Vec<StageRuntime>> {
        let mut runtimes = Vec::with_capacity(specs.len());
        let mut registries = Vec::with_capacity(specs.len());
        for spec in specs {
            let labels =
                std::collections::HashMap::from([("loop".to_string(), spec.name.to_string())]);
            let registry = Registry::new_custom(None, Some(labels))?;
            registries.push(registry.clone());
            // The stage's name stays: dead letters and client ids name the stage.
            runtimes.push(StageRuntime {
                input: Some(spec.input.clone()),
                output: spec.output.clone(),
                group: Some(spec.group.clone()),
                registry,
                readiness: Readiness::new("starting"),
                ..self.clone()
            });
        }
        self.registry
            .register(Box::new(telemetry::Nested(registries)))
            .map_err(|e| anyhow!("stage {}: loop metrics: {e}", self.name))?;
        let (parts, whole, shutdown) = (
            runtimes
                .iter()
                .map(|r| r.readiness.clone())
                .collect::<Vec<_>>(),
            self.readiness.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                match parts.iter().find(|r| !r.is_ready()) {
                    Some(waiting) => whole.set_not_ready(waiting.reason()),
                    None => whole.set_ready(),
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        Ok(runtimes)
    }
}

/// Connects to `brokers` (retrying as the config says), resolves stage `name`, serves
/// its metrics and runs `launch` until it returns; the one way a stage process starts.
pub async fn run_stage<F, Fut>(
    name: &str,
    brokers: &str,
    topology: &Topology,
    config: &Config,
    once: bool,
    launch: F,
) -> anyhow::Result<()>
where
    F: FnOnce(StageRuntime) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let clients = KafkaClients::connect(brokers, config).await?;
    let shutdown = shutdown_on_signal();
    let mut runtime = StageRuntime::resolve(name, topology, config, clients, shutdown.clone())?;
    runtime.once = once;
    let server = runtime.serve_metrics().await?;
    let result = launch(runtime).await;
    shutdown.cancel();
    let _ = server.await;
    result
}

/// Set by `codelupe run` on the stages it starts as child processes.
pub const EXIT_WITH_PARENT_ENV: &str = "CODELUPE_EXIT_WITH_PARENT";

/// Cancelled on the first SIGINT or SIGTERM (a second one exits at once), and, in a
/// child process started by `codelupe run`, when that parent dies (even by SIGKILL,
/// which it cannot pass on): the orphan would otherwise keep its port.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    if std::env::var_os(EXIT_WITH_PARENT_ENV).is_some() {
        let (cancel, parent) = (token.clone(), std::os::unix::process::parent_id());
        tokio::spawn(async move {
            while std::os::unix::process::parent_id() == parent {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::warn!("the parent process is gone: shutting down");
            cancel.cancel();
        });
    }
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
            tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
            cancel.cancel();
        }
    });
    token
}
