//! The ways records leave a stage. [`Publisher`]: each send retried until the broker
//! acknowledges it (at-least-once, idempotent), unless the broker or the client says it
//! can never succeed (too large, no such topic, not authorised), which is returned.
//! [`TransactionalPublisher`]: a batch of records, possibly to several topics, visible
//! to read_committed consumers all together or not at all (exactly-once for source
//! stages and their state).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::codec::AvroRecord;
use crate::kafka::{verdict, Verdict};
use crate::stage::StageRuntime;

/// Sends records and waits for the broker's acknowledgement, retrying with backoff until
/// it comes or the drain after shutdown runs out. The only way records leave a stage.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    /// Sends one record a batch: the broker refuses a whole batch as too large, so a
    /// record refused so is sent again alone to learn whether it is the large one.
    alone: FutureProducer,
    /// Cancelled `drain_timeout_ms` after shutdown starts: sends in flight at shutdown
    /// are the drain's to finish, so they are abandoned only when it gives up.
    abandon: CancellationToken,
}

/// Why a send did not end in an acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The stage is shutting down and its drain timed out.
    #[error("send abandoned: shutting down")]
    Abandoned,
    /// An error no retry can mend: the record is too large for the client or the topic,
    /// the topic does not exist, or the stage may not write to it.
    #[error("{topic} refused a record of {bytes} bytes: {error}")]
    Rejected {
        topic: String,
        bytes: usize,
        error: KafkaError,
    },
}

impl Publisher {
    pub fn new(runtime: &StageRuntime) -> anyhow::Result<Self> {
        let producer = runtime
            .clients
            .producer_config(&runtime.client_id())
            .create()
            .context("cannot create the Kafka producer")?;
        let alone = runtime
            .clients
            .producer_config(&runtime.client_id())
            .set("batch.num.messages", "1")
            .set("linger.ms", "0")
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Self {
            producer,
            alone,
            abandon: runtime.drain_deadline(),
        })
    }

    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), SendError> {
        self.send_to(topic, None, key, payload).await
    }

    /// A record made ahead, as [`Self::send_to`] sends it.
    pub async fn send_record(&self, record: &Outgoing) -> Result<(), SendError> {
        self.send_to(
            &record.topic,
            record.partition,
            &record.key,
            &record.payload,
        )
        .await
    }

    /// Like [`Self::send`], to `partition` when given (else the key's partition).
    pub async fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), SendError> {
        let mut backoff = Duration::from_millis(100);
        let mut alone = false;
        loop {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            record.partition = partition;
            let producer = if alone { &self.alone } else { &self.producer };
            let error = tokio::select! {
                _ = self.abandon.cancelled() => return Err(SendError::Abandoned),
                result = producer.send(record, Timeout::Never) => match result {
                    Ok(_) => return Ok(()),
                    Err((error, _)) => error,
                },
            };
            match verdict(&error) {
                Verdict::Transient => {}
                Verdict::TooLarge if !alone => {
                    alone = true;
                    continue;
                }
                Verdict::TooLarge | Verdict::Permanent => {
                    return Err(SendError::Rejected {
                        topic: topic.to_string(),
                        bytes: key.len() + payload.len(),
                        error,
                    })
                }
            }
            tracing::warn!(%topic, %error, ?backoff, "produce failed; retrying");
            tokio::select! {
                _ = self.abandon.cancelled() => return Err(SendError::Abandoned),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// One record to publish (a transactional batch, or a follow-up of an output).
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    /// None: the key's partition.
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Outgoing {
    pub fn record<T: AvroRecord>(
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<Self, crate::codec::CodecError> {
        Ok(Self {
            topic: topic.to_string(),
            partition: None,
            key: key.as_bytes().to_vec(),
            payload: value.encode()?,
        })
    }
}

/// A transactional producer. `init` fences any earlier instance with the same
/// transactional id (a crashed predecessor's open transaction is aborted), so state
/// read after `init` is exactly what committed batches left.
///
/// Errors follow librdkafka's transactional rules: a commit that fails retriably (a
/// timeout) is committed again, not begun again; anything else that fails inside a
/// transaction aborts it; a fatal error replaces the producer by a new one with the
/// same id (which fences the old). After the last attempt the producer is left with no
/// transaction open, so the next batch can start.
#[derive(Clone)]
pub struct TransactionalPublisher {
    config: rdkafka::ClientConfig,
    producer: Arc<Mutex<Arc<FutureProducer>>>,
    timeout: Duration,
}

/// Attempts at a batch, and at committing one transaction, before giving up.
const TRANSACTION_ATTEMPTS: u32 = 5;

impl TransactionalPublisher {
    pub async fn init(runtime: &StageRuntime, transactional_id: &str) -> anyhow::Result<Self> {
        let mut config = runtime.clients.producer_config(&runtime.client_id());
        config.set("transactional.id", transactional_id);
        Self::start(config, Duration::from_secs(30))
            .await
            .with_context(|| format!("cannot initialise transactions for {transactional_id}"))
    }

    /// A publisher over `config` (which names the `transactional.id`); `timeout` bounds
    /// each transaction call.
    pub async fn start(config: rdkafka::ClientConfig, timeout: Duration) -> anyhow::Result<Self> {
        let producer = Self::create(&config, timeout).await?;
        Ok(Self {
            config,
            producer: Arc::new(Mutex::new(producer)),
            timeout,
        })
    }

    async fn create(
        config: &rdkafka::ClientConfig,
        timeout: Duration,
    ) -> anyhow::Result<Arc<FutureProducer>> {
        let producer: Arc<FutureProducer> = Arc::new(
            config
                .create()
                .context("cannot create the transactional Kafka producer")?,
        );
        blocking(&producer, timeout, |p, t| p.init_transactions(t)).await?;
        Ok(producer)
    }

    fn current(&self) -> Arc<FutureProducer> {
        self.producer.lock().expect("producer lock").clone()
    }

    /// Sends `batch` in one transaction; Ok once the transaction is committed.
    pub async fn send_batch(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let producer = self.current();
            let error = match self.try_batch(&producer, batch).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let fatal = matches!(&error, KafkaError::Transaction(t) if t.is_fatal());
            // Whatever failed, a transaction may be open: abort it so the next begins. A
            // producer that cannot abort (fatal, or a commit still pending) is replaced.
            let aborted = !fatal
                && blocking(&producer, self.timeout, |p, t| p.abort_transaction(t))
                    .await
                    .is_ok();
            tracing::warn!(%error, attempt, aborted, "transaction failed");
            if !aborted {
                let fresh = Self::create(&self.config, self.timeout).await?;
                *self.producer.lock().expect("producer lock") = fresh;
            }
            if attempt >= TRANSACTION_ATTEMPTS {
                bail!("transaction failed after {attempt} attempts: {error}");
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }

    async fn try_batch(
        &self,
        producer: &Arc<FutureProducer>,
        batch: &[Outgoing],
    ) -> rdkafka::error::KafkaResult<()> {
        producer.begin_transaction()?;
        let sends = batch.iter().map(|r| {
            let mut record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload);
            record.partition = r.partition;
            producer.send(record, Timeout::After(self.timeout))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        commit_retrying(producer, self.timeout).await
    }
}

/// Commits the open transaction; a retriable failure that does not require an abort
/// (a timeout: the commit is still pending) is committed again, not begun again.
pub(crate) async fn commit_retrying(
    producer: &Arc<FutureProducer>,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match blocking(producer, timeout, |p, t| p.commit_transaction(t)).await {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.txn_requires_abort() && tries < TRANSACTION_ATTEMPTS =>
            {
                tracing::warn!(error = %e, tries, "commit not confirmed yet; committing again");
            }
            result => return result,
        }
    }
}

/// Transaction calls block; keep them off the async workers.
pub(crate) async fn blocking(
    producer: &Arc<FutureProducer>,
    timeout: Duration,
    call: impl FnOnce(&FutureProducer, Duration) -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> rdkafka::error::KafkaResult<()> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer, timeout))
        .await
        .expect("transaction call panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test stage's records: `n` small ones to topic `t`.
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_times_out_is_committed_again_and_the_producer_stays_usable() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("transactional.id", "tx-under-test")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "100");
        let publisher = TransactionalPublisher::start(config, Duration::from_secs(1))
            .await
            .unwrap();
        publisher.send_batch(&records(3)).await.unwrap();
        // The coordinator answers EndTxn "still loading" for about 3 s: the commit call
        // times out (retriable) before the broker confirms it.
        cluster.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 30],
        );
        publisher.send_batch(&records(3)).await.unwrap();
        cluster.clear_request_errors(RDKafkaApiKey::EndTxn);
        // No transaction left open: the next batch begins and commits.
        publisher.send_batch(&records(2)).await.unwrap();
    }
}
