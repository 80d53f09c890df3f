//! Which consumed offsets may be committed, sans-IO.
//!
//! The enrichment processes records concurrently and their produces are acknowledged out of
//! order. A partition's offset may only be committed up to the first record still in flight:
//! committing past it would lose that record if the process died now (at-least-once).

use std::collections::{BTreeSet, HashMap};

/// A topic partition.
pub type Partition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Offsets consumed whose produces are not acknowledged yet.
    in_flight: BTreeSet<i64>,
    /// Highest offset consumed.
    highest: Option<i64>,
    /// Offset last committed (the next one to read).
    committed: Option<i64>,
}

impl PartitionState {
    /// The next offset to read after the contiguous finished prefix.
    fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&first) => Some(first),
            None => self.highest.map(|h| h + 1),
        }
    }
}

/// Offsets in flight per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record was consumed and is being processed.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) {
        let state = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_default();
        state.in_flight.insert(offset);
        state.highest = Some(state.highest.map_or(offset, |h| h.max(offset)));
    }

    /// A record's produces were all acknowledged.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            state.in_flight.remove(&offset);
        }
    }

    /// Offsets (next to read) that can be committed and differ from the last commit.
    pub fn to_commit(&self) -> Vec<(Partition, i64)> {
        let mut out: Vec<(Partition, i64)> = self
            .partitions
            .iter()
            .filter_map(|(p, s)| {
                let next = s.committable()?;
                (s.committed != Some(next)).then(|| (p.clone(), next))
            })
            .collect();
        out.sort();
        out
    }

    /// The broker accepted these commits.
    pub fn committed(&mut self, offsets: &[(Partition, i64)]) {
        for (p, next) in offsets {
            if let Some(state) = self.partitions.get_mut(p) {
                state.committed = Some(state.committed.map_or(*next, |c| c.max(*next)));
            }
        }
    }

    /// The partition was taken away by a rebalance: forget it (its in-flight records will be
    /// processed again by the new owner; duplicates, not loss).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Records in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    #[test]
    fn commits_only_the_contiguous_finished_prefix() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.start("t", 0, o);
        }
        assert_eq!(t.to_commit(), [(p(0), 10)]);
        t.finish("t", 0, 11);
        t.finish("t", 0, 13);
        assert_eq!(t.to_commit(), [(p(0), 10)], "10 still in flight");
        t.finish("t", 0, 10);
        assert_eq!(t.to_commit(), [(p(0), 12)]);
        t.finish("t", 0, 12);
        t.finish("t", 0, 14);
        assert_eq!(t.to_commit(), [(p(0), 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn unchanged_offsets_are_not_committed_twice() {
        let mut t = OffsetTracker::new();
        t.start("t", 1, 0);
        t.finish("t", 1, 0);
        let first = t.to_commit();
        assert_eq!(first, [(p(1), 1)]);
        t.committed(&first);
        assert_eq!(t.to_commit(), []);
        t.start("t", 1, 1);
        assert_eq!(t.to_commit(), [], "offset 1 in flight: nothing new");
        t.finish("t", 1, 1);
        assert_eq!(t.to_commit(), [(p(1), 2)]);
    }

    #[test]
    fn partitions_are_independent_and_revocable() {
        let mut t = OffsetTracker::new();
        t.start("t", 0, 5);
        t.start("t", 2, 7);
        t.start("u", 0, 1);
        t.finish("t", 2, 7);
        assert_eq!(
            t.to_commit(),
            [(p(0), 5), (p(2), 8), (("u".to_string(), 0), 1)]
        );
        t.revoke("t", 0);
        t.finish("t", 0, 5);
        assert_eq!(t.to_commit(), [(p(2), 8), (("u".to_string(), 0), 1)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn a_stale_commit_acknowledgement_never_moves_backwards() {
        let mut t = OffsetTracker::new();
        t.start("t", 0, 0);
        t.finish("t", 0, 0);
        t.committed(&[(p(0), 1)]);
        t.committed(&[(p(0), 0)]);
        t.start("t", 0, 1);
        t.finish("t", 0, 1);
        assert_eq!(t.to_commit(), [(p(0), 2)]);
    }
}
