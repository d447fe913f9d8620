//! MinHash signatures of code.
//!
//! Normalisation: a file is split into tokens at every character that is not a letter,
//! digit or underscore (so whitespace, punctuation and operators go, as in BigCode's
//! near-dedup), and tokens are lower-cased. Reformatting, re-indenting or re-quoting a
//! file leaves its shingles as they were; renaming an identifier or editing a line
//! changes the shingles that hold it. Shingles are runs of 5 consecutive tokens; a file
//! with fewer than 5 tokens is one shingle of all of them.
//!
//! A file's leading licence or copyright comment is left out (see
//! [`without_license_header`]): small files sharing a header would otherwise match on
//! it, not on their code.
//!
//! Each token is hashed once and each shingle is the hash of its 5 tokens' hashes
//! (xxh3, 64 bits); the 256 permutations are
//! multiply-add-shift hashes of that value (`(a·x + b) >> 32`, a odd, from a fixed
//! seed), the fastest family that is universal enough for MinHash. The permutations
//! are fixed by the seed, so every replica, restart and release makes the same
//! signature for the same text.

use xxhash_rust::xxh3::xxh3_64;

/// Permutations in a signature.
pub const PERMUTATIONS: usize = 256;

/// A file's MinHash signature: the least value of each permutation over its shingles.
pub type Signature = [u32; PERMUTATIONS];

/// How signatures are made and compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Tokens per shingle.
    pub shingle: usize,
    /// LSH bands × rows = PERMUTATIONS.
    pub bands: usize,
    pub rows: usize,
    /// Estimated Jaccard similarity from which a candidate is a near-duplicate.
    pub threshold: f64,
}

impl Default for Params {
    /// 32 bands of 8 rows: a pair becomes a candidate with probability 1 − (1 − s⁸)³²
    /// (0.12 at s = 0.5, 0.85 at 0.7, 0.997 at 0.8, 1.0 at 0.9). BigCode's 25 × 10
    /// minimises false candidates and misses of pure LSH at 0.7 (0.02 / 0.51 / 0.94);
    /// here every candidate is confirmed on its whole signature, so more candidates
    /// cost only time, and the recall at 0.8 rises from 0.94 to 0.997.
    fn default() -> Self {
        Self {
            shingle: 5,
            bands: 32,
            rows: 8,
            threshold: 0.7,
        }
    }
}

impl Params {
    /// The probability that a pair of Jaccard similarity `s` shares a band.
    pub fn candidate_probability(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// The permutations' (a, b), from a fixed seed by splitmix64, written out here because
/// signatures must compare across releases (a crate's generator may change its stream).
static PERMUTATION_KEYS: std::sync::LazyLock<([u64; PERMUTATIONS], [u64; PERMUTATIONS])> =
    std::sync::LazyLock::new(|| {
        let mut state: u64 = 0x636f_6465_6c75_7065; // "codelupe"
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut a = [0u64; PERMUTATIONS];
        let mut b = [0u64; PERMUTATIONS];
        for i in 0..PERMUTATIONS {
            a[i] = next() | 1;
            b[i] = next();
        }
        (a, b)
    });

/// The normalised tokens of a text.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// Line comment markers a licence header may be written with.
const LINE_COMMENTS: &[&str] = &["//", "#", "--", ";", "%"];

/// `text` without its leading licence or copyright comment: the first comment (after
/// blank lines and a `#!` line), a `/* … */` block or a run of line comments, when it
/// names a copyright, a licence or an SPDX identifier. The whole text when there is no
/// such comment or nothing but it.
pub fn without_license_header(text: &str) -> &str {
    let mut start = text.len() - text.trim_start().len();
    if text[start..].starts_with("#!") {
        start += text[start..]
            .find('\n')
            .map_or(text.len() - start, |i| i + 1);
        start += text[start..].len() - text[start..].trim_start().len();
    }
    let rest = &text[start..];
    let end = if rest.starts_with("/*") {
        rest.find("*/").map(|i| i + 2)
    } else {
        LINE_COMMENTS
            .iter()
            .find(|marker| rest.starts_with(*marker))
            .map(|marker| comment_lines_len(rest, marker))
    };
    let Some(end) = end else {
        return text;
    };
    let header = rest[..end].to_lowercase();
    let names_a_license = ["copyright", "licen", "spdx-license-identifier"]
        .iter()
        .any(|word| header.contains(word));
    let body = &rest[end..];
    if !names_a_license || tokens(body).next().is_none() {
        return text;
    }
    body
}

/// The length of the run of lines at the start of `text` that begin with `marker`
/// (after indentation).
fn comment_lines_len(text: &str, marker: &str) -> usize {
    text.split_inclusive('\n')
        .take_while(|line| line.trim_start().starts_with(marker))
        .map(str::len)
        .sum()
}

/// The hashes of a text's shingles (each distinct shingle once), its licence header
/// left out. Each token is hashed once and a shingle's hash is the hash of its tokens'
/// hashes, so no shingle's text is ever built.
pub fn shingle_hashes(text: &str, shingle: usize) -> Vec<u64> {
    let tokens: Vec<[u8; 8]> = tokens(without_license_header(text))
        .map(|t| xxh3_64(t.as_bytes()).to_le_bytes())
        .collect();
    let width = shingle.min(tokens.len()).max(1);
    let mut hashes: Vec<u64> = tokens
        .windows(width)
        .map(|w| xxh3_64(w.as_flattened()))
        .collect();
    if tokens.is_empty() {
        hashes.push(xxh3_64(b""));
    }
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// The signature of a set of shingle hashes.
pub fn signature_of(hashes: &[u64]) -> Signature {
    let (a, b) = &*PERMUTATION_KEYS;
    let mut signature = [u32::MAX; PERMUTATIONS];
    for &x in hashes {
        for i in 0..PERMUTATIONS {
            let v = (a[i].wrapping_mul(x).wrapping_add(b[i]) >> 32) as u32;
            signature[i] = signature[i].min(v);
        }
    }
    signature
}

/// The signature of a text.
pub fn signature(text: &str, params: &Params) -> Signature {
    signature_of(&shingle_hashes(text, params.shingle))
}

/// The share of permutations on which two signatures agree: an unbiased estimate of
/// the Jaccard similarity of their shingle sets.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / PERMUTATIONS as f64
}

/// The exact Jaccard similarity of two sorted, deduplicated hash sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "fn distance(a: &Point, b: &Point) -> f64 {\n    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()\n}\n";

    const APACHE: &str = "/*\n * Copyright (C) 2008 Google Inc.\n *\n * Licensed under the Apache License, Version 2.0 (the \"License\");\n * you may not use this file except in compliance with the License.\n * You may obtain a copy of the License at\n *\n *      http://www.apache.org/licenses/LICENSE-2.0\n *\n * Unless required by applicable law or agreed to in writing, software\n * distributed under the License is distributed on an \"AS IS\" BASIS,\n * WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.\n * See the License for the specific language governing permissions and\n * limitations under the License.\n */\n";

    #[test]
    fn the_leading_license_comment_is_left_out_and_nothing_else() {
        let body = "\n/** Type adapters for dates. */\npackage com.google.gson.internal.bind;\n";
        let java = format!("{APACHE}{body}");
        assert_eq!(
            without_license_header(&java).trim_start(),
            body.trim_start()
        );
        let python = "#!/usr/bin/env python3\n# SPDX-License-Identifier: MIT\n# (c) The authors\nimport os\n";
        assert_eq!(without_license_header(python), "import os\n");
        // Not a licence, not leading, or nothing after it: the text as it is.
        let documented = "/* Parses dates. */\nint parse(void);\n";
        assert_eq!(without_license_header(documented), documented);
        let include = "#include <stdio.h>\n/* Copyright 2020 */\nint x;\n";
        assert_eq!(without_license_header(include), include);
        assert_eq!(without_license_header(APACHE), APACHE);
    }

    #[test]
    fn small_files_sharing_only_a_license_header_do_not_match() {
        let file = |package: &str| {
            format!("{APACHE}\n/** Support classes for {package}. */\npackage com.google.gson.{package};\n")
        };
        let (a, b) = (file("annotations"), file("reflect"));
        let shingles = |text: &str| shingle_hashes(text, 5);
        assert!(jaccard(&shingles(&a), &shingles(&b)) < 0.3);
        // The same files with the header not leading: it is most of their shingles.
        let (a, b) = (format!("int x;\n{a}"), format!("int x;\n{b}"));
        assert!(jaccard(&shingles(&a), &shingles(&b)) > 0.8);
    }

    #[test]
    fn reformatting_leaves_the_shingles_and_renaming_changes_them() {
        let reformatted =
            "fn distance( a:&Point,b:&Point )->f64{((a.x-b.x).powi(2)+(a.y-b.y).powi(2)).sqrt()}";
        assert_eq!(shingle_hashes(CODE, 5), shingle_hashes(reformatted, 5));
        let renamed = CODE.replace("distance", "dist");
        assert!(jaccard(&shingle_hashes(CODE, 5), &shingle_hashes(&renamed, 5)) < 1.0);
    }

    #[test]
    fn the_signature_estimates_jaccard_within_its_error() {
        // Two sets with a known overlap: 600 shared hashes, 200 in each alone (J = 0.6).
        let shared: Vec<u64> = (0..600u64).map(|i| xxh3_64(&i.to_le_bytes())).collect();
        let only = |from: u64| (from..from + 200).map(|i| xxh3_64(&i.to_le_bytes()));
        let mut a: Vec<u64> = shared.iter().copied().chain(only(10_000)).collect();
        let mut b: Vec<u64> = shared.iter().copied().chain(only(20_000)).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert!((jaccard(&a, &b) - 0.6).abs() < 1e-9);
        let estimate = similarity(&signature_of(&a), &signature_of(&b));
        // Standard error sqrt(J(1-J)/256) = 0.031; four of them.
        assert!((estimate - 0.6).abs() < 0.125, "{estimate}");
        assert_eq!(similarity(&signature_of(&a), &signature_of(&a)), 1.0);
    }

    #[test]
    fn the_s_curve_of_the_default_bands() {
        let p = Params::default();
        assert_eq!(p.bands * p.rows, PERMUTATIONS);
        let at = |s| (p.candidate_probability(s) * 1000.0).round() / 1000.0;
        assert_eq!(
            (at(0.5), at(0.7), at(0.8), at(0.9)),
            (0.118, 0.85, 0.997, 1.0)
        );
    }
}
