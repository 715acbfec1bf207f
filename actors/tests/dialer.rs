//! The Dialer at the actor level: a fake router behind its links' ports, a
//! recorder as its liveness port, and scripted WebSocket servers on loopback
//! ports as the servers it dials (SPEC.md §5.2, §5.6).
//!
//! Waiting: for an expected effect, with a generous deadline that only turns
//! a hang into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;
use socp_actors::crypto::CryptoPool;
use socp_actors::heartbeat::Activity;
use socp_actors::peer::Dialer;
use socp_actors::router::{Dial, LinkEvent};
use socp_actors::routing::Peer;
use socp_actors::{Settings, Shared};
use socp_protocol::{fixtures, Envelope, To};

use common::fakes::{Call, Router, Script, Store};
use common::loopback::{accept_all, closed_port, listen, WsConn};
use common::{lock, pk, sid, Rec};

/// Wait until `f` has something, or fail after a long deadline.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Server srv-b (fixture key 1) at a loopback port.
fn srv_b(port: u16) -> Peer {
    Peer {
        server_id: sid("srv-b"),
        host: "127.0.0.1".into(),
        port,
        pubkey: pk(1),
    }
}

/// A dialer of srv-a (fixture key 0) over a fake router.
struct Node {
    dialer: Addr<Dialer>,
    router: Router,
    liveness: Rec<LinkEvent>,
    _store: Store,
    _activity: Rec<Activity>,
}

impl Node {
    fn start() -> Node {
        let router = Router::start(Script::default());
        let store = Store::start(Vec::new());
        let activity = Rec::start();
        let liveness = Rec::start();
        let shared = Shared::new(
            router.port(),
            CryptoPool::start(fixtures::key(0), 1),
            store.port(),
            activity.recipient(),
            sid("srv-a"),
            ("127.0.0.1".into(), 9000),
            Settings::default(),
        );
        let dialer = Dialer::new(shared, liveness.recipient()).start();
        Node {
            dialer,
            router,
            liveness,
            _store: store,
            _activity: activity,
        }
    }

    async fn dial(&self, peer: Peer) {
        self.dialer
            .send(Dial(peer, false))
            .await
            .expect("dialer alive");
    }

    /// The links the router was told are up, as `(server, opened_by_me)`.
    fn links_up(&self) -> Vec<(String, bool)> {
        self.router
            .calls_now()
            .into_iter()
            .filter_map(|c| match c {
                Call::LinkUp {
                    server_id,
                    opened_by_me,
                } => Some((server_id.to_string(), opened_by_me)),
                _ => None,
            })
            .collect()
    }

    fn downs(&self) -> usize {
        self.liveness.with(|l| {
            l.iter()
                .filter(|e| matches!(e, LinkEvent::Down(id) if *id == sid("srv-b")))
                .count()
        })
    }
}

/// What a scripted server read on each connection, in accept order.
type Heard = Arc<Mutex<Vec<Vec<String>>>>;

/// A scripted server on `listener`: answers every upgrade and records every
/// text frame each connection sends, keeping the connection open.
fn recording_server(listener: tokio::net::TcpListener) -> (Arc<AtomicUsize>, Heard) {
    let heard: Heard = Arc::default();
    let log = heard.clone();
    let accepted = accept_all(listener, move |sock| {
        let log = log.clone();
        async move {
            let at = {
                let mut log = lock(&log);
                log.push(Vec::new());
                log.len() - 1
            };
            let Some(mut conn) = WsConn::upgrade(sock).await else {
                return;
            };
            while let Some(text) = conn.next_text().await {
                lock(&log)[at].push(text);
            }
        }
    });
    (accepted, heard)
}

#[actix::test]
async fn dialling_a_closed_port_reports_the_server_down() {
    let node = Node::start();
    let port = closed_port();
    node.dial(srv_b(port)).await;
    until("srv-b down", || (node.downs() == 1).then_some(())).await;
    // The failed attempt is over: dialling again tries again.
    node.dial(srv_b(port)).await;
    until("srv-b down again", || (node.downs() == 2).then_some(())).await;
    assert_eq!(node.liveness.take().await.len(), 2, "nothing but the downs");
    assert!(
        node.router.calls().await.is_empty(),
        "no link, nothing to tell"
    );
}

#[actix::test]
async fn a_dialled_server_gets_our_hello_and_the_router_a_link_we_opened() {
    let node = Node::start();
    let (listener, port) = listen().await;
    let (accepted, heard) = recording_server(listener);
    node.dial(srv_b(port)).await;
    until("the link up", || {
        (!node.links_up().is_empty()).then_some(())
    })
    .await;
    assert_eq!(node.links_up(), [("srv-b".to_owned(), true)]);

    let texts = until("our hello", || {
        let heard = lock(&heard);
        heard.first().filter(|texts| !texts.is_empty()).cloned()
    })
    .await;
    let hello = Envelope::parse(texts[0].as_bytes()).expect("parses");
    assert_eq!(hello.msg_type(), "SERVER_HELLO_LINK");
    assert_eq!(hello.from(), "srv-a");
    assert_eq!(hello.to(), &To::from(&sid("srv-b")));
    hello.verify(&pk(0)).expect("signed with our key");
    assert_eq!(
        hello.payload(),
        &json!({ "host": "127.0.0.1", "port": 9000, "pubkey": pk(0).to_wire(),
                 "socp": {"v": 1} }),
        "where we are reached, our key, and that we speak socp"
    );
    // DIRECTORY_SYNC waits until the server says it speaks socp (this one
    // says nothing): servers of other implementations never get it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let texts = lock(&heard).first().cloned().unwrap_or_default();
    assert!(
        texts.iter().all(|t| !t.contains("DIRECTORY_SYNC")),
        "no directory sync to a server not known to speak socp"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(node.downs(), 0);
}

#[actix::test]
async fn two_dials_of_the_same_server_at_once_open_one_connection() {
    let node = Node::start();
    let (first, first_port) = listen().await;
    let (first_accepted, _) = recording_server(first);
    // Both handled before either connection can be up (the handshake needs
    // the server's answer): the second finds the first in flight.
    node.dial(srv_b(first_port)).await;
    node.dial(srv_b(first_port)).await;
    until("the link up", || {
        (!node.links_up().is_empty()).then_some(())
    })
    .await;

    // Once that dial is over, the same server can be dialled again: at
    // another address, so its connection tells the two apart. A second
    // connection from the dials at once would have been made long before.
    let (second, second_port) = listen().await;
    let (second_accepted, second_heard) = recording_server(second);
    node.dial(srv_b(second_port)).await;
    until("the hello at the second address", || {
        lock(&second_heard)
            .first()
            .is_some_and(|t| !t.is_empty())
            .then_some(())
    })
    .await;
    until("the second link up", || {
        (node.links_up().len() >= 2).then_some(())
    })
    .await;

    assert_eq!(first_accepted.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(second_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        node.links_up(),
        [("srv-b".to_owned(), true), ("srv-b".to_owned(), true)]
    );
    assert_eq!(node.downs(), 0);
}
