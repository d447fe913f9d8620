//! One shard of the LSH index: the files whose band buckets route to it, and for each
//! a sketch of its signature to confirm candidates. Every file probed is indexed, kept
//! or not, so a shard never needs to know another's verdict; a file is a
//! near-duplicate when some file *before it* (by [`Order`]) shares a bucket with it and
//! their sketches estimate a Jaccard similarity ≥ the threshold. Since "before" is one
//! total order, two files can never each be dropped for the other, however their
//! probes interleave on the shards.

use std::collections::{HashMap, HashSet};

use crate::minhash::{Params, Signature, PERMUTATIONS};

/// The files a bucket lists: later ones are indexed (by their other buckets, and for
/// their own probes) but not added to a full bucket. Boilerplate that real code repeats
/// tens of thousands of times (`manage.py`, licence files, generated stubs) fills one
/// bucket with near-identical files, and a file like them finds its match among the
/// first; without the cap each probe compared against every earlier one (quadratic in
/// the boilerplate's count) and the index grew a list per bucket without bound.
pub const MAX_BUCKET_FILES: usize = 128;

/// The candidates an answer lists, most similar first (the earliest of equals): the
/// judge keeps the best over every shard, so the best few of each shard decide the
/// same verdict as all of them, and an answer stays far below its topic's limit
/// however many earlier files match.
pub const MAX_CANDIDATES: usize = 16;

/// The low 8 bits of each minimum: a b-bit MinHash sketch (Li and König), a quarter of
/// the signature. Two sketches agree on a permutation where the signatures do, and
/// otherwise by chance (1 in 256), which [`sketch_similarity`] takes back out.
pub type Sketch = [u8; PERMUTATIONS];

pub fn sketch(signature: &Signature) -> Sketch {
    std::array::from_fn(|i| signature[i] as u8)
}

/// The Jaccard similarity two sketches estimate: agreement corrected for the 1/256
/// chance that two different minima share their low byte.
pub fn sketch_similarity(a: &Sketch, b: &Sketch) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / PERMUTATIONS as f64;
    let chance = 1.0 / 256.0;
    ((same - chance) / (1.0 - chance)).max(0.0)
}

/// Which file came first: the time it was first judged, then its content hash, so the
/// order is total and the same on every shard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    pub at_us: i64,
    pub content_hash: String,
}

/// The bucket keys of a signature, one per band.
pub fn bucket_keys(params: &Params, signature: &Signature) -> Vec<u64> {
    let bytes: Vec<u8> = signature.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes
        .chunks(params.rows * 4)
        .take(params.bands)
        .enumerate()
        .map(|(band, rows)| xxhash_rust::xxh3::xxh3_64_with_seed(rows, band as u64))
        .collect()
}

/// The shard (of `shards`) that owns a bucket.
pub fn shard_of(bucket: u64, shards: usize) -> usize {
    (bucket % shards as u64) as usize
}

/// A file earlier than the one probed, sharing a bucket with it and similar enough.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub order: Order,
    pub similarity: f64,
}

struct Entry {
    order: Order,
    sketch: Box<Sketch>,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The probed file's order as this shard first indexed it: a replay probed under a
    /// later time keeps the first.
    pub order: Order,
    /// Earlier files it is a near-duplicate of, most similar first.
    pub candidates: Vec<Candidate>,
}

#[derive(Default)]
pub struct Shard {
    threshold: f64,
    entries: Vec<Entry>,
    /// By the 64-bit hash of the content hash: the entry holds the text once.
    by_content_hash: HashMap<u64, u32>,
    /// Bucket → the first file in it; most buckets hold one file, so the others wait
    /// in `more` (a vector a bucket would cost about 40 bytes more a file's bucket).
    buckets: HashMap<u64, u32>,
    more: HashMap<u64, Vec<u32>>,
}

fn key_of(content_hash: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(content_hash.as_bytes())
}

impl Shard {
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            ..Self::default()
        }
    }

    /// Files indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, content_hash: &str) -> bool {
        self.slot_of(content_hash).is_some()
    }

    /// Bucket entries held (a file holds one for each of its buckets routed here).
    pub fn bucket_entries(&self) -> usize {
        self.buckets.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    /// Indexes a file (its first order wins) and returns its slot.
    pub fn insert(&mut self, order: Order, buckets: &[u64], sketch: &Sketch) -> u32 {
        if let Some(slot) = self.slot_of(&order.content_hash) {
            return slot;
        }
        let slot = self.entries.len() as u32;
        self.by_content_hash
            .insert(key_of(&order.content_hash), slot);
        self.entries.push(Entry {
            order,
            sketch: Box::new(*sketch),
        });
        for &bucket in buckets {
            match self.buckets.entry(bucket) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    let more = self.more.entry(bucket).or_default();
                    if more.len() + 1 < MAX_BUCKET_FILES {
                        more.push(slot);
                    }
                }
            }
        }
        slot
    }

    /// The file's slot, if indexed (a 64-bit key collision is told apart by the text).
    fn slot_of(&self, content_hash: &str) -> Option<u32> {
        let slot = *self.by_content_hash.get(&key_of(content_hash))?;
        (self.entries[slot as usize].order.content_hash == content_hash).then_some(slot)
    }

    /// The files in a bucket.
    fn in_bucket(&self, bucket: u64) -> impl Iterator<Item = u32> + '_ {
        let first = self.buckets.get(&bucket).copied();
        let more = self.more.get(&bucket).into_iter().flatten().copied();
        first.into_iter().chain(more)
    }

    /// Judges a file against the files before it in its buckets, and indexes it: at
    /// most `buckets.len()` × [`MAX_BUCKET_FILES`] comparisons.
    pub fn probe(&mut self, order: Order, buckets: &[u64], sketch: &Sketch) -> Probed {
        let slot = self.insert(order, buckets, sketch);
        let me = &self.entries[slot as usize];
        let mut seen = HashSet::new();
        let mut candidates = Vec::new();
        for other in buckets.iter().flat_map(|&b| self.in_bucket(b)) {
            if other == slot || !seen.insert(other) {
                continue;
            }
            let entry = &self.entries[other as usize];
            if entry.order >= me.order {
                continue;
            }
            let similarity = sketch_similarity(&entry.sketch, &me.sketch);
            if similarity >= self.threshold {
                candidates.push(Candidate {
                    order: entry.order.clone(),
                    similarity,
                });
            }
        }
        candidates.sort_by(best_first);
        candidates.truncate(MAX_CANDIDATES);
        Probed {
            order: me.order.clone(),
            candidates,
        }
    }
}

/// The representative a file is dropped for, from every shard's candidates: the most
/// similar, the earliest of equals. None: the file is kept.
pub fn representative<'a>(
    candidates: impl IntoIterator<Item = &'a Candidate>,
) -> Option<&'a Candidate> {
    candidates.into_iter().min_by(|a, b| best_first(a, b))
}

/// The most similar first, the earliest of equals.
fn best_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.similarity
        .total_cmp(&a.similarity)
        .then_with(|| a.order.cmp(&b.order))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(at_us: i64, hash: &str) -> Order {
        Order {
            at_us,
            content_hash: hash.into(),
        }
    }

    #[test]
    fn the_later_of_two_similar_files_is_the_duplicate_whichever_is_probed_first() {
        let sketch = [7u8; PERMUTATIONS];
        let mut near = sketch;
        near[..20].fill(9); // 236 of 256 agree: 0.92
        let mut shard = Shard::new(0.7);
        // The later file's probe arrives first: it finds nothing before it.
        assert!(shard
            .probe(order(2, "b"), &[1, 2], &near)
            .candidates
            .is_empty());
        let probed = shard.probe(order(1, "a"), &[2, 3], &sketch);
        assert!(probed.candidates.is_empty(), "a came first: {probed:?}");
        // Probed again (a replay, under a later time), b keeps its first order and now
        // finds a.
        let replay = shard.probe(order(5, "b"), &[1, 2], &near);
        assert_eq!(replay.order, order(2, "b"));
        assert_eq!(replay.candidates.len(), 1);
        assert_eq!(replay.candidates[0].order, order(1, "a"));
        assert!((replay.candidates[0].similarity - 0.92).abs() < 0.01);
        assert_eq!(shard.len(), 2);
    }

    /// 30,000 near-identical files in the same buckets (boilerplate): each probe makes
    /// a bounded number of comparisons, each answer lists a bounded number of
    /// candidates, and every file after the first is still found a near-duplicate.
    #[test]
    fn boilerplate_in_one_bucket_is_probed_in_bounded_work_and_answers() {
        let mut shard = Shard::new(0.7);
        let buckets: Vec<u64> = (0..32).collect();
        let mut largest = 0;
        for i in 0..30_000u32 {
            let mut near = [7u8; PERMUTATIONS];
            near[..4].copy_from_slice(&i.to_le_bytes()); // 252 of 256 agree
            let probed = shard.probe(order(i64::from(i), &format!("f{i}")), &buckets, &near);
            assert_eq!(probed.candidates.is_empty(), i == 0, "file {i}");
            largest = largest.max(probed.candidates.len());
        }
        assert_eq!(largest, MAX_CANDIDATES);
        assert_eq!(shard.len(), 30_000);
        assert_eq!(shard.bucket_entries(), 32 * MAX_BUCKET_FILES);
    }

    #[test]
    fn a_bucket_mate_below_the_threshold_is_no_candidate() {
        let mut shard = Shard::new(0.7);
        let a = [1u8; PERMUTATIONS];
        let mut b = a;
        b[..128].fill(2); // half agree
        shard.probe(order(1, "a"), &[10], &a);
        assert!(shard.probe(order(2, "b"), &[10], &b).candidates.is_empty());
    }

    #[test]
    fn chance_agreement_is_taken_out_of_the_sketch_estimate() {
        let a: Sketch = std::array::from_fn(|i| i as u8);
        let b: Sketch = std::array::from_fn(|i| (i as u8).wrapping_add(1));
        assert_eq!(sketch_similarity(&a, &a), 1.0);
        assert_eq!(sketch_similarity(&a, &b), 0.0);
    }
}
