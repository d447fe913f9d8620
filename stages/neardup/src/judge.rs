//! The judge: gathers, per file, the file itself and one answer from each shard its
//! bands went to (all on the file's partition of `neardup-gather`, the file first),
//! then passes the file on to `distinct-files` or drops it, naming the earlier file it
//! is a near-duplicate of on `near-duplicates`. A file's order is the earliest any
//! shard indexed it under, so a file routed twice (a replay) is judged by its first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codelupe_runtime::aggregate::{Aggregate, InputPosition, Preparer, Sealed, Step};
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_ms, CodeFile, NearDuplicate, NeardupGather};
use codelupe_runtime::{AvroRecord, TransformError};

use crate::metrics::{NeardupError, NeardupMetrics, Skip};
use crate::shard::{representative, Candidate, Order};

/// What is known of one file not judged yet.
#[derive(Default)]
struct Pending {
    file: Option<CodeFile>,
    /// Where the file was read (the first time, if routed twice).
    file_at: Option<InputPosition>,
    routed_us: i64,
    shards: usize,
    /// Each shard's answer: the order it indexed the file under, and its candidates.
    answers: HashMap<i32, (i64, Vec<Candidate>)>,
    /// Every record read about the file, released with the verdict.
    positions: Vec<InputPosition>,
}

pub struct Judge {
    dropped_topic: String,
    metrics: Arc<NeardupMetrics>,
    pending: HashMap<i32, HashMap<String, Pending>>,
}

impl Judge {
    pub fn new(dropped_topic: String, metrics: Arc<NeardupMetrics>) -> Self {
        Self {
            dropped_topic,
            metrics,
            pending: HashMap::new(),
        }
    }

    fn verdict(&self, content_hash: String, pending: Pending) -> Step<CodeFile> {
        let Pending {
            file,
            file_at,
            routed_us,
            answers,
            mut positions,
            ..
        } = pending;
        let (file, file_at) = (file.expect("complete"), file_at.expect("complete"));
        let own = Order {
            at_us: answers
                .values()
                .map(|(at_us, _)| *at_us)
                .min()
                .unwrap_or(routed_us),
            content_hash,
        };
        let now_us = now_ms() * 1000;
        self.metrics
            .lookup_seconds
            .observe((now_us - routed_us).max(0) as f64 / 1e6);
        self.metrics.files_checked.inc();
        let earlier = answers
            .values()
            .flat_map(|(_, c)| c)
            .filter(|c| c.order < own);
        let Some(of) = representative(earlier) else {
            self.metrics.files_kept.inc();
            return Step {
                sealed: vec![Sealed {
                    key: file.content_hash.clone(),
                    partition: None,
                    value: file,
                    inputs: positions.into_iter().map(|at| (at, true)).collect(),
                }],
                ..Step::default()
            };
        };
        self.metrics.files_skipped.inc(Skip::NearDuplicate);
        let dropped = NearDuplicate {
            content_hash: file.content_hash.clone(),
            repo_full_name: file.repo_full_name,
            path: file.path,
            representative: of.order.content_hash.clone(),
            similarity: of.similarity,
            judged_at_ms: now_ms(),
        };
        let record = Outgoing::record(&self.dropped_topic, &dropped.content_hash, &dropped)
            .expect("a NearDuplicate always encodes: its schema is tested");
        positions.retain(|at| *at != file_at);
        Step {
            sealed: Vec::new(),
            finished: positions,
            on_release: vec![(file_at, record)],
        }
    }
}

impl Aggregate for Judge {
    type Input = NeardupGather;
    type Output = CodeFile;
    type Reason = NeardupError;
    /// The file, decoded off the loop; None on an answer.
    type Prepared = Option<Result<CodeFile, String>>;

    fn preparer(&self) -> Preparer<NeardupGather, Self::Prepared> {
        Arc::new(|gathered: &NeardupGather| {
            let bytes = gathered.file.as_deref()?;
            Some(CodeFile::decode(bytes).map_err(|e| e.to_string()))
        })
    }

    async fn push(
        &mut self,
        at: InputPosition,
        gathered: NeardupGather,
        file: Self::Prepared,
    ) -> Result<Step<CodeFile>, TransformError<NeardupError>> {
        let partition = self.pending.entry(at.partition).or_default();
        let content_hash = gathered.content_hash;
        match file {
            Some(decoded) => {
                let file =
                    decoded.map_err(|e| TransformError::permanent(NeardupError::BadFile, e))?;
                let pending = partition.entry(content_hash.clone()).or_default();
                if pending.file.is_none() {
                    pending.file = Some(file);
                    pending.file_at = Some(at);
                    pending.routed_us = gathered.at_us;
                    pending.shards = gathered.shards.max(0) as usize;
                }
                pending.positions.push(at);
            }
            None => {
                // A file comes before every answer about it, so an answer with no file
                // waiting is about one judged already (a shard's replay): done with.
                let Some(pending) = partition.get_mut(&content_hash) else {
                    return Ok(Step {
                        finished: vec![at],
                        ..Step::default()
                    });
                };
                let candidates = gathered
                    .candidates
                    .into_iter()
                    .map(|c| Candidate {
                        order: Order {
                            at_us: c.at_us,
                            content_hash: c.content_hash,
                        },
                        similarity: c.similarity,
                    })
                    .collect();
                pending
                    .answers
                    .entry(gathered.shards)
                    .or_insert((gathered.at_us, candidates));
                pending.positions.push(at);
            }
        }
        let complete = partition
            .get(&content_hash)
            .is_some_and(|p| p.file.is_some() && p.answers.len() >= p.shards);
        if !complete {
            return Ok(Step::default());
        }
        let pending = partition.remove(&content_hash).expect("complete");
        Ok(self.verdict(content_hash, pending))
    }

    fn flush(&mut self) -> Step<CodeFile> {
        Step::default()
    }

    fn flush_after(&self) -> Option<Duration> {
        None
    }

    /// What was gathered is replayed to the partition's new owner.
    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.pending.remove(p);
        }
    }

    async fn assign(&mut self, _: &[i32]) -> anyhow::Result<()> {
        Ok(())
    }
}
