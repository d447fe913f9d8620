//! Kafka clients built one way for every stage, with the fetch and size bounds every
//! consumer shares, and the start-up reachability check.

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::retry::Backoff;

/// The producers' limit on one record (librdkafka's `message.max.bytes`): above the
/// largest `max.message.bytes` topology.yaml gives a topic.
pub const MAX_RECORD_BYTES: usize = 8 << 20;

/// The consumers' prefetch queue: records read ahead of the stage, decompressed.
const PREFETCH_KBYTES: usize = 4096;

/// The compressed bytes one fetch asks for, all partitions together (librdkafka's
/// smallest allowed: its `message.max.bytes`, 1,000,000, rounded up).
const FETCH_MAX_BYTES: usize = 1 << 20;

/// How soon a partition whose prefetch queue was full is fetched again.
const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

/// How often a group member tells the coordinator it is alive, and learns of a
/// rebalance (librdkafka's default: 3 s).
const HEARTBEAT_MS: u64 = 1000;

/// Room in a fetch response beyond its batches: headers, topic and partition names.
const RESPONSE_FRAMING_BYTES: usize = 1 << 20;

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
    /// partition revoke). An `exactly_once` loop turns the auto-commit off: its
    /// transactions commit the offsets.
    pub fn consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.fetch_bounded(client_id);
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
            // Members learn of a rebalance from a heartbeat's answer, and an incremental
            // one takes two rounds (the partitions that move are revoked, then
            // assigned): a replica joining a busy group got its partitions 6 s after
            // the first member had all of them at 3 s heartbeats, 2 s at 1 s.
            .set("heartbeat.interval.ms", HEARTBEAT_MS.to_string());
        self.with_consumer_overrides(config)
    }

    /// A consumer outside any group, reading the partitions it is assigned: the state
    /// a stage loads (several at once, one a partition), samples, dead letters, `tail`.
    /// Its `group.id` only names it; it commits nothing. `kafka.consumer` applies to it
    /// too (fetch sizes, timeouts).
    pub fn reader_config(&self, client_id: &str) -> ClientConfig {
        let mut config = self.with_consumer_overrides(self.fetch_bounded(client_id));
        config
            .set("group.id", client_id)
            .set("enable.auto.commit", "false");
        config
    }

    /// What every consumer fetches ahead of its stage, group member or reader.
    fn fetch_bounded(&self, client_id: &str) -> ClientConfig {
        let mut config = self.base(client_id);
        config
            // The prefetch queue librdkafka keeps is bounded by its records' bytes, but
            // it is checked only before a fetch, and one fetch response holds up to
            // `fetch.max.bytes` of *compressed* batches (by default as much as the
            // queue's whole bound), each decompressed whole and kept until its last
            // record is consumed. The producers write zstd, about 5x on source code:
            // a batcher behind on a backlog held 88 MB of decompressed fetches
            // (heaptrack) next to a 16 MiB queue, and its peak memory followed the
            // backlog. Small fetches bound it; one record larger than a fetch is still
            // returned whole (KIP-74).
            .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
            .set("fetch.max.bytes", FETCH_MAX_BYTES.to_string())
            // A full queue postpones the partition's next fetch by this much (default
            // 1 s): a stage that drains 4 MiB faster sat idle, and the relay made 0.56x
            // Kafka Streams' records/s instead of 1.08x.
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string())
            // Otherwise librdkafka sets it just above `fetch.max.bytes`, and it also
            // caps decompression: a batch is decompressed into a buffer tripled until
            // it fits, so a record of MAX_RECORD_BYTES may need three times that.
            .set(
                "receive.message.max.bytes",
                (3 * MAX_RECORD_BYTES + RESPONSE_FRAMING_BYTES).to_string(),
            );
        config
    }

    /// `kafka.consumer` from the configuration, over the runtime's own settings.
    fn with_consumer_overrides(&self, mut config: ClientConfig) -> ClientConfig {
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
        let mut backoff = Backoff::new(first_backoff, Duration::from_secs(10));
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
                tokio::time::sleep(backoff.next_pause()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::read_to_end;

    fn setting(config: &ClientConfig, key: &str) -> usize {
        config
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not set"))
            .parse()
            .unwrap()
    }

    /// Every kind of consumer the runtime makes: a stage's group member and a reader.
    fn every_consumer(clients: &KafkaClients) -> [(&'static str, ClientConfig); 2] {
        [
            ("stage consumer", clients.consumer_config("test", "group")),
            ("reader", clients.reader_config("test")),
        ]
    }

    /// A fetch response decompressed at zstd's ratio on source code (4-5x) must fit
    /// the prefetch queue's bound, or a backlog decides the memory (librdkafka's
    /// default fetch is the queue's whole bound, compressed). Readers too: a stage
    /// loads its state with one a partition, all at once.
    #[test]
    fn a_decompressed_fetch_fits_the_prefetch_bound() {
        let clients = KafkaClients::new("127.0.0.1:9", &KafkaConfig::default());
        for (kind, config) in every_consumer(&clients) {
            let fetch = setting(&config, "fetch.max.bytes");
            let queue = setting(&config, "queued.max.messages.kbytes") * 1024;
            assert!(
                4 * fetch <= queue,
                "{kind}: fetch.max.bytes {fetch} decompresses to more than the prefetch \
                 queue's {queue} bytes"
            );
            // librdkafka refuses a fetch smaller than a record it may be sent.
            assert!(fetch >= 1_000_000, "{kind}");
            // With a small queue, its default 1 s wait after the queue filled left the
            // stage idle.
            assert!(setting(&config, "fetch.queue.backoff.ms") <= 100, "{kind}");
            // A record the producers may write still arrives, and decompresses.
            assert!(
                setting(&config, "receive.message.max.bytes") >= 3 * MAX_RECORD_BYTES,
                "{kind}"
            );
        }
    }

    /// `kafka.consumer` reaches readers too, but not what reading to the end needs.
    #[test]
    fn consumer_overrides_reach_readers_but_not_their_commits() {
        let config = KafkaConfig {
            consumer: [
                ("fetch.max.bytes".to_string(), "2097152".to_string()),
                ("enable.auto.commit".to_string(), "true".to_string()),
            ]
            .into(),
            ..KafkaConfig::default()
        };
        let reader = KafkaClients::new("127.0.0.1:9", &config).reader_config("test");
        assert_eq!(setting(&reader, "fetch.max.bytes"), 2 << 20);
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
    }

    /// The small fetches still bring records many times their size, whole, however
    /// well they compress (librdkafka's decompression buffer grows threefold, up to
    /// `receive.message.max.bytes`: at the largest record plus 1 MiB the 5 MiB record
    /// failed as invalid compressed data), to a stage's consumer and to a reader.
    #[test]
    fn records_larger_than_a_fetch_are_consumed_whole() {
        for size in [5 * FETCH_MAX_BYTES, MAX_RECORD_BYTES - (64 << 10)] {
            consumed_whole(size);
        }
    }

    fn consumed_whole(size: usize) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::BaseRecord;
        use rdkafka::Message;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("large", 1, 1).unwrap();
        let clients = KafkaClients::new(cluster.bootstrap_servers(), &KafkaConfig::default());
        let producer: BaseProducer = clients.producer_config("test").create().unwrap();
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        producer
            .send(BaseRecord::to("large").key("k").payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();

        let consumer: BaseConsumer = clients
            .consumer_config("test", "large-reader")
            .create()
            .unwrap();
        consumer.subscribe(&["large"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let received = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the {size}-byte record never came"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                break message.unwrap().payload().unwrap().to_vec();
            }
        };
        assert!(
            received == payload,
            "the {size}-byte record came cut or changed"
        );

        let read = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(read_to_end(
                &clients,
                "large",
                None,
                Vec::new(),
                |read, _key, value| {
                    read.push(value.unwrap_or_default().to_vec());
                    Ok(std::ops::ControlFlow::Continue(()))
                },
            ))
            .unwrap_or_else(|e| panic!("reading the {size}-byte record: {e:#}"));
        assert!(
            read == [payload],
            "the reader got the {size}-byte record cut or changed"
        );
    }
}
