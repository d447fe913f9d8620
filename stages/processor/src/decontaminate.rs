//! Benchmark decontamination, as StarCoder's curation did it: a file holding an
//! evaluation benchmark's prompt or canonical solution is dropped (`decontaminated`),
//! so a score on that benchmark measures the model, not its memory of the answers.
//!
//! Benchmarks are JSON-lines files (gzipped or not), one problem a line; the string
//! fields named in `fields` are the texts looked for (HumanEval: `prompt` and
//! `canonical_solution`). A prompt is looked for from its last `def ` line on (the
//! target function's signature and docstring; the imports and helpers before it are
//! common code). Texts are compared normalised: every whitespace character removed and
//! single quotes read as double, so re-indenting, re-wrapping or re-quoting a copy
//! (what a formatter does) does not hide it. A text shorter than `min_chars` once
//! normalised is not looked for: `return a + b` is in every corpus.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecontaminationOptions {
    /// Benchmark files (`.jsonl` or `.jsonl.gz`); none: nothing is looked for.
    /// `setup/benchmarks.sh` fetches HumanEval's.
    pub benchmarks: Vec<PathBuf>,
    /// The fields of each line whose text is looked for.
    pub fields: Vec<String>,
    /// Texts shorter than this, normalised, are not looked for.
    pub min_chars: usize,
}

impl Default for DecontaminationOptions {
    fn default() -> Self {
        Self {
            benchmarks: Vec::new(),
            fields: vec!["prompt".into(), "canonical_solution".into()],
            min_chars: 40,
        }
    }
}

pub use codelupe_eval::benchmark::setup_dir;

/// The benchmark texts, normalised, in one automaton.
pub struct Benchmarks {
    matcher: Option<AhoCorasick>,
    /// Per pattern: `file:task` of the problem it came from.
    sources: Vec<String>,
}

impl Benchmarks {
    pub fn load(options: &DecontaminationOptions) -> anyhow::Result<Self> {
        let mut patterns = Vec::new();
        let mut sources = Vec::new();
        for path in &options.benchmarks {
            for (task, texts) in read_problems(path, &options.fields)? {
                for text in texts {
                    let pattern = normalise(looked_for(&text));
                    if pattern.len() >= options.min_chars {
                        patterns.push(pattern);
                        sources.push(format!("{}:{task}", path.display()));
                    }
                }
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&patterns).context("cannot build the benchmark matcher")?)
        };
        Ok(Self { matcher, sources })
    }

    /// Texts looked for.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The problem (`file:task`) whose text `content` holds, if any.
    pub fn find(&self, content: &str) -> Option<&str> {
        let matcher = self.matcher.as_ref()?;
        let found = matcher.find(&normalise(content))?;
        Some(&self.sources[found.pattern().as_usize()])
    }
}

/// A prompt from its last `def ` line on; other texts whole.
fn looked_for(text: &str) -> &str {
    let mut start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("def ") {
            start = Some(offset);
        }
        offset += line.len();
    }
    &text[start.unwrap_or(0)..]
}

/// Whitespace removed, single quotes read as double.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == '\'' { '"' } else { c })
        .collect()
}

/// (task id, texts of `fields`) for every line of a benchmark file.
pub fn read_problems(path: &Path, fields: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut problems = Vec::new();
    for (i, line) in codelupe_eval::benchmark::open_lines(path)?
        .lines()
        .enumerate()
    {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let task = ["task_id", "id", "name"]
            .iter()
            .find_map(|k| {
                value
                    .get(*k)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
            })
            .unwrap_or_else(|| format!("line {}", i + 1));
        let texts = fields
            .iter()
            .filter_map(|f| value.get(f)?.as_str().map(String::from))
            .collect();
        problems.push((task, texts));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const PROMPT: &str = "from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    \"\"\" You're given a list of deposit and withdrawal operations on a bank account that starts with\n    zero balance. Detect if at any point the balance falls below zero.\n    >>> below_zero([1, 2, 3])\n    False\n    \"\"\"\n";
    const SOLUTION: &str = "    balance = 0\n\n    for op in operations:\n        balance += op\n        if balance < 0:\n            return True\n\n    return False\n";

    fn benchmarks(dir: &Path) -> Benchmarks {
        let path = dir.join("bench.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for (id, prompt, solution) in [
            ("T/3", PROMPT, SOLUTION),
            (
                "T/23",
                "def strlen(string: str) -> int:\n",
                "    return len(string)\n",
            ),
        ] {
            let line = serde_json::json!({"task_id": id, "prompt": prompt, "canonical_solution": solution});
            writeln!(gz, "{line}").unwrap();
        }
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        Benchmarks::load(&DecontaminationOptions {
            benchmarks: vec![path],
            ..DecontaminationOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn copies_are_found_verbatim_reformatted_and_inside_bigger_files() {
        let dir = tempfile::tempdir().unwrap();
        let b = benchmarks(dir.path());
        // The prompt and the solution; strlen's are both too short to look for.
        assert_eq!(b.len(), 2);
        let verbatim = format!("{PROMPT}{SOLUTION}");
        assert!(b.find(&verbatim).unwrap().ends_with(":T/3"));
        // Re-indented to two spaces, re-quoted, the signature re-wrapped, no imports.
        let reformatted = verbatim
            .replace("from typing import List\n", "")
            .replace("    ", "  ")
            .replace("You're", "You\"re")
            .replace("(operations: List[int])", "(\n  operations: List[int]\n)");
        assert!(b.find(&reformatted).is_some(), "{reformatted}");
        let inside = format!("import os\n\nclass Bank:\n    pass\n\n{SOLUTION}\n\nprint(1)\n");
        assert!(b.find(&inside).is_some());
    }

    #[test]
    fn short_solutions_and_unrelated_code_are_not_matches() {
        let dir = tempfile::tempdir().unwrap();
        let b = benchmarks(dir.path());
        assert!(b
            .find("def strlen(string: str) -> int:\n    return len(string)\n")
            .is_none());
        assert!(b.find("fn main() { let balance = 0; }").is_none());
        assert!(Benchmarks::load(&DecontaminationOptions::default())
            .unwrap()
            .find(SOLUTION)
            .is_none());
    }

    #[test]
    fn a_missing_benchmark_file_names_the_set_up_step() {
        let options = DecontaminationOptions {
            benchmarks: vec!["/nonexistent/HumanEval.jsonl.gz".into()],
            ..DecontaminationOptions::default()
        };
        let err = format!("{:#}", Benchmarks::load(&options).err().unwrap());
        assert!(err.contains("setup/benchmarks.sh"), "{err}");
    }
}
