//! Reading a topic from its beginning to its current end: state kept in compacted
//! topics, and samples of a topic.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::clients::{partition_count, KafkaClients};
use super::verdict::{verdict, Verdict};

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

/// How long a read to the end may go without a record or an end reached before it is
/// given up.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Reads `partitions` of `topic` (all when None) from the beginning to their current
/// end with read_committed isolation, folding each (key, payload) into `state`;
/// `apply` may stop early with `ControlFlow::Break`. For state kept in compacted
/// topics, and for samples of a topic.
pub async fn read_to_end<S, F>(
    clients: &KafkaClients,
    topic: &str,
    partitions: Option<Vec<i32>>,
    state: S,
    apply: F,
) -> anyhow::Result<S>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8], Option<&[u8]>) -> anyhow::Result<ControlFlow<()>> + Send + 'static,
{
    let starts = partitions.map(|ps| ps.into_iter().map(|p| (p, Offset::Beginning)).collect());
    read_from(clients, topic, starts, state, apply).await
}

/// As `read_to_end`, from the given offset of each partition (all partitions from the
/// beginning when None): what a consumer group has left to read, say.
pub async fn read_from<S, F>(
    clients: &KafkaClients,
    topic: &str,
    starts: Option<Vec<(i32, Offset)>>,
    state: S,
    apply: F,
) -> anyhow::Result<S>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8], Option<&[u8]>) -> anyhow::Result<ControlFlow<()>> + Send + 'static,
{
    read_from_within(clients, topic, starts, state, apply, STALL_LIMIT).await
}

/// As `read_from`, given up once nothing is read for `stall_limit`.
async fn read_from_within<S, F>(
    clients: &KafkaClients,
    topic: &str,
    starts: Option<Vec<(i32, Offset)>>,
    mut state: S,
    mut apply: F,
    stall_limit: Duration,
) -> anyhow::Result<S>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8], Option<&[u8]>) -> anyhow::Result<ControlFlow<()>> + Send + 'static,
{
    let consumer: BaseConsumer<QuietEof> = clients
        .reader_config("codelupe-state-reader")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // The end of an idle partition is only reported when a fetch returns.
        .set("fetch.wait.max.ms", "20")
        .create_with_context(QuietEof)
        .context("cannot create a topic reader")?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let starts = match starts {
            Some(starts) => starts,
            None => (0..partition_count(consumer.client(), &topic)?)
                .map(|p| (p, Offset::Beginning))
                .collect(),
        };
        let partitions: Vec<i32> = starts.iter().map(|&(p, _)| p).collect();
        let mut list = TopicPartitionList::new();
        for (p, start) in starts {
            list.add_partition_offset(&topic, p, start)?;
        }
        consumer.assign(&list)?;
        // A partition reports its end again after each new record: count partitions
        // that reached their end, not reports.
        let mut at_end = std::collections::HashSet::new();
        // No deadline on the whole read, which grows with the state (an index kept
        // forever); only on a read that stops making progress.
        let mut progress_at = Instant::now();
        while at_end.len() < partitions.len() {
            if progress_at.elapsed() > stall_limit {
                bail!(
                    "reading topic {topic}: nothing read for {:?} before its end",
                    stall_limit
                );
            }
            let polled = consumer.poll(Duration::from_millis(500));
            let progressed = matches!(polled, Some(Ok(_) | Err(KafkaError::PartitionEOF(_))));
            match polled {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) if verdict(&e) == Verdict::Permanent => {
                    bail!("reading topic {topic}: {e}")
                }
                // A broker of several down, a leader moving: librdkafka reconnects and
                // fails over by itself, and the stall limit bounds the wait.
                Some(Err(e)) => tracing::warn!(error = %e, topic, "state reader: retrying"),
                Some(Ok(message)) => {
                    let key = message.key().unwrap_or_default();
                    if apply(&mut state, key, message.payload())?.is_break() {
                        break;
                    }
                }
            }
            if progressed {
                // Once the record is folded in: a slow fold is no stall.
                progress_at = Instant::now();
            }
        }
        Ok(state)
    })
    .await?
}

/// Reads each of `partitions` of `topic` to its end, each with a reader of its own and
/// all at once (a reader's start-up, not the records, is most of reading a partition of
/// state), folding each partition's records into a state of its own made by `init`:
/// the per-partition state of a stateful stage, loaded when partitions are assigned.
pub async fn read_partitions<S, F>(
    clients: &KafkaClients,
    topic: &str,
    partitions: &[i32],
    init: impl Fn() -> anyhow::Result<S>,
    apply: F,
) -> anyhow::Result<Vec<(i32, S)>>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[u8], Option<&[u8]>) -> anyhow::Result<ControlFlow<()>>
        + Clone
        + Send
        + 'static,
{
    let reads = partitions.iter().map(|&partition| {
        let (state, apply) = (init(), apply.clone());
        async move {
            let state = read_to_end(clients, topic, Some(vec![partition]), state?, apply)
                .await
                .with_context(|| format!("reading partition {partition} of {topic}"))?;
            Ok((partition, state))
        }
    });
    futures::future::try_join_all(reads).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    fn producer(bootstrap: &str) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            .create()
            .unwrap()
    }

    /// `n` records keyed `k<i>` into partition 0 of topic `state`.
    fn seed(bootstrap: &str, n: usize) {
        let seed = producer(bootstrap);
        for i in 0..n {
            seed.send(BaseRecord::to("state").key(&format!("k{i}")).payload("v"))
                .unwrap();
        }
        seed.flush(Duration::from_secs(10)).unwrap();
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

    /// One broker of three down while a partition's state is read (its leader
    /// moving to another): the read waits for the new leader and finishes, as the
    /// consume loops do, where it used to fail at the first transport error.
    #[test]
    fn a_broker_down_mid_read_is_waited_out() {
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic("state", 1, 3).unwrap();
        cluster.partition_leader("state", 0, Some(1)).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        seed(&bootstrap, 200);
        let clients = KafkaClients::new(bootstrap, &Default::default());
        cluster.broker_down(1).unwrap();
        let read = std::thread::spawn(move || {
            let count = |n: &mut usize, _: &[u8], _: Option<&[u8]>| {
                *n += 1;
                Ok(ControlFlow::Continue(()))
            };
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(read_to_end(&clients, "state", None, 0, count))
        });
        std::thread::sleep(Duration::from_secs(2));
        cluster.partition_leader("state", 0, Some(2)).unwrap();
        let moved = read.join().unwrap();
        assert_eq!(moved.unwrap(), 200);
    }

    /// A read longer than the stall limit goes on while it makes progress (a state
    /// that has grown past any fixed deadline), and one that makes none is given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_read_that_stops_making_progress_is_given_up() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("state", 1, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        seed(&bootstrap, 10);
        let clients = KafkaClients::new(bootstrap, &Default::default());
        let started = Instant::now();
        let slow = |n: &mut usize, _: &[u8], _: Option<&[u8]>| {
            std::thread::sleep(Duration::from_millis(300));
            *n += 1;
            Ok(ControlFlow::Continue(()))
        };
        let limit = Duration::from_secs(1);
        let read = read_from_within(&clients, "state", None, 0, slow, limit).await;
        assert_eq!(read.unwrap(), 10);
        assert!(started.elapsed() > 3 * limit, "{:?}", started.elapsed());
        // A broker answering nothing for longer than the limit.
        cluster
            .broker_round_trip_time(1, Duration::from_secs(5))
            .unwrap();
        let start = Some(vec![(0, Offset::Beginning)]);
        let error = read_from_within(&clients, "state", start, 0, slow, limit)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("nothing read for 1s"), "{error}");
    }
}
