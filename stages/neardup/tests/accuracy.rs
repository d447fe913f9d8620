//! Near-duplicate judgement against ground truth: real source files from the local
//! cargo registry, with planted near-duplicates of some (1–20% of lines edited,
//! identifiers renamed, reformatted, functions reordered), streamed through the index
//! in a shuffled order; the exact Jaccard similarity of every pair of files on the same
//! shingles, by brute force, says what should have been dropped.
//!
//! Asserts recall ≥ 0.95 on pairs with J ≥ 0.8 (the later of the pair is dropped) and
//! at most 0.5% of files with no partner above J 0.6 dropped; prints the confusion
//! table by each file's best earlier partner (the figures in the README).

use std::collections::HashMap;

use codelupe_neardup::minhash::{jaccard, shingle_hashes, signature_of};
use codelupe_neardup::{Index, Judgement, Params};
use codelupe_testkit::bench::CRATES;
use codelupe_testkit::{code_files, registry_crates};

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

/// Real files, planted variants of every third, in a shuffled order.
fn corpus() -> Vec<(String, String)> {
    let originals: Vec<String> = code_files(&registry_crates(CRATES), |p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("rs" | "c" | "py")
        )
    })
    .into_iter()
    .map(|f| f.content)
    .filter(|c| (1_000..30_000).contains(&c.len()) && c.lines().count() >= 30)
    .take(900)
    .collect();
    assert!(originals.len() >= 600, "{} files", originals.len());
    let mut rng = fastrand::Rng::with_seed(7);
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

#[test]
fn near_duplicates_are_dropped_as_exact_jaccard_says() {
    let files = corpus();
    let params = Params::default();
    let shingles: Vec<Vec<u64>> = files
        .iter()
        .map(|(_, t)| shingle_hashes(t, params.shingle))
        .collect();

    let mut index = Index::new(params);
    let dropped: Vec<bool> = files
        .iter()
        .zip(&shingles)
        .map(|((id, _), s)| {
            matches!(
                index.judge(id, &signature_of(s)),
                Judgement::NearDuplicate { .. }
            )
        })
        .collect();

    // Exact Jaccard of every pair; J ≤ |small| / |large| skips hopeless pairs.
    let n = files.len();
    let mut best_partner = vec![0.0f64; n];
    let mut best_earlier = vec![0.0f64; n];
    let (mut pairs_08, mut found_08) = (0, 0);
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (shingles[i].len(), shingles[j].len());
            if (a.min(b) as f64) < 0.5 * a.max(b) as f64 {
                continue;
            }
            let s = jaccard(&shingles[i], &shingles[j]);
            best_partner[i] = best_partner[i].max(s);
            best_partner[j] = best_partner[j].max(s);
            best_earlier[j] = best_earlier[j].max(s);
            if s >= 0.8 {
                pairs_08 += 1;
                found_08 += usize::from(dropped[j]);
            }
        }
    }

    let bands = [
        (0.9, 1.01),
        (0.8, 0.9),
        (0.7, 0.8),
        (0.6, 0.7),
        (0.5, 0.6),
        (0.0, 0.5),
    ];
    println!(
        "{n} files ({} planted variants)",
        files.iter().filter(|(id, _)| id.starts_with("var")).count()
    );
    println!("best earlier partner J   files  dropped  kept");
    for (lo, hi) in bands {
        let in_band: Vec<usize> = (0..n)
            .filter(|&i| best_earlier[i] >= lo && best_earlier[i] < hi)
            .collect();
        let d = in_band.iter().filter(|&&i| dropped[i]).count();
        let close = if hi > 1.0 { ']' } else { ')' };
        println!(
            "  [{lo:.1}, {:.1}{close}          {:>6}  {:>7}  {:>4}",
            hi.min(1.0),
            in_band.len(),
            d,
            in_band.len() - d
        );
    }
    // Each kind of planted variant: its Jaccard with its original, and how often
    // the later of the two was dropped.
    let position: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let kinds = [
        "1% lines",
        "5% lines",
        "10% lines",
        "20% lines",
        "renamed",
        "reformatted",
        "reordered",
    ];
    println!("planted variant   pairs  mean J  min J  later dropped");
    for (kind, name) in kinds.iter().enumerate() {
        let prefix = format!("var{kind}-");
        let pairs: Vec<(usize, usize)> = files
            .iter()
            .filter_map(|(id, _)| id.strip_prefix(&prefix).map(|i| (id, i)))
            .map(|(id, i)| {
                (
                    position[id.as_str()],
                    position[format!("orig-{i}").as_str()],
                )
            })
            .collect();
        let js: Vec<f64> = pairs
            .iter()
            .map(|&(v, o)| jaccard(&shingles[v], &shingles[o]))
            .collect();
        let later_dropped = pairs.iter().filter(|&&(v, o)| dropped[v.max(o)]).count();
        let mean = js.iter().sum::<f64>() / js.len().max(1) as f64;
        let min = js.iter().copied().fold(1.0, f64::min);
        println!(
            "  {name:<14} {:>6}  {mean:>6.3}  {min:>5.3}  {later_dropped:>6}",
            pairs.len()
        );
    }
    let recall = found_08 as f64 / pairs_08.max(1) as f64;
    let loners: Vec<usize> = (0..n).filter(|&i| best_partner[i] < 0.6).collect();
    let wrongly = loners.iter().filter(|&&i| dropped[i]).count();
    let wrong_share = wrongly as f64 / loners.len().max(1) as f64;
    println!("recall on {pairs_08} pairs with J >= 0.8: {recall:.3}");
    println!(
        "files with no partner above J 0.6: {}, dropped {wrongly} ({:.2}%)",
        loners.len(),
        wrong_share * 100.0
    );
    assert!(pairs_08 >= 100, "only {pairs_08} pairs with J >= 0.8");
    assert!(recall >= 0.95, "recall {recall:.3}");
    assert!(
        wrong_share <= 0.005,
        "{wrongly} of {} loners dropped",
        loners.len()
    );
}
