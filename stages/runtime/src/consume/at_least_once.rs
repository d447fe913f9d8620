//! The at-least-once consume → transform → produce loop, with an idempotent producer.
//! Records are transformed concurrently (up to `max_in_flight`; up to `max_uncommitted`
//! read and not yet committed); an input offset is stored only once every output
//! derived from it (or its dead letter) is acknowledged, using the contiguous
//! high-water mark per partition, and librdkafka's auto-commit commits stored offsets
//! periodically, on revoke and on close. A crash replays at most the uncommitted tail.
//! Back-pressure: with every permit taken the loop stops reading, and past a second of
//! that it pauses the assigned partitions and polls on, so slow transforms never cost
//! the member its place in the group.

use super::back_pressure::BackPressure;
use super::metrics::LoopMetrics;
use super::subscription::{
    commit_and_leave, polled, store, store_stepped_over, subscribe, InputRecord, Polled,
};
use super::tasks::{drain, Shared};
use super::transform::Transform;
use crate::consume::offsets::OffsetTracker;
use crate::publish::SendError;
use crate::records::now_ms;
use crate::stage::StageRuntime;
use futures::StreamExt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Runs `transform` over the stage's input until shutdown, at least once.
pub(crate) async fn run<T: Transform>(transform: T, runtime: &StageRuntime) -> anyhow::Result<()> {
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
                store(&*consumer, input, &tracker, partition, offset);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => back_pressure.released(&consumer),
            _ = tick.tick() => {
                back_pressure.tick(&consumer);
                store_stepped_over(&*consumer, input, &tracker);
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
        store(&*consumer, input, &tracker, partition, offset);
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
