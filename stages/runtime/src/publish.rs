//! The ways records leave a stage. [`Publisher`]: each send retried until the broker
//! acknowledges it (at-least-once, idempotent), unless the broker or the client says it
//! can never succeed (too large, no such topic, not authorised), which is returned.
//! [`TransactionalPublisher`]: a batch of records, possibly to several topics, visible
//! to read_committed consumers all together or not at all (exactly-once for source
//! stages and their state).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::codec::AvroRecord;
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

/// What a produce error means for the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retry with backoff: queue full, timeouts, transport errors (librdkafka has
    /// already retried the broker's transient errors itself).
    Transient,
    /// The batch holding the record was too large; the record may be.
    TooLarge,
    /// No retry can mend it: no such topic, not authorised, fatal producer state.
    Permanent,
}

pub fn verdict(error: &KafkaError) -> Verdict {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            Verdict::TooLarge
        }
        Some(
            C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidRecord
            | C::InvalidRequiredAcks
            | C::Fatal
            | C::Fenced,
        ) => Verdict::Permanent,
        _ => Verdict::Transient,
    }
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
#[derive(Clone)]
pub struct TransactionalPublisher {
    producer: Arc<FutureProducer>,
    timeout: Duration,
}

impl TransactionalPublisher {
    pub async fn init(runtime: &StageRuntime, transactional_id: &str) -> anyhow::Result<Self> {
        let producer: FutureProducer = runtime
            .clients
            .producer_config(&runtime.client_id())
            .set("transactional.id", transactional_id)
            .create()
            .context("cannot create the transactional Kafka producer")?;
        let publisher = Self {
            producer: Arc::new(producer),
            timeout: Duration::from_secs(30),
        };
        publisher
            .blocking(|p, t| p.init_transactions(t))
            .await
            .with_context(|| format!("cannot initialise transactions for {transactional_id}"))?;
        Ok(publisher)
    }

    /// Transaction calls block; keep them off the async workers.
    async fn blocking(
        &self,
        call: impl FnOnce(&FutureProducer, Duration) -> rdkafka::error::KafkaResult<()> + Send + 'static,
    ) -> rdkafka::error::KafkaResult<()> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || call(&producer, timeout))
            .await
            .expect("transaction call panicked")
    }

    /// Sends `batch` in one transaction, retrying what the error class allows; Ok once
    /// the transaction is committed.
    pub async fn send_batch(&self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_batch(batch).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let (fatal, abort) = match &e {
                        KafkaError::Transaction(t) => (t.is_fatal(), t.txn_requires_abort()),
                        _ => (false, true),
                    };
                    if fatal || attempt >= 5 {
                        bail!("transaction failed after {attempt} attempts: {e}");
                    }
                    tracing::warn!(error = %e, attempt, "transaction failed; retrying");
                    if abort {
                        if let Err(e) = self.blocking(|p, t| p.abort_transaction(t)).await {
                            tracing::warn!(error = %e, "abort failed");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    async fn try_batch(&self, batch: &[Outgoing]) -> rdkafka::error::KafkaResult<()> {
        self.producer.begin_transaction()?;
        let sends = batch.iter().map(|r| {
            let mut record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload);
            record.partition = r.partition;
            self.producer.send(record, Timeout::After(self.timeout))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        self.blocking(|p, t| p.commit_transaction(t)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn size_errors_are_told_apart_from_permanent_ones() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::TooLarge, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::Permanent, "{code:?}");
        }
    }

    #[test]
    fn transient_errors_are_retried() {
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert_eq!(verdict(&production(code)), Verdict::Transient, "{code:?}");
        }
    }
}
