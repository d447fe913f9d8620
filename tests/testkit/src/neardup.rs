//! Corpora with planted near-duplicates: real files and edited copies of some, for the
//! near-duplicate tests (against exact Jaccard, and through the stream stage).

use std::collections::HashMap;

use crate::bench::CRATES;
use crate::{code_files, registry_crates};

/// `share` of the lines (at least one) edited: changed, deleted, or a new line added.
fn edit_lines(text: &str, share: f64, rng: &mut fastrand::Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let edits = ((lines.len() as f64 * share).round() as usize).max(1);
    for e in 0..edits {
        let at = rng.usize(..lines.len());
        match e % 3 {
            0 => lines[at] = format!("{} // revised {e}", lines[at]),
            1 if lines.len() > 1 => {
                lines.remove(at);
            }
            _ => lines.insert(at, format!("    let extra_{e} = compute_value({e});")),
        }
    }
    lines.join("\n")
}

/// The three most frequent identifiers (of 4+ characters) renamed everywhere.
fn rename_identifiers(text: &str) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if word.len() >= 4 && word.starts_with(|c: char| c.is_alphabetic()) {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut top: Vec<(&str, usize)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = text.to_string();
    for (k, (word, _)) in top.iter().take(3).enumerate() {
        out = replace_word(&out, word, &format!("renamed_{k}"));
    }
    out
}

/// `word` replaced where it stands as a whole token.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_alphanumeric() || c == '_' {
            token.push(c);
            continue;
        }
        out.push_str(if token == word { with } else { &token });
        token.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

/// Two-space indents, spaces after commas and around parentheses.
fn reformat(text: &str) -> String {
    text.lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let body = l.trim_start().replace(", ", ",").replace(',', ", ");
            format!("{}{}", " ".repeat(indent / 2), body.replace('(', "( "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The blocks between blank lines in reverse order.
fn reorder_blocks(text: &str) -> String {
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.reverse();
    blocks.join("\n\n")
}

fn variant(kind: usize, text: &str, rng: &mut fastrand::Rng) -> String {
    match kind {
        0 => edit_lines(text, 0.01, rng),
        1 => edit_lines(text, 0.05, rng),
        2 => edit_lines(text, 0.10, rng),
        3 => edit_lines(text, 0.20, rng),
        4 => rename_identifiers(text),
        5 => reformat(text),
        _ => reorder_blocks(text),
    }
}

/// Up to `originals` real files from the crates in `CRATES` (Rust, C and Python, 1–30 kB,
/// 30+ lines), a planted variant of every third (1, 5, 10 or 20% of lines edited,
/// identifiers renamed, reformatted or blocks reordered, in turn), in an order shuffled
/// by `seed`: (id, text), ids `orig-N` and `varK-N` (K the kind of edit).
pub fn planted_near_duplicates(originals: usize, seed: u64) -> Vec<(String, String)> {
    let originals: Vec<String> = code_files(&registry_crates(CRATES), |p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("rs" | "c" | "py")
        )
    })
    .into_iter()
    .map(|f| f.content)
    .filter(|c| (1_000..30_000).contains(&c.len()) && c.lines().count() >= 30)
    .take(originals)
    .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut files: Vec<(String, String)> = Vec::new();
    for (i, text) in originals.iter().enumerate() {
        files.push((format!("orig-{i}"), text.clone()));
        if i % 3 == 0 {
            let kind = (i / 3) % 7;
            files.push((format!("var{kind}-{i}"), variant(kind, text, &mut rng)));
        }
    }
    for i in (1..files.len()).rev() {
        files.swap(i, rng.usize(..=i));
    }
    files
}
