//! GitHub Linguist's own `samples/` folder as ground truth for `language::of_file`:
//! each sample sits in a folder named for its language. The samples are Linguist's, not
//! ours, so none is committed. The compiled-in classifier was trained on (an earlier
//! copy of) these very samples, so its share flatters it; the share the goal is held to
//! is measured as Linguist measures its own (cross-validation): a classifier trained
//! here on every sample but the one being labelled. Check out github-linguist/linguist
//! and run
//!
//! ```text
//! LINGUIST_SAMPLES=path/to/linguist/samples \
//!   cargo test -p codelupe-runtime --test linguist_samples -- --ignored --nocapture
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use codelupe_runtime::language::{self, tokenize, Classifier, Kept};

/// Share of samples of kept languages that must be labelled as Linguist labels them.
const GOAL: f64 = 0.99;

/// A samples folder's language: its folder name, or the language whose `fs_name` it is.
fn language_of_folder(folder: &str) -> String {
    linguist::definitions::LANGUAGES
        .iter()
        .find(|(_, l)| l.fs_name.as_deref() == Some(folder))
        .map_or_else(|| folder.to_string(), |(name, _)| name.clone())
}

/// Every sample with its language: files in a language's folder and in its
/// `filenames/` folder (where the file name is what identifies it).
fn samples(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut folders: Vec<_> = std::fs::read_dir(root)
        .expect("LINGUIST_SAMPLES is a folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for folder in folders {
        let language = language_of_folder(&folder.file_name().unwrap().to_string_lossy());
        for dir in [folder.clone(), folder.join("filenames")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("entry").path();
                if path.is_file() {
                    found.push((language.clone(), path));
                }
            }
        }
    }
    found.sort();
    found
}

/// Token counts of every sample, as go-enry's generator counts them for its tables.
#[derive(Default)]
struct Counts {
    samples: HashMap<String, u32>,
    tokens: HashMap<String, HashMap<Vec<u8>, u32>>,
    language_tokens: HashMap<String, u64>,
    all_samples: u32,
    all_tokens: u64,
}

impl Counts {
    fn add(&mut self, language: &str, tokens: &[Vec<u8>]) {
        *self.samples.entry(language.to_string()).or_default() += 1;
        *self
            .language_tokens
            .entry(language.to_string())
            .or_default() += tokens.len() as u64;
        let counts = self.tokens.entry(language.to_string()).or_default();
        for token in tokens {
            *counts.entry(token.clone()).or_default() += 1;
        }
        self.all_samples += 1;
        self.all_tokens += tokens.len() as u64;
    }
}

/// go-enry's naive Bayes over `counts` less one sample: the classifier Linguist's
/// cross-validation asks about that sample.
struct LeaveOneOut<'a> {
    counts: &'a Counts,
    language: &'a str,
    held: HashMap<&'a [u8], u32>,
    held_len: u64,
}

impl<'a> LeaveOneOut<'a> {
    fn new(counts: &'a Counts, language: &'a str, tokens: &'a [Vec<u8>]) -> Self {
        let mut held = HashMap::new();
        for token in tokens {
            *held.entry(token.as_slice()).or_default() += 1;
        }
        let held_len = tokens.len() as u64;
        LeaveOneOut {
            counts,
            language,
            held,
            held_len,
        }
    }
}

impl Classifier for LeaveOneOut<'_> {
    fn score(&self, tokens: &[Vec<u8>], language: &str) -> Option<f64> {
        let c = self.counts;
        let own = language == self.language;
        let samples = c.samples.get(language)? - u32::from(own);
        if samples == 0 {
            return None;
        }
        let language_tokens = c.language_tokens[language] - if own { self.held_len } else { 0 };
        let unseen = (1.0 / (c.all_tokens - self.held_len) as f64).ln();
        let counted = &c.tokens[language];
        let likelihood: f64 = tokens
            .iter()
            .map(|token| {
                let mut n = counted.get(token).copied().unwrap_or(0);
                if own {
                    n -= self.held.get(token.as_slice()).copied().unwrap_or(0);
                }
                if n == 0 {
                    unseen
                } else {
                    (f64::from(n) / language_tokens as f64).ln()
                }
            })
            .sum();
        Some((f64::from(samples) / f64::from(c.all_samples - 1)).ln() + likelihood)
    }
}

#[derive(Default)]
struct Tally {
    right: usize,
    wrong: Vec<String>,
}

struct Sample {
    language: String,
    name: String,
    text: String,
    tokens: Vec<Vec<u8>>,
}

/// Each language's right and wrong labels by `label`.
fn tally(
    samples: &[Sample],
    label: impl Fn(&Sample) -> Option<&'static str>,
) -> BTreeMap<String, Tally> {
    let mut by_language: BTreeMap<String, Tally> = BTreeMap::new();
    for sample in samples {
        let got = label(sample);
        let tally = by_language.entry(sample.language.clone()).or_default();
        if got == Some(sample.language.as_str()) {
            tally.right += 1;
        } else {
            tally.wrong.push(format!("{} → {got:?}", sample.name));
        }
    }
    by_language
}

/// Prints the misses and both shares; gives the share of languages kept by default.
fn report(title: &str, by_language: &BTreeMap<String, Tally>, kept: &Kept) -> f64 {
    let share = |tallies: &[(&String, &Tally)]| {
        let right: usize = tallies.iter().map(|(_, t)| t.right).sum();
        let all: usize = tallies.iter().map(|(_, t)| t.right + t.wrong.len()).sum();
        (right, all, right as f64 / all.max(1) as f64)
    };
    let all: Vec<_> = by_language.iter().collect();
    let kept_only: Vec<_> = all
        .iter()
        .copied()
        .filter(|(language, _)| kept.keeps(language))
        .collect();
    println!("== {title}");
    for (language, tally) in &all {
        if !tally.wrong.is_empty() {
            let mark = if kept.keeps(language) {
                "kept"
            } else {
                "not kept"
            };
            println!(
                "{language} ({mark}): {}/{} — {}",
                tally.right,
                tally.right + tally.wrong.len(),
                tally.wrong.join("; ")
            );
        }
    }
    let (right, total, overall) = share(&all);
    println!("all languages: {right}/{total} = {:.2}%", overall * 100.0);
    let (right, total, kept_share) = share(&kept_only);
    println!(
        "languages kept by default ({}): {right}/{total} = {:.2}%",
        kept_only.len(),
        kept_share * 100.0
    );
    kept_share
}

#[test]
#[ignore = "needs Linguist's samples: LINGUIST_SAMPLES=…/linguist/samples"]
fn linguist_samples_are_labelled_as_linguist_labels_them() {
    let root = PathBuf::from(std::env::var("LINGUIST_SAMPLES").expect("LINGUIST_SAMPLES"));
    let kept = Kept::default();
    let mut counts = Counts::default();
    let samples: Vec<Sample> = samples(&root)
        .into_iter()
        .map(|(language, path)| {
            let bytes = std::fs::read(&path).expect("sample");
            let tokens = tokenize(&bytes);
            counts.add(&language, &tokens);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Sample {
                language,
                name,
                text,
                tokens,
            }
        })
        .collect();
    let shipped = tally(&samples, |s| language::of_file(&s.name, &s.text));
    report(
        "the compiled-in classifier (trained on these samples)",
        &shipped,
        &kept,
    );
    let held_out = tally(&samples, |s| {
        let classifier = LeaveOneOut::new(&counts, &s.language, &s.tokens);
        language::of_file_with(&s.name, &s.text, &classifier)
    });
    let share = report("each sample left out of the training", &held_out, &kept);
    assert!(share >= GOAL, "{share:.4} below {GOAL}");
}
