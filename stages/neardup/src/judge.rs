//! The judge: gathers, per file, the file itself and one answer from each shard its
//! bands went to (all on the file's partition of `neardup-gather`, the file first),
//! then passes the file on to `distinct-files` or drops it, naming the earlier file it
//! is a near-duplicate of on `near-duplicates`. A file's order is the earliest any
//! shard indexed it under, so a file routed twice (a replay) is judged by its first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codelupe_runtime::consume::aggregate::{Aggregate, InputPosition, Preparer, Sealed, Step};
use codelupe_runtime::labels::LabelSet as _;
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_ms, CodeFile, NearDuplicate, NeardupGather};
use codelupe_runtime::{AvroRecord, TransformError};

use crate::metrics::{Incomplete, NeardupError, NeardupMetrics, Skip};
use crate::shard::{representative, Candidate, Order};
use crate::NeardupOptions;

/// What is known of one file not judged yet.
#[derive(Default)]
struct Pending {
    /// When the file arrived; None until it has.
    arrived: Option<Instant>,
    file: Option<CodeFile>,
    /// Where the file was read (the first time, if routed twice).
    file_at: Option<InputPosition>,
    /// The file's content bytes, counted against `max_waiting_bytes`.
    bytes: usize,
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
    /// The content bytes of the files waiting, and the most they may come to.
    waiting_bytes: usize,
    max_waiting_bytes: usize,
}

/// Which waiting files are judged before every answer has come.
#[derive(Clone, Copy)]
enum Due {
    /// Those that arrived before this (every one if None): waited out the timeout.
    ArrivedBefore(Option<Instant>),
    /// The longest waiting, until the files waiting hold no more than this many bytes.
    Over(usize),
}

impl Judge {
    pub fn new(options: &NeardupOptions, metrics: Arc<NeardupMetrics>) -> Self {
        Self {
            dropped_topic: options.dropped_topic.clone(),
            metrics,
            pending: HashMap::new(),
            answer_timeout: Duration::from_millis(options.answer_timeout_ms),
            looked_over: Instant::now(),
            waiting_bytes: 0,
            max_waiting_bytes: usize::try_from(options.max_waiting_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Judges on the answers they have the waiting files `due` names, longest waiting
    /// first: a file some shard never answers for must not hold its partition's commit
    /// for good, nor a stalled shard make the judge hold every file routed meanwhile.
    fn judge_early(&mut self, due: Due) -> Step<CodeFile> {
        let mut waiting: Vec<(Instant, i32, String)> = self
            .pending
            .iter()
            .flat_map(|(partition, files)| {
                files
                    .iter()
                    .filter_map(move |(hash, p)| Some((p.arrived?, *partition, hash.clone())))
            })
            .collect();
        waiting.sort();
        let (mut step, mut judged) = (Step::default(), 0);
        for (arrived, partition, content_hash) in waiting {
            let why = match due {
                Due::ArrivedBefore(deadline) if deadline.is_none_or(|d| arrived < d) => {
                    Incomplete::AnswerTimeout
                }
                Due::Over(bound) if self.waiting_bytes > bound => Incomplete::WaitingBytes,
                _ => break,
            };
            let Some(pending) = self.take(partition, &content_hash) else {
                continue;
            };
            self.metrics.files_judged_incomplete.inc(why);
            tracing::debug!(
                %content_hash, partition, why = why.label(),
                answers = pending.answers.len(), shards = pending.shards,
                "judged without every shard's answer"
            );
            step.extend(self.verdict(content_hash, pending));
            judged += 1;
        }
        if judged > 0 {
            // One line a look, not one a file: a stalled shard makes thousands.
            tracing::warn!(
                judged,
                waiting_bytes = self.waiting_bytes,
                "files judged without every shard's answer (neardup_files_judged_incomplete_total)"
            );
        }
        step
    }

    /// Removes a file from those waiting.
    fn take(&mut self, partition: i32, content_hash: &str) -> Option<Pending> {
        let pending = self.pending.get_mut(&partition)?.remove(content_hash)?;
        self.waiting_bytes -= pending.bytes;
        Some(pending)
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
                    pending.bytes = file.content.len();
                    self.waiting_bytes += pending.bytes;
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
            let pending = self.take(at.partition, &content_hash).expect("complete");
            step = self.verdict(content_hash, pending);
        }
        if self.looked_over.elapsed() >= LOOK_OVER_EVERY {
            self.looked_over = Instant::now();
            if let Some(deadline) = Instant::now().checked_sub(self.answer_timeout) {
                step.extend(self.judge_early(Due::ArrivedBefore(Some(deadline))));
            }
        }
        if self.waiting_bytes > self.max_waiting_bytes {
            // Down to nine tenths, so the next look is some files away.
            let bound = self.max_waiting_bytes - self.max_waiting_bytes / 10;
            step.extend(self.judge_early(Due::Over(bound)));
        }
        Ok(step)
    }

    /// The input paused for the answer timeout, so every file still waiting arrived
    /// at least that long ago: each is judged on the answers it has.
    async fn flush(&mut self) -> Step<CodeFile> {
        self.judge_early(Due::ArrivedBefore(None))
    }

    fn flush_after(&self) -> Option<Duration> {
        Some(self.answer_timeout)
    }

    /// What was gathered is replayed to the partition's new owner.
    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            if let Some(files) = self.pending.remove(p) {
                self.waiting_bytes -= files.values().map(|f| f.bytes).sum::<usize>();
            }
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
        judge_holding(answer_timeout, u64::MAX)
    }

    fn judge_holding(answer_timeout: Duration, max_waiting_bytes: u64) -> Judge {
        let metrics = Arc::new(NeardupMetrics::register(&prometheus::Registry::new()).unwrap());
        let options = NeardupOptions {
            answer_timeout_ms: answer_timeout.as_millis() as u64,
            max_waiting_bytes,
            ..NeardupOptions::default()
        };
        Judge::new(&options, metrics)
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

    /// A shard that stalls leaves every routed file waiting: past `max_waiting_bytes`
    /// the longest waiting are judged on the answers they have (down to nine tenths of
    /// the bound), so the judge's memory is bounded by configuration, not by the input
    /// rate times the answer timeout.
    #[tokio::test]
    async fn files_waiting_past_the_byte_bound_are_judged_longest_waiting_first() {
        // Each file holds 12 bytes ("fn main() {}"): five fit under 64, six do not.
        let mut judge = judge_holding(Duration::from_secs(600), 64);
        for (offset, hash) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let (record, file) = gathered(hash, 2);
            let step = judge.push(at(offset as i64), record, file).await.unwrap();
            assert!(kept(&step).is_empty(), "{hash}: judged under the bound");
        }
        let (record, file) = gathered("f", 2);
        let step = judge.push(at(5), record, file).await.unwrap();
        // 72 bytes > 64: judged down to 58 (nine tenths), so two go, the oldest.
        assert_eq!(kept(&step), ["a", "b"]);
        assert_eq!(judge.waiting_bytes, 48);
        assert_eq!(
            judge
                .metrics
                .files_judged_incomplete
                .get(Incomplete::WaitingBytes),
            2
        );
        // Revoking the partition forgets its files and their bytes.
        judge.revoke(&[0]);
        assert_eq!(judge.waiting_bytes, 0);
    }
}
