//! The aggregate loop's input side: subscribing, rebalances and the state loads they
//! start, reading, preparing on every core and handing inputs to the stage in order.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, MessageStream};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::codec::AvroRecord;
use crate::consume::back_pressure::hold_input;
use crate::consume::dead_letters::DeadLetters;
use crate::consume::metrics::LoopMetrics;
use crate::consume::offsets::OffsetTracker;
use crate::consume::subscription::{
    commit_and_leave, subscribe, InputRecord, LoopContext, Polled, Rebalanced,
};
use crate::consume::tasks::drain;
use crate::consume::transaction::Transactions;
use crate::consume::transform::LoopReason;
use crate::labels::LabelSet;
use crate::publish::Publisher;
use crate::stage::StageRuntime;

use super::contract::{Aggregate, InputPosition, Preparer};
use super::holds::Holds;
use super::prepare::Ordered;
use super::{Done, Loop, Prepared, Transaction};

impl Loop {
    /// Subscribes to the stage's input and readies its publishers; the receivers of
    /// finished work and of the partitions' comings and goings go with it.
    pub(super) async fn start<A: Aggregate>(
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
    pub(super) async fn rebalanced<A: Aggregate>(
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
    pub(super) fn read<A: Aggregate>(
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
    pub(super) async fn resume_done_ahead(&self, partitions: &[i32]) {
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
    pub(super) async fn apply_rebalances<A: Aggregate>(
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
    pub(super) fn prepare<A: Aggregate>(
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
    pub(super) async fn take<A: Aggregate>(
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
    pub(super) async fn finish(
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
    pub(super) fn revoke(&mut self, partitions: &[i32]) {
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
            message = stream.next(), if !ended => match crate::consume::subscription::polled(message) {
                Polled::Record(message) => early.push(InputRecord::of(&message)),
                Polled::Skip => {}
                Polled::End => ended = true,
            },
        }
    }
}
