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

mod contract;
mod holds;
mod input;
mod output;
pub mod prepare;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::consume::dead_letters::DeadLetters;
use crate::consume::metrics::LoopMetrics;
use crate::consume::offsets::OffsetTracker;
use crate::consume::subscription::{InputRecord, LoopContext, Polled};
use crate::consume::transaction::Transactions;
use crate::consume::transform::LoopReason;
use crate::publish::{Outgoing, Publisher};
use crate::stage::StageRuntime;

pub use contract::{Aggregate, InputPosition, Preparer, Sealed, Step};
use holds::{Holds, Ticket};
use prepare::Ordered;

/// An input read, decoded and prepared off the loop, waiting its turn for `push`.
struct Prepared<A: Aggregate> {
    record: InputRecord,
    /// Its partition's generation when read: a revocation since makes it stale.
    generation: u64,
    decoded: Result<(A::Input, A::Prepared), (LoopReason, String)>,
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
                let record = match crate::consume::subscription::polled(message) {
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
