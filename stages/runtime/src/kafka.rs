//! Kafka clients built one way for every stage, the start-up reachability check, the
//! embedded broker, and topic publishing from topology.yaml.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::topology::Topology;

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
            .set("statistics.interval.ms", "2000");
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

/// A reader that asks for end-of-partition events to know it has read everything;
/// librdkafka also reports them as client errors, which are not worth a log line.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "state reader");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Reads `partitions` of `topic` (all when None) from the beginning to their current
/// end with read_committed isolation, folding each (key, payload) into `state`;
/// `apply` may stop early with `ControlFlow::Break`. For state kept in compacted
/// topics, and for samples of a topic.
pub async fn read_to_end<S, F>(
    clients: &KafkaClients,
    topic: &str,
    partitions: Option<Vec<i32>>,
    mut state: S,
    mut apply: F,
) -> anyhow::Result<S>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8], Option<&[u8]>) -> anyhow::Result<ControlFlow<()>> + Send + 'static,
{
    let consumer: BaseConsumer<QuietEof> = clients
        .base("codelupe-state-reader")
        .set("group.id", "codelupe-state-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // The end of an idle partition is only reported when a fetch returns.
        .set("fetch.wait.max.ms", "20")
        .create_with_context(QuietEof)
        .context("cannot create a topic reader")?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let partitions = match partitions {
            Some(partitions) => partitions,
            None => (0..partition_count(consumer.client(), &topic)?).collect(),
        };
        let mut list = TopicPartitionList::new();
        for &p in &partitions {
            list.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        // A partition reports its end again after each new record: count partitions
        // that reached their end, not reports.
        let mut at_end = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while at_end.len() < partitions.len() {
            if Instant::now() > deadline {
                bail!("reading topic {topic} did not reach its end in 300 s");
            }
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => bail!("reading topic {topic}: {e}"),
                Some(Ok(message)) => {
                    let key = message.key().unwrap_or_default();
                    if apply(&mut state, key, message.payload())?.is_break() {
                        break;
                    }
                }
            }
        }
        Ok(state)
    })
    .await?
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

/// Reads how far a consumer group is behind, without joining it: for each partition,
/// the high watermark less the group's committed offset (the low watermark when it has
/// committed none). Blocking calls: run it off the async workers.
pub struct LagReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: Option<i32>,
}

impl LagReader {
    pub fn new(clients: &KafkaClients, group: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer = clients
            .base("codelupe-lag-reader")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create a lag reader")?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            partitions: None,
        })
    }

    /// Messages of the topic the group has not committed yet.
    pub fn lag(&mut self) -> anyhow::Result<i64> {
        let timeout = Duration::from_secs(2);
        let partitions = match self.partitions {
            Some(n) => n,
            None => *self
                .partitions
                .insert(partition_count(self.consumer.client(), &self.topic)?),
        };
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(list, timeout)?;
        let mut lag = 0;
        for element in committed.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, element.partition(), timeout)?;
            let from = match element.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            lag += (high - from).max(0);
        }
        Ok(lag)
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

/// librdkafka's in-process mock cluster, with the topology's topics created: the
/// embedded default of `codelupe run` and of unit tests.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    pub fn start(topology: &Topology) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("cannot start the embedded Kafka broker")?;
        for (name, topic) in &topology.topics {
            cluster
                .create_topic(name, topic.partitions, 1)
                .with_context(|| format!("embedded broker: cannot create topic {name}"))?;
        }
        Ok(Self { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// What `apply` did or found, one line each.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub grown: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<String>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !self.created.is_empty() || !self.grown.is_empty()
    }
}

/// Creates missing topics and grows partition counts to match the topology; reports
/// settings that differ from it (partitions above the declared count, retention,
/// cleanup policy) without touching them. Running it twice changes nothing the second time.
pub async fn apply_topology(
    clients: &KafkaClients,
    topology: &Topology,
) -> anyhow::Result<ApplyReport> {
    let admin: AdminClient<DefaultClientContext> = clients
        .base("codelupe-topology")
        .create()
        .context("cannot create a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("cannot read cluster metadata from {}", clients.brokers))?;
    let existing: HashMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();

    let mut report = ApplyReport::default();
    let configs: Vec<Vec<(String, String)>> = topology
        .topics
        .values()
        .map(|t| t.kafka_configs())
        .collect();
    let mut to_create = Vec::new();
    for ((name, topic), configs) in topology.topics.iter().zip(&configs) {
        if !existing.contains_key(name) {
            let mut new = NewTopic::new(
                name,
                topic.partitions,
                TopicReplication::Fixed(topic.replication_factor),
            );
            for (key, value) in configs {
                new = new.set(key, value);
            }
            to_create.push(new);
        }
    }
    if !to_create.is_empty() {
        for result in admin.create_topics(&to_create, &options).await? {
            match result {
                Ok(name) => report.created.push(name),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    report.unchanged.push(name)
                }
                Err((name, code)) => bail!("cannot create topic {name}: {code}"),
            }
        }
    }

    let mut to_grow = Vec::new();
    for (name, topic) in &topology.topics {
        let Some(&have) = existing.get(name) else {
            continue;
        };
        let want = topic.partitions as usize;
        if have < want {
            to_grow.push(NewPartitions::new(name, want));
        } else if have > want {
            report.drift.push(format!(
                "topic {name}: has {have} partitions, topology declares {want} (Kafka cannot shrink a topic)"
            ));
        } else {
            report.unchanged.push(name.clone());
        }
    }
    if !to_grow.is_empty() {
        for result in admin.create_partitions(&to_grow, &options).await? {
            match result {
                Ok(name) => report.grown.push(name),
                Err((name, code)) => bail!("cannot grow topic {name}: {code}"),
            }
        }
    }

    let specifiers: Vec<_> = topology
        .topics
        .keys()
        .filter(|name| existing.contains_key(*name))
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    if !specifiers.is_empty() {
        for result in admin.describe_configs(&specifiers, &options).await? {
            let resource = result.map_err(|e| anyhow!("cannot describe topic configs: {e}"))?;
            let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                continue;
            };
            let Some(topic) = topology.topics.get(name) else {
                continue;
            };
            let entries = resource.entry_map();
            for (key, want) in topic.kafka_configs() {
                let have = entries.get(key.as_str()).and_then(|e| e.value.clone());
                if have.as_deref() != Some(want.as_str()) {
                    report.drift.push(format!(
                        "topic {name}: {key} is {}, topology declares {want}",
                        have.as_deref().unwrap_or("unset")
                    ));
                }
            }
        }
    }
    report.unchanged.sort();
    report.unchanged.dedup();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, Producer};

    fn producer(bootstrap: &str) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            .create()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_to_end_waits_for_every_partition_however_often_one_reports_its_end() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("state", 2, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        // Partition 0: one record. Partition 1: 5 MB, several fetches long.
        let seed = producer(&bootstrap);
        let send = |p: &BaseProducer, partition: i32, key: &str, payload: &[u8]| {
            p.send(
                BaseRecord::to("state")
                    .partition(partition)
                    .key(key)
                    .payload(payload),
            )
            .unwrap();
            p.flush(Duration::from_secs(10)).unwrap();
        };
        send(&seed, 0, "p0", b"x");
        for i in 0..500 {
            seed.send(
                BaseRecord::to("state")
                    .partition(1)
                    .key(&format!("p1-{i}"))
                    .payload(&[b'y'; 10_000][..]),
            )
            .unwrap();
        }
        seed.flush(Duration::from_secs(30)).unwrap();

        // The first records read from partition 1 each add a record to partition 0,
        // so partition 0 reports its end again and again while partition 1 is still
        // being read.
        let mut config = crate::config::KafkaConfig::default();
        // Small fetches: partition 1 takes about fifty.
        config
            .client
            .insert("max.partition.fetch.bytes".into(), "100000".into());
        let clients = KafkaClients::new(bootstrap.clone(), &config);
        let writer = producer(&bootstrap);
        let (p0, p1) = read_to_end(&clients, "state", None, (0, 0), move |(p0, p1), key, _| {
            if key.starts_with(b"p0") {
                *p0 += 1;
            } else {
                *p1 += 1;
                if *p1 <= 5 {
                    send(&writer, 0, "p0", b"x");
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await
        .unwrap();
        assert!(p0 >= 1);
        assert_eq!(p1, 500, "partition 1 was not read to its end");
    }
}
