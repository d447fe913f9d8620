//! Scoring each new checkpoint on an execution benchmark while training goes on: a
//! `codelupe-trainer eval` child process at low priority (so training keeps the
//! CPUs), one at a time; a checkpoint written meanwhile waits, and only the newest
//! waiting one is scored. Its report lands in the checkpoint's folder; the trainer
//! reads it back into its status, then `trainer_eval_pass_at_k{benchmark,k}`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use codelupe_eval::Benchmark;
use prometheus::GaugeVec;
use serde::Deserialize;

use codelupe_trainer_api::checkpoints::{eval_report, Score};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassAtKOptions {
    /// Score every new checkpoint (when the benchmark's problems are there).
    pub enabled: bool,
    /// humaneval.
    pub benchmark: String,
    /// The problems; default: where setup/benchmarks.sh puts them.
    pub problems: Option<PathBuf>,
    /// Only the first N problems (all when unset).
    pub limit: Option<usize>,
    /// Completions per problem; above 1, sampled at `temperature`.
    pub samples: usize,
    pub temperature: f64,
    pub max_tokens: usize,
    /// Programs run at once.
    pub workers: usize,
    /// The evaluating process's niceness: at 10 training ran at 0.96x beside it (the
    /// eval_cost bench); at 19 it hardly runs until training waits for input.
    pub niceness: i32,
    /// Its libtorch threads.
    pub threads: i32,
    /// Score even where the sandbox can only apply rlimits (not root): generated code
    /// would then run with the network and the filesystem in reach.
    pub allow_limited_sandbox: bool,
}

impl Default for PassAtKOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            benchmark: "humaneval".into(),
            problems: None,
            limit: None,
            samples: 1,
            temperature: 0.0,
            max_tokens: 256,
            workers: 1,
            niceness: 10,
            threads: 1,
            allow_limited_sandbox: false,
        }
    }
}

/// The running evaluation, the checkpoint waiting for the next, and the gauges.
pub struct Evaluator {
    options: PassAtKOptions,
    benchmark: Benchmark,
    problems: PathBuf,
    device: String,
    /// The `codelupe-trainer` binary (this one, in the stage).
    program: PathBuf,
    running: Option<(Child, PathBuf)>,
    waiting: Option<PathBuf>,
    gauge: GaugeVec,
}

/// What the trainer's status shows of the last report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    pub checkpoint: String,
    pub headline: String,
    /// pass@k by k, for the gauges.
    #[serde(skip)]
    pub pass_at_k: Vec<(String, f64)>,
}

impl Evaluator {
    /// None when disabled, or when the problems are missing (said once, here).
    pub fn new(
        options: &PassAtKOptions,
        program: PathBuf,
        device: String,
        gauge: GaugeVec,
    ) -> anyhow::Result<Option<Self>> {
        if !options.enabled {
            return Ok(None);
        }
        let benchmark: Benchmark = options.benchmark.parse().map_err(anyhow::Error::msg)?;
        let problems = options
            .problems
            .clone()
            .unwrap_or_else(|| benchmark.setup_file());
        if !problems.is_file() {
            tracing::warn!(
                problems = %problems.display(),
                "pass@k is off: no benchmark problems there (source setup/benchmarks.sh)"
            );
            return Ok(None);
        }
        Ok(Some(Self {
            options: options.clone(),
            benchmark,
            problems,
            device,
            program,
            running: None,
            waiting: None,
            gauge,
        }))
    }

    /// Whether an evaluation is running.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// A checkpoint was written: score it now, or when the running evaluation ends.
    pub fn offer(&mut self, checkpoint: &Path) {
        self.waiting = Some(checkpoint.to_path_buf());
        self.start_waiting();
    }

    /// Reads a finished evaluation's report and starts the waiting one.
    pub fn poll(&mut self) -> Option<Scored> {
        let (child, checkpoint) = self.running.as_mut()?;
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for the evaluation");
                return None;
            }
        };
        let checkpoint = checkpoint.clone();
        self.running = None;
        let scored = if status.success() {
            self.read_report(&checkpoint)
                .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "no pass@k report"))
                .ok()
        } else {
            // A checkpoint pruned while it was scored ends the evaluation this way too.
            tracing::warn!(checkpoint = %checkpoint.display(), %status,
                "the evaluation failed (its log is eval/ in the checkpoint)");
            None
        };
        self.start_waiting();
        scored
    }

    fn read_report(&self, checkpoint: &Path) -> anyhow::Result<Scored> {
        let path = eval_report(checkpoint, self.benchmark.name());
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let score: Score = serde_json::from_slice(&text)?;
        tracing::info!(checkpoint = %checkpoint.display(), scores = %score.describe(), "checkpoint scored");
        Ok(Scored {
            checkpoint: checkpoint.display().to_string(),
            headline: format!("{}: {}", self.benchmark.name(), score.describe()),
            pass_at_k: score.pass_at_k.into_iter().collect(),
        })
    }

    /// Sets the gauges to `scored`: called once the status shows it, so whoever sees
    /// a score on /metrics finds it on /status too.
    pub fn show(&self, scored: &Scored) {
        for (k, value) in &scored.pass_at_k {
            self.gauge
                .with_label_values(&[self.benchmark.name(), k])
                .set(*value);
        }
    }

    fn start_waiting(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some(checkpoint) = self.waiting.take() else {
            return;
        };
        match self.spawn(&checkpoint) {
            Ok(child) => self.running = Some((child, checkpoint)),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot start the evaluation"),
        }
    }

    fn spawn(&self, checkpoint: &Path) -> anyhow::Result<Child> {
        let o = &self.options;
        let log_dir = checkpoint.join("eval");
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!("{}.log", self.benchmark.name())))?;
        let mut command = Command::new(&self.program);
        command
            .arg("eval")
            .arg("--checkpoint")
            .arg(checkpoint)
            .arg("--benchmark")
            .arg(self.benchmark.name())
            .arg("--problems")
            .arg(&self.problems)
            .args(["--samples", &o.samples.to_string()])
            .args(["--temperature", &o.temperature.to_string()])
            .args(["--max-tokens", &o.max_tokens.to_string()])
            .args(["--workers", &o.workers.to_string()])
            .args(["--threads", &o.threads.to_string()])
            .args(["--device", &self.device])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(limit) = o.limit {
            command.args(["--limit", &limit.to_string()]);
        }
        if !o.allow_limited_sandbox {
            command.arg("--require-isolation");
        }
        let niceness = o.niceness;
        // SAFETY: setpriority and prctl are plain system calls.
        unsafe {
            command.pre_exec(move || {
                libc::setpriority(libc::PRIO_PROCESS, 0, niceness);
                // It dies with the trainer rather than scoring on as an orphan.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            })
        };
        Ok(command.spawn()?)
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
