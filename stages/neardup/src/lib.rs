//! Near-duplicate detection as BigCode did it for The Stack and StarCoder2: MinHash
//! over 5-gram shingles of a file's tokens, 256 permutations, and locality-sensitive
//! hashing in bands to find candidates cheaply; a candidate is confirmed when the
//! signatures estimate a Jaccard similarity of at least 0.7. The first file seen of a
//! cluster is its representative; every later one is a near-duplicate of it.

pub mod index;
pub mod minhash;
pub mod shard;

pub use index::{Index, Judgement};
pub use minhash::{Params, Signature};
