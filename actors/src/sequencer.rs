//! In-order release of work that completes out of order.
//!
//! Signing and verifying run in parallel on the crypto pool, but a link must
//! write frames in the order they were queued (file chunks, an advertise before
//! its remove) and handle received frames in the order they arrived. Each item
//! takes a ticket when queued; results come back in any order; `pop_ready`
//! releases them strictly in ticket order.

use std::collections::VecDeque;

/// A ticket for one queued item.
pub type Ticket = u64;

/// Releases completed items in the order their tickets were taken.
#[derive(Debug)]
pub struct Sequencer<T> {
    /// Ticket of the item at the front of `slots`.
    head: Ticket,
    /// One slot per ticket from `head` on; `None` until that item completes.
    slots: VecDeque<Option<T>>,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer {
            head: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Sequencer<T> {
    /// An empty sequencer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next ticket.
    pub fn take(&mut self) -> Ticket {
        self.slots.push_back(None);
        self.head + self.slots.len() as u64 - 1
    }

    /// Record the result for `ticket`. Unknown or already-released tickets are ignored.
    pub fn complete(&mut self, ticket: Ticket, item: T) {
        if let Some(offset) = ticket.checked_sub(self.head) {
            if let Some(slot) = usize::try_from(offset)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            {
                *slot = Some(item);
            }
        }
    }

    /// Release the next item if it, and everything before it, has completed.
    pub fn pop_ready(&mut self) -> Option<T> {
        match self.slots.front() {
            Some(Some(_)) => {
                self.head += 1;
                self.slots.pop_front().flatten()
            }
            _ => None,
        }
    }

    /// Items queued and not yet released.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_ticket_order_whatever_the_completion_order() {
        let mut s = Sequencer::new();
        let t: Vec<Ticket> = (0..4).map(|_| s.take()).collect();
        s.complete(t[2], "c");
        s.complete(t[1], "b");
        assert_eq!(s.pop_ready(), None, "a is not done yet");
        s.complete(t[0], "a");
        assert_eq!(s.pop_ready(), Some("a"));
        assert_eq!(s.pop_ready(), Some("b"));
        assert_eq!(s.pop_ready(), Some("c"));
        assert_eq!(s.pop_ready(), None);
        assert_eq!(s.len(), 1);
        s.complete(t[3], "d");
        assert_eq!(s.pop_ready(), Some("d"));
        assert!(s.is_empty());
    }

    #[test]
    fn stale_and_unknown_tickets_are_ignored() {
        let mut s = Sequencer::new();
        let a = s.take();
        s.complete(a, 1);
        assert_eq!(s.pop_ready(), Some(1));
        s.complete(a, 2);
        s.complete(99, 3);
        assert_eq!(s.pop_ready(), None);
        let b = s.take();
        assert_eq!(b, 1);
        s.complete(b, 4);
        assert_eq!(s.pop_ready(), Some(4));
    }
}
