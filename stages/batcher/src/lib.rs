//! Batcher: tokenizes `code-files`, drops exact duplicates and packs the rest into
//! fixed-length sequences on `training-batches`.
//!
//! Each input partition has its own packers (one per split), so a partition's batches
//! depend only on that partition's records: a rerun over the same input makes
//! byte-identical batches however partitions interleave. Dedup is exact per partition
//! (code-files is keyed by content hash, so copies of a file share a partition); its
//! state is the compacted `batcher-seen` topic, marked only after every batch holding a
//! piece of the file is acknowledged and reloaded when a partition is assigned. A file
//! whose head is in a batch while its rest waits in a partial one gets a head mark with
//! that batch (in its transaction under `exactly_once`), so after a crash only the rest
//! is packed: no piece of a file is packed twice.

pub mod document;
pub mod metrics;
pub mod mix;
pub mod pack;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use codelupe_runtime::config::Config;
use codelupe_runtime::consume::aggregate::{
    self, Aggregate, InputPosition, Preparer, Sealed, Step,
};
use codelupe_runtime::descriptor::{Bound, Flow, Runs, StageDescriptor};
use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_ms, BatcherSeen, CodeFile, Split, TrainingBatch};
use codelupe_runtime::{AvroRecord, StageRuntime, TransformError};
use codelupe_tokenizer::CodeTokenizer;
use futures::future::BoxFuture;
use growable_bloom_filter::{GrowableBloom, GrowableBloomBuilder};

use crate::document::DocumentOptions;
use crate::metrics::{BatcherMetrics, FileError};
use crate::mix::{MixOptions, Packing, Shuffle};
use crate::pack::{Packed, Packer};

pub const STAGE: &str = "batcher";

/// The embedded default's tokenizer: fitted once on the working directory's sources.
const OFFLINE_TOKENIZER: &str = ".codelupe/tokenizer.json";

pub const DESCRIPTOR: StageDescriptor = StageDescriptor {
    name: STAGE,
    runs: Runs::InProcess(|runtime| Box::pin(run(runtime))),
    bound_by: Bound::Cpu,
    progress: &[
        ("files", metrics::FILES_CONSUMED),
        ("duplicates", metrics::DUPLICATES_DROPPED),
        ("batches", metrics::BATCHES_PRODUCED),
        ("tokens", metrics::TOKENS_PRODUCED),
        ("lag", codelupe_runtime::consume::CONSUMER_LAG),
    ],
    flow: Some(Flow {
        consumed: metrics::FILES_CONSUMED,
        produced: metrics::BATCHES_PRODUCED,
    }),
    // Small batches and a tenth of the files held out, so the trainer's first
    // evaluation comes soon on a working directory's worth of files.
    offline_options: "{tokenizer: .codelupe/tokenizer.json, sequence_length: 512, \
        flush_idle_ms: 5000, document: {eval_share: 0.1}}",
    prepare_offline: Some(fit_offline_tokenizer),
    summarize: |seen| {
        vec![format!(
            "batches       {} holding {} tokens, from {} files ({} exact duplicates dropped)",
            seen.produced as u64,
            seen.progress("tokens"),
            seen.consumed as u64,
            seen.progress("duplicates"),
        )]
    },
};

/// On the embedded default, fits the tokenizer on the working directory's sources the
/// first time (later runs reuse it).
fn fit_offline_tokenizer(config: &Config) -> BoxFuture<'static, anyhow::Result<()>> {
    let options = config.stage(STAGE).options::<BatcherOptions>(STAGE);
    Box::pin(async move {
        let tokenizer = options?.tokenizer;
        if tokenizer != std::path::Path::new(OFFLINE_TOKENIZER) || tokenizer.exists() {
            return Ok(());
        }
        tracing::info!(
            "no {OFFLINE_TOKENIZER} yet: fitting one on the working directory's sources"
        );
        let sample = codelupe_tokenizer::sample::from_dirs(&[".".into()], 5_000)?;
        let fitted = codelupe_tokenizer::fit(sample, 8_192, &tokenizer).await?;
        tracing::info!(
            vocabulary = fitted.vocab_size, fingerprint = %fitted.fingerprint,
            seconds = fitted.seconds, "wrote {OFFLINE_TOKENIZER}"
        );
        Ok(())
    })
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherOptions {
    /// The tokenizer.json to use: `codelupe tokenizer train` writes one, or bring a
    /// Qwen or StarCoder one.
    pub tokenizer: PathBuf,
    pub sequence_length: usize,
    pub sequences_per_batch: usize,
    pub document: DocumentOptions,
    /// The compacted topic holding the dedup state.
    pub seen_topic: String,
    /// Seal partial batches (padded with end-of-text) once the input has paused this
    /// long, so the tail of a stream reaches the trainer; 0 keeps them until full.
    pub flush_idle_ms: u64,
    /// Chance that a file never seen is taken for a duplicate (and dropped), at any
    /// number of files: the dedup filter grows with the files it marks.
    pub dedup_false_positive_rate: f64,
    /// The language mixture: a seeded shuffle within a bounded buffer, and weights.
    pub mix: MixOptions,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            tokenizer: PathBuf::from("tokenizer.json"),
            sequence_length: 2048,
            sequences_per_batch: 8,
            document: DocumentOptions::default(),
            seen_topic: "batcher-seen".into(),
            flush_idle_ms: 30_000,
            dedup_false_positive_rate: 1e-9,
            mix: MixOptions::default(),
        }
    }
}

/// A document in a packer: which file, which input record it came from, and how many
/// of its tokens an earlier run packed (the packer holds only the rest).
#[derive(Debug, Clone)]
struct Member {
    content_hash: String,
    language: String,
    at: InputPosition,
    resumed_at: usize,
}

/// A partition's marks as read from the seen topic.
struct Marks {
    /// First 128 bits of each content hash packed or being packed (see [`seen_filter`]).
    seen: GrowableBloom,
    /// Files whose first tokens are in acknowledged batches and the rest nowhere yet.
    heads: HashMap<u128, usize>,
}

impl Marks {
    fn add(&mut self, key: u128, mark: Option<BatcherSeen>) {
        match mark.and_then(|m| m.packed_tokens) {
            Some(packed) => {
                self.heads.insert(key, usize::try_from(packed).unwrap_or(0));
            }
            // A whole file (or a mark that does not decode, taken as one, as before
            // marks had values anyone read).
            None => {
                self.heads.remove(&key);
                self.seen.insert(key);
            }
        }
    }
}

struct PartitionState {
    marks: Marks,
    train: Packing<Member>,
    eval: Packing<Member>,
}

pub struct Batcher {
    tokenizer: Arc<CodeTokenizer>,
    options: BatcherOptions,
    clients: KafkaClients,
    metrics: BatcherMetrics,
    partitions: HashMap<i32, PartitionState>,
}

fn dedup_key(content_hash: &str) -> Option<u128> {
    u128::from_str_radix(content_hash.get(..32)?, 16).ok()
}

/// Files the first of a partition's dedup filters holds (about 100 KB at 1e-9).
const FIRST_FILTER_FILES: usize = 16_384;

/// A partition's dedup filter: a scalable Bloom filter (Almeida et al.), a chain of
/// filters each twice the files of the one before at a tighter rate, so its memory
/// follows the files marked (at 1e-9, 6 bytes a file once its last filter is full, 18
/// right after it adds the next) and its false-positive rate stays under
/// `false_positive_rate` at any count. One filter sized up front for two million files
/// held 10.8 MB a partition, touched page by page at random: a few hundred files made
/// it all resident.
fn seen_filter(false_positive_rate: f64) -> GrowableBloom {
    // The chain's rates sum to at most the first's / (1 - r), r the tightening ratio.
    let tightening = 0.85;
    GrowableBloomBuilder::new()
        .estimated_insertions(FIRST_FILTER_FILES)
        .desired_error_ratio(false_positive_rate * (1.0 - tightening))
        .growth_factor(2)
        .tightening_ratio(tightening)
        .build()
}

impl Batcher {
    pub fn new(
        tokenizer: CodeTokenizer,
        options: BatcherOptions,
        clients: KafkaClients,
        metrics: BatcherMetrics,
    ) -> anyhow::Result<Self> {
        if options.sequence_length == 0 || options.sequences_per_batch == 0 {
            bail!("stages.batcher.options: sequence_length and sequences_per_batch must be > 0");
        }
        options.mix.check().map_err(anyhow::Error::msg)?;
        let rate = options.dedup_false_positive_rate;
        if !(rate > 0.0 && rate < 1.0) {
            bail!("stages.batcher.options.dedup_false_positive_rate must lie between 0 and 1, not {rate}");
        }
        Ok(Self {
            tokenizer: Arc::new(tokenizer),
            options,
            clients,
            metrics,
            partitions: HashMap::new(),
        })
    }

    /// Creates the state of each partition not loaded yet, their dedup marks read from
    /// the seen topic all at once.
    async fn load_partitions(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.partitions.contains_key(p))
            .collect();
        let started = Instant::now();
        let rate = self.options.dedup_false_positive_rate;
        let loaded = kafka::read_partitions(
            &self.clients,
            &self.options.seen_topic,
            &missing,
            || {
                Ok(Marks {
                    seen: seen_filter(rate),
                    heads: HashMap::new(),
                })
            },
            |marks: &mut Marks, key, value| {
                if let Some(key) = std::str::from_utf8(key).ok().and_then(dedup_key) {
                    marks.add(key, value.and_then(|v| BatcherSeen::decode(v).ok()));
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await
        .context("loading dedup marks")?;
        let (len, per, eot) = (
            self.options.sequence_length,
            self.options.sequences_per_batch,
            self.tokenizer.end_of_text,
        );
        let (held, seed) = (self.options.mix.shuffle_buffer, self.options.mix.seed);
        let packing = || Packing::new(Shuffle::new(held, seed), Packer::new(len, per, eot));
        for (partition, marks) in loaded {
            tracing::info!(partition, marks = marks.seen.len(), heads = marks.heads.len(), elapsed = ?started.elapsed(), "dedup state loaded");
            self.partitions.insert(
                partition,
                PartitionState {
                    marks,
                    train: packing(),
                    eval: packing(),
                },
            );
        }
        Ok(())
    }

    /// A packed batch as a record with the head marks of the files that go on past it,
    /// and the dedup marks of the files that end in it, each published when its file is
    /// released (every batch holding a piece of it acked).
    fn seal(
        &self,
        split: Split,
        packed: Packed<Member>,
    ) -> (Sealed<TrainingBatch>, Vec<(InputPosition, Outgoing)>) {
        self.metrics
            .tokens_produced
            .inc_by(packed.token_ids.len() as u64);
        self.metrics.batches_produced.inc(split);
        let (mut heads, mut marks) = (Vec::new(), Vec::new());
        for (member, part) in &packed.members {
            let packed_tokens = (!part.last).then(|| (member.resumed_at + part.through) as i64);
            let mark = self.mark(member, &packed.batch_id, packed_tokens);
            if part.last {
                marks.push((member.at, mark));
            } else {
                heads.push(mark);
            }
        }
        let sealed = Sealed {
            key: packed.batch_id.clone(),
            partition: None,
            alongside: heads,
            inputs: packed
                .members
                .iter()
                .map(|(m, part)| (m.at, part.last))
                .collect(),
            value: TrainingBatch {
                batch_id: packed.batch_id,
                split: split.label().to_string(),
                sequence_length: self.options.sequence_length as i32,
                token_ids: packed.token_ids,
                document_starts: packed.document_starts,
                languages: packed
                    .members
                    .iter()
                    .map(|(m, _)| m.language.clone())
                    .collect(),
                content_hashes: packed
                    .members
                    .into_iter()
                    .map(|(m, _)| m.content_hash)
                    .collect(),
                tokenizer_fingerprint: self.tokenizer.fingerprint.clone(),
            },
        };
        (sealed, marks)
    }

    /// `member`'s mark on the seen topic, in its input's partition.
    fn mark(&self, member: &Member, batch_id: &str, packed_tokens: Option<i64>) -> Outgoing {
        let mark = BatcherSeen {
            content_hash: member.content_hash.clone(),
            batch_id: batch_id.to_string(),
            seen_at_ms: now_ms(),
            packed_tokens,
        };
        let mut outgoing = Outgoing::record(&self.options.seen_topic, &member.content_hash, &mark)
            .expect("a BatcherSeen always encodes: its schema is tested");
        outgoing.partition = Some(member.at.partition);
        outgoing
    }

    /// Packed batches as one step: the records and their marks.
    fn step(
        &self,
        packed: impl IntoIterator<Item = (Split, Packed<Member>)>,
    ) -> Step<TrainingBatch> {
        let mut step = Step::default();
        for (split, p) in packed {
            let (sealed, marks) = self.seal(split, p);
            step.sealed.push(sealed);
            step.on_release.extend(marks);
        }
        step
    }
}

impl Aggregate for Batcher {
    type Input = CodeFile;
    type Output = TrainingBatch;
    type Reason = FileError;
    /// The file's document as tokens, or why it could not be tokenized.
    type Prepared = Result<Vec<u32>, String>;

    /// Tokenizing, on every core. A duplicate is tokenized too (the dedup state is
    /// the loop's alone) and its tokens dropped: the price of parallel tokenizing.
    fn preparer(&self) -> Preparer<CodeFile, Self::Prepared> {
        let (tokenizer, document, duration) = (
            self.tokenizer.clone(),
            self.options.document.clone(),
            self.metrics.tokenize_duration.clone(),
        );
        Arc::new(move |file| {
            let started = Instant::now();
            let tokens =
                document::tokens(&tokenizer, file, &document).map_err(|e| format!("{e:#}"));
            duration.observe(started.elapsed().as_secs_f64());
            tokens
        })
    }

    async fn push(
        &mut self,
        at: InputPosition,
        file: CodeFile,
        tokens: Self::Prepared,
    ) -> Result<Step<TrainingBatch>, TransformError<FileError>> {
        self.metrics.files_consumed.inc();
        let key = dedup_key(&file.content_hash).ok_or_else(|| {
            TransformError::permanent(
                FileError::BadContentHash,
                format!("content_hash {:?} is not a hex SHA-256", file.content_hash),
            )
        })?;
        // Loaded at assignment; here only when an input came first.
        if !self.partitions.contains_key(&at.partition) {
            self.load_partitions(&[at.partition])
                .await
                .map_err(|e| TransformError::retryable(FileError::DedupState, format!("{e:#}")))?;
        }
        if !self.options.mix.keeps(&file.language, &file.content_hash) {
            self.metrics.files_downsampled.inc();
            return Ok(Step {
                finished: vec![at],
                ..Step::default()
            });
        }
        let state = self
            .partitions
            .get_mut(&at.partition)
            .expect("loaded above");
        if state.marks.seen.check_and_set(key) {
            self.metrics.duplicates_dropped.inc();
            return Ok(Step {
                finished: vec![at],
                ..Step::default()
            });
        }
        let mut tokens = tokens.map_err(|e| TransformError::permanent(FileError::Tokenize, e))?;
        let resumed_at = state
            .marks
            .heads
            .remove(&key)
            .unwrap_or(0)
            .min(tokens.len());
        tokens.drain(..resumed_at);
        let eval = document::is_eval(&file.content_hash, self.options.document.eval_share);
        let member = Member {
            content_hash: file.content_hash.clone(),
            language: file.language,
            at,
            resumed_at,
        };
        let (split, packing) = if eval {
            (Split::Eval, &mut state.eval)
        } else {
            (Split::Train, &mut state.train)
        };
        let packed = packing.push(&file.content_hash, member, tokens);
        Ok(self.step(packed.into_iter().map(|p| (split, p))))
    }

    async fn flush(&mut self) -> Step<TrainingBatch> {
        let mut partial = Vec::new();
        let mut partitions: Vec<_> = self.partitions.iter_mut().collect();
        partitions.sort_by_key(|(p, _)| **p);
        for (_, state) in partitions {
            partial.extend(state.train.flush().into_iter().map(|p| (Split::Train, p)));
            partial.extend(state.eval.flush().into_iter().map(|p| (Split::Eval, p)));
        }
        if !partial.is_empty() {
            tracing::info!(
                batches = partial.len(),
                "input paused: sealing partial batches"
            );
        }
        self.step(partial)
    }

    fn flush_after(&self) -> Option<Duration> {
        (self.options.flush_idle_ms > 0).then(|| Duration::from_millis(self.options.flush_idle_ms))
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    async fn assign(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        self.load_partitions(partitions).await
    }
}

pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: BatcherOptions = runtime.settings.options(STAGE)?;
    let (input, _) = runtime.require_input()?;
    let (inputs, marks) = (
        runtime.clients.partition_count(input).await?,
        runtime.clients.partition_count(&options.seen_topic).await?,
    );
    if inputs != marks {
        bail!(
            "{} has {marks} partitions but {input} has {inputs}: dedup marks share the input's \
             partition numbers, so they must match (fix topology.yaml and re-apply)",
            options.seen_topic
        );
    }
    let tokenizer = CodeTokenizer::load(&options.tokenizer).context(
        "cannot load the tokenizer (stages.batcher.options.tokenizer); \
         `codelupe tokenizer train` makes one",
    )?;
    tracing::info!(
        tokenizer = %options.tokenizer.display(),
        vocabulary = tokenizer.vocab_size(),
        fingerprint = %tokenizer.fingerprint,
        "tokenizer loaded"
    );
    let metrics = BatcherMetrics::register(&runtime.registry)?;
    let batcher = Batcher::new(tokenizer, options, runtime.clients.clone(), metrics)?;
    aggregate::run_aggregate(batcher, &runtime).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_mark_resumes_a_file_until_its_whole_mark_comes() {
        let mut marks = Marks {
            seen: seen_filter(1e-9),
            heads: HashMap::new(),
        };
        let mark = |packed_tokens| {
            Some(BatcherSeen {
                content_hash: "ab".repeat(32),
                batch_id: "b".into(),
                seen_at_ms: 0,
                packed_tokens,
            })
        };
        marks.add(1, mark(Some(300)));
        marks.add(1, mark(Some(700)));
        assert_eq!(marks.heads.get(&1), Some(&700));
        assert!(!marks.seen.contains(1u128), "a head is not the whole file");
        marks.add(1, mark(None));
        assert!(marks.heads.is_empty() && marks.seen.contains(1u128));
        // A mark whose value does not decode counts as a whole file, as it always did.
        marks.add(2, None);
        assert!(marks.seen.contains(2u128));
    }

    /// Bytes the filter's bit arrays hold, read from its serialized form.
    fn filter_bytes(filter: &GrowableBloom) -> usize {
        let value = serde_json::to_value(filter).unwrap();
        value["b"]
            .as_array()
            .unwrap()
            .iter()
            .map(|bloom| bloom["b"].as_array().unwrap().len())
            .sum()
    }

    /// The option that sized the old filter is refused by name, not ignored.
    #[test]
    fn a_configuration_naming_the_old_dedup_capacity_is_refused() {
        let error = serde_json::from_str::<BatcherOptions>(r#"{"dedup_capacity": 2000000}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("dedup_capacity"), "{error}");
        let options: BatcherOptions =
            serde_json::from_str(r#"{"dedup_false_positive_rate": 1e-6}"#).unwrap();
        assert_eq!(options.dedup_false_positive_rate, 1e-6);
    }

    /// Its memory follows the files marked (a filter sized up front did not), and its
    /// false-positive rate holds at many times the first filter's files.
    #[test]
    fn the_dedup_filter_grows_with_the_files_marked_and_holds_its_rate() {
        let rate = 1e-4;
        let mut filter = seen_filter(rate);
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut bytes_at = Vec::new();
        // 1, 3, 7 and 15 times the first filter's files: each chain exactly full.
        for files in [1, 3, 7, 15].map(|n| n * FIRST_FILTER_FILES) {
            while filter.len() < files {
                filter.insert(next());
            }
            bytes_at.push((files, filter_bytes(&filter)));
        }
        let per_file: Vec<f64> = bytes_at
            .iter()
            .map(|(f, b)| *b as f64 / *f as f64)
            .collect();
        // -ln p / ln² 2 bits a file for one filter at p: 2.4 bytes at 1e-4; the chain's
        // first filter is at 0.15 p and the later ones tighter still.
        for b in &per_file {
            assert!((2.4..4.0).contains(b), "{per_file:?} bytes a file");
        }
        let (small, large) = (bytes_at[0].1, bytes_at[3].1);
        assert!(
            large > 12 * small,
            "{bytes_at:?}: memory did not grow with the files"
        );
        let trials = 1_000_000;
        let false_positives = (0..trials).filter(|_| filter.contains(next())).count();
        // At most 100 expected; 300 is far outside the noise.
        assert!(false_positives < 300, "{false_positives} in {trials}");
    }
}
