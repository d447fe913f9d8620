//! The whole LSH index in one place: every band of every file in one [`Shard`], files
//! ordered as they are judged. The stage splits the same index over shards by bucket
//! (`shard_of`); judged in one order, the two drop the same files.

use crate::minhash::{Params, Signature};
use crate::shard::{bucket_keys, representative, sketch, Order, Shard};

/// What the index makes of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Nothing like it before it: kept.
    Unique,
    /// The file is already indexed (a replay after a crash or a rebalance): it is
    /// judged as it was, never a duplicate of itself.
    Indexed,
    /// A near-duplicate of an earlier file (by content hash), with the estimated
    /// Jaccard similarity.
    NearDuplicate { of: String, similarity: f64 },
}

pub struct Index {
    params: Params,
    shard: Shard,
}

impl Index {
    pub fn new(params: Params) -> Self {
        Self {
            params,
            shard: Shard::new(params.threshold),
        }
    }

    /// Files indexed.
    pub fn len(&self) -> usize {
        self.shard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shard.is_empty()
    }

    /// Judges a file and indexes it.
    pub fn judge(&mut self, content_hash: &str, signature: &Signature) -> Judgement {
        if self.shard.contains(content_hash) {
            return Judgement::Indexed;
        }
        let order = Order {
            at_us: self.shard.len() as i64,
            content_hash: content_hash.to_string(),
        };
        let keys = bucket_keys(&self.params, signature);
        let probed = self.shard.probe(order, &keys, &sketch(signature));
        match representative(&probed.candidates) {
            Some(c) => Judgement::NearDuplicate {
                of: c.order.content_hash.clone(),
                similarity: c.similarity,
            },
            None => Judgement::Unique,
        }
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
        assert_eq!(index.len(), 3, "every file judged is indexed, kept or not");
    }
}
