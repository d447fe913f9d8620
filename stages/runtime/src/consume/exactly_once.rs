//! The consume → transform → produce loop in `exactly_once` delivery: a record's
//! outputs (or its dead letter) and its input offset are committed in one Kafka
//! transaction, so a read_committed reader sees each input's outputs exactly once
//! however often the stage crashes, restarts or rebalances.
//!
//! Records are transformed concurrently as in at-least-once; finished ones wait in
//! memory (holding the place among `max_uncommitted` they took when read) until every
//! record before them in their partition has finished too, then go into the next
//! transaction with their partition's offset (every `COMMIT_INTERVAL`, or as soon as
//! every place is held). One
//! transactional producer per consumer instance, offsets sent with the consumer's group
//! metadata (KIP-447), so a member that lost its partitions cannot commit for them. A
//! transaction that fails is sent again from memory (the same outputs and offsets:
//! the rewind costs no re-read), as [`crate::consume::transaction`] says. Outputs above the output topic's
//! `max.message.bytes` are dead-lettered before they could poison a transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use crate::consume::metrics::LoopMetrics;
use crate::consume::offsets::OffsetTracker;
use crate::consume::subscription::InputRecord;
use crate::consume::tasks::{Failed, Shared};
use crate::consume::transaction::{InputOffsets, Transactions};
use crate::consume::transform::Transform;
use crate::publish::Outgoing;
use crate::records::now_ms;
use crate::stage::StageRuntime;

/// How often finished records are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// A transformed record waiting for its transaction.
struct Finished {
    records: Vec<Outgoing>,
    _place: OwnedSemaphorePermit,
}

/// What a task hands back: which record, of which assignment generation, and what
/// it became.
struct Done {
    partition: i32,
    offset: i64,
    generation: u64,
    outcome: Result<Vec<Outgoing>, Failed>,
    place: OwnedSemaphorePermit,
}

/// Records finished but not committed, per partition, and how far each partition can
/// commit (every record below is finished).
#[derive(Default)]
struct Waiting {
    finished: HashMap<i32, BTreeMap<i64, Finished>>,
    committable: HashMap<i32, i64>,
}

impl Waiting {
    /// Forgets these partitions; returns how many finished records it dropped.
    fn drop_partitions(&mut self, partitions: &[i32]) -> usize {
        let mut dropped = 0;
        for p in partitions {
            dropped += self.finished.remove(p).map_or(0, |f| f.len());
            self.committable.remove(p);
        }
        dropped
    }

    /// Takes the records below each partition's committable offset, with the offsets.
    fn take_ready(&mut self) -> (Vec<Finished>, BTreeMap<i32, i64>) {
        let mut ready = Vec::new();
        let offsets: BTreeMap<i32, i64> = self.committable.drain().collect();
        for (partition, next) in &offsets {
            if let Some(finished) = self.finished.get_mut(partition) {
                let later = finished.split_off(next);
                ready.extend(std::mem::replace(finished, later).into_values());
            }
        }
        (ready, offsets)
    }
}

pub(crate) async fn run<T: Transform>(transform: T, runtime: &StageRuntime) -> anyhow::Result<()> {
    let (input, group) = runtime.require_input()?;
    let metrics = LoopMetrics::register::<T::Reason>(&runtime.registry)?;
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let (rebalanced_tx, mut rebalanced) = mpsc::unbounded_channel();
    let consumer = crate::consume::subscription::subscribe(
        runtime,
        &metrics,
        tracker.clone(),
        Some(rebalanced_tx),
    )?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut state = Loop {
        input: input.to_string(),
        transactions: Transactions::for_group(runtime, group).await?,
        shared: Arc::new(Shared::new(transform, runtime, &metrics)?),
        back_pressure: crate::consume::back_pressure::BackPressure::new(
            &runtime.settings,
            &consumer,
        ),
        consumer: consumer.clone(),
        metrics,
        tracker,
        generations: HashMap::new(),
        waiting: Waiting::default(),
        tasks: JoinSet::new(),
        done: done_tx,
    };
    let mut stream = consumer.stream();
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    loop {
        tokio::select! {
            biased;
            _ = runtime.shutdown.cancelled() => break,
            Some(change) = rebalanced.recv() => state.rebalanced(change),
            Some(done) = done_rx.recv() => {
                state.accept(done);
                // Every place is held: commit now rather than at the tick.
                if !state.back_pressure.poll_input() {
                    state.commit_ready().await?;
                }
            }
            Some(_) = state.tasks.join_next(), if !state.tasks.is_empty() => {}
            _ = tick.tick() => {
                let stepped = crate::consume::subscription::stepped_over(&*state.consumer, &state.tracker);
                state.waiting.committable.extend(stepped);
                state.commit_ready().await?;
                state.back_pressure.tick(&state.consumer);
            }
            message = stream.next(), if state.back_pressure.poll_input() => {
                let message = match crate::consume::subscription::polled(message) {
                    crate::consume::subscription::Polled::Record(message) => message,
                    crate::consume::subscription::Polled::Skip => continue,
                    crate::consume::subscription::Polled::End => break,
                };
                while let Ok(change) = rebalanced.try_recv() {
                    state.rebalanced(change);
                }
                state.take(InputRecord::of(&message));
            }
        }
    }
    drop(stream);
    drop(consumer);
    state.finish(done_rx, runtime).await
}

/// The loop's state: records in flight and finished records waiting for their
/// transaction.
struct Loop<T: Transform> {
    input: String,
    consumer: Arc<rdkafka::consumer::StreamConsumer<crate::consume::subscription::LoopContext>>,
    transactions: Transactions,
    shared: Arc<Shared<T>>,
    metrics: LoopMetrics,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Per partition, how often it was revoked: a late result of an older assignment
    /// is not committed.
    generations: HashMap<i32, u64>,
    waiting: Waiting,
    tasks: JoinSet<()>,
    done: mpsc::UnboundedSender<Done>,
    back_pressure: crate::consume::back_pressure::BackPressure,
}

impl<T: Transform> Loop<T> {
    /// Partitions revoked are dropped; an assignment needs nothing (a transform keeps
    /// no state of its partitions).
    fn rebalanced(&mut self, change: crate::consume::subscription::Rebalanced) {
        if let crate::consume::subscription::Rebalanced::Revoked(partitions) = change {
            revoke(
                &partitions,
                &mut self.generations,
                &mut self.waiting,
                &self.metrics,
            );
        }
    }

    fn accept(&mut self, done: Done) {
        accept(
            done,
            &self.generations,
            &self.tracker,
            &mut self.waiting,
            &self.metrics,
        );
    }

    /// Transforms `record` in a task holding its place (finished records keep it
    /// until committed) and, while it transforms, a transform's permit.
    fn take(&mut self, record: InputRecord) {
        if !self
            .tracker
            .lock()
            .expect("tracker lock")
            .begin(record.partition, record.offset)
        {
            return;
        }
        let place = self.back_pressure.take();
        self.metrics.consumed.inc();
        self.metrics.in_flight.inc();
        let generation = self
            .generations
            .get(&record.partition)
            .copied()
            .unwrap_or(0);
        let (shared, done) = (self.shared.clone(), self.done.clone());
        let transforms = self.back_pressure.transforms();
        self.tasks.spawn(async move {
            let place = place.await;
            let outcome = match shared.transform_permit(&transforms).await {
                Some(_transforming) => shared.outgoing(&record).await,
                None => Err(Failed::Abandoned),
            };
            let _ = done.send(Done {
                partition: record.partition,
                offset: record.offset,
                generation,
                outcome,
                place,
            });
        });
    }

    /// Commits every record ready (all before it in its partition finished) in one
    /// transaction with their partitions' offsets.
    async fn commit_ready(&mut self) -> anyhow::Result<()> {
        let (ready, offsets) = self.waiting.take_ready();
        if offsets.is_empty() {
            return Ok(());
        }
        commit(
            &self.transactions,
            &self.consumer,
            &self.input,
            ready,
            offsets,
            &self.metrics,
        )
        .await?;
        self.back_pressure.released(&self.consumer);
        Ok(())
    }

    /// Lets what is in flight finish, commits what is ready and leaves the group; the
    /// rest is replayed by the next owner.
    async fn finish(
        mut self,
        mut done: mpsc::UnboundedReceiver<Done>,
        runtime: &StageRuntime,
    ) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(runtime.settings.drain_timeout_ms);
        let mut tasks = std::mem::take(&mut self.tasks);
        crate::consume::tasks::drain(&mut tasks, &mut done, timeout, |d| self.accept(d)).await;
        let committed = self.commit_ready().await;
        let consumer = self.consumer.clone();
        drop(self);
        crate::consume::subscription::commit_and_leave(consumer).await?;
        committed
    }
}

/// Partitions gone to another member: what waits for them is dropped uncommitted
/// (the new owner reads it again), and late results for them are ignored.
fn revoke(
    partitions: &[i32],
    generations: &mut HashMap<i32, u64>,
    waiting: &mut Waiting,
    metrics: &LoopMetrics,
) {
    for p in partitions {
        *generations.entry(*p).or_default() += 1;
    }
    let dropped = waiting.drop_partitions(partitions);
    metrics.in_flight.sub(dropped as i64);
}

/// Files a finished record under its partition, unless the partition was revoked
/// since it was read (its next owner reads it again).
fn accept(
    done: Done,
    generations: &HashMap<i32, u64>,
    tracker: &Mutex<OffsetTracker>,
    waiting: &mut Waiting,
    metrics: &LoopMetrics,
) {
    let current = generations.get(&done.partition).copied().unwrap_or(0) == done.generation;
    let records = match done.outcome {
        Ok(records) if current => records,
        // Revoked meanwhile, or shutdown came first: left uncommitted.
        _ => {
            metrics.in_flight.dec();
            return;
        }
    };
    waiting.finished.entry(done.partition).or_default().insert(
        done.offset,
        Finished {
            records,
            _place: done.place,
        },
    );
    if let Some(next) = tracker
        .lock()
        .expect("tracker lock")
        .complete(done.partition, done.offset)
    {
        waiting.committable.insert(done.partition, next);
    }
}

/// One transaction: the outputs of `ready`, and `offsets` with the group's metadata.
async fn commit(
    transactions: &Transactions,
    consumer: &rdkafka::consumer::StreamConsumer<crate::consume::subscription::LoopContext>,
    input: &str,
    ready: Vec<Finished>,
    offsets: BTreeMap<i32, i64>,
    metrics: &LoopMetrics,
) -> anyhow::Result<()> {
    let records: Vec<&Outgoing> = ready.iter().flat_map(|f| &f.records).collect();
    // Outputs are committed in input order, so nothing is ever done ahead here: the
    // offsets carry no metadata.
    let offsets = offsets
        .into_iter()
        .map(|(partition, next)| (partition, (next, String::new())))
        .collect();
    let input = InputOffsets {
        consumer,
        input,
        offsets: &offsets,
    };
    transactions.commit(&records, Some(input)).await?;
    metrics.produced.inc_by(records.len() as u64);
    metrics.in_flight.sub(ready.len() as i64);
    metrics.last_processed.set(now_ms() / 1000);
    Ok(())
}

impl<T: Transform> Shared<T> {
    /// The records `record` becomes: its encoded outputs, or its dead letter.
    async fn outgoing(&self, record: &InputRecord) -> Result<Vec<Outgoing>, Failed> {
        let letter = |reason: &'static str, error: String, attempts: u32| {
            Ok(vec![self
                .dead_letters
                .letter(record, reason, error, attempts)])
        };
        let outputs = match self.transform_with_retries(record).await {
            Ok(outputs) => outputs,
            Err(Failed::DeadLetter(reason, error, attempts)) => {
                return letter(reason, error, attempts)
            }
            Err(Failed::Abandoned) => return Err(Failed::Abandoned),
        };
        self.outgoing_records(&outputs)
            .or_else(|(reason, error)| letter(reason, error, 1))
    }
}
