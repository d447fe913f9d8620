//! A table of real files and the language GitHub Linguist's data gives each
//! (`languages.tsv`): the processor's detection must agree on every one.

use std::path::PathBuf;
use std::process::Command;

use codelupe_processor::notebook::NOTEBOOK;
use codelupe_processor::select::{self, PathVerdict};
use codelupe_runtime::labels::LabelSet;
use codelupe_runtime::language;
use codelupe_testkit::{registry_crates, stdout_of};

const TABLE: &str = include_str!("languages.tsv");

/// The folder a row's source names: a crate of the cargo registry, or the
/// site-packages of the torch venv, whose Python setup/torch.sh puts first on PATH.
fn root(source: &str) -> PathBuf {
    if let Some(prefix) = source.strip_prefix("crate:") {
        return registry_crates(&[prefix])
            .pop()
            .unwrap_or_else(|| panic!("{prefix} not in the cargo registry (cargo fetch)"));
    }
    assert_eq!(source, "torch", "unknown source {source}");
    let torch = stdout_of(Command::new("python").args([
        "-c",
        "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))",
    ]));
    PathBuf::from(torch.trim())
}

#[test]
fn real_files_get_the_language_linguists_data_gives_them() {
    let rows: Vec<Vec<&str>> = TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    let mut disagreements = Vec::new();
    let mut languages = std::collections::BTreeMap::<&str, usize>::new();
    let mut roots = std::collections::BTreeMap::new();
    for row in &rows {
        let [source, path, expected] = row[..] else {
            panic!("a row is source, path, language: {row:?}");
        };
        let file = roots
            .entry(source)
            .or_insert_with(|| root(source))
            .join(path);
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let got = language::of_file(path, &String::from_utf8_lossy(&bytes));
        if got != Some(expected) {
            disagreements.push(format!("{source} {path}: {got:?}, Linguist {expected}"));
        }
        *languages.entry(expected).or_default() += 1;
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    assert!(rows.len() >= 300, "{} rows", rows.len());
    assert!(languages.len() >= 40, "{} languages", languages.len());
    let headers = |language: &str| {
        rows.iter()
            .filter(|r| r[1].ends_with(".h") && r[2] == language)
            .count()
    };
    assert!(
        headers("C") >= 10 && headers("C++") >= 10,
        "C and C++ libraries' headers"
    );
}

/// What the processor's language steps make of whole repositories: each file's path
/// verdict, then its language by content, counted per language and per skip reason,
/// with the files no language claims listed. Measure with any clones:
///
/// ```text
/// LANGUAGE_REPOS=path/to/ripgrep.git:path/to/flask.git \
///   cargo test -p codelupe-processor --test languages -- --ignored --nocapture
/// ```
#[test]
#[ignore = "needs repositories: LANGUAGE_REPOS=a.git:b.git"]
fn languages_of_repositories() {
    let repos = std::env::var("LANGUAGE_REPOS").expect("LANGUAGE_REPOS");
    let kept = language::Kept::default();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut unknown = Vec::new();
    for dir in repos.split(':') {
        let repo = git2::Repository::open(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let tree = repo.head().unwrap().peel_to_tree().unwrap();
        tree.walk(git2::TreeWalkMode::PreOrder, |folder, entry| {
            let Ok(blob) = entry.to_object(&repo).and_then(|o| o.peel_to_blob()) else {
                return git2::TreeWalkResult::Ok;
            };
            let path = format!("{folder}{}", entry.name().unwrap_or_default());
            let text = String::from_utf8_lossy(blob.content());
            let outcome = match select::by_path(&path, &kept) {
                PathVerdict::Keep(Some(NOTEBOOK)) => NOTEBOOK.to_string(),
                PathVerdict::Keep(_) => match select::by_content(&path, &text, &kept) {
                    Ok(language) => language.to_string(),
                    Err(reason) => reason.label().to_string(),
                },
                PathVerdict::Skip(reason) => reason.label().to_string(),
            };
            // Which language the selection left out.
            let outcome = match outcome.as_str() {
                "language_not_kept" | "too_large" => {
                    let language = language::of_file(&path, &text).unwrap_or("?");
                    format!("{outcome}: {language}")
                }
                _ => outcome,
            };
            if outcome == "unknown_language" {
                unknown.push(format!("{dir}: {path}"));
            }
            *counts.entry(outcome).or_default() += 1;
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    }
    println!("{unknown:#?}");
    for (outcome, n) in &counts {
        println!("{n:6} {outcome}");
    }
    println!("{:6} files", counts.values().sum::<usize>());
}
