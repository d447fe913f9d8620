//! Which inputs each unacknowledged output holds, so an input is released only once
//! every output holding a part of it is safe.

use std::collections::HashMap;

use crate::publish::Outgoing;

use super::contract::InputPosition;

/// How many unacknowledged outputs hold each input, and whether its last part is
/// sealed. A revocation starts a new generation of the partition, so a late
/// acknowledgement from before it cannot release an input consumed again after it.
#[derive(Debug, Default)]
pub(super) struct Holds {
    generations: HashMap<i32, u64>,
    held: HashMap<InputPosition, Held>,
}

#[derive(Debug)]
struct Held {
    generation: u64,
    outstanding: usize,
    last_part_sealed: bool,
    on_release: Vec<Outgoing>,
}

pub(super) type Ticket = Vec<(InputPosition, u64)>;

impl Holds {
    pub(super) fn generation(&self, partition: i32) -> u64 {
        self.generations.get(&partition).copied().unwrap_or(0)
    }

    pub(super) fn dispatch(&mut self, inputs: &[(InputPosition, bool)]) -> Ticket {
        inputs
            .iter()
            .map(|&(at, last)| {
                let generation = self.generation(at.partition);
                let held = self.held.entry(at).or_insert(Held {
                    generation,
                    outstanding: 0,
                    last_part_sealed: false,
                    on_release: Vec::new(),
                });
                held.outstanding += 1;
                held.last_part_sealed |= last;
                (at, generation)
            })
            .collect()
    }

    /// Keeps `record` to publish when `at` is released; Err(record) when `at` is not
    /// held (nothing of it is in flight: publish now).
    pub(super) fn on_release(
        &mut self,
        at: InputPosition,
        record: Outgoing,
    ) -> Result<(), Outgoing> {
        match self.held.get_mut(&at) {
            Some(held) => {
                held.on_release.push(record);
                Ok(())
            }
            None => Err(record),
        }
    }

    /// The inputs this acknowledgement releases, with their follow-up records.
    pub(super) fn acked(&mut self, ticket: Ticket) -> Vec<(InputPosition, Vec<Outgoing>)> {
        let mut released = Vec::new();
        for (at, generation) in ticket {
            let Some(held) = self.held.get_mut(&at) else {
                continue;
            };
            if held.generation != generation {
                continue;
            }
            held.outstanding -= 1;
            if held.outstanding == 0 && held.last_part_sealed {
                let held = self.held.remove(&at).expect("present above");
                released.push((at, held.on_release));
            }
        }
        released
    }

    pub(super) fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            *self.generations.entry(*p).or_default() += 1;
        }
        self.held
            .retain(|at, _| !partitions.contains(&at.partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> InputPosition {
        InputPosition { partition, offset }
    }

    #[test]
    fn an_input_is_released_when_every_output_holding_it_is_acked() {
        let mut holds = Holds::default();
        // Input 0 spans outputs A and B; input 1 lies in B alone.
        let released = |holds: &mut Holds, ticket| -> Vec<InputPosition> {
            holds.acked(ticket).into_iter().map(|(at, _)| at).collect()
        };
        let a = holds.dispatch(&[(at(0, 0), false)]);
        let b = holds.dispatch(&[(at(0, 0), true), (at(0, 1), true)]);
        assert_eq!(released(&mut holds, b), [at(0, 1)], "A still holds input 0");
        assert_eq!(released(&mut holds, a), [at(0, 0)]);
        // A part acked before the last part is sealed releases nothing.
        let c = holds.dispatch(&[(at(0, 2), false)]);
        assert!(holds.acked(c).is_empty());
        let d = holds.dispatch(&[(at(0, 2), true)]);
        assert_eq!(released(&mut holds, d), [at(0, 2)]);
    }

    #[test]
    fn follow_ups_wait_for_every_output_holding_their_input() {
        let mut holds = Holds::default();
        let mark = |key: &str| Outgoing {
            topic: "seen".into(),
            partition: Some(0),
            key: key.as_bytes().to_vec(),
            payload: Vec::new(),
        };
        // Input 0's head is in batch A, its tail in batch B, which is acked first.
        let a = holds.dispatch(&[(at(0, 0), false)]);
        let b = holds.dispatch(&[(at(0, 0), true)]);
        holds.on_release(at(0, 0), mark("file-0")).unwrap();
        assert!(holds.acked(b).is_empty(), "batch A may still be lost");
        let released = holds.acked(a);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, at(0, 0));
        assert_eq!(released[0].1[0].key, b"file-0");
        // Nothing held: the follow-up is handed back to publish at once.
        assert!(holds.on_release(at(0, 9), mark("file-9")).is_err());
    }

    #[test]
    fn acks_from_before_a_revocation_release_nothing() {
        let mut holds = Holds::default();
        let old = holds.dispatch(&[(at(3, 7), true)]);
        holds.revoke(&[3]);
        // Consumed again after the partition came back, not yet acked.
        let new = holds.dispatch(&[(at(3, 7), true)]);
        assert!(holds.acked(old).is_empty());
        assert_eq!(holds.acked(new)[0].0, at(3, 7));
    }
}
