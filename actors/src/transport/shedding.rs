//! Descriptors are the one resource an idle connection costs: when the
//! server nears its limit, the oldest connections that have not identified
//! yet (no first frame) are closed to make room, so a crowd of idle sockets
//! cannot lock real users out. Identified users and links are never shed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix::prelude::*;

/// Close: the server is short of room; try again later (RFC 6455 registry:
/// 1013, "Try Again Later").
pub const SHED_CODE: u16 = 1013;

/// Tell an unidentified connection to close with [`SHED_CODE`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shed;

/// The WebSocket connections a server holds, and which can be shed.
#[derive(Debug)]
pub struct Connections {
    /// Past this many open connections, unidentified ones are shed.
    high_water: usize,
    open: AtomicUsize,
    next: AtomicU64,
    /// Connections not identified yet, oldest first.
    unidentified: Mutex<VecDeque<Waiting>>,
    shed: AtomicU64,
}

impl Connections {
    /// A registry that sheds past `high_water` open connections.
    pub fn new(high_water: usize) -> Arc<Self> {
        Arc::new(Connections {
            high_water: high_water.max(1),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            unidentified: Mutex::default(),
            shed: AtomicU64::new(0),
        })
    }

    /// The high-water mark for a process allowed `limit` descriptors: room
    /// kept for the database, listeners, outbound links and the like.
    pub fn high_water_for(limit: u64) -> usize {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let reserve = (limit / 8).max(64);
        limit.saturating_sub(reserve).max(16)
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        self.unidentified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection opened (not identified yet). If that makes too many,
    /// the oldest unidentified connections are told to close. The ticket
    /// counts the connection until it is dropped.
    pub fn opened(self: &Arc<Self>, conn: Recipient<Shed>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let counted = Arc::new(AtomicBool::new(true));
        let mut waiting = self.lock();
        for _ in self.high_water..open {
            let Some(oldest) = waiting.pop_front() else {
                break;
            };
            // Counted closed now, not when it is gone: the next connection
            // must not shed another for the same excess.
            if oldest.counted.swap(false, Ordering::AcqRel) {
                self.open.fetch_sub(1, Ordering::AcqRel);
            }
            self.shed.fetch_add(1, Ordering::Relaxed);
            oldest.conn.do_send(Shed);
        }
        waiting.push_back(Waiting {
            id,
            conn,
            counted: counted.clone(),
        });
        Ticket {
            id,
            counted,
            conns: Arc::clone(self),
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    fn forget(&self, id: u64) {
        let mut waiting = self.lock();
        if let Some(at) = waiting.iter().position(|w| w.id == id) {
            waiting.remove(at);
        }
    }
}

/// An unidentified connection that may be shed.
#[derive(Debug)]
struct Waiting {
    id: u64,
    conn: Recipient<Shed>,
    /// Still counted open (shared with its ticket).
    counted: Arc<AtomicBool>,
}

/// One open connection in [`Connections`]; dropping it counts it closed.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    counted: Arc<AtomicBool>,
    conns: Arc<Connections>,
}

impl Ticket {
    /// The connection identified: it is no longer a candidate to shed.
    pub fn identified(&self) {
        self.conns.forget(self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns.forget(self.id);
        if self.counted.swap(false, Ordering::AcqRel) {
            self.conns.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(Arc<Mutex<u32>>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<Shed> for Probe {
        type Result = ();
        fn handle(&mut self, _: Shed, _: &mut Context<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    fn probe() -> (Recipient<Shed>, Arc<Mutex<u32>>) {
        let hits = Arc::new(Mutex::new(0));
        (Probe(hits.clone()).start().recipient(), hits)
    }

    #[actix::test]
    async fn past_the_mark_the_oldest_unidentified_connection_is_shed() {
        let conns = Connections::new(2);
        let (a, a_hits) = probe();
        let (b, b_hits) = probe();
        let (c, c_hits) = probe();
        let (d, d_hits) = probe();
        let ta = conns.opened(a);
        ta.identified(); // a user: never shed
        let _tb = conns.opened(b);
        let _tc = conns.opened(c); // 3 open: b, the oldest unidentified, goes
        let _td = conns.opened(d); // 4 open: c goes
        actix::clock::sleep(std::time::Duration::from_millis(50)).await;
        let hits = |h: &Arc<Mutex<u32>>| *h.lock().unwrap();
        assert_eq!(
            [hits(&a_hits), hits(&b_hits), hits(&c_hits), hits(&d_hits)],
            [0, 1, 1, 0]
        );
        // The shed ones count as closed at once: the next connection does
        // not shed another for the same excess.
        assert_eq!((conns.open(), conns.shed()), (2, 2));
        let (e, e_hits) = probe();
        let _te = conns.opened(e); // 3 open: d goes, e stays
        actix::clock::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!([hits(&d_hits), hits(&e_hits)], [1, 0]);
        drop(ta);
        assert_eq!(conns.open(), 1, "a dropped ticket is a closed connection");
    }

    #[test]
    fn the_mark_keeps_room_for_the_rest_of_the_server() {
        assert_eq!(Connections::high_water_for(1024), 896);
        assert_eq!(Connections::high_water_for(256), 192);
        assert_eq!(Connections::high_water_for(1 << 20), (1 << 20) - (1 << 17));
    }
}
