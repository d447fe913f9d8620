//! `topology.yaml`: the topics and the stages that join them. Read by topic publishing
//! (`codelupe topology apply`), by every stage at start, and by the Prometheus scrape
//! config renderer, so the three can never disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub topics: BTreeMap<String, TopicSpec>,
    pub stages: BTreeMap<String, StageSpec>,
    /// Directory the file was read from; schema paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_kafka(&self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    pub cleanup_policy: CleanupPolicy,
    /// Avro schema of the values, relative to topology.yaml.
    pub schema: PathBuf,
    /// Further topic configs (e.g. `max.message.bytes`), set at creation and checked for drift.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Kafka's default `max.message.bytes` for a topic.
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

impl TopicSpec {
    /// The largest record the topic takes: its `max.message.bytes` as declared, or
    /// Kafka's default.
    pub fn max_message_bytes(&self) -> usize {
        self.config
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// Every topic config the topology declares, as Kafka names them.
    pub fn kafka_configs(&self) -> Vec<(String, String)> {
        let mut configs = vec![
            ("retention.ms".to_string(), self.retention_ms.to_string()),
            (
                "cleanup.policy".to_string(),
                self.cleanup_policy.as_kafka().to_string(),
            ),
        ];
        configs.extend(self.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        configs
    }
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub input: Option<String>,
    pub output: Option<String>,
    /// Consumer group; required when the stage has an input.
    pub group: Option<String>,
    pub metrics: MetricsEndpoint,
    pub replicas: u32,
    /// The binary that runs this stage (the trainer links libtorch and ships apart).
    #[serde(default = "default_binary")]
    pub binary: String,
}

fn default_binary() -> String {
    "codelupe".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsEndpoint {
    pub port: u16,
    pub path: String,
    /// Prometheus scrape interval for this stage.
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: String,
}

fn default_scrape_interval() -> String {
    "15s".into()
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("topology file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("topology file {path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Topology {
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.into(),
            source,
        })?;
        let value: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| TopologyError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        let mut topology: Topology =
            crate::config::from_value(value, "").map_err(|e| TopologyError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        topology.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let problems = topology.problems();
        if !problems.is_empty() {
            return Err(TopologyError::Invalid {
                path: path.into(),
                problems,
            });
        }
        Ok(topology)
    }

    pub fn schema_path(&self, topic: &TopicSpec) -> PathBuf {
        self.base_dir.join(&topic.schema)
    }

    /// Everything wrong with the file, each a sentence naming the offending entry.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, topic) in &self.topics {
            if topic.partitions < 1 {
                problems.push(format!("topic {name}: partitions must be at least 1"));
            }
            if topic.replication_factor < 1 {
                problems.push(format!(
                    "topic {name}: replication_factor must be at least 1"
                ));
            }
            if topic.retention_ms < -1 || topic.retention_ms == 0 {
                problems.push(format!(
                    "topic {name}: retention_ms must be positive, or -1 to keep forever"
                ));
            }
            let schema = self.schema_path(topic);
            match std::fs::read_to_string(&schema) {
                Err(e) => problems.push(format!(
                    "topic {name}: schema {} cannot be read: {e}",
                    schema.display()
                )),
                Ok(text) => {
                    if let Err(e) = text.parse::<serde_avro_fast::Schema>() {
                        problems.push(format!(
                            "topic {name}: schema {} is not a valid Avro schema: {e}",
                            schema.display()
                        ));
                    }
                }
            }
        }
        let mut ports = BTreeMap::new();
        for (name, stage) in &self.stages {
            for (role, topic) in [("input", &stage.input), ("output", &stage.output)] {
                if let Some(topic) = topic {
                    if !self.topics.contains_key(topic) {
                        problems.push(format!(
                            "stage {name}: {role} topic {topic} is not declared under topics"
                        ));
                    }
                }
            }
            match (&stage.input, &stage.group) {
                (Some(_), None) => {
                    problems.push(format!("stage {name}: has an input but no consumer group"))
                }
                (None, Some(_)) => {
                    problems.push(format!("stage {name}: has a consumer group but no input"))
                }
                _ => {}
            }
            if stage.replicas < 1 {
                problems.push(format!("stage {name}: replicas must be at least 1"));
            }
            if let Some(topic) = stage.input.as_ref().and_then(|t| self.topics.get(t)) {
                if stage.replicas as i64 > topic.partitions as i64 {
                    problems.push(format!(
                        "stage {name}: {} replicas but its input has {} partitions, so some would idle",
                        stage.replicas, topic.partitions
                    ));
                }
            }
            if !stage.metrics.path.starts_with('/') {
                problems.push(format!("stage {name}: metrics path must start with /"));
            }
            if let Some(other) = ports.insert(stage.metrics.port, name) {
                problems.push(format!(
                    "stage {name}: metrics port {} is also {other}'s",
                    stage.metrics.port
                ));
            }
        }
        problems
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.get(name)
    }

    /// Topics no stage reads or writes are fine (e.g. dead letters); this lists those a
    /// stage reads that no stage writes, which is worth a warning in `check`.
    pub fn unfed_inputs(&self) -> BTreeSet<&str> {
        let outputs: BTreeSet<_> = self
            .stages
            .values()
            .filter_map(|s| s.output.as_deref())
            .collect();
        self.stages
            .values()
            .filter_map(|s| s.input.as_deref())
            .filter(|t| !outputs.contains(t))
            .collect()
    }

    /// The first topic (by name) whose values are `R` records, by its schema file.
    pub fn topic_of<R: crate::AvroRecord>(&self) -> Option<&str> {
        self.topics
            .iter()
            .find(|(_, spec)| spec.schema.file_name() == Some(R::SCHEMA_FILE.as_ref()))
            .map(|(name, _)| name.as_str())
    }

    /// A Prometheus config that scrapes every stage. `Discovery::Dns` finds every replica
    /// of a scaled Compose service through Docker's DNS (one A record per container);
    /// `Discovery::Static` points at one host, for local runs and tests.
    pub fn prometheus_config(&self, discovery: &Discovery) -> String {
        let mut out = String::from(
            "# Rendered from topology.yaml by `codelupe topology prometheus`; edit that file, not this one.\n\
             global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n",
        );
        if let Discovery::Dns { rule_files } = discovery {
            if !rule_files.is_empty() {
                out.push_str("rule_files:\n");
                for file in rule_files {
                    out.push_str(&format!("  - {file}\n"));
                }
            }
        }
        out.push_str("scrape_configs:\n");
        for (name, stage) in &self.stages {
            let m = &stage.metrics;
            out.push_str(&format!(
                "  - job_name: {name}\n    scrape_interval: {}\n    metrics_path: {}\n",
                m.scrape_interval, m.path
            ));
            match discovery {
                Discovery::Dns { .. } => out.push_str(&format!(
                    "    dns_sd_configs:\n      - names: [{name}]\n        type: A\n        port: {}\n        refresh_interval: 15s\n",
                    m.port
                )),
                Discovery::Static { host } => out.push_str(&format!(
                    "    static_configs:\n      - targets: ['{host}:{}']\n",
                    m.port
                )),
            }
        }
        out
    }
}

pub enum Discovery {
    Dns { rule_files: Vec<String> },
    Static { host: String },
}
