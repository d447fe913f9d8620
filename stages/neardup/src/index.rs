//! The LSH index: each file's signature cut into bands, each band's rows hashed to a
//! bucket; files sharing a bucket are candidates, and a candidate whose signature
//! agrees on at least `threshold` of the permutations is a near-duplicate. First seen
//! wins: a file judged a near-duplicate is not indexed, so a cluster keeps one
//! representative, the file that came first.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::minhash::{similarity, Params, Signature};

/// What the index makes of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Nothing like it indexed: it is now its cluster's representative.
    Unique,
    /// The file is already indexed (a replay after a crash or a rebalance): it is its
    /// own representative, not a duplicate of itself.
    Indexed,
    /// A near-duplicate of an indexed file (by content hash), with the estimated
    /// Jaccard similarity.
    NearDuplicate { of: String, similarity: f64 },
}

struct Representative {
    content_hash: String,
    signature: Box<Signature>,
}

/// Representatives and their band buckets.
pub struct Index {
    params: Params,
    /// Bucket key (band and the hash of its rows) → representative.
    buckets: HashMap<u64, u32>,
    representatives: Vec<Representative>,
    by_content_hash: HashMap<String, u32>,
}

impl Index {
    pub fn new(params: Params) -> Self {
        Self {
            params,
            buckets: HashMap::new(),
            representatives: Vec::new(),
            by_content_hash: HashMap::new(),
        }
    }

    /// Representatives indexed.
    pub fn len(&self) -> usize {
        self.representatives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.representatives.is_empty()
    }

    /// The bucket keys of a signature, one per band.
    pub fn bucket_keys(params: &Params, signature: &Signature) -> Vec<u64> {
        let bytes: Vec<u8> = signature.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes
            .chunks(params.rows * 4)
            .take(params.bands)
            .enumerate()
            .map(|(band, rows)| xxh3_64_with_seed(rows, band as u64))
            .collect()
    }

    /// Judges a file and, when it is unique, indexes it.
    pub fn judge(&mut self, content_hash: &str, signature: &Signature) -> Judgement {
        if self.by_content_hash.contains_key(content_hash) {
            return Judgement::Indexed;
        }
        let keys = Self::bucket_keys(&self.params, signature);
        let mut best: Option<(u32, f64)> = None;
        let mut seen = Vec::new();
        for slot in keys.iter().filter_map(|k| self.buckets.get(k)) {
            if seen.contains(slot) {
                continue;
            }
            seen.push(*slot);
            let s = similarity(&self.representatives[*slot as usize].signature, signature);
            if s >= self.params.threshold && best.is_none_or(|(_, b)| s > b) {
                best = Some((*slot, s));
            }
        }
        if let Some((slot, similarity)) = best {
            let of = self.representatives[slot as usize].content_hash.clone();
            return Judgement::NearDuplicate { of, similarity };
        }
        let slot = self.representatives.len() as u32;
        self.representatives.push(Representative {
            content_hash: content_hash.to_string(),
            signature: Box::new(*signature),
        });
        self.by_content_hash.insert(content_hash.to_string(), slot);
        for key in keys {
            self.buckets.entry(key).or_insert(slot);
        }
        Judgement::Unique
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minhash::signature;

    const FILE: &str = "use std::collections::HashMap;\n\n/// Counts words.\npub fn count(text: &str) -> HashMap<String, usize> {\n    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n        *counts.entry(word.to_lowercase()).or_insert(0) += 1;\n    }\n    counts\n}\n\n/// The most frequent word.\npub fn top(counts: &HashMap<String, usize>) -> Option<&str> {\n    counts.iter().max_by_key(|(_, n)| **n).map(|(w, _)| w.as_str())\n}\n";

    #[test]
    fn the_first_seen_wins_and_a_replay_is_not_its_own_duplicate() {
        let p = Params::default();
        let mut index = Index::new(p);
        let edited = FILE.replace("Counts words.", "Counts the words of a text.");
        assert_eq!(index.judge("a", &signature(FILE, &p)), Judgement::Unique);
        match index.judge("b", &signature(&edited, &p)) {
            Judgement::NearDuplicate { of, similarity } => {
                assert_eq!(of, "a");
                assert!((0.7..1.0).contains(&similarity), "{similarity}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(index.judge("a", &signature(FILE, &p)), Judgement::Indexed);
        let other = "def mean(values):\n    return sum(values) / len(values)\n\n\nclass Counter:\n    def __init__(self):\n        self.count = 0\n";
        assert_eq!(index.judge("c", &signature(other, &p)), Judgement::Unique);
        assert_eq!(index.len(), 2);
    }
}
