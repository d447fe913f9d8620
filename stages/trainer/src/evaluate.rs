//! `codelupe-trainer eval`: a checkpoint's completions of an execution benchmark's
//! prompts, each run against the problem's tests in the sandbox, scored as pass@k and
//! written into the checkpoint's folder (`eval/<benchmark>.json`). Given a completions
//! file instead, it scores those (another model's, or the canonical solutions).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use codelupe_eval::sandbox::{default_interpreter, Isolation, Limits, Sandbox};
use codelupe_eval::{Benchmark, Problem, Report};

use codelupe_trainer_api::checkpoints::eval_report;

use crate::checkpoint;
use crate::generate::{Generator, Sampling};
use crate::stage::choose_device;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder, or a checkpoint root (its newest checkpoint).
    #[arg(long, required_unless_present = "completions")]
    pub checkpoint: Option<PathBuf>,
    /// humaneval.
    #[arg(long, default_value = "humaneval")]
    pub benchmark: String,
    /// The benchmark's problems; default: where setup/benchmarks.sh puts them.
    #[arg(long)]
    pub problems: Option<PathBuf>,
    /// Only the first N problems.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Completions per problem (n of pass@k).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// 0: greedy (then one sample per problem is all there is).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 40)]
    pub top_k: i64,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Score this JSON-lines file of {task_id, completion} instead of generating.
    #[arg(long, conflicts_with = "checkpoint")]
    pub completions: Option<PathBuf>,
    /// The report; default: <checkpoint>/eval/<benchmark>.json.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Programs run at once.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seconds before a program is killed.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// The Python that runs the programs; default: the system's python3.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Intra-op threads for generation; 0: libtorch's default.
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Refuse to run programs unless the sandbox isolates fully (own user id, no
    /// network, read-only filesystems), as the trainer's background scoring does.
    #[arg(long)]
    pub require_isolation: bool,
}

/// Generates (or reads) the completions, runs them and writes the report.
pub fn run(args: &EvalArgs) -> anyhow::Result<Report> {
    let benchmark: Benchmark = args.benchmark.parse().map_err(anyhow::Error::msg)?;
    let problems_file = args
        .problems
        .clone()
        .unwrap_or_else(|| benchmark.setup_file());
    let mut problems = benchmark.load(&problems_file)?;
    problems.truncate(args.limit.unwrap_or(problems.len()));
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.samples > 1 && args.temperature <= 0.0 {
        bail!("greedy decoding (--temperature 0) makes every sample the same: give a temperature, or --samples 1");
    }
    let limits = Limits {
        wall: Duration::from_secs_f64(args.timeout),
        ..Limits::default()
    };
    let sandbox = Sandbox::new(
        &args.python.clone().unwrap_or_else(default_interpreter),
        limits,
    )?;
    refuse_limited(args.require_isolation, sandbox.isolation())?;
    eprintln!(
        "eval: {} problems of {}; sandbox: {}",
        problems.len(),
        benchmark.name(),
        sandbox.isolation()
    );
    let (completions, generated_by, checkpoint_dir) = match (&args.completions, &args.checkpoint) {
        (Some(file), _) => (
            codelupe_eval::read_completions(file, &problems)?,
            None,
            None,
        ),
        (None, Some(checkpoint)) => {
            let dir = codelupe_trainer_api::checkpoints::checkpoint_at(checkpoint)?;
            let (completions, about) = generate(args, benchmark, &problems, &dir)?;
            (completions, Some(about), Some(dir))
        }
        (None, None) => bail!("give --checkpoint or --completions"),
    };
    let started = Instant::now();
    let progress = |done: usize, total: usize, passed: usize| {
        if done == total || done.is_multiple_of((total / 10).max(1)) {
            eprintln!(
                "eval: ran {done}/{total} programs, {passed} passed ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let mut report = codelupe_eval::execute(
        benchmark,
        &problems,
        &completions,
        &sandbox,
        args.workers,
        &progress,
    )?;
    report.generated_by = generated_by;
    let out = match (&args.out, &checkpoint_dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => eval_report(dir, benchmark.name()),
        (None, None) => PathBuf::from(format!("{}-eval.json", benchmark.name())),
    };
    report.write(&out)?;
    eprintln!("eval: report in {}", out.display());
    Ok(report)
}

/// With `required`, an error unless `isolation` is full: generated code must not run
/// with the network and the filesystem in reach unless the user allowed it.
fn refuse_limited(required: bool, isolation: &Isolation) -> anyhow::Result<()> {
    match (required, isolation) {
        (true, Isolation::Limited { why }) => bail!(
            "the sandbox cannot isolate generated programs here ({why}): they would run with \
             rlimits only, with network and the filesystem in reach; run as root, or allow it \
             (stages.trainer.options.pass_at_k.allow_limited_sandbox)"
        ),
        _ => Ok(()),
    }
}

/// Where a checkpoint's report of `benchmark` goes.
pub fn report_path(checkpoint: &Path, benchmark: Benchmark) -> PathBuf {
    checkpoint
        .join("eval")
        .join(format!("{}.json", benchmark.name()))
}

/// `args.samples` completions of each problem's prompt, and how they were made.
fn generate(
    args: &EvalArgs,
    benchmark: Benchmark,
    problems: &[Problem],
    dir: &Path,
) -> anyhow::Result<(Vec<Vec<String>>, serde_json::Value)> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = choose_device(&args.device)?;
    let generator = Generator::load(dir, device)?;
    let state = checkpoint::read_state(dir)?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut completions = Vec::with_capacity(problems.len());
    for (i, problem) in problems.iter().enumerate() {
        let samples = (0..args.samples)
            .map(|s| {
                let sampling = Sampling {
                    max_tokens: args.max_tokens,
                    temperature: args.temperature,
                    top_k: args.top_k,
                    seed: args.seed + (i * args.samples + s) as i64,
                    device,
                };
                generator.complete(&problem.prompt, &sampling, benchmark.stop_sequences())
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("generating for {}", problem.task_id))?;
        completions.push(samples);
        if last_report.elapsed() >= Duration::from_secs(10) || i + 1 == problems.len() {
            last_report = Instant::now();
            eprintln!(
                "eval: generated for {}/{} problems ({:.0} s)",
                i + 1,
                problems.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let about = serde_json::json!({
        "checkpoint": dir.display().to_string(),
        "step": state.step,
        "samples": args.samples,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "generation_seconds": started.elapsed().as_secs_f64(),
    });
    Ok((completions, about))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_isolation_is_refused_only_when_full_isolation_is_required() {
        let limited = Isolation::Limited {
            why: "not root".into(),
        };
        let refused = refuse_limited(true, &limited).unwrap_err().to_string();
        assert!(refused.contains("(not root)"), "{refused}");
        assert!(refused.contains("allow_limited_sandbox"), "{refused}");
        refuse_limited(false, &limited).unwrap();
        refuse_limited(true, &Isolation::Full).unwrap();
    }
}
