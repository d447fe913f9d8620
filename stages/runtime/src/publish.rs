//! The ways records leave a stage. [`Publisher`]: each send retried until the broker
//! acknowledges it (at-least-once, idempotent), unless the broker or the client says it
//! can never succeed (too large, no such topic, not authorised), which is returned.
//! Transactions (a batch of records visible all together or not at all) are
//! [`crate::consume::transaction`]'s.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::codec::AvroRecord;
use crate::kafka::{verdict, Verdict};
use crate::retry::Backoff;
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
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
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
            tracing::warn!(%topic, %error, "produce failed; retrying");
            if backoff.pause(&self.abandon).await.is_err() {
                return Err(SendError::Abandoned);
            }
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
