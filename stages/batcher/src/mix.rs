//! The mixture: how many of each language's documents are trained on, and in what
//! order they reach the packers. Files arrive grouped (a crawl window of one language,
//! then the next; a repository's files together), so a partition's documents are held
//! in a bounded buffer and let out in a seeded random order, which breaks those runs
//! up within the buffer's span. Every choice is drawn from the seed and content hashes
//! alone, so the same input makes the same batches on every replay.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::pack::{Packed, Packer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixOptions {
    /// Documents held per input partition and split before one is let out at random;
    /// 0: in arrival order. Memory: this many documents' tokens per partition.
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// The share (0 to 1) of a language's documents kept, chosen by content hash;
    /// languages not named keep every document.
    pub language_weights: BTreeMap<String, f64>,
}

impl Default for MixOptions {
    fn default() -> Self {
        Self {
            shuffle_buffer: 256,
            seed: 0,
            language_weights: BTreeMap::new(),
        }
    }
}

impl MixOptions {
    /// Weights outside 0..=1 are refused: above 1 would repeat documents (give the
    /// other languages less instead).
    pub fn check(&self) -> Result<(), String> {
        match self
            .language_weights
            .iter()
            .find(|(_, w)| !(0.0..=1.0).contains(*w))
        {
            Some((language, weight)) => Err(format!(
                "stages.batcher.options.mix.language_weights.{language} is {weight}: a weight is \
                 the share of that language's documents kept, from 0 to 1 (to have more of one \
                 language, give the others less)"
            )),
            None => Ok(()),
        }
    }

    /// Whether the document `content_hash` of `language` is kept.
    pub fn keeps(&self, language: &str, content_hash: &str) -> bool {
        match self.language_weights.get(language) {
            Some(&weight) if weight < 1.0 => draw(self.seed, b"weight", content_hash) < weight,
            _ => true,
        }
    }
}

/// A number in [0, 1) from the seed, a purpose and a key.
fn draw(seed: u64, purpose: &[u8], key: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(purpose)
        .chain_update(key.as_bytes())
        .finalize();
    let top = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (top >> 11) as f64 / (1u64 << 53) as f64
}

/// Documents held and let out in a seeded random order.
pub struct Shuffle<T> {
    held: Vec<T>,
    capacity: usize,
    seed: u64,
    drained: u64,
}

impl<T> Shuffle<T> {
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self {
            held: Vec::new(),
            capacity,
            seed,
            drained: 0,
        }
    }

    /// Takes `item` (keyed by its content hash); once more than `capacity` are held,
    /// lets one out, drawn by that key.
    pub fn push(&mut self, key: &str, item: T) -> Option<T> {
        self.held.push(item);
        if self.held.len() <= self.capacity {
            return None;
        }
        Some(self.take(draw(self.seed, b"shuffle", key)))
    }

    /// Everything held, in a seeded random order (when the input pauses).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.held.len());
        while !self.held.is_empty() {
            self.drained += 1;
            let key = self.drained.to_string();
            out.push(self.take(draw(self.seed, b"drain", &key)));
        }
        out
    }

    fn take(&mut self, at: f64) -> T {
        let index = ((at * self.held.len() as f64) as usize).min(self.held.len() - 1);
        self.held.swap_remove(index)
    }
}

/// One split of a partition: documents waiting in the shuffle, then the packer.
pub struct Packing<T> {
    shuffle: Shuffle<(T, Vec<u32>)>,
    packer: Packer<T>,
}

impl<T: Clone> Packing<T> {
    pub fn new(shuffle: Shuffle<(T, Vec<u32>)>, packer: Packer<T>) -> Self {
        Self { shuffle, packer }
    }

    /// Takes a document; the batches that the one let out of the shuffle completed.
    pub fn push(&mut self, key: &str, tag: T, tokens: Vec<u32>) -> Vec<Packed<T>> {
        match self.shuffle.push(key, (tag, tokens)) {
            Some((tag, tokens)) => self.packer.push(&tokens, tag),
            None => Vec::new(),
        }
    }

    /// Every held document packed, then the partial batch sealed.
    pub fn flush(&mut self) -> Vec<Packed<T>> {
        let mut out = Vec::new();
        for (tag, tokens) in self.shuffle.drain() {
            out.extend(self.packer.push(&tokens, tag));
        }
        out.extend(self.packer.flush());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: usize) -> String {
        format!("{:x}", Sha256::digest(i.to_le_bytes()))
    }

    #[test]
    fn weights_keep_their_share_the_same_files_every_time() {
        let options = MixOptions {
            language_weights: [("Rust".to_string(), 0.25)].into(),
            ..MixOptions::default()
        };
        let kept = (0..20_000)
            .filter(|&i| options.keeps("Rust", &hash(i)))
            .count();
        assert!(
            (4_600..5_400).contains(&kept),
            "{kept} of 20000 kept at 0.25"
        );
        assert!(
            (0..1_000).all(|i| options.keeps("Go", &hash(i))),
            "unnamed: all"
        );
        let again = (0..20_000)
            .filter(|&i| options.keeps("Rust", &hash(i)))
            .count();
        assert_eq!(kept, again);
        let refused = MixOptions {
            language_weights: [("Go".to_string(), 2.0)].into(),
            ..MixOptions::default()
        };
        assert!(refused
            .check()
            .unwrap_err()
            .contains("language_weights.Go is 2"));
    }

    #[test]
    fn the_same_input_leaves_in_the_same_order_and_nothing_is_lost() {
        let run = |seed| {
            let mut shuffle = Shuffle::new(8, seed);
            let mut out: Vec<usize> = (0..100).filter_map(|i| shuffle.push(&hash(i), i)).collect();
            out.extend(shuffle.drain());
            out
        };
        let first = run(0);
        assert_eq!(first, run(0));
        assert_ne!(first, run(1));
        assert_ne!(first, (0..100).collect::<Vec<_>>());
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut none = Shuffle::new(0, 0);
        assert_eq!(none.push("a", 1), Some(1), "capacity 0: arrival order");
    }
}
