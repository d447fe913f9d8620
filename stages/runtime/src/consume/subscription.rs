//! The input side every consume loop shares: the consumer and its callbacks (readiness,
//! lag, revocations applied before a new assignment's first record), polling, and
//! storing offsets once their records are done.

use super::metrics::LoopMetrics;
use crate::consume::offsets::OffsetTracker;
use crate::stage::StageRuntime;
use crate::telemetry::Readiness;
use anyhow::Context as _;
use prometheus::IntGaugeVec;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Consumer callbacks: readiness and lag from librdkafka; revocations applied to the
/// offset tracker inside the callback, before any record of a new assignment arrives.
pub(crate) struct LoopContext {
    readiness: Arc<Readiness>,
    /// Whether the consumer commits the offsets stored (at-least-once); under
    /// `exactly_once` the transactions alone commit them.
    commits_offsets: bool,
    lag: ConsumerLag,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Tells a stateful stage of its partitions coming and going, in the order they do.
    rebalanced: Option<mpsc::UnboundedSender<Rebalanced>>,
    /// Whether back-pressure paused the input: partitions assigned meanwhile (a dead
    /// peer's, under cooperative rebalancing) are paused as they arrive, or their
    /// backlog would be read into memory while the loop polls only to stay in its group.
    pub(super) paused: Arc<AtomicBool>,
}

/// A change of the consumer's partitions, as a stateful stage hears of it: those that
/// left (before their new owner's records), then those it now owns (to load their
/// state).
#[derive(Debug)]
pub(crate) enum Rebalanced {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

/// `codelupe_consumer_lag{topic,partition}` from librdkafka's statistics: every
/// consumer of a stage reports its lag this way, the loops' and the trainer's.
#[derive(Clone)]
pub struct ConsumerLag(IntGaugeVec);

impl ConsumerLag {
    pub fn new(gauge: IntGaugeVec) -> Self {
        Self(gauge)
    }

    /// Sets each partition's lag; true when any partition is being fetched.
    pub fn report(&self, statistics: &Statistics) -> bool {
        let mut fetching = false;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // From the offset stored (done) when there is one: under `exactly_once`
                // the consumer commits nothing itself, so librdkafka's committed offset
                // stays the one it read at assignment.
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
                if *partition >= 0 && lag >= 0 {
                    self.0
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(lag);
                }
                fetching |= *partition >= 0 && p.fetch_state == "active";
            }
        }
        fetching
    }

    /// Drops the series of partitions this consumer no longer holds.
    fn forget(&self, list: &TopicPartitionList) {
        for e in list.elements() {
            let _ = self
                .0
                .remove_label_values(&[e.topic(), &e.partition().to_string()]);
        }
    }
}

/// The context of a consumer outside the loops (the trainer's, which assigns its
/// partitions itself): it reports the lag.
pub struct LagContext(pub ConsumerLag);

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.0.report(&statistics);
    }
}

impl ConsumerContext for LagContext {}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        let fetching = self.lag.report(&statistics);
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
            // At-least-once: commit what is stored before the partitions go, so the next
            // owner starts right after the last acknowledged record. Records still in
            // flight were not stored and will be replayed by that owner (duplicates,
            // never losses). Under `exactly_once` the transactions committed it.
            if self.commits_offsets {
                if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                {
                    tracing::debug!(error = %e, "commit on revoke");
                }
            }
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.lag.forget(list);
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
    let commits_offsets = runtime.settings.delivery == crate::config::Delivery::AtLeastOnce;
    let context = LoopContext {
        readiness: runtime.readiness.clone(),
        commits_offsets,
        lag: ConsumerLag::new(metrics.consumer_lag.clone()),
        tracker,
        rebalanced,
        paused: Arc::new(AtomicBool::new(false)),
    };
    let mut config = runtime.clients.consumer_config(&runtime.client_id(), group);
    if !commits_offsets {
        // A commit of its own, outside the transactions, could land after a newer
        // transaction's and put the group back to an older offset and its metadata:
        // off whatever `kafka.consumer` says.
        config.set("enable.auto.commit", "false");
    }
    let consumer: StreamConsumer<LoopContext> = config
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

/// Commits what was stored (at-least-once), then leaves the group (the drop closes the
/// consumer); both block, so off the async workers.
pub(crate) async fn commit_and_leave(
    consumer: Arc<StreamConsumer<LoopContext>>,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        if consumer.context().commits_offsets {
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(error = %e, "final commit");
            }
        }
        consumer.unsubscribe();
        drop(consumer);
    })
    .await?;
    Ok(())
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

/// Marks `offset` done and stores the partition's new high-water mark when it moved;
/// returns that mark (the next offset to consume).
pub fn store<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    tracker: &Mutex<OffsetTracker>,
    partition: i32,
    offset: i64,
) -> Option<i64> {
    let next = tracker
        .lock()
        .expect("tracker lock")
        .complete(partition, offset)?;
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
    Some(next)
}

/// Offsets to store for partitions with nothing in flight whose consumer position has
/// stepped over records never delivered (transaction markers).
pub fn stepped_over<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
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

/// Stores the offsets [`stepped_over`] finds (for the at-least-once loops and the
/// trainer), and returns them.
pub fn store_stepped_over<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    tracker: &Mutex<OffsetTracker>,
) -> Vec<(i32, i64)> {
    let stepped = stepped_over(consumer, tracker);
    let mut list = TopicPartitionList::new();
    for &(partition, next) in &stepped {
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    if list.count() > 0 {
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(error = %e, "stepped-over offsets not stored");
        }
    }
    stepped
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
