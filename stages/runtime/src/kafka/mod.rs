//! Kafka clients built one way for every stage and the start-up reachability check;
//! reading a topic to its end, a group's lag, the embedded broker and topic publishing
//! from topology.yaml each have their module.

mod admin;
mod embedded;
mod lag;
mod read;

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;

pub use admin::{apply_topology, ApplyReport};
pub use embedded::EmbeddedBroker;
pub use lag::LagReader;
pub use read::{read_from, read_partitions, read_to_end};

/// The producers' limit on one record (librdkafka's `message.max.bytes`): above the
/// largest `max.message.bytes` topology.yaml gives a topic.
pub const MAX_RECORD_BYTES: usize = 8 << 20;

/// Where the brokers are and the extra client properties; cheap to clone.
#[derive(Debug, Clone)]
pub struct KafkaClients {
    pub brokers: String,
    pub extra: Vec<(String, String)>,
    pub consumer_extra: Vec<(String, String)>,
}

impl KafkaClients {
    pub fn new(brokers: impl Into<String>, config: &KafkaConfig) -> Self {
        Self {
            brokers: brokers.into(),
            extra: config
                .client
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            consumer_extra: config
                .consumer
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn base(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id);
        for (k, v) in &self.extra {
            config.set(k, v);
        }
        config
    }

    /// Idempotent, fully acknowledged producer: a retried send never duplicates within
    /// a partition, and an ack means every in-sync replica has the record.
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut config = self.base(client_id);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "zstd")
            // The client's own cap (default 1,000,000 bytes) stays above every topic's
            // max.message.bytes, so the topic's limit is the one that counts.
            .set("message.max.bytes", MAX_RECORD_BYTES.to_string());
        config
    }

    /// Offsets are stored by the stage loop only after the outputs derived from a record
    /// are acknowledged; librdkafka's auto-commit then commits what was stored (also on
    /// partition revoke).
    pub fn consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.base(client_id);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "2000")
            // Incremental rebalancing (KIP-429): a member keeps the partitions no one
            // takes from it. Under the eager protocol every rebalance (a replica added
            // or gone, a coordinator moving) revoked every partition of every member,
            // and each read its uncommitted records again and transformed them twice.
            .set("partition.assignment.strategy", "cooperative-sticky")
            // librdkafka prefetches up to 64 MiB a consumer by default: with records of
            // whole files and up to three consumers a process (neardup), a stage's peak
            // memory followed the backlog. 16 MiB still holds many fetches ahead.
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &self.consumer_extra {
            config.set(k, v);
        }
        config
    }

    /// Clients for `brokers` once they answer, retrying as `kafka.connect_*` says.
    pub async fn connect(brokers: &str, config: &crate::config::Config) -> anyhow::Result<Self> {
        let clients = Self::new(brokers, &config.kafka);
        clients
            .wait_until_reachable(
                config.kafka.connect_attempts,
                Duration::from_millis(config.kafka.connect_backoff_ms),
            )
            .await?;
        Ok(clients)
    }

    /// Fails with one line after `attempts` tries, backing off from `first_backoff`.
    pub async fn wait_until_reachable(
        &self,
        attempts: u32,
        first_backoff: Duration,
    ) -> anyhow::Result<()> {
        let probe: BaseProducer = self
            .base("codelupe-connect-check")
            .create()
            .context("cannot create a Kafka client")?;
        let probe = std::sync::Arc::new(probe);
        let mut backoff = first_backoff;
        let mut last_error = String::new();
        for attempt in 1..=attempts.max(1) {
            let client = probe.clone();
            let result = tokio::task::spawn_blocking(move || {
                client
                    .client()
                    .fetch_metadata(None, Duration::from_secs(3))
                    .map(|_| ())
            })
            .await?;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_error = e.to_string();
                    tracing::warn!(brokers = %self.brokers, attempt, error = %last_error, "Kafka not reachable yet");
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        bail!(
            "cannot reach Kafka at {} after {} attempts: {}",
            self.brokers,
            attempts.max(1),
            last_error
        )
    }
}

impl KafkaClients {
    /// How many partitions `topic` has on the cluster.
    pub async fn partition_count(&self, topic: &str) -> anyhow::Result<i32> {
        let probe: BaseProducer = self
            .base("codelupe-metadata")
            .create()
            .context("cannot create a Kafka client")?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || partition_count(probe.client(), &topic)).await?
    }
}

/// How many partitions `topic` has; an error naming the fix when it does not exist.
/// Blocks: call it off the async workers.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot read metadata of {topic}"))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => bail!("topic {topic} does not exist (run `codelupe topology apply`)"),
    }
}
