//! `codelupe-trainer`: the trainer stage (`stage`) and sampling from its checkpoints
//! (`generate`) and scoring them on an execution benchmark (`eval`). `codelupe stage trainer` and `codelupe generate` run this binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use codelupe_runtime::config::{Config, ConfigArgs};
use codelupe_runtime::topology::Topology;
use codelupe_trainer::evaluate::EvalArgs;
use codelupe_trainer::generate::{Generator, Prompt, Sampling};
use codelupe_trainer::stage::choose_device;

#[derive(Parser)]
#[command(
    name = "codelupe-trainer",
    version,
    about = "CodeLupe's trainer stage and sampler"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train from training-batches until SIGTERM (checkpointing on the way out).
    Stage {
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Complete a prompt, or fill the middle between --prefix and --suffix.
    Generate {
        /// A checkpoint folder, or a checkpoint root (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, required_unless_present = "prefix", conflicts_with = "prefix")]
        prompt: Option<String>,
        #[arg(long, requires = "suffix")]
        prefix: Option<String>,
        #[arg(long, requires = "prefix")]
        suffix: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 for greedy decoding.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        #[arg(long, default_value_t = 40)]
        top_k: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Score a checkpoint on an execution benchmark (pass@k), running every completion
    /// in a sandbox.
    Eval(EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    codelupe_runtime::telemetry::init_logging();
    let result = match cli.command {
        Command::Generate {
            checkpoint,
            prompt,
            prefix,
            suffix,
            max_tokens,
            temperature,
            top_k,
            seed,
            device,
        } => generate(
            checkpoint,
            match (prompt, prefix, suffix) {
                (Some(prompt), _, _) => Prompt::Complete(prompt),
                (None, Some(prefix), Some(suffix)) => Prompt::FillMiddle { prefix, suffix },
                _ => unreachable!("clap requires a prompt or a prefix and suffix"),
            },
            max_tokens,
            temperature,
            top_k,
            seed,
            &device,
        ),
        Command::Eval(args) => codelupe_trainer::evaluate::run(&args).map(|report| {
            println!("{}", report.headline());
        }),
        Command::Stage { brokers } => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|runtime| {
                let result = runtime.block_on(stage(cli.files.config, cli.files.topology, brokers));
                // A step still running on a blocking thread must not hold the exit.
                runtime.shutdown_background();
                result
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stage(
    config: Option<PathBuf>,
    topology: Option<PathBuf>,
    brokers: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let topology = Topology::load(&topology.unwrap_or_else(|| config.topology.clone()))?;
    let brokers = brokers
        .or(config.kafka.brokers.clone())
        .context("the trainer needs Kafka: pass --brokers or set kafka.brokers")?;
    codelupe_runtime::stage::run_stage(
        codelupe_trainer::STAGE,
        &brokers,
        &topology,
        &config,
        false,
        codelupe_trainer::stage::run,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
fn generate(
    checkpoint: PathBuf,
    prompt: Prompt,
    max_tokens: usize,
    temperature: f64,
    top_k: i64,
    seed: i64,
    device: &str,
) -> anyhow::Result<()> {
    let device = choose_device(device)?;
    let generator = Generator::load(&checkpoint, device)?;
    let text = generator.generate(
        &prompt,
        &Sampling {
            max_tokens,
            temperature,
            top_k,
            seed,
            device,
        },
    )?;
    println!("{text}");
    Ok(())
}
