//! Kafka transactions: the one path by which CodeLupe commits records, and the input
//! offsets they came from, all together or not at all. The crawler's pages with their
//! state, and the outputs of the exactly-once and aggregate loops with their input
//! offsets, all go through [`Transactions::commit`].
//!
//! librdkafka's rules for a transactional producer, followed here:
//! - a call that times out (init, abort or commit: "retry call to resume") is made
//!   again, so a coordinator that is down or moving is waited out, until the stage's
//!   drain gives up;
//! - anything else that fails inside a transaction aborts it, and the same records
//!   and offsets are sent again (from memory: nothing is read again);
//! - a fatal error (the producer fenced) replaces the producer by a new one with the
//!   same id, whose initialisation aborts whatever the old one left open.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::consume::subscription::LoopContext;
use crate::publish::Outgoing;
use crate::records::now_ms;
use crate::retry::Backoff;
use crate::stage::StageRuntime;

/// Attempts at one transaction before the stage stops.
const TRANSACTION_ATTEMPTS: u32 = 5;
/// How long one transaction call may block before it is made again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional producer and what it needs to replace itself.
pub struct Transactions {
    config: rdkafka::ClientConfig,
    producer: Mutex<Arc<FutureProducer>>,
    /// How long one call (send, init, abort, commit) may block.
    timeout: Duration,
    /// Ends the waits between calls: cancelled when the stage's drain gives up.
    abandon: CancellationToken,
}

/// Input offsets committed in a transaction: of `input`, each partition's next offset
/// and its metadata, sent with the group's metadata of `consumer`.
pub(crate) struct InputOffsets<'a> {
    pub consumer: &'a StreamConsumer<LoopContext>,
    pub input: &'a str,
    pub offsets: &'a BTreeMap<i32, (i64, String)>,
}

impl Transactions {
    /// A source stage's transactions under its configured `transactional_id`: a
    /// restarted instance fences its predecessor and aborts what it left open.
    pub async fn init(runtime: &StageRuntime, transactional_id: &str) -> anyhow::Result<Self> {
        let mut config = runtime.clients.producer_config(&runtime.client_id());
        config.set("transactional.id", transactional_id);
        Self::start(config, CALL_TIMEOUT, runtime.drain_deadline())
            .await
            .with_context(|| format!("cannot initialise transactions for {transactional_id}"))
    }

    /// One consumer instance's transactions in a group: the id is new at each start,
    /// because KIP-447's group metadata, not the id, fences a member that lost its
    /// partitions.
    pub(crate) async fn for_group(runtime: &StageRuntime, group: &str) -> anyhow::Result<Self> {
        let transactional_id = format!(
            "{group}-{}-{}-{}",
            runtime.client_id(),
            std::process::id(),
            now_ms()
        );
        let mut config = runtime.clients.producer_config(&runtime.client_id());
        config
            .set("transactional.id", &transactional_id)
            // A transaction spans one commit step, never a transform: a crashed
            // instance's open one is aborted (and its partitions readable) this soon.
            .set("transaction.timeout.ms", "10000");
        Self::start(config, CALL_TIMEOUT, runtime.drain_deadline())
            .await
            .with_context(|| format!("cannot initialise transactions for {transactional_id}"))
    }

    /// Transactions over `config` (which names the `transactional.id`); `timeout`
    /// bounds each call, `abandon` ends the waits between calls.
    pub async fn start(
        config: rdkafka::ClientConfig,
        timeout: Duration,
        abandon: CancellationToken,
    ) -> anyhow::Result<Self> {
        let producer = initialised(&config, timeout, &abandon).await?;
        Ok(Self {
            config,
            producer: Mutex::new(producer),
            timeout,
            abandon,
        })
    }

    /// Sends `batch` in one transaction; Ok once the transaction is committed.
    pub async fn send_batch(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let records: Vec<&Outgoing> = batch.iter().collect();
        self.commit(&records, None).await
    }

    /// `records` and, when given, the input offsets they came from, in one
    /// transaction. Failures abort and send the same again, up to
    /// `TRANSACTION_ATTEMPTS`.
    pub(crate) async fn commit(
        &self,
        records: &[&Outgoing],
        input: Option<InputOffsets<'_>>,
    ) -> anyhow::Result<()> {
        let offsets = match &input {
            Some(input) => Some((input.consumer, offset_list(input)?)),
            None => None,
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let producer = self.current();
            let sent = self.attempt(&producer, records, offsets.as_ref()).await;
            let error = match sent {
                Ok(()) => break,
                Err(e) => e,
            };
            let fatal = matches!(&error, KafkaError::Transaction(t) if t.is_fatal());
            // Whatever failed, a transaction may be open: abort it so the next begins. A
            // producer that cannot abort (fatal, or a commit still pending) is replaced.
            let aborted = !fatal
                && resumed(&producer, self.timeout, &self.abandon, "abort", |p, t| {
                    p.abort_transaction(t)
                })
                .await
                .is_ok();
            tracing::warn!(%error, attempt, aborted, "transaction failed");
            if !aborted {
                let fresh = initialised(&self.config, self.timeout, &self.abandon).await?;
                *self.producer.lock().expect("producer lock") = fresh;
            }
            if attempt >= TRANSACTION_ATTEMPTS {
                bail!("transaction failed after {attempt} attempts; the input stays uncommitted: {error}");
            }
            if backoff.pause(&self.abandon).await.is_err() {
                bail!("transaction failed while the stage shut down; the input stays uncommitted: {error}");
            }
        }
        if let Some((consumer, list)) = offsets {
            // Stored, never committed by the consumer itself: the stored offset is what
            // `codelupe_consumer_lag` counts from in this mode.
            if let Err(e) = consumer.store_offsets(&list) {
                tracing::debug!(error = %e, "committed offsets not stored");
            }
        }
        Ok(())
    }

    fn current(&self) -> Arc<FutureProducer> {
        self.producer.lock().expect("producer lock").clone()
    }

    /// One try: begin, send every record, add the offsets, commit.
    async fn attempt(
        &self,
        producer: &Arc<FutureProducer>,
        records: &[&Outgoing],
        offsets: Option<&(&StreamConsumer<LoopContext>, TopicPartitionList)>,
    ) -> KafkaResult<()> {
        producer.begin_transaction()?;
        let sends = records.iter().map(|r| {
            let mut record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload);
            record.partition = r.partition;
            producer.send(record, Timeout::After(self.timeout))
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e)?;
        }
        if let Some((consumer, list)) = offsets {
            // The group's generation goes with the offsets: a member that lost the
            // partitions meanwhile is refused.
            let metadata = consumer
                .group_metadata()
                .ok_or(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State))?;
            let list = list.clone();
            blocking(producer, self.timeout, move |p, t| {
                p.send_offsets_to_transaction(&list, &metadata, t)
            })
            .await?;
        }
        resumed(producer, self.timeout, &self.abandon, "commit", |p, t| {
            p.commit_transaction(t)
        })
        .await
    }
}

/// The offsets of `input` as a list for the transaction.
fn offset_list(input: &InputOffsets<'_>) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (partition, (next, metadata)) in input.offsets {
        let mut element = list.add_partition(input.input, *partition);
        element.set_offset(Offset::Offset(*next))?;
        element.set_metadata(metadata);
    }
    Ok(list)
}

/// A producer over `config` with its transactions initialised (which fences every
/// earlier producer of the same id and aborts what it left open).
async fn initialised(
    config: &rdkafka::ClientConfig,
    timeout: Duration,
    abandon: &CancellationToken,
) -> anyhow::Result<Arc<FutureProducer>> {
    let producer: Arc<FutureProducer> = Arc::new(
        config
            .create()
            .context("cannot create the transactional Kafka producer")?,
    );
    resumed(&producer, timeout, abandon, "init", |p, t| {
        p.init_transactions(t)
    })
    .await?;
    Ok(producer)
}

/// Makes a transaction call again while librdkafka says it may be resumed (it timed
/// out: the coordinator is down, moving or still loading), until `abandon` fires.
async fn resumed(
    producer: &Arc<FutureProducer>,
    timeout: Duration,
    abandon: &CancellationToken,
    call_name: &'static str,
    call: fn(&FutureProducer, Duration) -> KafkaResult<()>,
) -> KafkaResult<()> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match blocking(producer, timeout, call).await {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.txn_requires_abort() => {
                tracing::warn!(error = %e, call = call_name, "transaction call not finished yet; calling again");
                if backoff.pause(abandon).await.is_err() {
                    return Err(KafkaError::Transaction(e));
                }
            }
            result => return result,
        }
    }
}

/// Transaction calls block; keep them off the async workers.
async fn blocking(
    producer: &Arc<FutureProducer>,
    timeout: Duration,
    call: impl FnOnce(&FutureProducer, Duration) -> KafkaResult<()> + Send + 'static,
) -> KafkaResult<()> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer, timeout))
        .await
        .expect("transaction call panicked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    /// `n` small records to topic `t`.
    fn records(n: usize) -> Vec<Outgoing> {
        (0..n)
            .map(|i| Outgoing {
                topic: "t".into(),
                partition: None,
                key: format!("k{i}").into_bytes(),
                payload: vec![b'x'; 10],
            })
            .collect()
    }

    /// A one-broker mock cluster with topic `t`, and a transactional producer's
    /// config for it that retries its requests every 100 ms.
    fn cluster() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        rdkafka::ClientConfig,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("transactional.id", "tx-under-test")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "100");
        (cluster, config)
    }

    /// About 3 s of "coordinator still loading" answers to `api`: longer than the 1 s
    /// the calls under test may block.
    fn coordinator_loading(
        cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        api: RDKafkaApiKey,
    ) {
        cluster.request_errors(
            api,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 30],
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_times_out_is_committed_again_and_the_producer_stays_usable() {
        let (cluster, config) = cluster();
        let second = Duration::from_secs(1);
        let transactions = Transactions::start(config, second, CancellationToken::new())
            .await
            .unwrap();
        transactions.send_batch(&records(3)).await.unwrap();
        coordinator_loading(&cluster, RDKafkaApiKey::EndTxn);
        transactions.send_batch(&records(3)).await.unwrap();
        cluster.clear_request_errors(RDKafkaApiKey::EndTxn);
        // No transaction left open: the next batch begins and commits.
        transactions.send_batch(&records(2)).await.unwrap();
    }

    /// A coordinator that answers late at start-up (an outage, a leader moving) is
    /// waited out: the stage does not exit with "retry call to resume".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_initialisation_that_times_out_is_made_again() {
        let (cluster, config) = cluster();
        coordinator_loading(&cluster, RDKafkaApiKey::InitProducerId);
        let second = Duration::from_secs(1);
        let transactions = Transactions::start(config, second, CancellationToken::new())
            .await
            .unwrap();
        transactions.send_batch(&records(2)).await.unwrap();
    }

    /// An abort that times out is made again on the same producer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abort_that_times_out_is_made_again() {
        let (cluster, config) = cluster();
        let (second, abandon) = (Duration::from_secs(1), CancellationToken::new());
        let producer = initialised(&config, second, &abandon).await.unwrap();
        producer.begin_transaction().unwrap();
        let record = FutureRecord::to("t").key("k").payload("v");
        producer.send(record, Timeout::After(second)).await.unwrap();
        coordinator_loading(&cluster, RDKafkaApiKey::EndTxn);
        resumed(&producer, second, &abandon, "abort", |p, t| {
            p.abort_transaction(t)
        })
        .await
        .unwrap();
        // The same producer begins and commits the next transaction.
        producer.begin_transaction().unwrap();
        resumed(&producer, second, &abandon, "commit", |p, t| {
            p.commit_transaction(t)
        })
        .await
        .unwrap();
    }

    /// Shutdown ends the waiting: a coordinator that never answers is not waited for
    /// past the drain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_the_coordinator_ends_when_the_drain_gives_up() {
        let (cluster, config) = cluster();
        cluster.request_errors(
            RDKafkaApiKey::InitProducerId,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 1000],
        );
        let abandon = CancellationToken::new();
        let waiting = tokio::spawn(Transactions::start(
            config,
            Duration::from_millis(500),
            abandon.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !waiting.is_finished(),
            "gave up while the drain still waited"
        );
        abandon.cancel();
        let error = match tokio::time::timeout(Duration::from_secs(5), waiting).await {
            Ok(joined) => joined
                .unwrap()
                .err()
                .expect("initialised with no coordinator"),
            Err(_) => panic!("still waiting 5 s after the drain gave up"),
        };
        assert!(format!("{error:#}").contains("Producer ID"), "{error:#}");
    }
}
