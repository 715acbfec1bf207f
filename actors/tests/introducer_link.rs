//! IntroducerLink at the actor level (SPEC.md §5.1): a scripted introducer on
//! a loopback port answers our SERVER_HELLO_JOIN, and a recorder stands in
//! for the router's `joined` port.
//!
//! Waiting: for an expected effect, with a generous deadline that only turns
//! a hang into a failure; retries are counted as connections, never timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use socp_actors::crypto::CryptoPool;
use socp_actors::introducer::{Bootstrap, IntroducerLink};
use socp_actors::router::Joined;
use socp_protocol::message::{ServerAddress, ServerInfo, ServerWelcome};
use socp_protocol::{fixtures, now_ms, Envelope, Message, To};

use common::loopback::{accept_all, listen, WsConn};
use common::{lock, pk, private, sid, Rec};

/// The introducer's id; its fixture key is 1.
const INTRODUCER: &str = "srv-i";

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

/// How the scripted introducer answers a join.
#[derive(Clone, Copy)]
struct Answer {
    /// The id it assigns.
    assigns: &'static str,
    /// The fixture key it signs its welcome with.
    signs_with: usize,
}

/// A scripted introducer: every connection's SERVER_HELLO_JOIN is recorded
/// and answered with a SERVER_WELCOME as `answer` says, listing itself.
struct Introducer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    hellos: Arc<Mutex<Vec<String>>>,
}

impl Introducer {
    async fn start(answer: Answer) -> Introducer {
        let (listener, port) = listen().await;
        let hellos: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = hellos.clone();
        let accepted = accept_all(listener, move |sock| {
            let log = log.clone();
            async move {
                let Some(mut conn) = WsConn::upgrade(sock).await else {
                    return;
                };
                let Some(hello) = conn.next_text().await else {
                    return;
                };
                let requester = Envelope::parse(hello.as_bytes())
                    .map(|e| e.from_server())
                    .ok();
                lock(&log).push(hello);
                let Some(requester) = requester else { return };
                let welcome = Message::ServerWelcome(ServerWelcome {
                    assigned_id: sid(answer.assigns),
                    servers: vec![ServerInfo {
                        server_id: sid(INTRODUCER),
                        host: "127.0.0.1".into(),
                        port,
                        pubkey: pk(1),
                    }],
                    clients: Vec::new(),
                });
                let env = Envelope::from_message(
                    &sid(INTRODUCER),
                    To::from(&requester),
                    now_ms(),
                    &welcome,
                )
                .signed(private(answer.signs_with))
                .expect("signs");
                conn.send_text(&env.to_json()).await;
                // Until the joining side closes.
                while conn.next_text().await.is_some() {}
            }
        });
        Introducer {
            port,
            accepted,
            hellos,
        }
    }

    fn bootstrap(&self, pinned: bool) -> Bootstrap {
        Bootstrap {
            host: "127.0.0.1".into(),
            port: self.port,
            pubkey: pinned.then(|| pk(1)),
        }
    }

    fn hellos(&self) -> Vec<String> {
        lock(&self.hellos).clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// srv-a (fixture key 0, reached at 127.0.0.1:9000) joining through `list`,
/// retrying every 10 ms (doubling).
fn join(list: Vec<Bootstrap>, joined: &Rec<Joined>) -> Addr<IntroducerLink> {
    IntroducerLink::new(
        CryptoPool::start(fixtures::key(0), 1),
        joined.recipient(),
        list,
        sid("srv-a"),
        ServerAddress {
            host: "127.0.0.1".into(),
            port: 9000,
            pubkey: pk(0),
        },
        1 << 20,
        Duration::from_millis(10),
    )
    .start()
}

/// Wait until the link has stopped.
async fn stopped(link: &Addr<IntroducerLink>) {
    until("the link stopped", || (!link.connected()).then_some(())).await;
}

#[actix::test]
async fn a_welcome_assigning_our_id_reaches_the_router() {
    // With the introducer's key pinned, and trusting the key its welcome lists.
    for pinned in [true, false] {
        let introducer = Introducer::start(Answer {
            assigns: "srv-a",
            signs_with: 1,
        })
        .await;
        let joined = Rec::start();
        let link = join(vec![introducer.bootstrap(pinned)], &joined);
        until("joined", || joined.with(|j| !j.is_empty()).then_some(())).await;
        stopped(&link).await;

        let got = joined.take().await;
        let [Joined(welcome)] = got.as_slice() else {
            panic!("one welcome, got {}", got.len());
        };
        assert_eq!(welcome.assigned_id, sid("srv-a"));
        assert_eq!(welcome.servers[0].server_id, sid(INTRODUCER));

        // What the introducer got: our hello, signed by the key it carries.
        let hellos = introducer.hellos();
        assert_eq!(hellos.len(), 1, "pinned: {pinned}");
        let hello = Envelope::parse(hellos[0].as_bytes()).expect("parses");
        assert_eq!(hello.msg_type(), "SERVER_HELLO_JOIN");
        assert_eq!(hello.from(), "srv-a");
        assert_eq!(
            hello.to(),
            &To::HostPort(format!("127.0.0.1:{}", introducer.port))
        );
        hello.verify(&pk(0)).expect("signed with our key");
        assert_eq!(hello.payload()["pubkey"], pk(0).to_wire());
        assert_eq!(hello.payload()["port"], 9000);
        assert_eq!(introducer.accepted(), 1);
    }
}

#[actix::test]
async fn a_welcome_assigning_another_id_joins_nothing() {
    let introducer = Introducer::start(Answer {
        assigns: "srv-z",
        signs_with: 1,
    })
    .await;
    let joined = Rec::start();
    let link = join(vec![introducer.bootstrap(true)], &joined);
    // Another server holds our id: the link gives up (no retry).
    stopped(&link).await;
    assert!(joined.take().await.is_empty(), "nothing joined");
    assert_eq!(introducer.hellos().len(), 1);
    assert_eq!(introducer.accepted(), 1);
}

#[actix::test]
async fn a_welcome_not_signed_by_the_pinned_key_is_refused_and_the_join_retried() {
    let introducer = Introducer::start(Answer {
        assigns: "srv-a",
        signs_with: 2,
    })
    .await;
    let joined = Rec::start();
    let link = join(vec![introducer.bootstrap(true)], &joined);
    // A retry starts only once the first answer was judged: had that one
    // been taken, the link would have stopped instead.
    until("a second join", || {
        (introducer.hellos().len() >= 2).then_some(())
    })
    .await;
    assert!(joined.take().await.is_empty(), "nothing joined");
    assert!(link.connected(), "still trying");
}

#[actix::test]
async fn with_no_introducer_answering_it_keeps_retrying() {
    // Accepts each connection, then closes it before the handshake.
    let (listener, port) = listen().await;
    let accepted = accept_all(listener, |sock| async move { drop(sock) });
    let joined = Rec::start();
    let link = join(
        vec![Bootstrap {
            host: "127.0.0.1".into(),
            port,
            pubkey: Some(pk(1)),
        }],
        &joined,
    );
    until("three attempts", || {
        (accepted.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(joined.take().await.is_empty());
    assert!(link.connected(), "still trying");
}
