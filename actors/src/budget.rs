//! Memory budgets: the bytes of a connection's frames the server still holds
//! (waiting to be checked, signed, or written to their recipient) count
//! against that connection's budget and a server-wide one. A frame that does
//! not fit is refused before anything is kept, so a sender within its frame
//! rate, but faster than the server can sign, is told to slow down instead
//! of growing the server.
//!
//! A [`Charge`] is taken when a frame is accepted and travels with
//! everything made from it (the router's frames, the crypto jobs that sign
//! them); the bytes are given back when the last of those is written or
//! dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes held, and the most that may be.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `bytes`, unless that would pass the limit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which budget refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The sending connection's.
    Connection,
    /// The server's, shared by every connection.
    Server,
}

impl Over {
    /// The label counted on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Over::Connection => "connection",
            Over::Server => "server",
        }
    }
}

/// A connection's budget, charged together with the server's.
#[derive(Debug, Clone)]
pub struct Account {
    conn: Arc<Budget>,
    server: Arc<Budget>,
}

impl Account {
    /// A connection allowed `limit` bytes, within `server`.
    pub fn new(limit: usize, server: Arc<Budget>) -> Self {
        Account {
            conn: Budget::new(limit),
            server,
        }
    }

    /// Charge `bytes` to the connection and the server, or say which is full.
    pub fn charge(&self, bytes: usize) -> Result<Charge, Over> {
        if !self.conn.take(bytes) {
            return Err(Over::Connection);
        }
        if !self.server.take(bytes) {
            self.conn.give_back(bytes);
            return Err(Over::Server);
        }
        Ok(Charge {
            _held: Arc::new(Held {
                bytes,
                conn: self.conn.clone(),
                server: self.server.clone(),
            }),
        })
    }

    /// Bytes this connection holds now.
    pub fn used(&self) -> usize {
        self.conn.used()
    }
}

/// Bytes held for one accepted frame; cloned into everything made from it,
/// given back when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Read by nobody: its drop gives the bytes back.
    _held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    bytes: usize,
    conn: Arc<Budget>,
    server: Arc<Budget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.give_back(self.bytes);
        self.server.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_held_until_its_last_clone_is_dropped() {
        let server = Budget::new(1000);
        let a = Account::new(600, server.clone());
        let first = a.charge(400).unwrap();
        let copy = first.clone();
        assert_eq!((a.used(), server.used()), (400, 400));
        assert_eq!(a.charge(300).unwrap_err(), Over::Connection);
        drop(first);
        assert_eq!(a.used(), 400, "a clone still holds it");
        drop(copy);
        assert_eq!((a.used(), server.used()), (0, 0));
    }

    #[test]
    fn the_server_budget_bounds_every_connection_together() {
        let server = Budget::new(1000);
        let (a, b) = (
            Account::new(600, server.clone()),
            Account::new(600, server.clone()),
        );
        let _x = a.charge(600).unwrap();
        assert_eq!(b.charge(500).unwrap_err(), Over::Server);
        assert_eq!(b.used(), 0, "a refused charge takes nothing");
        let _y = b.charge(400).unwrap();
        assert_eq!(server.used(), 1000);
    }
}
