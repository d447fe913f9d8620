//! The one consume → transform → produce loop every consuming stage runs.
//!
//! Delivery: at-least-once with an idempotent producer. Records are transformed
//! concurrently (up to `max_in_flight`; up to `max_uncommitted` read and not yet
//! committed); an input offset is stored only once every
//! output derived from it (or its dead letter) is acknowledged, using the contiguous
//! high-water mark per partition, and librdkafka's auto-commit commits stored offsets
//! periodically, on revoke and on close. A crash replays at most the uncommitted tail.
//! Back-pressure: with every permit taken the loop stops reading, and past a second of
//! that it pauses the assigned partitions and polls on, so slow transforms never cost
//! the member its place in the group.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::codec::AvroRecord;
use crate::config::Delivery;
use crate::labels::LabelSet;
use crate::offsets::OffsetTracker;
use crate::publish::{Outgoing, Publisher, SendError};
use crate::records::{now_ms, DeadLetter};
use crate::retry::Backoff;
use crate::stage::StageRuntime;
use crate::telemetry::{register, Readiness};

/// An output record and the key that routes it to its partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    pub key: String,
    pub value: T,
}

/// Why a record could not be transformed: `reason` is one of the stage's
/// [`Transform::Reason`]s, the label of its dead letters.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransformError<R: LabelSet> {
    pub reason: R,
    pub message: String,
    /// Worth `max_attempts` tries before the record is dead-lettered.
    pub retryable: bool,
    /// Trouble outside the record (a host down or throttling): retried with backoff
    /// until it works, the stage stops, or `transient_give_up_s` passes (then it is
    /// dead-lettered, to be replayed). The record holds its
    /// partition's offset meanwhile, and back-pressure pauses the input when every
    /// permit waits so.
    pub transient: bool,
}

impl<R: LabelSet> TransformError<R> {
    pub fn permanent(reason: R, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retryable: false,
            transient: false,
        }
    }

    pub fn retryable(reason: R, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(reason, message)
        }
    }

    pub fn transient(reason: R, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::retryable(reason, message)
        }
    }
}

crate::label_set! {
    /// Why the loop itself dead-letters a record, whatever the stage.
    pub enum LoopReason {
        /// The value is not the input schema's Avro (or has none).
        Decode => "decode",
        /// Written with a version of the input schema this build does not know: a newer
        /// producer's during a rolling upgrade. Replayed (`dead-letters replay --reason
        /// unknown_schema`) once every replica runs the new build.
        UnknownSchema => "unknown_schema",
        EmptyValue => "empty_value",
        /// An output record could not be encoded.
        Encode => "encode",
        /// The output topic refused an output (too large, say).
        OutputRejected => "output_rejected",
        /// A stage without an output topic produced records.
        NoOutputTopic => "no_output_topic",
    }
}

impl LoopReason {
    /// The reason a value that does not decode is dead-lettered with.
    pub fn of_decode_error(error: &crate::codec::CodecError) -> Self {
        match error {
            crate::codec::CodecError::UnknownFingerprint { .. } => LoopReason::UnknownSchema,
            _ => LoopReason::Decode,
        }
    }
}

/// The longest wait between attempts at a record failing transiently.
const MAX_TRANSIENT_BACKOFF: Duration = Duration::from_secs(120);

/// How a record's transform ended without outputs.
pub(crate) enum Failed {
    DeadLetter(&'static str, String, u32),
    /// Shutdown came while it waited out a transient failure: left uncommitted.
    Abandoned,
}

/// A record a transform publishes. Every Avro record type is one, bound for the stage's
/// output topic; a stage that publishes a second kind beside it (the processor's
/// repository summaries, in the same transaction as the files) implements this for an
/// enum of both and names the other topic.
pub trait Output: Send + Sync + 'static {
    fn encode_output(&self) -> Result<Vec<u8>, crate::codec::CodecError>;

    /// Its topic, when it is not the stage's output topic.
    fn side_topic(&self) -> Option<&str> {
        None
    }
}

impl<T: AvroRecord> Output for T {
    fn encode_output(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        self.encode()
    }
}

/// A stage's domain logic: decode → decide → outputs. Everything about Kafka is here
/// in the runtime, not in the stage.
pub trait Transform: Send + Sync + 'static {
    type Input: AvroRecord;
    type Output: Output;
    /// Why it dead-letters a record, next to the loop's [`LoopReason`]s.
    type Reason: LabelSet;

    fn transform(
        &self,
        input: Self::Input,
    ) -> impl Future<Output = Result<Vec<Keyed<Self::Output>>, TransformError<Self::Reason>>> + Send;
}

pub const RECORDS_CONSUMED: &str = "codelupe_records_consumed_total";
pub const RECORDS_PRODUCED: &str = "codelupe_records_produced_total";
pub const DEAD_LETTERS: &str = "codelupe_dead_letters_total";
pub const RECORDS_IN_FLIGHT: &str = "codelupe_records_in_flight";
pub const CONSUMER_LAG: &str = "codelupe_consumer_lag";

/// Counts and gauges every consuming stage exports next to its own metrics.
#[derive(Clone)]
pub struct LoopMetrics {
    pub consumed: IntCounter,
    pub produced: IntCounter,
    pub dead_letters: IntCounterVec,
    pub retries: IntCounter,
    pub in_flight: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub last_processed: IntGauge,
}

impl LoopMetrics {
    /// Registers the loop's metrics, with the dead-letter reasons of the loop and of
    /// the stage (`R`) at 0.
    pub fn register<R: LabelSet>(r: &Registry) -> prometheus::Result<Self> {
        let mut reasons = LoopReason::labels();
        reasons.extend(R::labels());
        Ok(Self {
            consumed: register::counter(r, RECORDS_CONSUMED, "Input records received from Kafka")?,
            produced: register::counter(
                r,
                RECORDS_PRODUCED,
                "Output records acknowledged by Kafka",
            )?,
            dead_letters: register::counter_vec(
                r,
                DEAD_LETTERS,
                "Input records sent to the dead-letter topic",
                "reason",
                &reasons,
            )?,
            retries: register::counter(
                r,
                "codelupe_transform_retries_total",
                "Transform attempts repeated after a retryable error",
            )?,
            in_flight: register::int_gauge(
                r,
                RECORDS_IN_FLIGHT,
                "Input records being transformed or awaiting produce acknowledgements",
            )?,
            consumer_lag: register::gauge_vec(
                r,
                CONSUMER_LAG,
                "Records between the consumer position and the partition end",
                &["topic", "partition"],
            )?,
            last_processed: register::int_gauge(
                r,
                "codelupe_last_processed_timestamp_seconds",
                "Unix time the last input record was fully handled",
            )?,
        })
    }
}

/// Consumer callbacks: readiness and lag from librdkafka; revocations applied to the
/// offset tracker inside the callback, before any record of a new assignment arrives.
pub(crate) struct LoopContext {
    readiness: Arc<Readiness>,
    lag: IntGaugeVec,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Tells a stateful stage of its partitions coming and going, in the order they do.
    rebalanced: Option<mpsc::UnboundedSender<Rebalanced>>,
    /// Whether back-pressure paused the input: partitions assigned meanwhile (a dead
    /// peer's, under cooperative rebalancing) are paused as they arrive, or their
    /// backlog would be read into memory while the loop polls only to stay in its group.
    paused: Arc<AtomicBool>,
}

/// A change of the consumer's partitions, as a stateful stage hears of it: those that
/// left (before their new owner's records), then those it now owns (to load their
/// state).
#[derive(Debug)]
pub(crate) enum Rebalanced {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        let mut fetching = false;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
                fetching |= *partition >= 0 && p.fetch_state == "active";
            }
        }
        // A member fetching its partitions is consuming, whatever an earlier rebalance
        // error said: after a failed rebalance the member may keep its assignment with
        // no new assignment callback to say so, and stay not ready for good.
        if fetching && !self.readiness.is_ready() {
            self.readiness.set_ready();
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(list) = rebalance {
            // Commit what is stored before the partitions go, so the next owner starts
            // right after the last acknowledged record. Records still in flight were not
            // stored and will be replayed by that owner (duplicates, never losses).
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke");
            }
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            for e in list.elements() {
                let _ = self
                    .lag
                    .remove_label_values(&[e.topic(), &e.partition().to_string()]);
            }
            tracing::info!(?partitions, "partitions revoked");
            self.tracker
                .lock()
                .expect("tracker lock")
                .revoke(partitions.iter().copied());
            if let Some(rebalanced) = &self.rebalanced {
                let _ = rebalanced.send(Rebalanced::Revoked(partitions));
            }
        }
    }

    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
                if self.paused.load(Ordering::Acquire) {
                    if let Err(e) = consumer.pause(list) {
                        tracing::warn!(error = %e, "cannot pause partitions assigned while paused");
                    }
                }
                if let Some(rebalanced) = &self.rebalanced {
                    let _ = rebalanced.send(Rebalanced::Assigned(partitions));
                }
                self.readiness.set_ready();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance failed: not ready until the next assignment");
                self.readiness
                    .set_not_ready(format!("rebalance failed: {e}"));
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Nothing new to commit is reported as an error by librdkafka; not a problem.
            if !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
            ) {
                tracing::warn!(error = %e, "offset commit failed; it is retried on the next commit");
            }
        }
    }
}

/// The stage's consumer, subscribed to its input; revocations reach `tracker` and,
/// with assignments, `rebalanced` when given.
pub(crate) fn subscribe(
    runtime: &StageRuntime,
    metrics: &LoopMetrics,
    tracker: Arc<Mutex<OffsetTracker>>,
    rebalanced: Option<mpsc::UnboundedSender<Rebalanced>>,
) -> anyhow::Result<Arc<StreamConsumer<LoopContext>>> {
    let (input, group) = runtime.require_input()?;
    let context = LoopContext {
        readiness: runtime.readiness.clone(),
        lag: metrics.consumer_lag.clone(),
        tracker,
        rebalanced,
        paused: Arc::new(AtomicBool::new(false)),
    };
    let consumer: StreamConsumer<LoopContext> = runtime
        .clients
        .consumer_config(&runtime.client_id(), group)
        .create_with_context(context)
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[input])
        .with_context(|| format!("cannot subscribe to {input}"))?;
    runtime.readiness.set_not_ready(format!(
        "waiting for a partition assignment in group {group}"
    ));
    Ok(Arc::new(consumer))
}

/// Commits what was stored, then leaves the group (the drop closes the consumer); both
/// block, so off the async workers.
pub(crate) async fn commit_and_leave(
    consumer: Arc<StreamConsumer<LoopContext>>,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
        consumer.unsubscribe();
        drop(consumer);
    })
    .await?;
    Ok(())
}

/// Runs `transform` over the stage's input until shutdown, in the stage's delivery
/// mode (`exactly_once`: see [`crate::exactly_once`]).
pub async fn run<T: Transform>(transform: T, runtime: &StageRuntime) -> anyhow::Result<()> {
    if runtime.settings.delivery == Delivery::ExactlyOnce {
        return crate::exactly_once::run(transform, runtime).await;
    }
    let (input, _) = runtime.require_input()?;
    let metrics = LoopMetrics::register::<T::Reason>(&runtime.registry)?;
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let consumer = subscribe(runtime, &metrics, tracker.clone(), None)?;

    let shared = Arc::new(Shared::new(transform, runtime, &metrics)?);
    let mut back_pressure = BackPressure::new(&runtime.settings, &consumer);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i32, i64)>();
    // A dead letter the dead-letter topic refuses: the record can go nowhere.
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<SendError>();
    let mut fatal = None;
    let mut tasks = JoinSet::new();
    let mut stream = consumer.stream();
    let mut tick = tokio::time::interval(Duration::from_millis(250));

    loop {
        tokio::select! {
            biased;
            _ = runtime.shutdown.cancelled() => break,
            Some(e) = fatal_rx.recv() => {
                fatal = Some(e);
                break;
            }
            Some((partition, offset)) = done_rx.recv() => {
                store(&consumer, input, &tracker, partition, offset);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => back_pressure.released(&consumer),
            _ = tick.tick() => {
                back_pressure.tick(&consumer);
                store_stepped_over(&consumer, input, &tracker);
            }
            message = stream.next(), if back_pressure.poll_input() => {
                let message = match polled(message) {
                    Polled::Record(message) => message,
                    Polled::Skip => continue,
                    Polled::End => break,
                };
                let record = InputRecord::of(&message);
                if !tracker.lock().expect("tracker lock").begin(record.partition, record.offset) {
                    tracing::debug!(partition = record.partition, offset = record.offset, "fetched again; already handled");
                    continue;
                }
                let permit = back_pressure.take();
                metrics.consumed.inc();
                metrics.in_flight.inc();
                let handled = handle_one(shared.clone(), permit, back_pressure.transforms(), record, done_tx.clone(), fatal_tx.clone());
                tasks.spawn(handled);
            }
        }
    }
    drop(stream);

    tracing::info!(
        stage = %runtime.name,
        in_flight = tracker.lock().expect("tracker lock").in_flight(),
        "draining"
    );
    let timeout = Duration::from_millis(runtime.settings.drain_timeout_ms);
    drain(&mut tasks, &mut done_rx, timeout, |(partition, offset)| {
        store(&consumer, input, &tracker, partition, offset)
    })
    .await;
    drop(shared);
    commit_and_leave(consumer).await?;
    match fatal {
        Some(e) => Err(anyhow::Error::new(e).context(format!(
            "stage {} stopped: a dead letter was refused, so a record could go nowhere",
            runtime.name
        ))),
        None => Ok(()),
    }
}

/// Handles one record once `permit` is granted: its position goes to `done` when
/// everything derived from it is acknowledged, a dead letter the topic refused to
/// `fatal`.
async fn handle_one<T: Transform>(
    shared: Arc<Shared<T>>,
    place: impl Future<Output = OwnedSemaphorePermit>,
    transforms: Arc<Semaphore>,
    record: InputRecord,
    done: mpsc::UnboundedSender<(i32, i64)>,
    fatal: mpsc::UnboundedSender<SendError>,
) {
    let place = place.await;
    let handled = shared.handle(&record, &transforms).await;
    shared.metrics.in_flight.dec();
    drop(place);
    match handled {
        Ok(()) => {
            shared.metrics.last_processed.set(now_ms() / 1000);
            let _ = done.send((record.partition, record.offset));
        }
        Err(e @ SendError::Rejected { .. }) => {
            let _ = fatal.send(e);
        }
        Err(SendError::Abandoned) => {}
    }
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

/// What one poll of the input stream gave.
pub(crate) enum Polled<M> {
    Record(M),
    /// A consumer error, logged; polling goes on.
    Skip,
    /// The stream ended.
    End,
}

pub(crate) fn polled<M>(message: Option<KafkaResult<M>>) -> Polled<M> {
    match message {
        Some(Ok(message)) => Polled::Record(message),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "consumer error");
            Polled::Skip
        }
        None => Polled::End,
    }
}

/// How long every permit may stay taken before the input is paused: until then the
/// loop simply stops reading (pausing drops what librdkafka prefetched, so pausing at
/// each brief exhaustion would refetch constantly); past it, the partitions are paused
/// and polling goes on, well inside `max.poll.interval.ms`.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Bounds the records read and not yet committed to `max_uncommitted` and those being
/// transformed to `max_in_flight`, without ever leaving the consumer unpolled for long.
/// A record takes its place when it is read and keeps it until its offset may be
/// committed, and holds a transform's permit only while it is transformed: waiting for
/// acks (or a transaction) takes no transform's place, and a record never needs a new
/// place once read, so records waiting for an earlier one to commit cannot starve it.
pub(crate) struct BackPressure {
    places: Arc<Semaphore>,
    transforms: Arc<Semaphore>,
    exhausted_since: Option<tokio::time::Instant>,
    /// Shared with the consumer's context, which pauses partitions assigned meanwhile.
    paused: Arc<AtomicBool>,
}

impl BackPressure {
    pub(crate) fn new(
        settings: &crate::config::StageSettings,
        consumer: &StreamConsumer<LoopContext>,
    ) -> Self {
        Self {
            places: Arc::new(Semaphore::new(settings.max_uncommitted.get())),
            transforms: Arc::new(Semaphore::new(settings.max_in_flight.get())),
            exhausted_since: None,
            paused: consumer.context().paused.clone(),
        }
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The permits of records being transformed.
    pub(crate) fn transforms(&self) -> Arc<Semaphore> {
        self.transforms.clone()
    }

    /// Whether to poll the input: while a place is free, or while paused (polling
    /// then only keeps the member in its group).
    pub(crate) fn poll_input(&self) -> bool {
        self.is_paused() || self.places.available_permits() > 0
    }

    /// A place for a record just read: at once, or (for one fetched before a pause
    /// took effect) when one frees.
    pub(crate) fn take(&mut self) -> impl Future<Output = OwnedSemaphorePermit> + Send + 'static {
        let now = self.places.clone().try_acquire_owned().ok();
        if self.places.available_permits() == 0 {
            self.exhausted_since
                .get_or_insert_with(tokio::time::Instant::now);
        }
        let places = self.places.clone();
        async move {
            match now {
                Some(permit) => permit,
                None => places.acquire_owned().await.expect("never closed"),
            }
        }
    }

    /// Places were returned: resume a paused input.
    pub(crate) fn released(&mut self, consumer: &StreamConsumer<LoopContext>) {
        if self.places.available_permits() > 0 {
            self.exhausted_since = None;
            if self.is_paused() {
                hold_input(consumer, false);
            }
        }
    }

    /// Pauses the input once every place has been taken for `PAUSE_AFTER`.
    pub(crate) fn tick(&mut self, consumer: &StreamConsumer<LoopContext>) {
        let stuck = self
            .exhausted_since
            .is_some_and(|since| since.elapsed() >= PAUSE_AFTER);
        if stuck && !self.is_paused() && self.places.available_permits() == 0 {
            hold_input(consumer, true);
        }
    }
}

/// Holds the input (every partition assigned paused, and those assigned meanwhile as
/// they arrive) or lets it go again; true when done. Polling a held input only keeps
/// the member in its group.
pub(crate) fn hold_input(consumer: &StreamConsumer<LoopContext>, hold: bool) -> bool {
    let paused = &consumer.context().paused;
    if hold {
        // Set first: a partition assigned while the pause is applied is paused too.
        paused.store(true, Ordering::Release);
        let held = set_paused(consumer, true);
        if !held {
            paused.store(false, Ordering::Release);
        }
        held
    } else {
        let let_go = set_paused(consumer, false);
        if let_go {
            paused.store(false, Ordering::Release);
        }
        let_go
    }
}

/// Pauses (or resumes) fetching from every assigned partition; true when done.
/// Paused partitions keep their position: resuming fetches from the next record.
pub(crate) fn set_paused(consumer: &StreamConsumer<LoopContext>, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment");
            return false;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            tracing::debug!(pause, partitions = assignment.count(), "back-pressure");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, pause, "cannot pause or resume the input");
            false
        }
    }
}

pub(crate) fn store(
    consumer: &StreamConsumer<LoopContext>,
    topic: &str,
    tracker: &Mutex<OffsetTracker>,
    partition: i32,
    offset: i64,
) {
    let completed = tracker
        .lock()
        .expect("tracker lock")
        .complete(partition, offset);
    let Some(next) = completed else {
        return;
    };
    let mut list = TopicPartitionList::new();
    if list
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_ok()
    {
        if let Err(e) = consumer.store_offsets(&list) {
            // The partition moved to another member meanwhile; it will replay from
            // that member's committed offset.
            tracing::debug!(partition, next, error = %e, "offset not stored");
        }
    }
}

/// Offsets to store for partitions with nothing in flight whose consumer position has
/// stepped over records never delivered (transaction markers).
pub(crate) fn stepped_over(
    consumer: &StreamConsumer<LoopContext>,
    tracker: &Mutex<OffsetTracker>,
) -> Vec<(i32, i64)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    let mut tracker = tracker.lock().expect("tracker lock");
    positions
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(position) => tracker
                .step_over(e.partition(), position)
                .map(|next| (e.partition(), next)),
            _ => None,
        })
        .collect()
}

/// Stores the offsets [`stepped_over`] finds (for the at-least-once loops).
pub(crate) fn store_stepped_over(
    consumer: &StreamConsumer<LoopContext>,
    topic: &str,
    tracker: &Mutex<OffsetTracker>,
) {
    let mut list = TopicPartitionList::new();
    for (partition, next) in stepped_over(consumer, tracker) {
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    if list.count() > 0 {
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(error = %e, "stepped-over offsets not stored");
        }
    }
}

pub(crate) struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl InputRecord {
    pub fn of(message: &impl Message) -> Self {
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Publishes the records a stage could not handle to the dead-letter topic.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    pub publisher: Publisher,
    pub stage: String,
    pub topic: String,
    pub metrics: LoopMetrics,
}

impl DeadLetters {
    pub fn new(runtime: &StageRuntime, publisher: Publisher, metrics: LoopMetrics) -> Self {
        Self {
            publisher,
            stage: runtime.name.clone(),
            topic: runtime.dead_letter_topic.clone(),
            metrics,
        }
    }

    /// Publishes `record`'s dead letter, bounded as [`dead_letter`] says (the error says
    /// what was cut; the original stays at its topic, partition and offset), so the
    /// letter itself fits the dead-letter topic. A letter the topic
    /// refuses is returned as [`SendError::Rejected`]: the stage cannot go on safely.
    pub async fn send(
        &self,
        record: &InputRecord,
        reason: &'static str,
        error: String,
        attempts: u32,
    ) -> Result<(), SendError> {
        let letter = self.letter(record, reason, error, attempts);
        self.publisher
            .send(&letter.topic, &letter.key, &letter.payload)
            .await?;
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        Ok(())
    }

    /// `record`'s dead letter as a record to publish.
    pub fn letter(
        &self,
        record: &InputRecord,
        reason: &'static str,
        error: String,
        attempts: u32,
    ) -> Outgoing {
        dead_letter(
            &self.stage,
            &self.topic,
            Origin {
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
            },
            reason,
            error,
            attempts,
        )
    }
}

/// Where a dead-lettered record was read.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// The dead letter of a record `stage` could not handle, bound for `dead_letter_topic`
/// and keyed by the original key. Its size is bounded by construction, whatever the
/// record held: the value is cut to [`DeadLetter::MAX_VALUE`] bytes, the key to
/// [`DeadLetter::MAX_KEY`] and the error text (which may echo record fields) to
/// [`DeadLetter::MAX_ERROR`]; the error says what was cut, and the original stays at
/// its offset. So a letter never exceeds [`DeadLetter::MAX_BYTES`] and the topic cannot
/// refuse it (a refused letter stops the stage onto the same record again).
pub fn dead_letter(
    stage: &str,
    dead_letter_topic: &str,
    origin: Origin<'_>,
    reason: &str,
    mut error: String,
    attempts: u32,
) -> Outgoing {
    let mut cuts = Vec::new();
    if error.len() > DeadLetter::MAX_ERROR {
        cuts.push(format!(
            "error cut to {} of {} bytes",
            DeadLetter::MAX_ERROR,
            error.len()
        ));
        let mut end = DeadLetter::MAX_ERROR;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    let (value, cut) = excerpt(origin.value, DeadLetter::MAX_VALUE, "value");
    cuts.extend(cut);
    let (key, cut) = excerpt(origin.key, DeadLetter::MAX_KEY, "key");
    cuts.extend(cut);
    if !cuts.is_empty() {
        error.push_str(&format!(" ({})", cuts.join(", ")));
    }
    tracing::warn!(
        %stage, reason, %error,
        topic = %origin.topic, partition = origin.partition, offset = origin.offset,
        "dead-lettering record"
    );
    let letter = DeadLetter {
        stage: stage.to_string(),
        reason: reason.to_string(),
        error,
        topic: origin.topic.to_string(),
        partition: origin.partition,
        offset: origin.offset,
        attempts: attempts as i32,
        key: key.clone(),
        value,
        failed_at_ms: now_ms(),
    };
    Outgoing {
        topic: dead_letter_topic.to_string(),
        partition: None,
        key: key.unwrap_or_default(),
        payload: letter
            .encode()
            .expect("a DeadLetter always encodes: its schema is tested"),
    }
}

/// The first `max` bytes of `bytes`, and what was cut, if anything.
fn excerpt(bytes: Option<&[u8]>, max: usize, what: &str) -> (Option<Vec<u8>>, Option<String>) {
    match bytes {
        Some(b) if b.len() > max => (
            Some(b[..max].to_vec()),
            Some(format!(
                "{what} cut to its first {max} of {} bytes",
                b.len()
            )),
        ),
        other => (other.map(<[u8]>::to_vec), None),
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
    metrics: LoopMetrics,
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
    async fn handle(&self, record: &InputRecord, transforms: &Semaphore) -> Result<(), SendError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest letter a record can cause: the input topics take up to 2 MiB, so a
    /// key and a value of 1 MiB each, and an error echoing the key whole (as
    /// "scheme … is not allowed" or "… is no pack of the clone store" do).
    #[test]
    fn a_letter_is_bounded_whatever_the_record_held() {
        let key: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let value = vec![7u8; 1 << 20];
        let error = format!("scheme {} is not allowed", "é".repeat(1 << 19));
        let letter = dead_letter(
            "downloader",
            "dead-letters",
            Origin {
                topic: "repo-urls",
                partition: 0,
                offset: 1,
                key: Some(&key),
                value: Some(&value),
            },
            "invalid",
            error,
            1,
        );
        let size = letter.key.len() + letter.payload.len();
        assert!(size <= DeadLetter::MAX_BYTES, "{size} bytes");
        const { assert!(DeadLetter::MAX_BYTES < crate::topology::KAFKA_DEFAULT_MAX_MESSAGE_BYTES) };
        let decoded = DeadLetter::decode(&letter.payload).unwrap();
        assert_eq!(decoded.key.as_deref(), Some(&key[..DeadLetter::MAX_KEY]));
        assert_eq!(
            decoded.value.as_deref(),
            Some(&value[..DeadLetter::MAX_VALUE])
        );
        let (head, tail): (String, String) = (
            decoded.error.chars().take(9).collect(),
            decoded
                .error
                .chars()
                .rev()
                .take(128)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        );
        assert_eq!(head, "scheme éé");
        assert_eq!(
            tail,
            "(error cut to 8192 of 1048598 bytes, value cut to its first 262144 of \
             1048576 bytes, key cut to its first 4096 of 1048576 bytes)"
        );
    }
}
