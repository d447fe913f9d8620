//! The aggregate loop's output side: publishing sealed outputs (or gathering them into
//! a transaction), releasing the inputs they held, follow-ups and dead letters.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;

use crate::codec::AvroRecord;
use crate::consume::subscription::{stepped_over, store, store_stepped_over, InputRecord};
use crate::consume::transaction::InputOffsets;
use crate::publish::{Outgoing, SendError};
use crate::records::now_ms;

use super::contract::{InputPosition, Sealed, Step};
use super::holds::Ticket;
use super::{Done, Loop};

impl Loop {
    /// Every interval: commits the gathered transaction, or (at-least-once) stores the
    /// offsets of partitions read past their last record.
    pub(super) async fn tick(&mut self) -> anyhow::Result<()> {
        if self.transaction.is_some() {
            return self.commit().await;
        }
        store_stepped_over(&*self.consumer, &self.input, &self.tracker);
        Ok(())
    }

    /// `exactly_once`: one transaction with the gathered outputs, the follow-ups of the
    /// inputs they release and those inputs' offsets.
    pub(super) async fn commit(&mut self) -> anyhow::Result<()> {
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
            stepped_over(&*self.consumer, &self.tracker)
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
    pub(super) fn begin(&self, record: &InputRecord) -> bool {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        if !tracker.begin(record.partition, record.offset) {
            return false;
        }
        self.metrics.consumed.inc();
        self.metrics.in_flight.set(tracker.in_flight() as i64);
        true
    }

    pub(super) fn release(&self, at: InputPosition) {
        store(
            &*self.consumer,
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

    pub(super) fn on_done(&mut self, message: Done) {
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
    pub(super) fn publish_then_release(&mut self, at: InputPosition, follow_ups: Vec<Outgoing>) {
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
    pub(super) async fn dispatch<T: AvroRecord>(&mut self, step: Step<T>) -> anyhow::Result<()> {
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
    pub(super) fn hold<T: AvroRecord>(
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
    pub(super) async fn gather<T: AvroRecord>(&mut self, step: Step<T>) -> anyhow::Result<()> {
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
    pub(super) async fn dead_letter(
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
