//! The shards: each partition of `neardup-probes` is one shard of the index. A probe
//! is judged against the files before it in its buckets and indexed; the answer goes
//! to the file's judge on `neardup-gather`, and once it is acknowledged the probe (as
//! indexed: its first order time) goes to the compacted `neardup-index` on the same
//! partition number, from which a shard is reloaded when its partition is assigned.
//!
//! Probes reach a shard a little out of their order (routers publish concurrently, and
//! several routers interleave), and a file probed before an earlier one arrives would
//! miss it. So each shard holds its probes back in order and probes a file only once
//! it has seen a probe `reorder_ms` later than it (or its input paused that long):
//! within that lateness a shard probes files in their order, whatever the arrival.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use codelupe_runtime::consume::aggregate::{Aggregate, InputPosition, Preparer, Sealed, Step};
use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_us, NeardupCandidate, NeardupGather, NeardupProbe};
use codelupe_runtime::{AvroRecord, TransformError};

use crate::metrics::{NeardupError, NeardupMetrics};
use crate::minhash::PERMUTATIONS;
use crate::shard::{Order, Shard, Sketch};

pub struct Lookup {
    threshold: f64,
    index_topic: String,
    reorder_us: i64,
    clients: KafkaClients,
    metrics: Arc<NeardupMetrics>,
    shards: HashMap<i32, Shard>,
    held: HashMap<i32, Held>,
}

/// A shard's probes not probed yet, earliest first, and the latest order time seen.
#[derive(Default)]
struct Held {
    probes: BinaryHeap<Reverse<HeldProbe>>,
    latest_us: i64,
}

struct HeldProbe {
    order: Order,
    at: InputPosition,
    probe: NeardupProbe,
    sketch: Sketch,
}

impl PartialEq for HeldProbe {
    fn eq(&self, other: &Self) -> bool {
        (&self.order, self.at.offset) == (&other.order, other.at.offset)
    }
}

impl Eq for HeldProbe {}

impl PartialOrd for HeldProbe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeldProbe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.order, self.at.offset).cmp(&(&other.order, other.at.offset))
    }
}

fn sketch_of(probe: &NeardupProbe) -> Option<Sketch> {
    <Sketch>::try_from(probe.sketch.as_slice()).ok()
}

/// The shard's size in `neardup_index_files{shard}`.
fn set_size(metrics: &NeardupMetrics, partition: i32, shard: &Shard) {
    metrics
        .index_files
        .with_label_values(&[&partition.to_string()])
        .set(shard.len() as i64);
}

fn buckets_of(probe: &NeardupProbe) -> Vec<u64> {
    probe.buckets.iter().map(|&b| b as u64).collect()
}

impl Lookup {
    pub fn new(
        threshold: f64,
        index_topic: String,
        reorder: Duration,
        clients: KafkaClients,
        metrics: Arc<NeardupMetrics>,
    ) -> Self {
        Self {
            threshold,
            index_topic,
            reorder_us: reorder.as_micros() as i64,
            clients,
            metrics,
            shards: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Reads the index of each shard not held yet from `neardup-index`, all at once.
    async fn load(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.shards.contains_key(p))
            .collect();
        let started = Instant::now();
        let threshold = self.threshold;
        let loaded = kafka::read_partitions(
            &self.clients,
            &self.index_topic,
            &missing,
            || Ok(Shard::new(threshold)),
            |shard: &mut Shard, _, payload| {
                // A record that does not decode was never written by a shard: skipped.
                let probe = payload.and_then(|p| NeardupProbe::decode(p).ok());
                if let Some(probe) = probe {
                    if let Some(sketch) = sketch_of(&probe) {
                        let buckets = buckets_of(&probe);
                        let order = Order {
                            at_us: probe.at_us,
                            content_hash: probe.content_hash,
                        };
                        shard.insert(order, &buckets, &sketch);
                    }
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await
        .context("loading the near-duplicate index")?;
        for (partition, shard) in loaded {
            tracing::info!(
                shard = partition,
                files = shard.len(),
                bucket_entries = shard.bucket_entries(),
                elapsed = ?started.elapsed(),
                "near-duplicate index loaded"
            );
            set_size(&self.metrics, partition, &shard);
            self.shards.insert(partition, shard);
        }
        Ok(())
    }

    /// Probes a shard's held probes in order, up to order time `until` (all if None).
    fn release(&mut self, partition: i32, until: Option<i64>) -> Step<NeardupGather> {
        let mut step = Step::default();
        let (Some(held), Some(shard)) = (
            self.held.get_mut(&partition),
            self.shards.get_mut(&partition),
        ) else {
            return step;
        };
        while let Some(Reverse(next)) = held.probes.peek() {
            if until.is_some_and(|until| next.order.at_us > until) {
                break;
            }
            let Reverse(next) = held.probes.pop().expect("peeked");
            let started = Instant::now();
            let probed = shard.probe(next.order, &buckets_of(&next.probe), &next.sketch);
            self.metrics
                .probe_seconds
                .observe(started.elapsed().as_secs_f64());
            let indexed = NeardupProbe {
                at_us: probed.order.at_us,
                ..next.probe
            };
            let mut record = Outgoing::record(&self.index_topic, &indexed.content_hash, &indexed)
                .expect("a NeardupProbe always encodes: its schema is tested");
            record.partition = Some(partition);
            let answer = NeardupGather {
                content_hash: indexed.content_hash.clone(),
                at_us: probed.order.at_us,
                shards: partition,
                file: None,
                candidates: probed
                    .candidates
                    .into_iter()
                    .map(|c| NeardupCandidate {
                        content_hash: c.order.content_hash,
                        at_us: c.order.at_us,
                        similarity: c.similarity,
                    })
                    .collect(),
            };
            step.sealed.push(Sealed {
                key: indexed.content_hash,
                partition: None,
                value: answer,
                inputs: vec![(next.at, true)],
                alongside: Vec::new(),
            });
            step.on_release.push((next.at, record));
        }
        set_size(&self.metrics, partition, shard);
        step
    }
}

impl Aggregate for Lookup {
    type Input = NeardupProbe;
    type Output = NeardupGather;
    type Reason = NeardupError;
    type Prepared = ();

    fn preparer(&self) -> Preparer<NeardupProbe, ()> {
        Arc::new(|_| ())
    }

    async fn push(
        &mut self,
        at: InputPosition,
        mut probe: NeardupProbe,
        (): (),
    ) -> Result<Step<NeardupGather>, TransformError<NeardupError>> {
        // A time from the future (a forged probe, a clock far ahead) would otherwise
        // move the hold's horizon past every probe to come and disable it for good;
        // bounded, it shortens the hold for at most two holds' time.
        probe.at_us = probe.at_us.min(now_us() + self.reorder_us);
        let sketch = sketch_of(&probe).ok_or_else(|| {
            TransformError::permanent(
                NeardupError::BadSketch,
                format!(
                    "a sketch of {} bytes, not {PERMUTATIONS}",
                    probe.sketch.len()
                ),
            )
        })?;
        if !self.shards.contains_key(&at.partition) {
            self.load(&[at.partition]).await.map_err(|e| {
                TransformError::retryable(NeardupError::IndexState, format!("{e:#}"))
            })?;
        }
        let held = self.held.entry(at.partition).or_default();
        held.latest_us = held.latest_us.max(probe.at_us);
        held.probes.push(Reverse(HeldProbe {
            order: Order {
                at_us: probe.at_us,
                content_hash: probe.content_hash.clone(),
            },
            at,
            probe,
            sketch,
        }));
        let until = held.latest_us - self.reorder_us;
        Ok(self.release(at.partition, Some(until)))
    }

    /// The input paused: every held probe is probed.
    async fn flush(&mut self) -> Step<NeardupGather> {
        let mut step = Step::default();
        let mut partitions: Vec<i32> = self.held.keys().copied().collect();
        partitions.sort_unstable();
        for partition in partitions {
            step.extend(self.release(partition, None));
        }
        step
    }

    fn flush_after(&self) -> Option<Duration> {
        Some(Duration::from_micros(self.reorder_us.max(1) as u64))
    }

    /// The new owner reloads the shard from neardup-index (probes not yet written
    /// there are replayed to it).
    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.shards.remove(p);
            self.held.remove(p);
            let _ = self
                .metrics
                .index_files
                .remove_label_values(&[&p.to_string()]);
        }
    }

    async fn assign(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.load(partitions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(content_hash: &str, at_us: i64, sketch: u8) -> NeardupProbe {
        NeardupProbe {
            content_hash: content_hash.into(),
            at_us,
            shard: 0,
            shards: 1,
            buckets: vec![42],
            sketch: vec![sketch; PERMUTATIONS],
        }
    }

    /// A lookup of one empty shard (0) that holds probes back `hold`.
    fn lookup_holding(hold: Duration) -> Lookup {
        let clients = KafkaClients::new("127.0.0.1:1", &Default::default());
        let metrics = Arc::new(NeardupMetrics::register(&prometheus::Registry::new()).unwrap());
        let mut lookup = Lookup::new(0.7, "index".into(), hold, clients, metrics);
        lookup.shards.insert(0, Shard::new(0.7));
        lookup
    }

    fn at(offset: i64) -> InputPosition {
        InputPosition {
            partition: 0,
            offset,
        }
    }

    fn answers(step: &Step<NeardupGather>) -> Vec<(String, Vec<String>)> {
        step.sealed
            .iter()
            .map(|s| {
                let candidates = s.value.candidates.iter();
                let of = candidates.map(|c| c.content_hash.clone()).collect();
                (s.value.content_hash.clone(), of)
            })
            .collect()
    }

    /// A probe that arrives after a later one is still probed first, so the later file
    /// finds it; nothing is probed before the hold has passed or the input paused.
    #[tokio::test]
    async fn probes_arriving_out_of_order_are_probed_in_order() {
        let mut lookup = lookup_holding(Duration::from_millis(1));
        // b (order 2 ms) arrives before a (order 1.5 ms), both within the 1 ms hold.
        let first = lookup.push(at(0), probe("b", 2_000, 7), ()).await.unwrap();
        assert!(first.sealed.is_empty(), "held back");
        let second = lookup.push(at(1), probe("a", 1_500, 7), ()).await.unwrap();
        assert!(second.sealed.is_empty(), "held back");
        // A probe well later releases both, in their order: a first, then b finds a.
        let third = lookup.push(at(2), probe("c", 9_000, 1), ()).await.unwrap();
        assert_eq!(
            answers(&third),
            [("a".into(), vec![]), ("b".into(), vec!["a".to_string()])]
        );
        // The input paused: c too.
        assert_eq!(answers(&lookup.flush().await), [("c".into(), vec![])]);
        // Each answer's index record follows once the answer is acknowledged.
        assert_eq!(third.on_release.len(), 2);
        assert_eq!(third.on_release[0].1.partition, Some(0));
    }

    /// A probe stamped far in the future neither disables the hold for the probes after
    /// it nor waits past the input's pause.
    #[tokio::test]
    async fn a_probe_from_the_future_does_not_disable_the_hold() {
        let mut lookup = lookup_holding(Duration::from_secs(10));
        let forged = lookup
            .push(at(0), probe("forged", i64::MAX / 2, 3), ())
            .await
            .unwrap();
        assert!(forged.sealed.is_empty(), "held back");
        let now = now_us();
        let b = lookup
            .push(at(1), probe("b", now + 2_000, 7), ())
            .await
            .unwrap();
        assert!(
            b.sealed.is_empty(),
            "b released at once: the hold is disabled"
        );
        let a = lookup
            .push(at(2), probe("a", now + 1_000, 7), ())
            .await
            .unwrap();
        assert!(a.sealed.is_empty(), "held back");
        assert_eq!(
            answers(&lookup.flush().await),
            [
                ("a".into(), vec![]),
                ("b".into(), vec!["a".to_string()]),
                ("forged".into(), vec![])
            ]
        );
    }
}
