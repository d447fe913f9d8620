//! The test Kafka broker started by `tests/kafka/broker.sh` (address in
//! TEST_KAFKA_BROKERS): topics of one's own, producing and reading them back.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// A cluster of its own that [`brokers`] names instead of TEST_KAFKA_BROKERS.
static OTHER_CLUSTER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// While held, [`brokers`] (and every helper here) names `bootstrap`: for a test that
/// runs on a cluster of its own, such as the fault harness's three brokers. One at a
/// time in a process.
pub struct OnCluster(());

impl OnCluster {
    pub fn new(bootstrap: &str) -> Self {
        let mut other = OTHER_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        assert!(other.is_none(), "another test is on a cluster of its own");
        *other = Some(bootstrap.to_string());
        Self(())
    }
}

impl Drop for OnCluster {
    fn drop(&mut self) {
        *OTHER_CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

pub fn brokers() -> String {
    if let Some(other) = OTHER_CLUSTER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return other;
    }
    std::env::var("TEST_KAFKA_BROKERS").expect(
        "TEST_KAFKA_BROKERS is not set: these tests need the real broker; run `bash tests/run` \
         (or `tests/kafka/broker.sh up` and export TEST_KAFKA_BROKERS=127.0.0.1:19092)",
    )
}

/// The configuration every Kafka client of a test starts from: the test broker, or the
/// cluster an [`OnCluster`] names.
pub fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers());
    config
}

/// Where [`commit_group`] leaves a group on each partition.
pub enum At {
    /// Offset 0: as a group that has read nothing.
    Beginning,
    /// The high watermark: as a group that has read everything.
    End,
}

/// Commits `group`'s offsets on every partition of `topic` at `at`; the group has no
/// live member.
pub fn commit_group(group: &str, topic: &str, at: At) {
    use rdkafka::consumer::CommitMode;
    let consumer = consumer_in(group);
    let list = every_partition(&consumer, topic, |partition| match at {
        At::Beginning => rdkafka::Offset::Offset(0),
        At::End => {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            rdkafka::Offset::Offset(high)
        }
    });
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

/// A transactional producer with an id of its own (starting `prefix`), initialised.
pub fn transactional_producer(prefix: &str) -> rdkafka::producer::FutureProducer {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::FutureProducer = client()
        .set("transactional.id", unique(prefix))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer
}

/// A consumer in `group` that commits only when told.
pub fn consumer_in(group: &str) -> BaseConsumer {
    client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Every partition of `topic`, each at the offset `at` gives it.
fn every_partition(
    consumer: &BaseConsumer,
    topic: &str,
    at: impl Fn(i32) -> rdkafka::Offset,
) -> rdkafka::TopicPartitionList {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, p.id(), at(p.id()))
            .unwrap();
    }
    list
}

/// Grows `topic` to `total` partitions.
pub async fn grow_partitions(topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    let grown = admin
        .create_partitions(
            &[rdkafka::admin::NewPartitions::new(topic, total)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for result in grown {
        result.unwrap();
    }
}

/// A topic name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub async fn create_topics(topics: &[(&str, i32)]) {
    let new: Vec<_> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    create(&new).await;
}

/// Creates `topic` with `partitions` and these topic configs.
pub async fn create_topic_with(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new = new.set(key, value);
    }
    create(&[new]).await;
}

async fn create(new: &[NewTopic<'_>]) {
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    for result in admin
        .create_topics(
            new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Produces one record to `partition` of `topic` and waits for its acknowledgement.
pub async fn produce_to_partition(topic: &str, partition: i32, key: &str, value: &[u8]) {
    let producer: rdkafka::producer::FutureProducer = client().create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Produces (key, value) pairs to `topic` and waits for every acknowledgement.
pub async fn produce_all(topic: &str, records: Vec<(String, Vec<u8>)>) {
    let producer: rdkafka::producer::FutureProducer =
        client().set("linger.ms", "5").create().unwrap();
    let sends = records.iter().map(|(key, value)| {
        producer.send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(value),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).unwrap();
    }
}

/// Every (key, value) currently in `topic` (read_committed), read from the beginning
/// of every partition until `idle` passes without a new record. Assigns partitions
/// directly: no group join to wait for.
pub fn read_all(topic: &str, idle: Duration) -> Vec<(String, Vec<u8>)> {
    read_each(topic, idle, |m| {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        (key, m.payload().unwrap_or_default().to_vec())
    })
}

/// Every value in `topic`, as [`read_all`] reads them, in the order they were produced
/// (by the producer's timestamp, then partition and offset).
pub fn read_in_produced_order(topic: &str, idle: Duration) -> Vec<Vec<u8>> {
    let mut records = read_each(topic, idle, |m| {
        let at = m.timestamp().to_millis().unwrap_or(0);
        (
            (at, m.partition(), m.offset()),
            m.payload().unwrap_or_default().to_vec(),
        )
    });
    records.sort_by_key(|(at, _)| *at);
    records.into_iter().map(|(_, value)| value).collect()
}

/// `read` of every record in `topic` from the beginning, until `idle` passes without one.
fn read_each<T>(
    topic: &str,
    idle: Duration,
    mut read: impl FnMut(&rdkafka::message::BorrowedMessage) -> T,
) -> Vec<T> {
    let consumer = consumer_in(&unique("reader"));
    let list = every_partition(&consumer, topic, |_| rdkafka::Offset::Beginning);
    consumer.assign(&list).unwrap();
    let mut records = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records.push(read(&m));
                last = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}
