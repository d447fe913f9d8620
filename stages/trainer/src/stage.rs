//! The trainer stage: reads `training-batches` and trains forever, in runs of
//! `steps_per_run` optimiser steps, each ending in an evaluation and a checkpoint.
//!
//! It does not use the runtime's consume loop: its unit of delivery is the checkpoint,
//! not the record. Partitions are assigned by hand at the offsets the latest checkpoint
//! holds, and offsets are committed to the group (for lag dashboards) only after the
//! checkpoint containing them is on disk. The checkpoint is the truth: after a crash the
//! trainer resumes from its weights and its offsets, so a batch is in the model exactly
//! once, whatever was committed.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use codelupe_runtime::consume::offsets::OffsetTracker;
use codelupe_runtime::consume::subscription::{store, store_stepped_over, ConsumerLag, LagContext};
use codelupe_runtime::consume::{dead_letter, LoopReason, Origin};
use codelupe_runtime::kafka;
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::records::{now_ms, Split, TrainingBatch};
use codelupe_runtime::{AvroRecord, Publisher, StageRuntime};
use codelupe_tokenizer::CodeTokenizer;
use codelupe_trainer_api::metrics::{Skip, TrainerMetrics};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::checkpoint::{self, CheckpointState};
use crate::eval_set::{EvalLosses, EvalSet};
use crate::model::{ModelConfig, Preset};
use crate::optim::OptimizerOptions;
use crate::pass_at_k::{Evaluator, PassAtKOptions, Scored};
use crate::train::{BatchLimits, Sequences, Trainer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerOptions {
    /// Model size: tiny, 125m or 350m.
    pub preset: Preset,
    /// The tokenizer the batches were made with (its fingerprint must match theirs).
    pub tokenizer: PathBuf,
    pub checkpoint_dir: PathBuf,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    pub device: DeviceChoice,
    pub steps_per_run: u64,
    /// Batches (micro-batches) per optimiser step.
    pub grad_accumulation: NonZeroU32,
    pub optimizer: OptimizerOptions,
    /// Eval-split batches kept as the fixed eval set (the first ones read).
    pub eval_batches: usize,
    /// Beyond those, one more for each language not in the set yet, up to this many.
    pub eval_batches_max: usize,
    pub keep_checkpoints: NonZeroUsize,
    /// End a run early (evaluate, checkpoint) when no batch arrives for this long, so
    /// the tail of the stream is saved; 0: wait for a full run.
    pub idle_checkpoint_ms: u64,
    pub seed: i64,
    /// bf16 autocast on CUDA.
    pub bf16: bool,
    /// Keep attention within documents (positions restart at documents either way).
    pub mask_documents: bool,
    /// Batches with longer sequences are dead-lettered, not trained (attention's memory
    /// grows with the square of the length).
    pub max_sequence_length: usize,
    pub log_every_steps: NonZeroU64,
    /// Read the input from the checkpoint's offsets (false: from the beginning, keeping
    /// the weights), for an input that does not outlive the trainer: the embedded
    /// broker of `codelupe run` starts empty each time, so a second run is another
    /// pass over the same files rather than a wait past their end.
    pub resume_offsets: bool,
    /// How often to look for partitions added to the input; they are read from their
    /// beginning.
    pub partition_check_ms: u64,
    /// Scoring each new checkpoint on HumanEval in the background.
    pub pass_at_k: PassAtKOptions,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            preset: Preset::Tiny,
            tokenizer: PathBuf::from("tokenizer.json"),
            checkpoint_dir: PathBuf::from(codelupe_trainer_api::checkpoints::DEFAULT_DIR),
            device: DeviceChoice::Auto,
            steps_per_run: 500,
            grad_accumulation: NonZeroU32::MIN,
            optimizer: OptimizerOptions::default(),
            eval_batches: 8,
            eval_batches_max: 64,
            keep_checkpoints: NonZeroUsize::new(3).expect("positive"),
            idle_checkpoint_ms: 60_000,
            partition_check_ms: 30_000,
            seed: 0,
            bf16: true,
            mask_documents: false,
            max_sequence_length: 16_384,
            log_every_steps: NonZeroU64::new(10).expect("positive"),
            resume_offsets: true,
            pass_at_k: PassAtKOptions::default(),
        }
    }
}

/// Where to train, as configured: its form is checked when the config loads, whether
/// that CUDA device exists when the trainer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DeviceChoice {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {other:?}; use auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl DeviceChoice {
    /// As written in the config.
    pub fn name(self) -> String {
        match self {
            Self::Auto => "auto".into(),
            Self::Cpu => "cpu".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// The device, when this machine has it.
    pub fn resolve(self) -> anyhow::Result<Device> {
        Ok(match self {
            Self::Auto => Device::cuda_if_available(),
            Self::Cpu => Device::Cpu,
            Self::Cuda(n) if n < tch::Cuda::device_count() as usize => Device::Cuda(n),
            Self::Cuda(n) => bail!(
                "device cuda:{n} is not available (CUDA devices: {}); use auto, cpu, cuda or cuda:N",
                tch::Cuda::device_count()
            ),
        })
    }
}

/// The device named `name` (auto, cpu, cuda or cuda:N), when this machine has it.
pub fn choose_device(name: &str) -> anyhow::Result<Device> {
    name.parse::<DeviceChoice>()
        .map_err(anyhow::Error::msg)?
        .resolve()
}

/// GPU memory this process holds, from nvidia-smi (libtorch's allocator statistics are
/// not exposed by tch).
fn gpu_memory_bytes() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let (p, mib) = line.split_once(',')?;
            (p.trim() == pid)
                .then(|| mib.trim().parse::<f64>().ok().map(|m| m * 1024.0 * 1024.0))?
        })
}

/// What `/status` shows.
#[derive(Debug, Default, Serialize)]
struct Status {
    state: &'static str,
    device: String,
    preset: String,
    parameters: i64,
    step: u64,
    tokens_seen: u64,
    train_loss: Option<f64>,
    eval_loss: Option<f64>,
    eval_loss_by_language: BTreeMap<String, f64>,
    learning_rate: f64,
    tokens_per_second: f64,
    eval_set_batches: usize,
    last_checkpoint: Option<String>,
    /// The newest checkpoint's execution score.
    pass_at_k: Option<Scored>,
    offsets: BTreeMap<i32, i64>,
}

/// The batches of the run in progress.
struct Run {
    started: Instant,
    batches: Vec<String>,
    steps: u64,
    micro_batches: u32,
    loss_sum: f64,
    loss_count: u32,
}

impl Run {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            batches: Vec::new(),
            steps: 0,
            micro_batches: 0,
            loss_sum: 0.0,
            loss_count: 0,
        }
    }
}

struct Stage {
    options: TrainerOptions,
    metrics: TrainerMetrics,
    runtime: StageRuntime,
    tokenizer: CodeTokenizer,
    trainer: Trainer,
    eval: EvalSet,
    offsets: BTreeMap<i32, i64>,
    /// Which records are done, as the consume loops track them: the offsets stored
    /// (what the lag counts from) and the partitions read past transaction markers.
    tracker: Mutex<OffsetTracker>,
    /// The offsets last committed to the group by this process.
    committed: BTreeMap<i32, i64>,
    /// Publishes the dead letters of batches it cannot read.
    dead_letters: Publisher,
    /// Input partitions assigned, 0 to this.
    partitions: i32,
    tokens_seen: u64,
    /// The longest sequence trained on, across runs.
    context: i64,
    run: Run,
    status: Status,
    throughput: (Instant, u64),
    /// Scores checkpoints by execution in a child process; None when off.
    evaluator: Option<Evaluator>,
}

/// The trainer's consumer: it assigns its partitions itself, and reports its lag as
/// every stage's consumer does.
type InputConsumer = BaseConsumer<LagContext>;

pub async fn run(runtime: StageRuntime) -> anyhow::Result<()> {
    let options: TrainerOptions = runtime.settings.options(codelupe_trainer_api::STAGE)?;
    let metrics = TrainerMetrics::register(&runtime.registry)?;
    let (input, group) = runtime.require_input()?;
    let partitions = runtime.clients.partition_count(input).await?;
    let lag = LagContext(ConsumerLag::new(metrics.records.consumer_lag.clone()));
    let consumer: InputConsumer = runtime
        .clients
        .consumer_config(&runtime.client_id(), group)
        .set("enable.auto.commit", "false")
        .create_with_context(lag)
        .context("cannot create the Kafka consumer")?;
    let input = input.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stage = Stage::start(options, metrics, runtime)?;
        stage.assign(&consumer, &input, partitions)?;
        stage.train(&consumer, &input)
    })
    .await?
}

/// Loads the newest checkpoint under `checkpoint_dir` into `trainer`, when there is
/// one made with this tokenizer and model; its state, or None to start afresh.
fn resume(
    options: &TrainerOptions,
    tokenizer: &CodeTokenizer,
    trainer: &mut Trainer,
    status: &mut Status,
) -> anyhow::Result<Option<CheckpointState>> {
    let Some((dir, state)) = checkpoint::latest(&options.checkpoint_dir)? else {
        return Ok(None);
    };
    let model = trainer.model.config;
    if state.tokenizer_fingerprint != tokenizer.fingerprint || state.model != model {
        bail!(
            "checkpoint {} was made with tokenizer {} and model {:?}, not tokenizer {} \
             and preset {}: point checkpoint_dir elsewhere to start a new model",
            dir.display(),
            state.tokenizer_fingerprint,
            state.model,
            tokenizer.fingerprint,
            options.preset
        );
    }
    trainer.load(&dir, state.step)?;
    tracing::info!(checkpoint = %dir.display(), step = state.step, "resumed");
    status.last_checkpoint = Some(dir.display().to_string());
    status.eval_loss = state.eval_loss;
    status.train_loss = state.train_loss;
    Ok(Some(state))
}

impl Stage {
    fn start(
        options: TrainerOptions,
        metrics: TrainerMetrics,
        runtime: StageRuntime,
    ) -> anyhow::Result<Self> {
        let tokenizer = CodeTokenizer::load(&options.tokenizer).context(
            "cannot load the tokenizer (stages.trainer.options.tokenizer): use the batcher's",
        )?;
        let device = options.device.resolve()?;
        let config = ModelConfig::of(options.preset, tokenizer.vocab_size() as i64);
        let mut trainer = Trainer::new(
            config,
            options.optimizer.clone(),
            device,
            options.seed,
            options.bf16,
        );
        trainer.mask_documents = options.mask_documents;
        let root = &options.checkpoint_dir;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let mut status = Status {
            state: "starting",
            device: format!("{device:?}"),
            preset: options.preset.to_string(),
            parameters: config.parameters(),
            ..Status::default()
        };
        let (mut offsets, mut tokens_seen, mut context) = (BTreeMap::new(), 0, 0);
        if let Some(state) = resume(&options, &tokenizer, &mut trainer, &mut status)? {
            if options.resume_offsets {
                offsets = state.offsets;
            } else {
                tracing::info!("resume_offsets is off: reading the input from its beginning");
            }
            tokens_seen = state.tokens_seen;
            context = state.context.unwrap_or(0);
        }
        let eval = EvalSet::load(root)?;
        metrics.dataset_size.set(
            Split::Eval,
            eval.sequences
                .iter()
                .map(|s| s.tokens.size()[0])
                .sum::<i64>() as f64,
        );
        tracing::info!(
            %options.preset, parameters = config.parameters(), ?device,
            step = trainer.optimizer.step, eval_batches = eval.batch_ids.len(),
            "trainer ready"
        );
        let dead_letters = Publisher::new(&runtime)?;
        let evaluator = Evaluator::new(
            &options.pass_at_k,
            std::env::current_exe()?,
            options.device.name(),
            metrics.eval_pass_at_k.clone(),
        )?;
        Ok(Self {
            evaluator,
            status,
            throughput: (Instant::now(), tokens_seen),
            options,
            metrics,
            runtime,
            tokenizer,
            trainer,
            eval,
            // Unknown, not the checkpoint's: a commit that failed (a broker outage) just
            // before the crash left the group behind it, and only a commit moves it on.
            committed: BTreeMap::new(),
            offsets,
            tracker: Mutex::default(),
            dead_letters,
            partitions: 0,
            tokens_seen,
            context,
            run: Run::new(),
        })
    }

    fn assign(
        &mut self,
        consumer: &InputConsumer,
        input: &str,
        partitions: i32,
    ) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            let offset = self
                .offsets
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            list.add_partition_offset(input, p, offset)?;
        }
        consumer
            .assign(&list)
            .context("cannot assign the input partitions")?;
        self.partitions = partitions;
        self.runtime.readiness.set_ready();
        self.status.state = "training";
        self.publish_status();
        Ok(())
    }

    /// Partitions added to the input since they were assigned join the assignment,
    /// read from their beginning (no checkpoint has an offset for them).
    fn assign_new_partitions(&mut self, consumer: &InputConsumer, input: &str) {
        let count = match kafka::partition_count(consumer.client(), input) {
            Ok(count) if count > self.partitions => count,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the input's partition count");
                return;
            }
        };
        let mut list = TopicPartitionList::new();
        for p in self.partitions..count {
            let offset = self
                .offsets
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            if let Err(e) = list.add_partition_offset(input, p, offset) {
                tracing::warn!(error = %e, partition = p, "cannot add a partition");
                return;
            }
        }
        match consumer.incremental_assign(&list) {
            Ok(()) => {
                tracing::info!(from = self.partitions, to = count, "input partitions added");
                self.partitions = count;
            }
            Err(e) => tracing::warn!(error = %e, "cannot assign the added partitions"),
        }
    }

    fn train(&mut self, consumer: &InputConsumer, input: &str) -> anyhow::Result<()> {
        let idle = (self.options.idle_checkpoint_ms > 0)
            .then(|| Duration::from_millis(self.options.idle_checkpoint_ms));
        let mut last_input = Instant::now();
        let check_every = Duration::from_millis(self.options.partition_check_ms.max(100));
        let mut next_check = Instant::now() + check_every;
        loop {
            if Instant::now() >= next_check {
                next_check = Instant::now() + check_every;
                self.assign_new_partitions(consumer, input);
            }
            if let Some(scored) = self.evaluator.as_mut().and_then(Evaluator::poll) {
                self.status.pass_at_k = Some(scored);
                self.publish_status();
                // The gauges after the status: a scrape showing a score finds it there.
                if let (Some(evaluator), Some(scored)) = (&self.evaluator, &self.status.pass_at_k) {
                    evaluator.show(scored);
                }
            }
            if self.runtime.shutdown.is_cancelled() {
                if !self.run.batches.is_empty() {
                    self.finish_run(consumer, input, "shutdown")?;
                }
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {
                    let paused = idle.is_some_and(|idle| last_input.elapsed() >= idle);
                    if paused {
                        self.step_over_markers(consumer, input);
                    }
                    if paused && !self.run.batches.is_empty() {
                        self.finish_run(consumer, input, "input paused")?;
                    } else if paused && self.offsets != self.committed {
                        // Read past batches it does not train (eval beyond the eval
                        // set, undecodable): nothing to checkpoint, but the group's
                        // lag must reach 0.
                        self.commit_offsets(consumer, input)?;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Some(Ok(message)) => {
                    last_input = Instant::now();
                    let (partition, offset) = (message.partition(), message.offset());
                    if !self
                        .tracker
                        .get_mut()
                        .expect("tracker lock")
                        .begin(partition, offset)
                    {
                        continue; // read already
                    }
                    self.metrics.records.consumed.inc();
                    self.handle(&message)?;
                    if let Some(next) = store(consumer, input, &self.tracker, partition, offset) {
                        self.offsets.insert(partition, next);
                    }
                    self.metrics.records.last_processed.set(now_ms() / 1000);
                    if self.run.steps >= self.options.steps_per_run {
                        self.finish_run(consumer, input, "run complete")?;
                    }
                }
            }
        }
    }

    fn handle(&mut self, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let batch = match message.payload().map(TrainingBatch::decode) {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => return self.dead_letter(message, e.to_string()),
            None => return self.dead_letter(message, "record has no value".into()),
        };
        if batch.tokenizer_fingerprint != self.tokenizer.fingerprint {
            tracing::error!(
                batch = %batch.batch_id, theirs = %batch.tokenizer_fingerprint,
                ours = %self.tokenizer.fingerprint,
                "batch made with another tokenizer skipped"
            );
            self.skip(Skip::TokenizerMismatch);
            return Ok(());
        }
        let limits = BatchLimits {
            vocab_size: self.tokenizer.vocab_size(),
            max_sequence_length: self.options.max_sequence_length,
        };
        let sequences = match Sequences::from_batch(&batch, limits) {
            Ok(sequences) => sequences,
            Err(e) => return self.dead_letter(message, format!("malformed batch: {e}")),
        };
        if batch.split == Split::Eval.label() {
            let (base, max) = (self.options.eval_batches, self.options.eval_batches_max);
            if self.eval.offer(&batch, sequences, base, max.max(base)) {
                self.eval.save(&self.options.checkpoint_dir)?;
                let rows: i64 = self.eval.sequences.iter().map(|s| s.tokens.size()[0]).sum();
                self.metrics.dataset_size.set(Split::Eval, rows as f64);
            } else {
                self.skip(Skip::EvalSetFull);
            }
            return Ok(());
        }
        let accumulation = self.options.grad_accumulation.get();
        let loss = self.trainer.accumulate(&sequences, accumulation);
        let rows = sequences.tokens.size()[0];
        self.run.batches.push(batch.batch_id);
        self.run.micro_batches += 1;
        self.run.loss_sum += loss;
        self.run.loss_count += 1;
        self.tokens_seen += sequences.tokens() as u64;
        self.context = self.context.max(sequences.tokens.size()[1]);
        self.metrics
            .tokens_trained
            .inc_by(sequences.tokens() as u64);
        self.metrics.samples_trained.inc_by(rows as u64);
        self.metrics
            .files_trained
            .inc_by(batch.content_hashes.len() as u64);
        self.metrics.dataset_size.add(Split::Train, rows as f64);
        if self.run.micro_batches >= accumulation {
            self.optimizer_step();
        }
        Ok(())
    }

    /// A batch that cannot be trained on: skipped (counted, reason `decode`) and
    /// dead-lettered like every stage's undecodable input, to look at or replay. A
    /// letter that cannot be published stops the trainer (the batch is read again).
    fn dead_letter(&self, message: &BorrowedMessage<'_>, error: String) -> anyhow::Result<()> {
        self.skip(Skip::Decode);
        self.metrics
            .records
            .dead_letters
            .with_label_values(&[LoopReason::Decode.label()])
            .inc();
        let letter = dead_letter(
            codelupe_trainer_api::STAGE,
            &self.runtime.dead_letter_topic,
            Origin {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                value: message.payload(),
            },
            LoopReason::Decode.label(),
            error,
            1,
        );
        tokio::runtime::Handle::current()
            .block_on(
                self.dead_letters
                    .send(&letter.topic, &letter.key, &letter.payload),
            )
            .with_context(|| {
                format!(
                    "cannot dead-letter the batch at {}[{}]@{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            })
    }

    fn skip(&self, reason: Skip) {
        self.metrics.batches_skipped.inc(reason);
    }

    fn optimizer_step(&mut self) {
        let (lr, norm) = self.trainer.step();
        let loss = self.run.loss_sum / self.run.loss_count.max(1) as f64;
        self.run.micro_batches = 0;
        self.run.steps += 1;
        self.run.loss_sum = 0.0;
        self.run.loss_count = 0;
        self.metrics.current_loss.set(loss);
        self.metrics.learning_rate.set(lr);
        self.status.train_loss = Some(loss);
        self.status.learning_rate = lr;
        self.status.step = self.trainer.optimizer.step;
        self.status.tokens_seen = self.tokens_seen;
        let step = self.trainer.optimizer.step;
        if step.is_multiple_of(self.options.log_every_steps.get()) {
            let (since, tokens_then) = self.throughput;
            let rate = (self.tokens_seen - tokens_then) as f64 / since.elapsed().as_secs_f64();
            self.throughput = (Instant::now(), self.tokens_seen);
            self.metrics.tokens_per_second.set(rate);
            self.status.tokens_per_second = rate;
            let context = self.trainer.model.config;
            let mfu = rate * context.flops_per_token(self.tokens_context()) / 989e12;
            tracing::info!(
                step,
                loss,
                lr,
                grad_norm = norm,
                tokens_per_second = rate,
                mfu_vs_h100_bf16 = mfu,
                "step"
            );
            if let Some(bytes) = self
                .trainer
                .device()
                .is_cuda()
                .then(gpu_memory_bytes)
                .flatten()
            {
                self.metrics.gpu_memory_bytes.set(bytes);
            }
        }
        self.publish_status();
    }

    /// The sequence length of the eval set, or a typical one, for the FLOP estimate.
    fn tokens_context(&self) -> i64 {
        self.eval
            .sequences
            .first()
            .map_or(2048, |s| s.tokens.size()[1])
    }

    /// Moves each partition's offset to the consumer's position when that is further:
    /// transaction markers (a batcher in `exactly_once`) are never delivered, and an
    /// offset left at one would show a lag of 1 for good.
    fn step_over_markers(&mut self, consumer: &InputConsumer, input: &str) {
        for (partition, next) in store_stepped_over(consumer, input, &self.tracker) {
            let offset = self.offsets.entry(partition).or_insert(next);
            *offset = (*offset).max(next);
        }
    }

    /// Commits the offsets read to the group. The checkpoint holds the offsets a
    /// restart resumes from; the commit feeds lag dashboards and alerts.
    fn commit_offsets(&mut self, consumer: &InputConsumer, input: &str) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for (&p, &o) in &self.offsets {
            list.add_partition_offset(input, p, Offset::Offset(o))?;
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => self.committed = self.offsets.clone(),
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
        Ok(())
    }

    /// Ends the run: the last partial accumulation becomes a step, then evaluation,
    /// checkpoint, and only then the offset commit.
    fn finish_run(
        &mut self,
        consumer: &InputConsumer,
        input: &str,
        why: &str,
    ) -> anyhow::Result<()> {
        if self.run.micro_batches > 0 {
            self.optimizer_step();
        }
        let EvalLosses {
            overall: eval_loss,
            by_language: eval_loss_by_language,
        } = self.eval.losses(&self.trainer);
        if let Some(loss) = eval_loss {
            self.metrics.current_eval_loss.set(loss);
        }
        for (language, loss) in &eval_loss_by_language {
            self.metrics
                .eval_loss
                .with_label_values(&[language])
                .set(*loss);
        }
        let state = CheckpointState {
            step: self.trainer.optimizer.step,
            tokens_seen: self.tokens_seen,
            offsets: self.offsets.clone(),
            learning_rate: self.status.learning_rate,
            train_loss: self.status.train_loss,
            eval_loss,
            eval_loss_by_language: eval_loss_by_language.clone(),
            preset: self.options.preset.to_string(),
            model: self.trainer.model.config,
            tokenizer_fingerprint: self.tokenizer.fingerprint.clone(),
            context: (self.context > 0).then_some(self.context),
            batches: std::mem::take(&mut self.run.batches),
            written_at_ms: now_ms(),
        };
        let dir = checkpoint::write(
            &self.options.checkpoint_dir,
            &state,
            &self.trainer,
            &self.options.tokenizer,
            self.options.keep_checkpoints.get(),
        )?;
        self.commit_offsets(consumer, input)?;
        if let Some(evaluator) = &mut self.evaluator {
            evaluator.offer(&dir);
        }
        let elapsed = self.run.started.elapsed().as_secs_f64();
        self.metrics.training_runs.inc();
        self.metrics.training_duration.observe(elapsed);
        tracing::info!(
            checkpoint = %dir.display(), step = state.step, batches = state.batches.len(),
            eval_loss = ?eval_loss, seconds = elapsed, why, "run finished"
        );
        self.status.eval_loss = eval_loss;
        self.status.eval_loss_by_language = eval_loss_by_language;
        self.status.last_checkpoint = Some(dir.display().to_string());
        self.status.eval_set_batches = self.eval.batch_ids.len();
        self.run = Run::new();
        self.publish_status();
        Ok(())
    }

    fn publish_status(&mut self) {
        self.status.offsets = self.offsets.clone();
        if let Ok(json) = serde_json::to_string_pretty(&self.status) {
            self.runtime.readiness.set_status(json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codelupe_runtime::config::Config;

    fn options(yaml: &str) -> Result<TrainerOptions, String> {
        let text = format!("stages:\n  trainer:\n    options: {yaml}\n");
        let config = Config::from_yaml(&text, std::path::Path::new("c.yaml"), Vec::new())
            .map_err(|e| e.to_string())?;
        config
            .stage("trainer")
            .options::<TrainerOptions>("trainer")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn presets_devices_and_counts_are_checked_when_the_config_loads() {
        let ok = options("{preset: 125m, device: 'cuda:1', grad_accumulation: 4}").unwrap();
        assert_eq!(ok.preset, Preset::M125);
        assert_eq!(ok.device, DeviceChoice::Cuda(1));
        assert_eq!(ok.grad_accumulation.get(), 4);
        for (yaml, says) in [
            ("{preset: huge}", "presets are tiny, 125m, 350m"),
            ("{device: gpu}", "use auto, cpu, cuda or cuda:N"),
            ("{grad_accumulation: 0}", "nonzero"),
            ("{keep_checkpoints: 0}", "nonzero"),
            ("{log_every_steps: 0}", "nonzero"),
        ] {
            let err = options(yaml).unwrap_err();
            assert!(err.contains("stages.trainer.options"), "{yaml}: {err}");
            assert!(err.contains(says), "{yaml}: {err}");
        }
    }
}
