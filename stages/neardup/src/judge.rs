//! The judge: gathers, per file, the file itself and one answer from each shard its
//! bands went to (all on the file's partition of `neardup-gather`, the file first),
//! then passes the file on to `distinct-files` or drops it, naming the earlier file it
//! is a near-duplicate of on `near-duplicates`. A file's order is the earliest any
//! shard indexed it under, so a file routed twice (a replay) is judged by its first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelupe_runtime::aggregate::{Aggregate, InputPosition, Preparer, Sealed, Step};
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_ms, CodeFile, NearDuplicate, NeardupGather};
use codelupe_runtime::{AvroRecord, TransformError};

use crate::metrics::{NeardupError, NeardupMetrics, Skip};
use crate::shard::{representative, Candidate, Order};

/// What is known of one file not judged yet.
#[derive(Default)]
struct Pending {
    /// When the file arrived; None until it has.
    arrived: Option<Instant>,
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

/// How often, at most, a record makes the judge look for overdue files.
const LOOK_OVER_EVERY: Duration = Duration::from_secs(1);

pub struct Judge {
    dropped_topic: String,
    metrics: Arc<NeardupMetrics>,
    pending: HashMap<i32, HashMap<String, Pending>>,
    answer_timeout: Duration,
    /// When the files waiting were last looked over for overdue ones: at most once a
    /// second, so a record costs no scan of every file waiting.
    looked_over: Instant,
}

impl Judge {
    pub fn new(
        dropped_topic: String,
        metrics: Arc<NeardupMetrics>,
        answer_timeout: Duration,
    ) -> Self {
        Self {
            dropped_topic,
            metrics,
            pending: HashMap::new(),
            answer_timeout,
            looked_over: Instant::now(),
        }
    }

    /// Judges on the answers they have the files of `partition` that arrived before
    /// `deadline` (all of them if None) and are still waiting, in the order they came.
    fn judge_overdue(&mut self, partition: i32, deadline: Option<Instant>) -> Step<CodeFile> {
        let mut step = Step::default();
        let pending = self.pending.entry(partition).or_default();
        let mut due: Vec<(Instant, String)> = pending
            .iter()
            .filter_map(|(hash, p)| Some((p.arrived?, hash)))
            .filter(|(at, _)| deadline.is_none_or(|deadline| *at < deadline))
            .map(|(at, hash)| (at, hash.clone()))
            .collect();
        due.sort();
        let overdue: Vec<(String, Pending)> = due
            .into_iter()
            .filter_map(|(_, hash)| pending.remove(&hash).map(|p| (hash, p)))
            .collect();
        for (content_hash, waiting) in overdue {
            tracing::warn!(
                %content_hash, partition,
                answers = waiting.answers.len(), shards = waiting.shards,
                "judged without every shard's answer"
            );
            step.extend(self.verdict(content_hash, waiting));
        }
        step
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
                    alongside: Vec::new(),
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
                    pending.arrived = Some(Instant::now());
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
        let mut step = Step::default();
        if complete {
            let pending = partition.remove(&content_hash).expect("complete");
            step = self.verdict(content_hash, pending);
        }
        if self.looked_over.elapsed() >= LOOK_OVER_EVERY {
            self.looked_over = Instant::now();
            if let Some(deadline) = Instant::now().checked_sub(self.answer_timeout) {
                let mut partitions: Vec<i32> = self.pending.keys().copied().collect();
                partitions.sort_unstable();
                for partition in partitions {
                    step.extend(self.judge_overdue(partition, Some(deadline)));
                }
            }
        }
        Ok(step)
    }

    /// The input paused for the answer timeout, so every file still waiting arrived
    /// at least that long ago: each is judged on the answers it has.
    async fn flush(&mut self) -> Step<CodeFile> {
        let mut partitions: Vec<i32> = self.pending.keys().copied().collect();
        partitions.sort_unstable();
        let mut step = Step::default();
        for partition in partitions {
            step.extend(self.judge_overdue(partition, None));
        }
        step
    }

    fn flush_after(&self) -> Option<Duration> {
        Some(self.answer_timeout)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(answer_timeout: Duration) -> Judge {
        let metrics = Arc::new(NeardupMetrics::register(&prometheus::Registry::new()).unwrap());
        Judge::new("near-duplicates".into(), metrics, answer_timeout)
    }

    fn file(content_hash: &str) -> CodeFile {
        CodeFile {
            content_hash: content_hash.into(),
            repo_full_name: "o/r".into(),
            commit_id: "c".into(),
            path: format!("{content_hash}.rs"),
            language: "Rust".into(),
            content: "fn main() {}".into(),
            size_bytes: 12,
            lines: 1,
            quality_score: 90.0,
            quality_components: Default::default(),
            parse_stats: None,
            redactions: Default::default(),
            license: Default::default(),
        }
    }

    /// A file routed to `shards` shards (none of which need ever answer).
    fn gathered(
        content_hash: &str,
        shards: i32,
    ) -> (NeardupGather, Option<Result<CodeFile, String>>) {
        let record = NeardupGather {
            content_hash: content_hash.into(),
            at_us: 1,
            shards,
            file: None,
            candidates: Vec::new(),
        };
        (record, Some(Ok(file(content_hash))))
    }

    fn at(offset: i64) -> InputPosition {
        InputPosition {
            partition: 0,
            offset,
        }
    }

    fn kept(step: &Step<CodeFile>) -> Vec<&str> {
        step.sealed.iter().map(|s| s.key.as_str()).collect()
    }

    /// A file whose probes no shard answers (a forged gather record, a probe the lookup
    /// dead-lettered) is judged once the input has paused for the answer timeout.
    #[tokio::test]
    async fn a_file_never_answered_is_judged_when_the_input_pauses() {
        let mut judge = judge(Duration::from_secs(600));
        let (record, file) = gathered("lonely", 3);
        let step = judge.push(at(0), record, file).await.unwrap();
        assert!(kept(&step).is_empty(), "judged before its answers");
        assert_eq!(judge.flush_after(), Some(Duration::from_secs(600)));
        assert_eq!(kept(&judge.flush().await), ["lonely"]);
        assert!(kept(&judge.flush().await).is_empty(), "judged twice");
    }

    /// While the input flows, a file waiting past the timeout is judged with the next
    /// record, so its partition's commit moves on.
    #[tokio::test]
    async fn a_file_waiting_past_the_timeout_is_judged_while_the_input_flows() {
        let mut judge = judge(Duration::from_millis(50));
        let (record, file) = gathered("lonely", 2);
        assert!(kept(&judge.push(at(0), record, file).await.unwrap()).is_empty());
        std::thread::sleep(LOOK_OVER_EVERY + Duration::from_millis(100));
        let (record, file) = gathered("next", 2);
        let step = judge.push(at(1), record, file).await.unwrap();
        assert_eq!(kept(&step), ["lonely"], "only the overdue one");
    }
}
