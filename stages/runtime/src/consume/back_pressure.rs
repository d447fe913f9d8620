//! Bounds on what a consume loop holds: records read and not committed, records being
//! transformed, and the input held (paused) while they are full, polled all the same.

use super::subscription::LoopContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
