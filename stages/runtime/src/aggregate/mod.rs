//! The consume loop for stages whose outputs gather many inputs (the batcher: files →
//! batches). Inputs are handed to the stage one at a time, each partition in offset
//! order; the stage seals outputs when they are full. An input is released when every
//! output holding a part of it is acknowledged and its last part has been sealed; then
//! its follow-up records (the batcher's dedup marks) are published and its offset is
//! stored. So inputs still in a partial output at shutdown or crash stay uncommitted
//! and are replayed: nothing is lost, at worst something is published twice.
//!
//! In `exactly_once` delivery outputs are not sent one by one but gathered, and every
//! 100 ms one transaction commits them with the follow-ups of the inputs they release
//! and those inputs' offsets (sent with the group's metadata): a read_committed reader
//! sees each input's part of the outputs once, whatever crashes.
//!
//! Decoding and the aggregate's stateless work on an input (its `preparer`: the
//! batcher's tokenizing) run on every core, up to `max_in_flight` inputs ahead of
//! `push`.

pub mod prepare;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::aggregate::prepare::Ordered;
use crate::codec::AvroRecord;
use crate::labels::LabelSet;
use crate::offsets::OffsetTracker;
use crate::pipeline::{
    commit_and_leave, drain, hold_input, stepped_over, store, store_stepped_over, subscribe,
    DeadLetters, InputRecord, LoopContext, LoopMetrics, LoopReason, Polled, Rebalanced,
};
use crate::publish::{Outgoing, Publisher, SendError};
use crate::records::now_ms;
use crate::stage::StageRuntime;
use crate::transaction::{InputOffsets, Transactions};
use crate::TransformError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputPosition {
    pub partition: i32,
    pub offset: i64,
}

/// An output ready to publish.
#[derive(Debug)]
pub struct Sealed<T> {
    pub key: String,
    /// None: the key's partition.
    pub partition: Option<i32>,
    pub value: T,
    /// The inputs with a part in this output, and whether it is their last part.
    pub inputs: Vec<(InputPosition, bool)>,
    /// Records that go out with this output: in its transaction in `exactly_once`, else
    /// once it is acknowledged (the batcher's marks of a file's head packed here).
    pub alongside: Vec<Outgoing>,
}

/// What handing over one input (or a flush) produced.
#[derive(Debug)]
pub struct Step<T> {
    pub sealed: Vec<Sealed<T>>,
    /// Inputs finished without a part in any output (duplicates dropped, say).
    pub finished: Vec<InputPosition>,
    /// Records to publish when an input is released (every output holding a part of it
    /// acknowledged), before its offset is stored: the batcher's dedup marks, so a mark
    /// never exists while a batch of its file might still be lost.
    pub on_release: Vec<(InputPosition, Outgoing)>,
}

impl<T> Step<T> {
    /// Adds `other`'s outputs and releases after this step's.
    pub fn extend(&mut self, other: Step<T>) {
        self.sealed.extend(other.sealed);
        self.finished.extend(other.finished);
        self.on_release.extend(other.on_release);
    }
}

impl<T> Default for Step<T> {
    fn default() -> Self {
        Self {
            sealed: Vec::new(),
            finished: Vec::new(),
            on_release: Vec::new(),
        }
    }
}

pub trait Aggregate: Send + 'static {
    type Input: AvroRecord;
    type Output: AvroRecord;
    /// Why it dead-letters an input, next to the loop's [`LoopReason`]s.
    type Reason: LabelSet;
    /// What [`Aggregate::preparer`] makes of an input, handed to `push` with it.
    type Prepared: Send + 'static;

    /// The work on an input that reads none of the aggregate's state, run on every
    /// core ahead of `push` (inputs still reach `push` in the order read).
    fn preparer(&self) -> Preparer<Self::Input, Self::Prepared>;

    /// Takes one input. A permanent error dead-letters it; a retryable one (state it
    /// could not load, say) stops the stage with the input uncommitted, since the
    /// aggregate cannot skip it and go on.
    fn push(
        &mut self,
        at: InputPosition,
        input: Self::Input,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Step<Self::Output>, TransformError<Self::Reason>>> + Send;

    /// Seals every partial output; called when the input has paused for `flush_after`.
    /// (Async: an exporting stage writes its partial files here.)
    fn flush(&mut self) -> impl Future<Output = Step<Self::Output>> + Send;

    /// None: partial outputs wait for more input however long that takes.
    fn flush_after(&self) -> Option<Duration>;

    /// These partitions went to another consumer, which replays their unreleased
    /// inputs: drop their partial outputs and any state the new owner may change.
    fn revoke(&mut self, partitions: &[i32]);

    /// These partitions came to this consumer: load their state now, all at once,
    /// rather than as each one's first input arrives. An error stops the stage.
    fn assign(&mut self, partitions: &[i32]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

pub type Preparer<I, P> = Arc<dyn Fn(&I) -> P + Send + Sync>;

/// An input read, decoded and prepared off the loop, waiting its turn for `push`.
struct Prepared<A: Aggregate> {
    record: InputRecord,
    /// Its partition's generation when read: a revocation since makes it stale.
    generation: u64,
    decoded: Result<(A::Input, A::Prepared), (LoopReason, String)>,
}

/// How many unacknowledged outputs hold each input, and whether its last part is
/// sealed. A revocation starts a new generation of the partition, so a late
/// acknowledgement from before it cannot release an input consumed again after it.
#[derive(Debug, Default)]
struct Holds {
    generations: HashMap<i32, u64>,
    held: HashMap<InputPosition, Held>,
}

#[derive(Debug)]
struct Held {
    generation: u64,
    outstanding: usize,
    last_part_sealed: bool,
    on_release: Vec<Outgoing>,
}

type Ticket = Vec<(InputPosition, u64)>;

impl Holds {
    fn generation(&self, partition: i32) -> u64 {
        self.generations.get(&partition).copied().unwrap_or(0)
    }

    fn dispatch(&mut self, inputs: &[(InputPosition, bool)]) -> Ticket {
        inputs
            .iter()
            .map(|&(at, last)| {
                let generation = self.generation(at.partition);
                let held = self.held.entry(at).or_insert(Held {
                    generation,
                    outstanding: 0,
                    last_part_sealed: false,
                    on_release: Vec::new(),
                });
                held.outstanding += 1;
                held.last_part_sealed |= last;
                (at, generation)
            })
            .collect()
    }

    /// Keeps `record` to publish when `at` is released; Err(record) when `at` is not
    /// held (nothing of it is in flight: publish now).
    fn on_release(&mut self, at: InputPosition, record: Outgoing) -> Result<(), Outgoing> {
        match self.held.get_mut(&at) {
            Some(held) => {
                held.on_release.push(record);
                Ok(())
            }
            None => Err(record),
        }
    }

    /// The inputs this acknowledgement releases, with their follow-up records.
    fn acked(&mut self, ticket: Ticket) -> Vec<(InputPosition, Vec<Outgoing>)> {
        let mut released = Vec::new();
        for (at, generation) in ticket {
            let Some(held) = self.held.get_mut(&at) else {
                continue;
            };
            if held.generation != generation {
                continue;
            }
            held.outstanding -= 1;
            if held.outstanding == 0 && held.last_part_sealed {
                let held = self.held.remove(&at).expect("present above");
                released.push((at, held.on_release));
            }
        }
        released
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            *self.generations.entry(*p).or_default() += 1;
        }
        self.held
            .retain(|at, _| !partitions.contains(&at.partition));
    }
}

enum Done {
    /// Inputs handled: dead-lettered, or their follow-ups acknowledged.
    Released(Vec<InputPosition>),
    /// An output was acknowledged.
    Acked(Ticket),
    /// An output or a dead letter was refused for good: an output holds pieces of many
    /// inputs, so none of them can be dead-lettered alone; the stage stops.
    Refused(crate::publish::SendError),
}

/// `exactly_once`: what the next transaction commits.
struct Transaction {
    transactions: Transactions,
    /// Sealed outputs, with the inputs holding a part of each and their records
    /// alongside.
    outputs: Vec<(Outgoing, Ticket, Vec<Outgoing>)>,
    /// Inputs finished without a part in any output (dropped, dead-lettered), with the
    /// records they leave (a dead letter, follow-ups).
    released: Vec<(InputPosition, Vec<Outgoing>)>,
}

/// How often an `exactly_once` aggregate commits; an at-least-once one stores the
/// offsets of partitions read to their end (past transaction markers) this often.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
const STEP_OVER_INTERVAL: Duration = Duration::from_secs(1);

struct Loop {
    input: String,
    /// None: the stage's outputs are not records (the export writes files).
    output: Option<String>,
    consumer: Arc<StreamConsumer<LoopContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    holds: Holds,
    publisher: Publisher,
    dead_letters: DeadLetters,
    metrics: LoopMetrics,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Done>,
    tasks: JoinSet<()>,
    /// Some in `exactly_once` delivery.
    transaction: Option<Transaction>,
    max_in_flight: usize,
}

/// Runs `aggregate` over the stage's input until shutdown. Partial outputs are not
/// flushed at shutdown: their inputs stay uncommitted for the next owner.
pub async fn run_aggregate<A: Aggregate>(
    mut aggregate: A,
    runtime: &StageRuntime,
) -> anyhow::Result<()> {
    let (mut state, mut done, mut rebalanced) = Loop::start::<A>(runtime).await?;
    let preparer = aggregate.preparer();
    let mut preparing: Ordered<Prepared<A>> = Ordered::on_every_core();
    let consumer = state.consumer.clone();
    let flush_after = aggregate.flush_after();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut stream = consumer.stream();
    let mut tick = tokio::time::interval(if state.transaction.is_some() {
        COMMIT_INTERVAL
    } else {
        STEP_OVER_INTERVAL
    });
    let failure = loop {
        tokio::select! {
            biased;
            _ = runtime.shutdown.cancelled() => break None,
            Some(change) = rebalanced.recv() => {
                match state.rebalanced(&mut aggregate, change, &mut stream).await {
                    Ok(early) => state.read(early, &preparer, &mut preparing),
                    Err(e) => break Some(e),
                }
            }
            Some(message) = done.recv() => {
                if let Done::Refused(e) = message {
                    break Some(anyhow::Error::new(e).context(format!(
                        "stage {} stopped: a record it made was refused for good",
                        runtime.name
                    )));
                }
                state.on_done(message);
            }
            Some(_) = state.tasks.join_next(), if !state.tasks.is_empty() => {}
            _ = tick.tick() => {
                if let Err(e) = state.tick().await {
                    break Some(e);
                }
            }
            _ = sleep_until(flush_at), if flush_at.is_some() && preparing.is_empty() => {
                flush_at = None;
                let step = aggregate.flush().await;
                if let Err(e) = state.dispatch(step).await {
                    break Some(e);
                }
            }
            Some(prepared) = preparing.next(), if !preparing.is_empty() => {
                if let Err(e) = state.take(&mut aggregate, prepared).await {
                    break Some(e);
                }
                flush_at = flush_after.map(|after| tokio::time::Instant::now() + after);
            }
            message = stream.next(), if preparing.len() < state.max_in_flight => {
                let record = match crate::pipeline::polled(message) {
                    Polled::Record(message) => InputRecord::of(&message),
                    Polled::Skip => continue,
                    Polled::End => break None,
                };
                let early = state
                    .apply_rebalances(&mut aggregate, &mut rebalanced, &mut stream)
                    .await;
                match early {
                    Ok(early) => state.read(std::iter::once(record).chain(early), &preparer, &mut preparing),
                    Err(e) => break Some(e),
                }
            }
        }
    };
    drop(stream);
    // The loop's is then the last handle: leaving the group closes the consumer.
    drop(consumer);
    state.finish(done, failure, runtime).await
}

/// Runs `work` while polling `stream`, so the member stays in its group however long
/// the work takes; the records polled meanwhile (fetched before the input was held)
/// come back with its result, in the order read.
async fn polled_while<T>(
    work: impl Future<Output = T>,
    stream: &mut MessageStream<'_, LoopContext>,
) -> (T, Vec<InputRecord>) {
    tokio::pin!(work);
    let (mut early, mut ended) = (Vec::new(), false);
    loop {
        tokio::select! {
            biased;
            result = &mut work => return (result, early),
            message = stream.next(), if !ended => match crate::pipeline::polled(message) {
                Polled::Record(message) => early.push(InputRecord::of(&message)),
                Polled::Skip => {}
                Polled::End => ended = true,
            },
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Loop {
    /// Subscribes to the stage's input and readies its publishers; the receivers of
    /// finished work and of the partitions' comings and goings go with it.
    async fn start<A: Aggregate>(
        runtime: &StageRuntime,
    ) -> anyhow::Result<(
        Self,
        mpsc::UnboundedReceiver<Done>,
        mpsc::UnboundedReceiver<Rebalanced>,
    )> {
        let (input, group) = runtime.require_input()?;
        // None for a stage whose outputs leave Kafka (the export's files).
        let output = runtime.output.clone();
        let metrics = LoopMetrics::register::<A::Reason>(&runtime.registry)?;
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let (rebalanced_tx, rebalanced) = mpsc::unbounded_channel();
        let consumer = subscribe(runtime, &metrics, tracker.clone(), Some(rebalanced_tx))?;
        let publisher = Publisher::new(runtime)?;
        let transaction = match runtime.settings.delivery {
            crate::config::Delivery::ExactlyOnce => Some(Transaction {
                transactions: Transactions::for_group(runtime, group).await?,
                outputs: Vec::new(),
                released: Vec::new(),
            }),
            crate::config::Delivery::AtLeastOnce => None,
        };
        let (done_tx, done) = mpsc::unbounded_channel();
        let max_in_flight = runtime.settings.max_in_flight.get();
        let state = Loop {
            input: input.to_string(),
            output,
            consumer,
            tracker,
            holds: Holds::default(),
            dead_letters: DeadLetters::new(runtime, publisher.clone(), metrics.clone()),
            publisher,
            metrics,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            done: done_tx,
            tasks: JoinSet::new(),
            transaction,
            max_in_flight,
        };
        Ok((state, done, rebalanced))
    }

    /// Partitions revoked: the loop's holds and the aggregate's state of them dropped.
    /// Partitions assigned: the aggregate loads their state (an error stops the stage);
    /// returns the records read meanwhile.
    async fn rebalanced<A: Aggregate>(
        &mut self,
        aggregate: &mut A,
        change: Rebalanced,
        stream: &mut MessageStream<'_, LoopContext>,
    ) -> anyhow::Result<Vec<InputRecord>> {
        match change {
            Rebalanced::Revoked(partitions) => {
                self.revoke(&partitions);
                aggregate.revoke(&partitions);
                Ok(Vec::new())
            }
            Rebalanced::Assigned(partitions) => {
                // A state kept forever can take longer to load than librdkafka lets a
                // member go unpolled (`max.poll.interval.ms`) before evicting it, and
                // an evicted member would load again at its next assignment, for
                // ever: the input is held and polled until the state is loaded.
                let held = hold_input(&self.consumer, true);
                let load = async {
                    if self.transaction.is_some() {
                        self.resume_done_ahead(&partitions).await;
                    }
                    aggregate
                        .assign(&partitions)
                        .await
                        .with_context(|| format!("loading the state of partitions {partitions:?}"))
                };
                let (loaded, early) = polled_while(load, stream).await;
                if held {
                    hold_input(&self.consumer, false);
                }
                loaded.map(|()| early)
            }
        }
    }

    /// Takes `records` in and queues each new one to be prepared.
    fn read<A: Aggregate>(
        &self,
        records: impl IntoIterator<Item = InputRecord>,
        preparer: &Preparer<A::Input, A::Prepared>,
        preparing: &mut Ordered<Prepared<A>>,
    ) {
        for record in records {
            if self.begin(&record) {
                self.prepare(preparer, record, preparing);
            }
        }
    }

    /// `exactly_once`: the inputs the partitions' last owner committed as done beyond
    /// their committed offsets (the offsets' metadata) are skipped when read again, so
    /// their outputs are not made twice. Unread, a later input is only made again.
    async fn resume_done_ahead(&self, partitions: &[i32]) {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.input, *partition);
        }
        let consumer = self.consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(list, Duration::from_secs(30))
        })
        .await
        .expect("committed offsets lookup panicked");
        let committed = match committed {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(error = %e, ?partitions, "inputs done ahead not read; they are made again");
                return;
            }
        };
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for e in committed.elements() {
            if let Offset::Offset(offset) = e.offset() {
                tracker.resume(e.partition(), offset, e.metadata());
            }
        }
    }

    /// Applies the partition changes queued by the rebalance callbacks that ran inside
    /// the last poll, in the order they came: before the record that poll returned.
    async fn apply_rebalances<A: Aggregate>(
        &mut self,
        aggregate: &mut A,
        rebalanced: &mut mpsc::UnboundedReceiver<Rebalanced>,
        stream: &mut MessageStream<'_, LoopContext>,
    ) -> anyhow::Result<Vec<InputRecord>> {
        let mut early = Vec::new();
        while let Ok(change) = rebalanced.try_recv() {
            early.extend(self.rebalanced(aggregate, change, stream).await?);
        }
        Ok(early)
    }

    /// Queues a record to be decoded and prepared off the loop.
    fn prepare<A: Aggregate>(
        &self,
        preparer: &Preparer<A::Input, A::Prepared>,
        record: InputRecord,
        preparing: &mut Ordered<Prepared<A>>,
    ) {
        let generation = self.holds.generation(record.partition);
        let preparer = preparer.clone();
        preparing.add(move || {
            let decoded = match record.value.as_deref().map(A::Input::decode) {
                None => Err((LoopReason::EmptyValue, "record has no value".to_string())),
                Some(Err(e)) => Err((LoopReason::of_decode_error(&e), e.to_string())),
                Some(Ok(input)) => {
                    let prepared = preparer(&input);
                    Ok((input, prepared))
                }
            };
            Prepared {
                record,
                generation,
                decoded,
            }
        });
    }

    /// Hands one prepared record to the aggregate and dispatches what it makes; an
    /// undecodable record or a permanent error is dead-lettered, a retryable one stops
    /// the stage. One read before its partition was revoked is dropped: the partition's
    /// new owner has it.
    async fn take<A: Aggregate>(
        &mut self,
        aggregate: &mut A,
        prepared: Prepared<A>,
    ) -> anyhow::Result<()> {
        let Prepared {
            record,
            generation,
            decoded,
        } = prepared;
        if generation != self.holds.generation(record.partition) {
            return Ok(());
        }
        let at = InputPosition {
            partition: record.partition,
            offset: record.offset,
        };
        let (input, prepared) = match decoded {
            Ok(decoded) => decoded,
            Err((reason, error)) => return self.dead_letter(record, reason.label(), error).await,
        };
        match aggregate.push(at, input, prepared).await {
            Ok(step) => self.dispatch(step).await,
            Err(e) if e.retryable => Err(anyhow::anyhow!(
                "{} at partition {} offset {}: {e}",
                e.reason.label(),
                at.partition,
                at.offset
            )),
            Err(e) => self.dead_letter(record, e.reason.label(), e.message).await,
        }
    }

    /// Waits (up to the drain timeout) for what is in flight, commits the last
    /// transaction, and leaves the group; `failure` wins over a later error.
    async fn finish(
        mut self,
        mut done: mpsc::UnboundedReceiver<Done>,
        mut failure: Option<anyhow::Error>,
        runtime: &StageRuntime,
    ) -> anyhow::Result<()> {
        tracing::info!(
            stage = %runtime.name,
            in_flight = self.tracker.lock().expect("tracker lock").in_flight(),
            "draining; inputs in partial outputs stay uncommitted"
        );
        let timeout = Duration::from_millis(runtime.settings.drain_timeout_ms);
        let mut tasks = std::mem::take(&mut self.tasks);
        drain(&mut tasks, &mut done, timeout, |message| {
            self.on_done(message)
        })
        .await;
        if failure.is_none() {
            // Sealed outputs gathered for the next transaction go out with their offsets.
            failure = self.commit().await.err();
        }
        let consumer = self.consumer.clone();
        drop(self);
        commit_and_leave(consumer).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// These partitions went to another member: their held inputs are forgotten (a late
    /// acknowledgement cannot release them), and in `exactly_once` the gathered outputs
    /// made only of their inputs are dropped (the new owner makes them again).
    fn revoke(&mut self, partitions: &[i32]) {
        self.holds.revoke(partitions);
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.outputs.retain(|(_, ticket, _)| {
                !ticket
                    .iter()
                    .all(|(at, _)| partitions.contains(&at.partition))
            });
            transaction
                .released
                .retain(|(at, _)| !partitions.contains(&at.partition));
        }
    }

    /// Every interval: commits the gathered transaction, or (at-least-once) stores the
    /// offsets of partitions read past their last record.
    async fn tick(&mut self) -> anyhow::Result<()> {
        if self.transaction.is_some() {
            return self.commit().await;
        }
        store_stepped_over(&self.consumer, &self.input, &self.tracker);
        Ok(())
    }

    /// `exactly_once`: one transaction with the gathered outputs, the follow-ups of the
    /// inputs they release and those inputs' offsets.
    async fn commit(&mut self) -> anyhow::Result<()> {
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(());
        };
        let outputs = std::mem::take(&mut transaction.outputs);
        let mut released = std::mem::take(&mut transaction.released);
        let produced = outputs.len() as u64;
        let mut records = Vec::with_capacity(outputs.len());
        for (output, ticket, alongside) in outputs {
            records.push(output);
            records.extend(alongside);
            released.extend(self.holds.acked(ticket));
        }
        // Each partition with a completion or a step over markers commits its
        // offset with the inputs done beyond it, which this transaction's outputs
        // include.
        let mut touched = BTreeSet::new();
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for (at, follow_ups) in released {
                records.extend(follow_ups);
                tracker.complete(at.partition, at.offset);
                touched.insert(at.partition);
            }
        }
        touched.extend(
            stepped_over(&self.consumer, &self.tracker)
                .into_iter()
                .map(|(p, _)| p),
        );
        let marks: BTreeMap<i32, (i64, String)> = {
            let tracker = self.tracker.lock().expect("tracker lock");
            touched
                .into_iter()
                .filter_map(|p| Some((p, tracker.done_ahead(p)?)))
                .collect()
        };
        if records.is_empty() && marks.is_empty() {
            return Ok(());
        }
        let records: Vec<&Outgoing> = records.iter().collect();
        let input = InputOffsets {
            consumer: &self.consumer,
            input: &self.input,
            offsets: &marks,
        };
        transaction
            .transactions
            .commit(&records, Some(input))
            .await?;
        self.metrics.produced.inc_by(produced);
        self.metrics
            .in_flight
            .set(self.tracker.lock().expect("tracker lock").in_flight() as i64);
        self.metrics.last_processed.set(now_ms() / 1000);
        Ok(())
    }

    /// Takes the record in; false for one this consumer already has.
    fn begin(&self, record: &InputRecord) -> bool {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        if !tracker.begin(record.partition, record.offset) {
            return false;
        }
        self.metrics.consumed.inc();
        self.metrics.in_flight.set(tracker.in_flight() as i64);
        true
    }

    fn release(&self, at: InputPosition) {
        store(
            &self.consumer,
            &self.input,
            &self.tracker,
            at.partition,
            at.offset,
        );
        self.metrics
            .in_flight
            .set(self.tracker.lock().expect("tracker lock").in_flight() as i64);
        self.metrics.last_processed.set(now_ms() / 1000);
    }

    fn on_done(&mut self, message: Done) {
        match message {
            Done::Released(inputs) => {
                for at in inputs {
                    self.release(at);
                }
            }
            Done::Acked(ticket) => {
                for (at, follow_ups) in self.holds.acked(ticket) {
                    self.publish_then_release(at, follow_ups);
                }
            }
            // Seen by the loop, which stops; during the drain nothing more is released.
            Done::Refused(_) => {}
        }
    }

    /// Publishes `follow_ups` of a released input, then stores its offset.
    fn publish_then_release(&mut self, at: InputPosition, follow_ups: Vec<Outgoing>) {
        if follow_ups.is_empty() {
            self.release(at);
            return;
        }
        let (publisher, done) = (self.publisher.clone(), self.done.clone());
        self.tasks.spawn(async move {
            for record in &follow_ups {
                match publisher.send_record(record).await {
                    Ok(()) => {}
                    Err(e @ SendError::Rejected { .. }) => {
                        let _ = done.send(Done::Refused(e));
                        return;
                    }
                    Err(SendError::Abandoned) => return,
                }
            }
            let _ = done.send(Done::Released(vec![at]));
        });
    }

    /// Publishes each sealed output in its own task, at most `max_in_flight` at once;
    /// inputs finished on their own are released now.
    async fn dispatch<T: AvroRecord>(&mut self, step: Step<T>) -> anyhow::Result<()> {
        if self.transaction.is_some() {
            return self.gather(step).await;
        }
        for at in step.finished {
            self.release(at);
        }
        for sealed in step.sealed {
            let (record, ticket, alongside) = self.hold(sealed)?;
            let permit = self.permits.clone().acquire_owned().await?;
            let (publisher, done) = (self.publisher.clone(), self.done.clone());
            let produced = self.metrics.produced.clone();
            self.tasks.spawn(async move {
                // The output first: a record alongside it never exists without it.
                for (n, record) in std::iter::once(&record).chain(&alongside).enumerate() {
                    match publisher.send_record(record).await {
                        Ok(()) if n == 0 => produced.inc(),
                        Ok(()) => {}
                        Err(e @ SendError::Rejected { .. }) => {
                            let _ = done.send(Done::Refused(e));
                            return;
                        }
                        Err(SendError::Abandoned) => return,
                    }
                }
                let _ = done.send(Done::Acked(ticket));
                drop(permit);
            });
        }
        let mut unheld: HashMap<InputPosition, Vec<Outgoing>> = HashMap::new();
        for (at, record) in step.on_release {
            if let Err(record) = self.holds.on_release(at, record) {
                unheld.entry(at).or_default().push(record);
            }
        }
        for (at, records) in unheld {
            self.publish_then_release(at, records);
        }
        Ok(())
    }

    /// Encodes a sealed output and holds the inputs with a part in it until it is
    /// acknowledged (or committed): its record, ticket and records alongside.
    fn hold<T: AvroRecord>(
        &mut self,
        sealed: Sealed<T>,
    ) -> anyhow::Result<(Outgoing, Ticket, Vec<Outgoing>)> {
        let payload = sealed
            .value
            .encode()
            .context("cannot encode an output record")?;
        let topic = self
            .output
            .clone()
            .context("an output was sealed, but the stage has no output topic")?;
        let record = Outgoing {
            topic,
            partition: sealed.partition,
            key: sealed.key.into_bytes(),
            payload,
        };
        let ticket = self.holds.dispatch(&sealed.inputs);
        Ok((record, ticket, sealed.alongside))
    }

    /// `exactly_once`: adds a step's outputs and finished inputs to the next
    /// transaction, committing at once when `max_in_flight` outputs are gathered.
    async fn gather<T: AvroRecord>(&mut self, step: Step<T>) -> anyhow::Result<()> {
        let mut outputs = Vec::with_capacity(step.sealed.len());
        for sealed in step.sealed {
            outputs.push(self.hold(sealed)?);
        }
        let mut released: Vec<(InputPosition, Vec<Outgoing>)> = step
            .finished
            .into_iter()
            .map(|at| (at, Vec::new()))
            .collect();
        for (at, record) in step.on_release {
            if let Err(record) = self.holds.on_release(at, record) {
                released.push((at, vec![record]));
            }
        }
        let transaction = self.transaction.as_mut().expect("exactly_once");
        transaction.outputs.extend(outputs);
        transaction.released.extend(released);
        if transaction.outputs.len() >= self.max_in_flight {
            self.commit().await?;
        }
        Ok(())
    }

    /// Publishes `record`'s dead letter in a task holding a permit, so a stream of bad
    /// records cannot pile up tasks and their values in memory; in `exactly_once` it
    /// goes into the next transaction.
    async fn dead_letter(
        &mut self,
        record: InputRecord,
        reason: &'static str,
        error: String,
    ) -> anyhow::Result<()> {
        if let Some(transaction) = self.transaction.as_mut() {
            let at = InputPosition {
                partition: record.partition,
                offset: record.offset,
            };
            let letter = self.dead_letters.letter(&record, reason, error, 1);
            self.metrics.dead_letters.with_label_values(&[reason]).inc();
            transaction.released.push((at, vec![letter]));
            return Ok(());
        }
        let permit = self.permits.clone().acquire_owned().await?;
        let (dead_letters, done) = (self.dead_letters.clone(), self.done.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            match dead_letters.send(&record, reason, error, 1).await {
                Ok(()) => {
                    let at = InputPosition {
                        partition: record.partition,
                        offset: record.offset,
                    };
                    let _ = done.send(Done::Released(vec![at]));
                }
                Err(e @ SendError::Rejected { .. }) => {
                    let _ = done.send(Done::Refused(e));
                }
                Err(SendError::Abandoned) => {}
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> InputPosition {
        InputPosition { partition, offset }
    }

    #[test]
    fn an_input_is_released_when_every_output_holding_it_is_acked() {
        let mut holds = Holds::default();
        // Input 0 spans outputs A and B; input 1 lies in B alone.
        let released = |holds: &mut Holds, ticket| -> Vec<InputPosition> {
            holds.acked(ticket).into_iter().map(|(at, _)| at).collect()
        };
        let a = holds.dispatch(&[(at(0, 0), false)]);
        let b = holds.dispatch(&[(at(0, 0), true), (at(0, 1), true)]);
        assert_eq!(released(&mut holds, b), [at(0, 1)], "A still holds input 0");
        assert_eq!(released(&mut holds, a), [at(0, 0)]);
        // A part acked before the last part is sealed releases nothing.
        let c = holds.dispatch(&[(at(0, 2), false)]);
        assert!(holds.acked(c).is_empty());
        let d = holds.dispatch(&[(at(0, 2), true)]);
        assert_eq!(released(&mut holds, d), [at(0, 2)]);
    }

    #[test]
    fn follow_ups_wait_for_every_output_holding_their_input() {
        let mut holds = Holds::default();
        let mark = |key: &str| Outgoing {
            topic: "seen".into(),
            partition: Some(0),
            key: key.as_bytes().to_vec(),
            payload: Vec::new(),
        };
        // Input 0's head is in batch A, its tail in batch B, which is acked first.
        let a = holds.dispatch(&[(at(0, 0), false)]);
        let b = holds.dispatch(&[(at(0, 0), true)]);
        holds.on_release(at(0, 0), mark("file-0")).unwrap();
        assert!(holds.acked(b).is_empty(), "batch A may still be lost");
        let released = holds.acked(a);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, at(0, 0));
        assert_eq!(released[0].1[0].key, b"file-0");
        // Nothing held: the follow-up is handed back to publish at once.
        assert!(holds.on_release(at(0, 9), mark("file-9")).is_err());
    }

    #[test]
    fn acks_from_before_a_revocation_release_nothing() {
        let mut holds = Holds::default();
        let old = holds.dispatch(&[(at(3, 7), true)]);
        holds.revoke(&[3]);
        // Consumed again after the partition came back, not yet acked.
        let new = holds.dispatch(&[(at(3, 7), true)]);
        assert!(holds.acked(old).is_empty());
        assert_eq!(holds.acked(new)[0].0, at(3, 7));
    }
}
