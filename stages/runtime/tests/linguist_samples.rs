//! GitHub Linguist's own `samples/` folder as ground truth for `language::of_file`:
//! each sample sits in a folder named for its language. The samples are Linguist's, not
//! ours, so none is committed: check out github-linguist/linguist and run
//!
//! ```text
//! LINGUIST_SAMPLES=path/to/linguist/samples \
//!   cargo test -p codelupe-runtime --test linguist_samples -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use codelupe_runtime::language::{self, Kept};

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

#[derive(Default)]
struct Tally {
    right: usize,
    wrong: Vec<String>,
}

#[test]
#[ignore = "needs Linguist's samples: LINGUIST_SAMPLES=…/linguist/samples"]
fn linguist_samples_are_labelled_as_linguist_labels_them() {
    let root = PathBuf::from(std::env::var("LINGUIST_SAMPLES").expect("LINGUIST_SAMPLES"));
    let kept = Kept::default();
    let mut by_language: BTreeMap<String, Tally> = BTreeMap::new();
    for (language, path) in samples(&root) {
        let bytes = std::fs::read(&path).expect("sample");
        let text = String::from_utf8_lossy(&bytes);
        let name = path.file_name().unwrap().to_string_lossy();
        let got = language::of_file(&name, &text);
        let tally = by_language.entry(language.clone()).or_default();
        if got == Some(language.as_str()) {
            tally.right += 1;
        } else {
            tally.wrong.push(format!("{name} → {got:?}"));
        }
    }
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
    assert!(kept_share >= GOAL, "{kept_share:.4} below {GOAL}");
}
