//! Replay-proof presence [ext] (SPEC.md §5.3): every USER_ADVERTISE and
//! USER_REMOVE a socp server makes carries, inside its signed payload, a
//! sequence number that only grows; a receiver drops a presence frame whose
//! number is not newer than the last one from that origin for that user, so a
//! frame replayed with a fresh envelope `ts` (which the signature does not
//! cover) changes nothing. Frames without a number (other implementations)
//! pass as before.

use std::collections::HashMap;

use socp_protocol::{ServerId, UserId};

/// The last sequence number seen per (origin, user), bounded: past `capacity`
/// entries, an origin's oldest entries are forgotten and their numbers become
/// that origin's floor (anything at or below it counts as old). An origin's
/// numbers grow over all its users, so a floor never drops a frame it makes
/// later.
#[derive(Debug)]
pub(crate) struct PresenceSeq {
    last: HashMap<(ServerId, UserId), u64>,
    floor: HashMap<ServerId, u64>,
    capacity: usize,
}

impl PresenceSeq {
    /// Track at most `capacity` (origin, user) pairs.
    pub fn new(capacity: usize) -> Self {
        PresenceSeq {
            last: HashMap::new(),
            floor: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record `seq` for `user` from `origin`; false if it is not newer than
    /// what was seen (the frame is a replay or arrived late).
    pub fn advance(&mut self, origin: &ServerId, user: &UserId, seq: u64) -> bool {
        if self.floor.get(origin).is_some_and(|f| seq <= *f) {
            return false;
        }
        let key = (origin.clone(), user.clone());
        if self.last.get(&key).is_some_and(|last| seq <= *last) {
            return false;
        }
        if !self.last.contains_key(&key) && self.last.len() >= self.capacity {
            self.forget_oldest_of(origin);
        }
        self.last.insert(key, seq);
        true
    }

    /// Make room: forget the entry with the lowest number of `origin` (or, if
    /// it has none, of any origin) and raise that origin's floor to it.
    fn forget_oldest_of(&mut self, origin: &ServerId) {
        let pick = self
            .last
            .iter()
            .filter(|((o, _), _)| o == origin)
            .min_by_key(|(_, s)| **s)
            .or_else(|| self.last.iter().min_by_key(|(_, s)| **s))
            .map(|(k, s)| (k.clone(), *s));
        if let Some(((o, u), s)) = pick {
            self.last.remove(&(o.clone(), u));
            let floor = self.floor.entry(o).or_default();
            *floor = (*floor).max(s);
        }
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> ServerId {
        ServerId::parse(s).expect("id")
    }

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("id")
    }

    #[test]
    fn only_newer_numbers_pass_per_origin_and_user() {
        let mut p = PresenceSeq::new(100);
        let (a, b) = (sid("srv-a"), sid("srv-b"));
        assert!(p.advance(&a, &uid("alice"), 10));
        assert!(!p.advance(&a, &uid("alice"), 10), "a replay");
        assert!(!p.advance(&a, &uid("alice"), 9), "an older frame");
        assert!(p.advance(&a, &uid("alice"), 11));
        assert!(
            p.advance(&a, &uid("bob"), 5),
            "each user has its own last number"
        );
        assert!(p.advance(&b, &uid("alice"), 1), "and each origin");
    }

    #[test]
    fn a_full_table_forgets_an_origins_oldest_and_keeps_refusing_it() {
        let mut p = PresenceSeq::new(2);
        let a = sid("srv-a");
        assert!(p.advance(&a, &uid("u1"), 1));
        assert!(p.advance(&a, &uid("u2"), 2));
        assert!(p.advance(&a, &uid("u3"), 3));
        assert_eq!(p.len(), 2);
        assert!(!p.advance(&a, &uid("u1"), 1), "forgotten, still refused");
        assert!(p.advance(&a, &uid("u1"), 4), "a newer number passes");
    }
}
