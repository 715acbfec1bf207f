//! The seen-ids cache (SPEC.md §5.5).

use std::collections::{BTreeSet, HashSet};

use socp_protocol::envelope::TS_WINDOW_MS;

/// The seen-ids cache (SPEC.md §5.5), bounded in entries. When the cache is
/// full, the entry with the oldest `ts` is evicted and its `ts` becomes a
/// floor: anything at or below it counts as seen, so eviction never lets a
/// replay through. Evicting by `ts` rather than by arrival keeps the floor
/// below every entry still held: a frame stamped ahead (a peer whose clock runs
/// fast, still inside the window) cannot lift the floor over frames from
/// correctly set clocks.
pub struct SeenCache {
    set: HashSet<[u8; 32]>,
    /// The same keys ordered by `ts`, oldest first: what pruning and eviction take.
    by_ts: BTreeSet<(i64, [u8; 32])>,
    capacity: usize,
    floor_ts: i64,
}

impl SeenCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        SeenCache {
            set: HashSet::new(),
            by_ts: BTreeSet::new(),
            capacity: capacity.max(1),
            floor_ts: i64::MIN,
        }
    }

    /// Record `key` (for a frame stamped `ts`); false if it was already seen.
    pub fn insert(&mut self, key: [u8; 32], ts: i64, now: i64) -> bool {
        // Entries older than the acceptance window can go: such frames are
        // rejected as stale before they reach the cache.
        let horizon = now.saturating_sub(2 * TS_WINDOW_MS);
        while let Some(&(t, k)) = self.by_ts.first() {
            if t >= horizon {
                break;
            }
            self.by_ts.pop_first();
            self.set.remove(&k);
        }
        if ts <= self.floor_ts || self.set.contains(&key) {
            return false;
        }
        if self.by_ts.len() >= self.capacity {
            if let Some((t, k)) = self.by_ts.pop_first() {
                self.set.remove(&k);
                self.floor_ts = self.floor_ts.max(t);
            }
            if ts <= self.floor_ts {
                return false;
            }
        }
        self.set.insert(key);
        self.by_ts.insert((ts, key));
        true
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
