//! Packing documents into fixed-length sequences: each document followed by the
//! end-of-text token, laid end to end, cut into batches of `sequences × length`
//! tokens. Every batch records where each document (or the piece of one that spills
//! over from the previous batch) starts, and which documents it holds: each with a tag
//! (the batcher's: content hash and input position), whether it ends there and how
//! much of it this batch and the ones before hold.

use sha2::{Digest, Sha256};

/// One batch before it becomes a `training-batches` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed<T> {
    /// Deterministic: the hash of the token ids, so a rerun makes the same ids.
    pub batch_id: String,
    pub token_ids: Vec<i32>,
    pub document_starts: Vec<i32>,
    /// The documents with tokens here, in order, and their part in this batch.
    pub members: Vec<(T, Part)>,
}

/// A document's part in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Its last token (its end-of-text) is here.
    pub last: bool,
    /// How many of its tokens (as pushed, end-of-text included) this batch and the
    /// batches before it hold.
    pub through: usize,
}

pub struct Packer<T> {
    batch_len: usize,
    end_of_text: i32,
    tokens: Vec<i32>,
    /// (start in `tokens`, tag, tokens already in earlier batches) of each document in
    /// the buffer.
    documents: Vec<(usize, T, usize)>,
}

impl<T: Clone> Packer<T> {
    pub fn new(sequence_length: usize, sequences_per_batch: usize, end_of_text: u32) -> Self {
        Self {
            batch_len: sequence_length * sequences_per_batch,
            end_of_text: end_of_text as i32,
            tokens: Vec::new(),
            documents: Vec::new(),
        }
    }

    /// Adds a document; returns the batches it completed.
    pub fn push(&mut self, document: &[u32], tag: T) -> Vec<Packed<T>> {
        self.documents.push((self.tokens.len(), tag, 0));
        self.tokens.extend(document.iter().map(|&t| t as i32));
        self.tokens.push(self.end_of_text);
        let mut out = Vec::new();
        while self.tokens.len() >= self.batch_len {
            out.push(self.cut(self.tokens.len()));
        }
        out
    }

    /// Tokens waiting for a batch to fill.
    pub fn buffered(&self) -> usize {
        self.tokens.len()
    }

    /// The partial batch, padded with end-of-text tokens (at shutdown or end of input).
    pub fn flush(&mut self) -> Option<Packed<T>> {
        if self.tokens.is_empty() {
            return None;
        }
        let filled = self.tokens.len();
        self.tokens.resize(self.batch_len, self.end_of_text);
        Some(self.cut(filled))
    }

    /// The first batch of the buffer, whose first `filled` tokens are documents' (the
    /// rest, if any, padding).
    fn cut(&mut self, filled: usize) -> Packed<T> {
        let rest = self.tokens.split_off(self.batch_len);
        let token_ids = std::mem::replace(&mut self.tokens, rest);
        let mut document_starts = Vec::new();
        let mut members = Vec::new();
        let mut carried = Vec::new();
        let ends: Vec<usize> = (self.documents.iter().skip(1).map(|(start, ..)| *start))
            .chain([filled])
            .collect();
        for ((start, tag, before), end) in self.documents.drain(..).zip(ends) {
            let mut through = before;
            if start < self.batch_len {
                through += end.min(self.batch_len) - start;
                document_starts.push(start as i32);
                let last = end <= self.batch_len;
                members.push((tag.clone(), Part { last, through }));
            }
            // A document that ends beyond this batch continues at 0 in the next one.
            carried.push((start.saturating_sub(self.batch_len), tag, through));
        }
        // Keep only documents with tokens left: the last one started here, or later ones.
        let keep_from = carried
            .iter()
            .rposition(|(start, ..)| *start == 0)
            .unwrap_or(0);
        self.documents = carried.split_off(keep_from);
        if self.tokens.is_empty() {
            self.documents.clear();
        }
        if document_starts.first() != Some(&0) {
            document_starts.insert(0, 0);
        }
        let mut digest = Sha256::new();
        for t in &token_ids {
            digest.update(t.to_le_bytes());
        }
        Packed {
            batch_id: format!("{:x}", digest.finalize())[..24].to_string(),
            token_ids,
            document_starts,
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOT: u32 = 0;

    #[test]
    fn documents_are_laid_end_to_end_with_their_starts() {
        let mut packer = Packer::new(4, 2, EOT);
        let docs: Vec<Vec<u32>> = vec![
            vec![1, 2, 3],
            vec![4, 5, 6, 7, 8, 9, 10, 11, 12],
            vec![13],
            vec![14, 15],
        ];
        let mut batches = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            batches.extend(packer.push(d, format!("h{i}")));
        }
        batches.extend(packer.flush());
        let all: Vec<i32> = batches.iter().flat_map(|b| b.token_ids.clone()).collect();
        assert_eq!(
            all,
            [1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 13, 0, 14, 15, 0, 0, 0, 0, 0, 0]
        );
        assert!(batches.iter().all(|b| b.token_ids.len() == 8));
        let member = |h: &str, last, through| (h.to_string(), Part { last, through });
        assert_eq!(batches[0].document_starts, [0, 4]);
        assert_eq!(
            batches[0].members,
            [member("h0", true, 4), member("h1", false, 4)]
        );
        // h1 spills over: its piece starts batch 1 at 0, then h2 at 6.
        assert_eq!(batches[1].document_starts, [0, 6]);
        assert_eq!(
            batches[1].members,
            [member("h1", true, 10), member("h2", true, 2)]
        );
        assert_eq!(batches[2].document_starts, [0]);
        assert_eq!(batches[2].members, [member("h3", true, 3)]);
        assert_ne!(batches[0].batch_id, batches[1].batch_id);
    }

    #[test]
    fn every_batch_lists_exactly_the_documents_it_overlaps() {
        let (seq, per) = (16, 3);
        let mut packer = Packer::new(seq, per, EOT);
        let mut expected_stream = Vec::new();
        let mut spans = Vec::new(); // (start, end) in the stream, per document
        let mut batches = Vec::new();
        let mut x = 7u64;
        for i in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (x >> 33) as usize % 70;
            let doc: Vec<u32> = (0..len).map(|j| 1 + ((i * 31 + j) % 1000) as u32).collect();
            let start = expected_stream.len();
            expected_stream.extend(doc.iter().map(|&t| t as i32));
            expected_stream.push(EOT as i32);
            spans.push((start, expected_stream.len()));
            batches.extend(packer.push(&doc, format!("h{i}")));
        }
        let tail = packer.buffered();
        batches.extend(packer.flush());
        let all: Vec<i32> = batches.iter().flat_map(|b| b.token_ids.clone()).collect();
        assert_eq!(&all[..expected_stream.len()], &expected_stream[..]);
        assert!(
            tail > 0
                && all[expected_stream.len()..]
                    .iter()
                    .all(|&t| t == EOT as i32)
        );
        let batch_len = seq * per;
        for (n, batch) in batches.iter().enumerate() {
            let (lo, hi) = (n * batch_len, (n + 1) * batch_len);
            let overlapping: Vec<(String, Part)> = spans
                .iter()
                .enumerate()
                .filter(|(_, (s, e))| *s < hi && *e > lo)
                .map(|(i, (s, e))| {
                    let through = (*e).min(hi) - s;
                    (
                        format!("h{i}"),
                        Part {
                            last: *e <= hi,
                            through,
                        },
                    )
                })
                .collect();
            assert_eq!(batch.members, overlapping, "batch {n}");
            let starts: Vec<i32> = spans
                .iter()
                .filter(|(s, e)| *s < hi && *e > lo)
                .map(|(s, _)| s.saturating_sub(lo) as i32)
                .collect();
            assert_eq!(batch.document_starts, starts, "batch {n}");
        }
    }
}
