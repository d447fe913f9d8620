//! `codelupe`: runs one stage against a Kafka cluster (`stage`), every stage in one
//! process (`run`, on an embedded broker by default), publishes topics from
//! topology.yaml (`topology`), fits the code tokenizer (`tokenizer train`),
//! prints a topic's records decoded (`tail`) and lists or replays dead letters
//! (`dead-letters`).

mod allocator;
mod dead_letters;
mod embedded;
mod live;
mod stages;
mod summary;
mod tail;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use codelupe_runtime::config::{Config, ConfigArgs};
use codelupe_runtime::descriptor::Bound;
use codelupe_runtime::kafka::{apply_topology, KafkaClients};
use codelupe_runtime::records::CodeFile;
use codelupe_runtime::topology::{Discovery, Topology};
use codelupe_runtime::StageRuntime;

#[derive(Parser)]
#[command(
    name = "codelupe",
    version,
    about = "A streaming pipeline from public repositories to a continuously trained code model"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every stage in one process: on an embedded broker, or on --brokers.
    Run {
        /// Kafka bootstrap servers; without them (and without kafka.brokers) an
        /// embedded broker is started in-process.
        #[arg(long)]
        brokers: Option<String>,
        /// Stop after this long (`90s`, `10m`, `2h`) instead of at Ctrl-C.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Port of the live page (the pipeline, lag per topic, skip reasons, loss curve).
        #[arg(long, default_value_t = 9080)]
        page_port: u16,
        /// Address the live page and every stage's metrics listen on: this machine
        /// only unless given (`0.0.0.0` for every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// Print a topic's records as JSON lines, decoded with the topic's Avro schema.
    /// Without --brokers (or kafka.brokers) it reads the embedded broker of the
    /// `codelupe run` running in this folder.
    Tail {
        topic: String,
        #[arg(long)]
        brokers: Option<String>,
        /// Start at each partition's first record (default: its last --max, or 10).
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records (default: follow until Ctrl-C).
        #[arg(long)]
        max: Option<u64>,
    },
    /// What the stages could not handle: list the dead letters, or publish chosen
    /// ones again to the topic they came from (after an outage, or a fix).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLettersAction,
    },
    /// Run one replica of one stage against a Kafka cluster.
    Stage {
        name: String,
        #[arg(long)]
        brokers: Option<String>,
        /// Source stages: one pass, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Validate, publish, or render scrape config from topology.yaml.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Sample from a trainer checkpoint: `codelupe generate --checkpoint DIR --prompt
    /// TEXT`, or `--prefix A --suffix B` to fill the middle. Runs codelupe-trainer's
    /// `generate` (see its --help for every option).
    #[command(disable_help_flag = true)]
    Generate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Score a checkpoint on HumanEval by running its completions in a sandbox:
    /// `--checkpoint DIR [--samples N --temperature T]` reports pass@k into the
    /// checkpoint's eval/ folder. Runs codelupe-trainer's `eval` (see its --help).
    #[command(disable_help_flag = true)]
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a trainer checkpoint as a Hugging Face model (LlamaForCausalLM) that
    /// transformers loads: config.json, model.safetensors, generation_config.json and
    /// the tokenizer.
    ExportHf {
        /// A checkpoint folder, or a checkpoint root (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The folder to write (created if missing).
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
    /// The code tokenizer: the batcher encodes with it, the trainer decodes with it.
    Tokenizer {
        #[command(subcommand)]
        action: TokenizerAction,
    },
}

#[derive(Subcommand)]
enum DeadLettersAction {
    /// One line per dead letter (when, stage, reason, origin, error) and counts.
    List {
        #[arg(long)]
        brokers: Option<String>,
        #[command(flatten)]
        selection: dead_letters::Selection,
    },
    /// Publish the selected letters' records again to their original topics, each only
    /// if it is the input of the stage that wrote the letter (topology.yaml).
    Replay {
        #[arg(long)]
        brokers: Option<String>,
        #[command(flatten)]
        selection: dead_letters::Selection,
        /// Say what would be replayed, publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TokenizerAction {
    /// Fit a byte-level BPE tokenizer (with the batcher's special tokens) on source
    /// files under folders, or on the first records of code-files, and write it.
    Train {
        /// Folders to read source files from (.gitignore respected); repeatable.
        #[arg(long = "from-dir", required_unless_present = "from_topic")]
        from_dirs: Vec<PathBuf>,
        /// Read the code-files topic instead, from --brokers or kafka.brokers.
        #[arg(long, conflicts_with = "from_dirs")]
        from_topic: bool,
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value_t = 32_768)]
        vocab_size: usize,
        /// At most this many files.
        #[arg(long, default_value_t = 50_000)]
        max_files: usize,
        #[arg(long, short, default_value = "tokenizer.json")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Validate the file: declared topics, schemas that parse, ports, replicas.
    Check,
    /// Create missing topics and grow partitions; report config drift. Idempotent.
    Apply {
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Print a Prometheus config scraping every stage (every replica, via DNS).
    Prometheus {
        /// Scrape HOST:port for each stage instead of discovering replicas by DNS.
        #[arg(long, value_name = "HOST")]
        static_host: Option<String>,
        /// Rule files to list in the config.
        #[arg(long = "rule-file")]
        rule_files: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    codelupe_runtime::telemetry::init_logging();
    codelupe_runtime::telemetry::report_heap_with(allocator::HeapCollector::boxed);
    // A process that runs one I/O-bound stage keeps no freed memory for reuse.
    let work = match &cli.command {
        Command::Stage { name, .. } => stages::entry(name).map_or(Bound::Cpu, |s| s.bound_by),
        _ => Bound::Cpu,
    };
    let runtime = match allocator::runtime(work) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Work stuck in a blocking call (a clone from a server that stopped sending, a
    // walk over a huge tree) was abandoned by the drain; dropping the runtime would
    // wait for it, and the process must end.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sampling and scoring need neither config nor topology: the trainer binary's
/// subcommand and arguments they hand over to.
fn trainer_command(command: &Command) -> Option<(&'static str, &Vec<String>)> {
    match command {
        Command::Generate { args } => Some(("generate", args)),
        Command::Eval { args } => Some(("eval", args)),
        _ => None,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Some((subcommand, args)) = trainer_command(&cli.command) {
        let mut command =
            std::process::Command::new(stages::find_binary(codelupe_trainer_api::BINARY)?);
        command.arg(subcommand).args(args);
        return Err(std::os::unix::process::CommandExt::exec(&mut command).into());
    }
    if let Command::ExportHf { checkpoint, out } = &cli.command {
        return export_hf(checkpoint, out);
    }
    let config = Config::load(cli.files.config.as_deref())?;
    let topology_path = cli
        .files
        .topology
        .clone()
        .unwrap_or_else(|| config.topology.clone());
    let topology = Topology::load(&topology_path)?;
    StageRuntime::check_stage_sections(&topology, &config)?;
    let setup = stages::Setup {
        topology_file: &topology_path,
        topology: &topology,
        config_file: cli.files.config.as_deref(),
        config: &config,
    };
    match cli.command {
        Command::Topology { action } => {
            topology_command(action, &config, &topology, &topology_path).await
        }
        Command::Tokenizer { action } => tokenizer_command(action, &config, &topology).await,
        Command::Stage {
            name,
            brokers,
            once,
        } => {
            let brokers = brokers.or(config.kafka.brokers.clone()).with_context(|| {
                format!("stage {name} needs Kafka: pass --brokers or set kafka.brokers (the embedded broker is for `codelupe run`)")
            })?;
            stages::run_one(&name, &brokers, once, setup).await
        }
        Command::Generate { .. } | Command::Eval { .. } | Command::ExportHf { .. } => {
            unreachable!("handled above")
        }
        Command::Run {
            brokers,
            duration,
            page_port,
            bind,
        } => {
            let options = embedded::RunOptions {
                brokers: brokers.or(config.kafka.brokers.clone()),
                limit: duration,
                page_port,
                bind,
            };
            let stop = codelupe_runtime::stage::shutdown_on_signal();
            embedded::run_all(options, setup, stop).await
        }
        Command::DeadLetters { action } => dead_letters_command(action, &config, &topology).await,
        Command::Tail {
            topic,
            brokers,
            from_beginning,
            max,
        } => {
            let clients = reader_clients(brokers, &config).await?;
            let options = tail::TailOptions {
                topic,
                from_beginning,
                max,
            };
            let stop = codelupe_runtime::stage::shutdown_on_signal();
            tail::tail(clients, &topology, options, stop).await
        }
    }
}

async fn dead_letters_command(
    action: DeadLettersAction,
    config: &Config,
    topology: &Topology,
) -> anyhow::Result<()> {
    let topic = &config.kafka.dead_letter_topic;
    match action {
        DeadLettersAction::List { brokers, selection } => {
            let clients = reader_clients(brokers, config).await?;
            dead_letters::list(&clients, topic, &selection).await
        }
        DeadLettersAction::Replay {
            brokers,
            selection,
            dry_run,
        } => {
            let clients = reader_clients(brokers, config).await?;
            dead_letters::replay(&clients, topology, topic, &selection, dry_run).await
        }
    }
}

async fn tokenizer_command(
    action: TokenizerAction,
    config: &Config,
    topology: &Topology,
) -> anyhow::Result<()> {
    let TokenizerAction::Train {
        from_dirs,
        from_topic,
        brokers,
        vocab_size,
        max_files,
        out,
    } = action;
    let sample = if from_topic {
        let brokers = brokers
            .or(config.kafka.brokers.clone())
            .context("--from-topic needs Kafka: pass --brokers or set kafka.brokers")?;
        let clients = KafkaClients::connect(&brokers, config).await?;
        let topic = topology
            .topic_of::<CodeFile>()
            .context("topology.yaml has no topic of code-files.avsc records")?;
        eprintln!("reading up to {max_files} files from {topic}…");
        codelupe_tokenizer::sample::from_topic(&clients, topic, max_files).await?
    } else {
        eprintln!("reading up to {max_files} source files…");
        codelupe_tokenizer::sample::from_dirs(&from_dirs, max_files)?
    };
    train_tokenizer(sample, vocab_size, &out).await
}

/// Clients for the commands that read topics: `--brokers`, `kafka.brokers`, or the
/// embedded broker of the `codelupe run` running in this folder.
/// `codelupe export-hf`: the checkpoint as a Hugging Face model, and what was written.
fn export_hf(checkpoint: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let checkpoint = codelupe_trainer_api::checkpoints::checkpoint_at(checkpoint)?;
    let exported = codelupe_trainer_api::hf::export(&checkpoint, out)?;
    println!(
        "{} (step {}) → {}: LlamaForCausalLM, {} parameters in {} tensors, context {}, in {:.1} s",
        checkpoint.display(),
        exported.step,
        out.display(),
        exported.parameters,
        exported.tensors,
        exported.context,
        started.elapsed().as_secs_f64()
    );
    println!(
        "load it: transformers.AutoModelForCausalLM.from_pretrained(\"{}\")",
        out.display()
    );
    Ok(())
}

async fn reader_clients(brokers: Option<String>, config: &Config) -> anyhow::Result<KafkaClients> {
    let brokers = tail::brokers(brokers.or(config.kafka.brokers.clone()))?;
    KafkaClients::connect(&brokers, config).await
}

async fn topology_command(
    action: TopologyAction,
    config: &Config,
    topology: &Topology,
    path: &Path,
) -> anyhow::Result<()> {
    match action {
        TopologyAction::Check => {
            println!(
                "{}: {} topics, {} stages: ok",
                path.display(),
                topology.topics.len(),
                topology.stages.len()
            );
            for topic in topology.unfed_inputs() {
                println!("note: no stage writes {topic}, which a stage reads");
            }
            Ok(())
        }
        TopologyAction::Apply { brokers } => {
            let Some(brokers) = brokers.or(config.kafka.brokers.clone()) else {
                bail!("topology apply needs Kafka: pass --brokers or set kafka.brokers");
            };
            let clients = KafkaClients::connect(&brokers, config).await?;
            let report = apply_topology(&clients, topology).await?;
            for name in &report.created {
                println!("created {name}");
            }
            for name in &report.grown {
                println!(
                    "grew {name} to {} partitions",
                    topology.topics[name].partitions
                );
            }
            for line in &report.drift {
                println!("drift: {line}");
            }
            if !report.changed() {
                println!("no changes: {} topics match", report.unchanged.len());
            }
            Ok(())
        }
        TopologyAction::Prometheus {
            static_host,
            rule_files,
        } => {
            let discovery = match static_host {
                Some(host) => Discovery::Static { host },
                None => Discovery::Dns { rule_files },
            };
            print!("{}", topology.prometheus_config(&discovery));
            Ok(())
        }
    }
}

/// Fits and writes the tokenizer, saying what it fits on and what it wrote.
pub(crate) async fn train_tokenizer(
    sample: codelupe_tokenizer::sample::Sample,
    vocab_size: usize,
    out: &Path,
) -> anyhow::Result<()> {
    eprintln!(
        "training a {vocab_size}-token byte-level BPE on {} files ({:.1} MiB)…",
        sample.texts.len(),
        sample.bytes as f64 / (1 << 20) as f64
    );
    let fitted = codelupe_tokenizer::fit(sample, vocab_size, out).await?;
    println!(
        "wrote {}: vocabulary {}, fingerprint {}, {:.2} bytes per token on the sample, {:.1} s",
        out.display(),
        fitted.vocab_size,
        fitted.fingerprint,
        fitted.bytes_per_token,
        fitted.seconds
    );
    Ok(())
}
