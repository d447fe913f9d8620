//! Near-duplicate judgement against ground truth: real source files from the local
//! cargo registry, with planted near-duplicates of some (1–20% of lines edited,
//! identifiers renamed, reformatted, functions reordered), streamed through the index
//! in a shuffled order; the exact Jaccard similarity of every pair of files on the same
//! shingles, by brute force, says what should have been dropped.
//!
//! Asserts recall ≥ 0.95 on pairs with J ≥ 0.8 (the later of the pair is dropped) and
//! at most 0.5% of files with no partner above J 0.6 dropped; prints the confusion
//! table by each file's best earlier partner (the figures in docs/src/stages/neardup.md).

use std::collections::HashMap;

use codelupe_neardup::minhash::{jaccard, shingle_hashes, signature_of};
use codelupe_neardup::{Index, Judgement, Params};
use codelupe_testkit::neardup::planted_near_duplicates;

#[test]
fn near_duplicates_are_dropped_as_exact_jaccard_says() {
    let files = planted_near_duplicates(900, 7);
    assert!(files.len() >= 800, "{} files", files.len());
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
