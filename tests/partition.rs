//! End-to-end: a network partition between two servers, simulated by a TCP
//! proxy on their link that stops relaying, and its healing (SPEC.md §5.6).
//!
//! Each server advertises a second loopback address (`public_host`
//! 127.0.0.2) where a proxy listens on the server's own port and relays to
//! it; every link either server opens, first or after a failure, goes through
//! a proxy. Users connect to the servers directly. (The advertised port is
//! always the listening port, so the proxy needs the same port on another
//! address; Linux routes all of 127/8 to the loopback interface.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use socp::server::{start, RunningServer, ServerConfig};
use socp_protocol::message::ListRequest;
use socp_protocol::{now_ms, Envelope, ServerId, To, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// The address the servers advertise to each other: the proxies listen there.
const PROXY_HOST: &str = "127.0.0.2";

struct ProxyState {
    target: SocketAddr,
    /// While set, bytes are not relayed and new connections are dropped.
    partitioned: AtomicBool,
    /// Bumped at each partition: connections from before it stay dead.
    epoch: AtomicU64,
    /// Connections dropped at once during a partition (dial attempts).
    refused: AtomicUsize,
    /// Connections relayed.
    relayed: AtomicUsize,
    /// The relay tasks, aborted (closing their sockets) by [`Proxy::cut`].
    tasks: Mutex<Vec<actix_rt::task::JoinHandle<()>>>,
    /// Write halves whose reading side ended during a black hole: kept open,
    /// so that the other end sees no end of stream either.
    parked: Mutex<Vec<OwnedWriteHalf>>,
}

impl ProxyState {
    fn live(&self, epoch: u64) -> bool {
        !self.partitioned.load(Ordering::SeqCst) && self.epoch.load(Ordering::SeqCst) == epoch
    }
}

/// A TCP proxy standing in for the network between two servers.
struct Proxy {
    state: Arc<ProxyState>,
    accept: actix_rt::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on [`PROXY_HOST`] at `server`'s port, relaying to `server`.
    async fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((PROXY_HOST, server.port()))
            .await
            .expect("binds the proxy (needs 127.0.0.2 on the loopback interface)");
        let state = Arc::new(ProxyState {
            target: server,
            partitioned: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            refused: AtomicUsize::new(0),
            relayed: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
            parked: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = actix_rt::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if st.partitioned.load(Ordering::SeqCst) {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(st.target).await else {
                    continue;
                };
                st.relayed.fetch_add(1, Ordering::SeqCst);
                let epoch = st.epoch.load(Ordering::SeqCst);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                let up = actix_rt::spawn(pipe(ir, ow, st.clone(), epoch));
                let down = actix_rt::spawn(pipe(or, iw, st.clone(), epoch));
                st.tasks.lock().expect("lock").extend([up, down]);
            }
        });
        Proxy { state, accept }
    }

    /// Partition by black hole: every byte on the current connections is
    /// lost from now on (nothing is closed: only the heartbeat timeout can
    /// tell), and new connections are dropped at once.
    fn black_hole(&self) {
        self.state.partitioned.store(true, Ordering::SeqCst);
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Partition by cutting: the current connections are closed, new ones
    /// dropped at once.
    fn cut(&self) {
        self.black_hole();
        for task in self.state.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
        self.state.parked.lock().expect("lock").clear();
    }

    /// Relay new connections again (connections from before stay dead).
    fn heal(&self) {
        self.state.partitioned.store(false, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    fn relayed(&self) -> usize {
        self.state.relayed.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.state.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

/// Copy bytes one way while the connection is live; discard them otherwise.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: Arc<ProxyState>,
    epoch: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if state.live(epoch) {
                    let _ = to.shutdown().await;
                } else {
                    state.parked.lock().expect("lock").push(to);
                }
                return;
            }
            Ok(n) => {
                if state.live(epoch) && to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn removes(user: &UserId) -> impl Fn(&Envelope) -> bool {
    let id = user.to_string();
    move |e: &Envelope| e.msg_type() == "USER_REMOVE" && e.payload()["user_id"] == id.as_str()
}

/// The user ids in `user`'s `/list`.
async fn listing(user: &mut User) -> Vec<String> {
    let request = Envelope::new(&user.id, To::Id("server".into()), now_ms(), &ListRequest {});
    user.peer.send(&request).await;
    let got = user
        .peer
        .expect(WAIT, "LIST_RESPONSE", is("LIST_RESPONSE"))
        .await;
    got.payload()["users"]
        .as_array()
        .expect("a list of users")
        .iter()
        .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
        .collect()
}

/// Two servers whose links run only through proxies, one user on each and
/// another on the first.
struct World {
    a: RunningServer,
    b: RunningServer,
    to_a: Proxy,
    to_b: Proxy,
    alice: User,
    carol: User,
    bob: User,
}

impl World {
    async fn new(keys: (usize, usize), users: (usize, usize, usize)) -> World {
        let behind_proxy = |key: usize, bootstrap: &[SocketAddr]| ServerConfig {
            public_host: Some(PROXY_HOST.into()),
            ..config(key, None, bootstrap)
        };
        let a = start(behind_proxy(keys.0, &[])).await.expect("a starts");
        let to_a = Proxy::start(a.addr).await;
        let via_proxy = SocketAddr::new(PROXY_HOST.parse().expect("an address"), a.addr.port());
        let b = start(behind_proxy(keys.1, &[via_proxy]))
            .await
            .expect("b starts");
        let to_b = Proxy::start(b.addr).await;
        let world = World {
            alice: User::join(a.addr, users.0).await,
            carol: User::join(a.addr, users.1).await,
            bob: User::join(b.addr, users.2).await,
            a,
            b,
            to_a,
            to_b,
        };
        world.linked().await;
        world
    }

    /// Wait until each server has its link to the other up.
    async fn linked(&self) {
        for (s, other) in [(&self.a, &self.b), (&self.b, &self.a)] {
            eventually(WAIT, "linked to the other", || async {
                link_state(&s.status().await, &other.server_id).as_deref() == Some("up")
            })
            .await;
        }
    }

    /// Wait until each server has declared the other's link down.
    async fn split(&self) {
        for (s, other) in [(&self.a, &self.b), (&self.b, &self.a)] {
            eventually(WAIT, "the link to the other declared down", || async {
                link_state(&s.status().await, &other.server_id).as_deref() == Some("down")
            })
            .await;
        }
    }

    /// Wait until both servers know all three users.
    async fn converged(&self) {
        let users = [&self.alice.id, &self.carol.id, &self.bob.id];
        for s in [&self.a, &self.b] {
            eventually(WAIT, "every user known on both sides", || async {
                let status = s.status().await;
                users.iter().all(|u| knows(&status, u)) && users_known(&status) == 3
            })
            .await;
        }
    }
}

/// A DM from `from` to `to` arrives exactly once.
async fn dm_once(from: &mut User, to: &mut User, text: &str) {
    let dm = from.dm(&to.id, to.key.public_key(), text);
    from.peer.send(&dm).await;
    let got = to.peer.expect(WAIT, "the DM", is("USER_DELIVER")).await;
    assert_eq!(to.open(&got), text);
}

/// The partition as both sides see it, and its healing.
async fn partition_and_heal(mut w: World, partition: impl Fn(&World)) {
    w.converged().await;
    for u in [&mut w.alice, &mut w.carol] {
        assert!(u.sees_user(&w.bob.id, WAIT).await, "{} sees bob", u.id);
    }
    assert!(w.bob.sees_user(&w.alice.id, WAIT).await, "bob sees alice");
    dm_once(&mut w.alice, &mut w.bob, "before the partition").await;
    let relayed = w.to_a.relayed() + w.to_b.relayed();
    assert!(relayed >= 1, "the link runs through a proxy");

    partition(&w);
    w.split().await;
    // Each side removed the other's users and told its own.
    for u in [&mut w.alice, &mut w.carol] {
        u.peer
            .expect(WAIT, "USER_REMOVE for bob", removes(&w.bob.id))
            .await;
    }
    w.bob
        .peer
        .expect(WAIT, "USER_REMOVE for alice", removes(&w.alice.id))
        .await;
    w.bob
        .peer
        .expect(WAIT, "USER_REMOVE for carol", removes(&w.carol.id))
        .await;
    let list = listing(&mut w.alice).await;
    assert!(
        !list.contains(&w.bob.id.to_string()),
        "alice's /list: {list:?}"
    );
    assert_eq!(listing(&mut w.bob).await, [w.bob.id.to_string()]);
    assert_eq!(users_known(&w.a.status().await), 2);
    assert_eq!(users_known(&w.b.status().await), 1);
    // A DM across the partition is refused at once, not queued.
    let dm = w
        .alice
        .dm(&w.bob.id, w.bob.key.public_key(), "into the void");
    w.alice.peer.send(&dm).await;
    w.alice
        .peer
        .expect(WAIT, "USER_NOT_FOUND", error_code("USER_NOT_FOUND"))
        .await;
    // Each side keeps serving its own users.
    dm_once(&mut w.carol, &mut w.alice, "same side").await;
    // Both sides keep trying to reach each other.
    eventually(WAIT, "both sides retry through the partition", || async {
        w.to_a.refused() >= 1 && w.to_b.refused() >= 1
    })
    .await;

    w.to_a.heal();
    w.to_b.heal();
    w.linked().await;
    w.converged().await;
    for u in [&mut w.alice, &mut w.carol] {
        assert!(
            u.sees_user(&w.bob.id, WAIT).await,
            "{} sees bob again",
            u.id
        );
    }
    assert!(
        w.bob.sees_user(&w.alice.id, WAIT).await,
        "bob sees alice again"
    );
    assert!(
        w.bob.sees_user(&w.carol.id, WAIT).await,
        "bob sees carol again"
    );
    let mut list = listing(&mut w.bob).await;
    list.sort();
    let mut everyone = [&w.alice.id, &w.carol.id, &w.bob.id].map(UserId::to_string);
    everyone.sort();
    assert_eq!(list, everyone, "bob's /list after the heal");

    // DMs cross again, both ways, each delivered once.
    dm_once(&mut w.alice, &mut w.bob, "after the heal").await;
    dm_once(&mut w.bob, &mut w.carol, "and back").await;
    for u in [&mut w.alice, &mut w.carol, &mut w.bob] {
        assert_eq!(
            u.peer
                .count(Duration::from_secs(1), is("USER_DELIVER"))
                .await,
            0,
            "{} got a DM twice",
            u.id
        );
        assert!(u.peer.closed.is_none(), "{} stays connected", u.id);
    }
    // One link between the two, not two.
    for s in [&w.a, &w.b] {
        assert_eq!(links_up(&s.status().await), 1);
    }
}

#[actix_rt::test]
async fn a_black_holed_link_is_declared_dead_on_both_sides_and_relinks_when_healed() {
    // Nothing is closed: the link goes silent, and only the heartbeat
    // timeout (1.5 s here) can tell.
    let w = World::new((0, 1), (10, 11, 12)).await;
    partition_and_heal(w, |w| {
        w.to_a.black_hole();
        w.to_b.black_hole();
    })
    .await;
}

#[actix_rt::test]
async fn a_cut_link_is_dropped_on_both_sides_and_relinks_when_healed() {
    // The connections are closed under the servers' feet, and every
    // reconnection is refused until the network heals.
    let w = World::new((2, 3), (13, 14, 15)).await;
    partition_and_heal(w, |w| {
        w.to_a.cut();
        w.to_b.cut();
    })
    .await;
}

/// Where a `/status` snapshot of server `s` locates `user`: a server id.
fn location(s: &ServerId, status: &serde_json::Value, user: &UserId) -> Option<String> {
    let id = user.as_str();
    if status["local_users"]
        .as_array()
        .is_some_and(|l| l.iter().any(|u| u == id))
    {
        return Some(s.to_string());
    }
    status["remote_users"].as_array().and_then(|r| {
        r.iter()
            .find(|u| u["user_id"] == id)
            .and_then(|u| u["server_id"].as_str().map(str::to_owned))
    })
}

/// During a partition `a` no longer knows bob, so it lets someone else attach
/// with bob's (ephemeral) id and another key. After the heal neither claim may
/// take the id over silently (SPEC.md §5.3) and neither server can tell which
/// came first: both holders are told NAME_IN_USE and closed, both servers
/// drop the id, and the first to attach again has it, everywhere.
#[actix_rt::test]
async fn an_id_claimed_on_both_sides_of_a_partition_is_freed_then_has_one_location() {
    let mut w = World::new((4, 5), (16, 17, 18)).await;
    w.converged().await;
    w.to_a.cut();
    w.to_b.cut();
    w.split().await;
    let bob = w.bob.id.clone();
    let mut mallory = User::hello(w.a.addr, 19, bob.clone()).await;
    mallory.peer.expect(WAIT, "hello ACK", is("ACK")).await;
    w.to_a.heal();
    w.to_b.heal();
    w.linked().await;
    for (who, u) in [("bob", &mut w.bob), ("mallory", &mut mallory)] {
        u.peer
            .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
            .await;
        assert_eq!(
            u.peer.closed_within(WAIT).await,
            Some(1008),
            "{who} is closed"
        );
    }
    eventually(WAIT, "neither server locates bob", || async {
        location(&w.a.server_id, &w.a.status().await, &bob).is_none()
            && location(&w.b.server_id, &w.b.status().await, &bob).is_none()
    })
    .await;
    // Bob comes back first: the whole mesh has him at b, with his key.
    let mut again = User::hello(w.b.addr, 18, bob.clone()).await;
    again.peer.expect(WAIT, "hello ACK", is("ACK")).await;
    let b = w.b.server_id.to_string();
    eventually(WAIT, "both servers locate bob at b", || async {
        location(&w.a.server_id, &w.a.status().await, &bob).as_ref() == Some(&b)
            && location(&w.b.server_id, &w.b.status().await, &bob).as_ref() == Some(&b)
    })
    .await;
    dm_once(&mut w.alice, &mut again, "to the one bob").await;
}
