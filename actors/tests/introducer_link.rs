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
    /// The welcome's shape.
    style: Style,
}

/// Welcome shapes seen from other implementations.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// socp's: `assigned_id`, `servers` listing the introducer, `clients`.
    Socp,
    /// `{server_id, server_pub, assigned_id: null}`, no `servers`.
    KeyInServerPub,
    /// Unsigned, `servers` without the introducer.
    UnsignedUnlisted,
}

/// A scripted introducer: every connection's SERVER_HELLO_JOIN is recorded
/// and answered with a SERVER_WELCOME as `answer` says, listing itself.
struct Introducer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    hellos: Arc<Mutex<Vec<String>>>,
    /// How each join connection ended: the joiner's close code, if it sent one.
    ends: Arc<Mutex<Vec<Option<u16>>>>,
}

impl Introducer {
    async fn start(answer: Answer) -> Introducer {
        let (listener, port) = listen().await;
        let hellos: Arc<Mutex<Vec<String>>> = Arc::default();
        let ends: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
        let log = hellos.clone();
        let ended = ends.clone();
        let accepted = accept_all(listener, move |sock| {
            let log = log.clone();
            let ended = ended.clone();
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
                );
                let text = match answer.style {
                    Style::Socp => env
                        .signed(private(answer.signs_with))
                        .expect("signs")
                        .to_json(),
                    Style::KeyInServerPub => {
                        let payload = serde_json::json!({
                            "server_id": INTRODUCER,
                            "server_pub": pk(1).to_wire(),
                            "assigned_id": null,
                        });
                        let sig = private(answer.signs_with)
                            .sign(&socp_protocol::canonical::canonical_bytes(&payload))
                            .expect("signs");
                        serde_json::json!({"type": "SERVER_WELCOME", "from": INTRODUCER,
                            "to": requester.as_str(), "ts": now_ms(), "payload": payload,
                            "sig": sig.as_str()})
                        .to_string()
                    }
                    Style::UnsignedUnlisted => serde_json::json!({
                        "type": "SERVER_WELCOME", "from": INTRODUCER,
                        "to": requester.as_str(), "ts": now_ms(),
                        "payload": {"assigned_id": answer.assigns, "servers": [], "clients": []},
                        "sig": ""})
                    .to_string(),
                };
                conn.send_text(&text).await;
                // Until the joining side closes.
                while conn.next_text().await.is_some() {}
                lock(&ended).push(conn.close_code);
            }
        });
        Introducer {
            port,
            accepted,
            hellos,
            ends,
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
            style: Style::Socp,
        })
        .await;
        let joined = Rec::start();
        let link = join(vec![introducer.bootstrap(pinned)], &joined);
        until("joined", || joined.with(|j| !j.is_empty()).then_some(())).await;
        stopped(&link).await;

        let got = joined.take().await;
        let [Joined(welcome, _)] = got.as_slice() else {
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
        // The join connection ends with a close frame (it was dropped, 1006,
        // and other introducers kept it as our link, dead).
        let ends = until("the join connection ended", || {
            let e = lock(&introducer.ends).clone();
            (!e.is_empty()).then_some(e)
        })
        .await;
        assert_eq!(ends, [Some(1000)]);
    }
}

#[actix::test]
async fn a_welcome_assigning_another_id_joins_nothing() {
    let introducer = Introducer::start(Answer {
        assigns: "srv-z",
        signs_with: 1,
        style: Style::Socp,
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
        style: Style::Socp,
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

/// Welcomes as other implementations write them: the introducer's key in
/// `server_pub`, `assigned_id` null and no `servers` list; or unsigned and
/// not listing the introducer. Not pinned: taken on first use (it was
/// refused: "the welcome does not list its sender"); the introducer is
/// linked to where we reached it when its key is known.
#[actix::test]
async fn welcomes_in_other_shapes_are_taken_when_the_introducer_is_not_pinned() {
    for style in [Style::KeyInServerPub, Style::UnsignedUnlisted] {
        let introducer = Introducer::start(Answer {
            assigns: "srv-a",
            signs_with: 1,
            style,
        })
        .await;
        let joined = Rec::start();
        let link = join(vec![introducer.bootstrap(false)], &joined);
        until("joined", || joined.with(|j| !j.is_empty()).then_some(())).await;
        stopped(&link).await;
        let got = joined.take().await;
        let [Joined(welcome, _)] = got.as_slice() else {
            panic!("one welcome, got {}", got.len());
        };
        assert_eq!(
            welcome.assigned_id,
            sid("srv-a"),
            "ours, as none was assigned"
        );
        let listed: Vec<_> = welcome
            .servers
            .iter()
            .map(|s| (s.server_id.clone(), s.port, s.pubkey.clone()))
            .collect();
        match style {
            Style::KeyInServerPub => {
                assert_eq!(listed, [(sid(INTRODUCER), introducer.port, pk(1))]);
            }
            _ => assert!(listed.is_empty(), "no key to link to it with"),
        }
    }
}

/// A pinned introducer's welcome must be signed with the pinned key, in any
/// shape: an unsigned one is refused and the join retried.
#[actix::test]
async fn an_unsigned_welcome_from_a_pinned_introducer_is_refused() {
    let introducer = Introducer::start(Answer {
        assigns: "srv-a",
        signs_with: 1,
        style: Style::UnsignedUnlisted,
    })
    .await;
    let joined = Rec::start();
    let link = join(vec![introducer.bootstrap(true)], &joined);
    until("a second join", || {
        (introducer.hellos().len() >= 2).then_some(())
    })
    .await;
    assert!(joined.take().await.is_empty(), "nothing joined");
    assert!(link.connected(), "still trying");
}
