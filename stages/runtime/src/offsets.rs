//! Which input offsets may be committed. Records of a partition finish out of order
//! (they are transformed concurrently); an offset is committable only when it and
//! every offset before it have had all their outputs acknowledged.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest offset seen.
    next_unseen: i64,
    /// The last value handed out for storing (the next offset to consume).
    stored: i64,
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
        (low > p.stored).then(|| {
            p.stored = low;
            low
        })
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
        (p.pending.is_empty() && position > p.stored).then(|| {
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
