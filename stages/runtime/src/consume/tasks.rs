//! What every record's task needs: the transform with its attempts (retryable and
//! transient failures, waited out with cancellable backoff), its outputs' publishing,
//! and the drain of unfinished tasks at shutdown.

use super::dead_letters::DeadLetters;
use super::metrics::LoopMetrics;
use super::subscription::InputRecord;
use super::transform::{Keyed, LoopReason, Output, Transform};
use crate::codec::AvroRecord;
use crate::labels::LabelSet;
use crate::publish::{Outgoing, Publisher, SendError};
use crate::retry::Backoff;
use crate::stage::StageRuntime;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// The longest wait between attempts at a record failing transiently.
const MAX_TRANSIENT_BACKOFF: Duration = Duration::from_secs(120);

/// How a record's transform ended without outputs.
pub(crate) enum Failed {
    DeadLetter(&'static str, String, u32),
    /// Shutdown came while it waited out a transient failure: left uncommitted.
    Abandoned,
}

/// Gives in-flight work a bounded time to finish so its offsets can be stored; whatever
/// is left is abandoned uncommitted and replayed by the next owner.
pub(crate) async fn drain<M>(
    tasks: &mut JoinSet<()>,
    done: &mut mpsc::UnboundedReceiver<M>,
    timeout: Duration,
    mut on_done: impl FnMut(M),
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            Some(message) = done.recv() => on_done(message),
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(abandoned = tasks.len(), "drain timeout: abandoning in-flight work uncommitted");
                tasks.abort_all();
                break;
            }
        }
    }
    while let Ok(message) = done.try_recv() {
        on_done(message);
    }
}

/// What every record's task needs: the transform and where its results go.
pub(crate) struct Shared<T: Transform> {
    transform: T,
    publisher: Publisher,
    pub(crate) output: Option<String>,
    /// The largest record each topic takes.
    topic_max_bytes: Arc<std::collections::BTreeMap<String, usize>>,
    pub(crate) stage: String,
    pub(crate) dead_letters: DeadLetters,
    max_attempts: u32,
    transient_give_up: Option<Duration>,
    pub(super) metrics: LoopMetrics,
    shutdown: tokio_util::sync::CancellationToken,
}

impl<T: Transform> Shared<T> {
    pub(crate) fn new(
        transform: T,
        runtime: &StageRuntime,
        metrics: &LoopMetrics,
    ) -> anyhow::Result<Self> {
        let publisher = Publisher::new(runtime)?;
        Ok(Self {
            transform,
            dead_letters: DeadLetters::new(runtime, publisher.clone(), metrics.clone()),
            publisher,
            output: runtime.output.clone(),
            topic_max_bytes: runtime.topic_max_bytes.clone(),
            stage: runtime.name.clone(),
            max_attempts: runtime.settings.max_attempts.get(),
            transient_give_up: (runtime.settings.transient_give_up_s > 0)
                .then(|| Duration::from_secs(runtime.settings.transient_give_up_s)),
            metrics: metrics.clone(),
            shutdown: runtime.shutdown.clone(),
        })
    }

    /// Transforms one record (holding one of `transforms` until its outputs are
    /// encoded) and publishes its outputs or its dead letter; Ok means everything
    /// derived from it is acknowledged and its offset may be stored.
    pub(super) async fn handle(
        &self,
        record: &InputRecord,
        transforms: &Semaphore,
    ) -> Result<(), SendError> {
        let Some(transforming) = self.transform_permit(transforms).await else {
            return Err(SendError::Abandoned);
        };
        let outcome = self.transform_with_retries(record).await;
        let outputs = match outcome {
            Ok(outputs) => outputs,
            Err(Failed::Abandoned) => return Err(SendError::Abandoned),
            Err(Failed::DeadLetter(reason, error, attempts)) => {
                return self
                    .dead_letters
                    .send(record, reason, error, attempts)
                    .await;
            }
        };
        let records = match self.outgoing_records(&outputs) {
            Ok(records) => records,
            Err((reason, error)) => {
                return self.dead_letters.send(record, reason, error, 1).await;
            }
        };
        drop(transforming);
        let sends = records.iter().map(|out| self.publisher.send_record(out));
        let mut rejected = None;
        for result in futures::future::join_all(sends).await {
            match result {
                Ok(()) => self.metrics.produced.inc(),
                Err(SendError::Abandoned) => return Err(SendError::Abandoned),
                Err(e @ SendError::Rejected { .. }) => rejected = Some(e),
            }
        }
        match rejected {
            // Retrying cannot help and waiting would stop the partition for good.
            Some(e) => {
                self.dead_letters
                    .send(record, LoopReason::OutputRejected.label(), e.to_string(), 1)
                    .await
            }
            None => Ok(()),
        }
    }

    /// `outputs` encoded, each for its topic; or the reason and error to dead-letter
    /// the input with instead: an output that cannot be encoded, has no topic, or is
    /// larger than its topic takes (which would poison a transaction holding it).
    pub(crate) fn outgoing_records(
        &self,
        outputs: &[Keyed<T::Output>],
    ) -> Result<Vec<Outgoing>, (&'static str, String)> {
        let mut records = Vec::with_capacity(outputs.len());
        for output in outputs {
            let Some(topic) = output.value.side_topic().or(self.output.as_deref()) else {
                let error = format!(
                    "stage {} has no output topic but produced records",
                    self.stage
                );
                return Err((LoopReason::NoOutputTopic.label(), error));
            };
            let payload = output
                .value
                .encode_output()
                .map_err(|e| (LoopReason::Encode.label(), e.to_string()))?;
            let size = output.key.len() + payload.len();
            if self
                .topic_max_bytes
                .get(topic)
                .is_some_and(|&max| size > max)
            {
                let error = format!(
                    "{topic} refused a record of {size} bytes: above its max.message.bytes"
                );
                return Err((LoopReason::OutputRejected.label(), error));
            }
            records.push(Outgoing {
                topic: topic.to_string(),
                partition: None,
                key: output.key.as_bytes().to_vec(),
                payload,
            });
        }
        Ok(records)
    }

    /// A transform's permit, or None when shutdown comes first (the record is left
    /// uncommitted for the next owner).
    pub(crate) async fn transform_permit<'a>(
        &self,
        transforms: &'a Semaphore,
    ) -> Option<tokio::sync::SemaphorePermit<'a>> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            permit = transforms.acquire() => Some(permit.expect("never closed")),
        }
    }

    pub(crate) async fn transform_with_retries(
        &self,
        record: &InputRecord,
    ) -> Result<Vec<Keyed<T::Output>>, Failed> {
        let Some(value) = record.value.as_deref() else {
            return Err(Failed::DeadLetter(
                LoopReason::EmptyValue.label(),
                "record has no value".into(),
                1,
            ));
        };
        let mut attempt = 1;
        let mut failing_since = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_TRANSIENT_BACKOFF);
        loop {
            // Decoding each attempt keeps `Input` free of a Clone bound; it is cheap.
            let input = T::Input::decode(value).map_err(|e| {
                Failed::DeadLetter(
                    LoopReason::of_decode_error(&e).label(),
                    e.to_string(),
                    attempt,
                )
            })?;
            match self.transform.transform(input).await {
                Ok(outputs) => return Ok(outputs),
                Err(e) if e.transient => {
                    let failing = failing_since.get_or_insert_with(std::time::Instant::now);
                    if self
                        .transient_give_up
                        .is_some_and(|limit| failing.elapsed() >= limit)
                    {
                        let message = format!(
                            "{} (failing for {:?}; given up after transient_give_up_s)",
                            e.message,
                            failing.elapsed()
                        );
                        return Err(Failed::DeadLetter(e.reason.label(), message, attempt));
                    }
                    self.metrics.retries.inc();
                    tracing::warn!(
                        reason = e.reason.label(), error = %e, attempt,
                        partition = record.partition, offset = record.offset,
                        "transient failure; the record waits and is tried again"
                    );
                    if backoff.pause(&self.shutdown).await.is_err() {
                        return Err(Failed::Abandoned);
                    }
                }
                Err(e) if e.retryable && attempt < self.max_attempts => {
                    self.metrics.retries.inc();
                    tracing::debug!(reason = e.reason.label(), error = %e, attempt, "retrying transform");
                    if backoff.pause(&self.shutdown).await.is_err() {
                        return Err(Failed::Abandoned);
                    }
                }
                Err(e) => return Err(Failed::DeadLetter(e.reason.label(), e.message, attempt)),
            }
            attempt += 1;
        }
    }
}
