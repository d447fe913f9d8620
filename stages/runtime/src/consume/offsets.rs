//! Which input offsets may be committed. Records of a partition finish out of order
//! (they are transformed concurrently); an offset is committable only when it and
//! every offset before it have had all their outputs acknowledged.
//!
//! A loop that commits outputs before the offsets of earlier inputs (the aggregate
//! loop under `exactly_once`) also commits which offsets past the committed one are
//! done, as the offset's metadata ([`OffsetTracker::done_ahead`]); the partition's
//! next owner skips them ([`OffsetTracker::resume`]) instead of making their outputs
//! again.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest offset seen.
    next_unseen: i64,
    /// The last value handed out for storing (the next offset to consume).
    stored: i64,
    /// Offsets an earlier owner committed as done beyond its committed offset.
    ahead: Option<DoneAhead>,
}

/// Every offset below `until` but those in `holes` is done.
#[derive(Debug, Clone, PartialEq)]
struct DoneAhead {
    until: i64,
    holes: BTreeSet<i64>,
}

/// Marks what an offset's metadata says, so other metadata is never misread.
const DONE_AHEAD: &str = "codelupe-done-ahead:";

/// Kafka's default `offset.metadata.max.bytes` is 4096: the holes listed stay under
/// this, and the claim stops at the first hole left out.
const DONE_AHEAD_MAX_BYTES: usize = 3_000;

impl DoneAhead {
    fn encode(&self) -> String {
        let mut holes = String::new();
        let mut until = self.until;
        for hole in &self.holes {
            let more = format!("{}{hole}", if holes.is_empty() { "" } else { "," });
            if DONE_AHEAD.len() + 24 + holes.len() + more.len() > DONE_AHEAD_MAX_BYTES {
                until = *hole;
                break;
            }
            holes.push_str(&more);
        }
        format!("{DONE_AHEAD}{until}:{holes}")
    }

    fn decode(metadata: &str) -> Option<Self> {
        let (until, holes) = metadata.strip_prefix(DONE_AHEAD)?.split_once(':')?;
        let holes = holes
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self {
            until: until.parse().ok()?,
            holes,
        })
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

impl OffsetTracker {
    /// Takes `offset` in; false when this consumer already has it (in flight, or done
    /// and stored past): a record fetched again, which must not be handled twice nor
    /// hold the high-water mark back.
    pub fn begin(&mut self, partition: i32, offset: i64) -> bool {
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionOffsets {
                stored: offset,
                ..Default::default()
            });
        if let Some(ahead) = &mut p.ahead {
            // Done by an earlier owner, unless it is one of the holes.
            if offset < ahead.until && !ahead.holes.remove(&offset) {
                return false;
            }
        }
        if offset < p.stored || !p.pending.insert(offset) {
            return false;
        }
        p.next_unseen = p.next_unseen.max(offset + 1);
        true
    }

    /// Marks `offset` done; returns the new contiguous high-water mark (the offset to
    /// store, i.e. the next one to consume) when it moved.
    pub fn complete(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.pending.remove(&offset) {
            return None;
        }
        let low = p.pending.first().copied().unwrap_or(p.next_unseen);
        let low = match &p.ahead {
            Some(ahead) => ahead.holes.first().map_or(low, |hole| low.min(*hole)),
            None => low,
        };
        if p.ahead.as_ref().is_some_and(|a| low >= a.until) {
            p.ahead = None;
        }
        (low > p.stored).then(|| {
            p.stored = low;
            low
        })
    }

    /// The offset's metadata to commit with `partition`'s stored offset: the offsets
    /// done beyond it (all up to the highest seen but the holes still in flight or not
    /// read again), or empty when nothing beyond it is done.
    pub fn done_ahead(&self, partition: i32) -> Option<(i64, String)> {
        let p = self.partitions.get(&partition)?;
        let (until, unread) = match &p.ahead {
            Some(ahead) => (p.next_unseen.max(ahead.until), &ahead.holes),
            None => (p.next_unseen, &BTreeSet::new()),
        };
        // The holes (in flight, or not read again yet) are disjoint: counted, not
        // gathered, on every commit where nothing lies beyond them.
        if until - p.stored <= (p.pending.len() + unread.len()) as i64 {
            return Some((p.stored, String::new()));
        }
        let holes = p.pending.union(unread).copied().collect();
        Some((p.stored, DoneAhead { until, holes }.encode()))
    }

    /// `partition` newly assigned, its committed offset and that offset's metadata:
    /// the offsets the metadata says are done are refused by [`Self::begin`].
    pub fn resume(&mut self, partition: i32, committed: i64, metadata: &str) {
        let Some(ahead) = DoneAhead::decode(metadata) else {
            return;
        };
        if ahead.until <= committed {
            return;
        }
        self.partitions.insert(
            partition,
            PartitionOffsets {
                pending: BTreeSet::new(),
                next_unseen: ahead.until,
                stored: committed,
                ahead: Some(ahead),
            },
        );
    }

    /// Forgets partitions this consumer no longer owns; late completions for them are
    /// ignored (their outputs are acknowledged, so a replay is only a duplicate).
    pub fn revoke(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.partitions.remove(&partition);
        }
    }

    /// Moves a partition with nothing in flight to the consumer's `position` when that
    /// is further: transaction markers are never delivered, so the offset stored after
    /// a partition's last record points at its marker and the group would show a lag
    /// of 1 for good (librdkafka #3917); the position has stepped over them. Returns
    /// the offset to store when it moved. A partition nothing was delivered from since
    /// it was assigned (its committed offset points at a marker) steps over too.
    pub fn step_over(&mut self, partition: i32, position: i64) -> Option<i64> {
        let p = self.partitions.entry(partition).or_default();
        let holes_unread = p.ahead.as_ref().is_some_and(|a| !a.holes.is_empty());
        (p.pending.is_empty() && !holes_unread && position > p.stored).then(|| {
            p.stored = position;
            p.next_unseen = p.next_unseen.max(position);
            position
        })
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_partition_steps_over_to_the_position_and_a_busy_one_waits() {
        let mut t = OffsetTracker::default();
        assert!(t.begin(0, 10));
        assert_eq!(t.step_over(0, 12), None, "offset 10 is in flight");
        assert_eq!(t.complete(0, 10), Some(11));
        // Offset 11 is a transaction marker: never delivered, stepped over.
        assert_eq!(t.step_over(0, 12), Some(12));
        assert_eq!(t.step_over(0, 12), None);
        assert!(!t.begin(0, 11), "behind the stored offset");
        assert_eq!(
            t.step_over(1, 5),
            Some(5),
            "assigned, nothing delivered since: its committed offset was a marker"
        );
        assert!(!t.begin(1, 4));
    }

    #[test]
    fn high_water_mark_waits_for_the_lowest_pending_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.begin(0, o);
        }
        assert_eq!(t.complete(0, 12), None);
        assert_eq!(t.complete(0, 11), None);
        assert_eq!(t.complete(0, 10), Some(13));
        assert_eq!(t.complete(0, 14), None);
        assert_eq!(t.complete(0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_record_fetched_again_is_refused_and_does_not_hold_the_mark_back() {
        let mut t = OffsetTracker::default();
        assert!(t.begin(0, 5));
        assert!(t.begin(0, 6));
        assert!(!t.begin(0, 6), "in flight already");
        assert_eq!(t.complete(0, 5), Some(6));
        assert!(!t.begin(0, 5), "done and stored past");
        assert_eq!(t.complete(0, 6), Some(7));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn offsets_done_ahead_of_a_hole_are_committed_and_skipped_by_the_next_owner() {
        let mut t = OffsetTracker::default();
        for o in 10..20 {
            t.begin(0, o);
        }
        for o in (11..20).filter(|o| *o != 15) {
            t.complete(0, o);
        }
        assert_eq!(t.done_ahead(0), Some((10, format!("{DONE_AHEAD}20:10,15"))));
        let (committed, metadata) = t.done_ahead(0).unwrap();

        // The next owner reads from 10 again: only the holes are taken.
        let mut next = OffsetTracker::default();
        next.resume(0, committed, &metadata);
        let taken: Vec<i64> = (10..22).filter(|o| next.begin(0, *o)).collect();
        assert_eq!(taken, [10, 15, 20, 21]);
        assert_eq!(next.step_over(0, 22), None, "holes in flight");
        assert_eq!(next.complete(0, 15), None, "10 still in flight");
        assert_eq!(next.complete(0, 10), Some(20));
        assert_eq!(next.complete(0, 20), Some(21));
        assert_eq!(next.complete(0, 21), Some(22));
        assert_eq!(next.done_ahead(0), Some((22, String::new())));

        // Committed again before a hole is read: the claim is kept whole.
        let mut again = OffsetTracker::default();
        again.resume(0, committed, &metadata);
        assert!(!again.begin(0, 11));
        assert_eq!(again.done_ahead(0), Some((10, metadata.clone())));
        assert_eq!(again.step_over(0, 12), None, "holes not read again yet");
    }

    #[test]
    fn a_claim_with_too_many_holes_stops_at_the_first_hole_left_out() {
        let ahead = DoneAhead {
            until: 1_000_000_000,
            holes: (0..1_000).map(|h| 999_000_000 + 2 * h).collect(),
        };
        let encoded = ahead.encode();
        assert!(encoded.len() <= DONE_AHEAD_MAX_BYTES, "{}", encoded.len());
        let decoded = DoneAhead::decode(&encoded).unwrap();
        assert!(decoded.holes.len() > 100);
        assert_eq!(
            Some(&decoded.until),
            ahead.holes.iter().nth(decoded.holes.len())
        );
        assert!(DoneAhead::decode("some other tool's note").is_none());
    }

    #[test]
    fn partitions_are_independent_and_revocation_forgets() {
        let mut t = OffsetTracker::default();
        t.begin(0, 0);
        t.begin(1, 5);
        assert_eq!(t.complete(1, 5), Some(6));
        t.revoke([0]);
        assert_eq!(t.complete(0, 0), None);
        assert_eq!(t.complete(1, 5), None, "a repeated completion is ignored");
    }
}
