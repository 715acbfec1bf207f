//! PeerLink with a recorder standing in for its socket (SPEC.md §5.2): a real
//! Router (recorder ports), a real CryptoPool and Store, frames signed with
//! fixture keys. A recorder session ("alice") attached to the router shows
//! what reached the router.
//!
//! Waiting: the link verifies on the crypto pool's threads, so tests wait for
//! an expected effect (with a generous deadline that only turns a hang into a
//! failure). To show that a bad frame had *no* effect, a good frame is sent
//! after it: the link handles frames strictly in order, so once the good
//! frame's effect is seen, the bad one was handled. A marker frame queued on
//! the link's outbound queue shows, when the transport gets it, that every
//! frame queued before it (error replies) was written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};
use socp_actors::crypto::{CryptoPool, FrameText, SignedFrame};
use socp_actors::heartbeat::Activity;
use socp_actors::peer::PeerLink;
use socp_actors::ports::{RouterPort, StorePort};
use socp_actors::router::{
    Attach, Dial, IsOnline, LinkEvent, Outbound, Remember, Router, RouterPorts, ServerKey,
};
use socp_actors::routing::{Conn, RouterConfig, RouterState, StoreOp};
use socp_actors::store::Store;
use socp_actors::transport::{close, Inbound, Wire};
use socp_actors::{Settings, Shared};
use socp_protocol::message::{ServerAddress, ServerHelloJoin, ServerHelloLink, UserAdvertise};
use socp_protocol::{fixtures, now_ms, Envelope, Message, To};

use common::{peer, pk, private, sid, uid, Plain, Rec};

const MARKER: &str = "--marker--";

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

/// `msg` from `from`, stamped now, signed with fixture key `key`.
fn signed(from: &str, key: usize, to: To, msg: &Message) -> FrameText {
    let env = Envelope::from_message(&sid(from), to, now_ms(), msg);
    // The servers these tests stand in for are socp servers: they say so in
    // their hellos and announces (SPEC.md §11).
    let env = match msg {
        Message::ServerHelloLink(_) | Message::ServerHelloJoin(_) | Message::ServerAnnounce(_) => {
            socp_protocol::dialect::with_capability(env)
        }
        _ => env,
    };
    FrameText::from(env.signed(private(key)).expect("signs").to_json())
}

fn advertise(user: &str, server: &str, n: usize) -> Message {
    Message::UserAdvertise(UserAdvertise {
        user_id: uid(user),
        server_id: sid(server),
        pubkey: pk(n),
        meta: None,
        seq: None,
    })
}

/// Server `srv-a` (fixture key 0): router, pools, and alice attached.
struct Node {
    router: Addr<Router>,
    shared: Shared,
    liveness: Rec<LinkEvent>,
    activity: Rec<Activity>,
    alice: Rec<Outbound>,
    _store: Rec<StoreOp>,
    _dialer: Rec<Dial>,
}

impl Node {
    async fn start() -> Node {
        let me = sid("srv-a");
        let state = RouterState::new(
            RouterConfig {
                me: me.clone(),
                host: "127.0.0.1".into(),
                port: 9000,
                pubkey: pk(0),
                introducer_only: false,
                seen_capacity: 4096,
                public_version: 0,
                presence_seq: 1,
                directory_cap: 10_000,
                budgets: Default::default(),
                allowlist: None,
            },
            std::sync::Arc::new(Plain),
        );
        let store_ops = Rec::start();
        let dialer = Rec::start();
        let liveness = Rec::start();
        let router = Router::new(
            state,
            RouterPorts {
                store: store_ops.recipient(),
                dialer: dialer.recipient(),
                liveness: liveness.recipient(),
            },
        )
        .start();
        let pool = CryptoPool::start(fixtures::key(0), 2);
        let db = socp_db::Db::open_in_memory().expect("in-memory db");
        let store = Store::start(db, 1);
        let activity = Rec::start();
        let settings = Settings {
            // Identification is not what these tests time.
            identify_timeout: Duration::from_secs(600),
            ..Settings::default()
        };
        let shared = Shared::new(
            RouterPort::of(&router),
            pool,
            StorePort::of(&store),
            activity.recipient(),
            me,
            ("127.0.0.1".into(), 9000),
            settings,
        );
        let alice = Rec::start();
        router
            .send(Attach {
                conn: Conn {
                    id: shared.next_conn_id(),
                    tx: alice.recipient(),
                },
                user_id: uid("alice"),
                pubkey: pk(10),
                name: None,
                registered: false,
                fast_files: false,
                batched: false,
            })
            .await
            .expect("router alive")
            .expect("alice attached");
        alice.take().await;
        Node {
            router,
            shared,
            liveness,
            activity,
            alice,
            _store: store_ops,
            _dialer: dialer,
        }
    }

    /// An outbound link to srv-b (fixture key 1), after its hello and our
    /// announce were written.
    async fn link_to_b(&self) -> Link {
        let wire = Rec::start();
        let addr = PeerLink::start_with_transport(
            self.shared.clone(),
            wire.recipient(),
            Some(peer("srv-b", 1)),
            true,
        );
        let link = Link { addr, wire };
        until("hello and announce", || {
            (link.texts().len() >= 2).then_some(())
        })
        .await;
        link
    }

    /// The frames alice got so far, as envelopes.
    fn alice_got(&self) -> Vec<Envelope> {
        self.alice.with(|got| {
            got.iter()
                .filter_map(|o| match o {
                    Outbound::Frame(f) | Outbound::Urgent(f) => f.peek(),
                    Outbound::Close(..) => None,
                })
                .map(|t| Envelope::parse(t.as_bytes()).expect("parses"))
                .collect()
        })
    }

    /// The `user_id`s of the frames of type `t` alice got.
    fn alice_heard(&self, t: &str) -> Vec<String> {
        self.alice_got()
            .iter()
            .filter(|e| e.msg_type() == t)
            .map(|e| {
                e.payload()["user_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Whether alice has heard of `user` (for `until`).
    fn alice_heard_of(&self, user: &str) -> Option<()> {
        self.alice_heard("USER_ADVERTISE")
            .iter()
            .any(|u| u == user)
            .then_some(())
    }

    /// srv-b advertises `user`; returns once alice heard of it (so every
    /// frame fed to the link before was handled).
    async fn barrier(&self, link: &Link, user: &str) -> FrameText {
        let raw = signed("srv-b", 1, To::All, &advertise(user, "srv-b", 12));
        link.feed(&raw);
        until(user, || self.alice_heard_of(user)).await;
        raw
    }

    async fn online(&self, user: &str) -> bool {
        self.router
            .send(IsOnline(uid(user)))
            .await
            .expect("router alive")
    }
}

/// A link and the recorder standing in for its socket.
struct Link {
    addr: Addr<PeerLink>,
    wire: Rec<Wire>,
}

impl Link {
    fn feed(&self, text: &str) {
        self.addr.do_send(Inbound::Text(FrameText::from(text)));
    }

    /// Every text written so far (the marker included).
    fn texts(&self) -> Vec<FrameText> {
        self.wire.with(|w| {
            w.iter()
                .filter_map(|m| match m {
                    Wire::Text(t) => Some(t.clone()),
                    Wire::Close(..) | Wire::KeepAlive(_) => None,
                })
                .collect()
        })
    }

    fn closes(&self) -> Vec<u16> {
        self.wire.with(|w| {
            w.iter()
                .filter_map(|m| match m {
                    Wire::Close(code, _) => Some(*code),
                    Wire::Text(_) | Wire::KeepAlive(_) => None,
                })
                .collect()
        })
    }

    /// The ERROR frames written so far, as `(code, detail)`; each checked
    /// to be ours (from srv-a, signed with our key).
    fn errors(&self) -> Vec<(String, String)> {
        self.texts()
            .iter()
            .filter(|t| t.as_ref() != MARKER)
            .map(|t| Envelope::parse(t.as_bytes()).expect("parses"))
            .filter(|e| e.msg_type() == "ERROR")
            .map(|e| {
                assert_eq!(e.from(), "srv-a");
                e.verify(&pk(0)).expect("signed with our key");
                let p = e.payload();
                (
                    p["code"].as_str().unwrap_or_default().to_owned(),
                    p["detail"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn codes(&self) -> Vec<String> {
        self.errors().into_iter().map(|(c, _)| c).collect()
    }

    /// Queue a marker behind everything the link has queued, and wait until
    /// it is written.
    async fn drain(&self) {
        self.addr
            .send(Outbound::Frame(SignedFrame::ready(FrameText::from(MARKER))))
            .await
            .expect("link alive");
        until("marker", || {
            self.texts()
                .last()
                .is_some_and(|t| t.as_ref() == MARKER)
                .then_some(())
        })
        .await;
    }
}

#[actix::test]
async fn frames_signed_by_the_linked_server_reach_the_router() {
    let node = Node::start().await;
    let link = node.link_to_b().await;

    // What we write first: our signed hello, then our announce.
    let first: Vec<Envelope> = link
        .texts()
        .iter()
        .map(|t| Envelope::parse(t.as_bytes()).expect("parses"))
        .collect();
    assert_eq!(first[0].msg_type(), "SERVER_HELLO_LINK");
    assert_eq!(first[0].to(), &To::from(&sid("srv-b")));
    first[0].verify(&pk(0)).expect("hello signed with our key");
    assert_eq!(
        first[0].payload(),
        &json!({ "host": "127.0.0.1", "port": 9000, "pubkey": pk(0).to_wire(),
                 "socp": {"v": 1} })
    );
    assert_eq!(first[1].msg_type(), "SERVER_ANNOUNCE");
    assert!(matches!(
        node.liveness.take().await.as_slice(),
        [LinkEvent::Up(id)] if *id == sid("srv-b")
    ));
    // Nothing heard from srv-b yet: no liveness report (a server that drops
    // every link we open must not look alive, see the Heartbeat's backoff).
    assert!(node.activity.take().await.is_empty());

    let raw = node.barrier(&link, "rita").await;
    let reports = node.activity.take().await;
    assert!(reports.iter().all(|a| a.0 == sid("srv-b")) && !reports.is_empty());
    let got = node.alice.take().await;
    let [Outbound::Frame(frame)] = got.as_slice() else {
        panic!("one frame for alice, got {got:?}");
    };
    assert_eq!(frame.peek(), Some(raw), "relayed unchanged");
    assert!(node.online("rita").await);

    // A frame srv-b relays from srv-c verifies with srv-c's pinned key.
    node.router
        .send(Remember(peer("srv-c", 2)))
        .await
        .expect("router alive");
    link.feed(&signed(
        "srv-c",
        2,
        To::All,
        &advertise("carl", "srv-c", 13),
    ));
    until("carl", || node.alice_heard_of("carl")).await;

    link.drain().await;
    assert!(link.errors().is_empty(), "{:?}", link.errors());
    assert!(link.closes().is_empty());
}

#[actix::test]
async fn frames_that_do_not_verify_are_answered_invalid_sig_and_dropped() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    node.router
        .send(Remember(peer("srv-c", 2)))
        .await
        .expect("router alive");

    // Signed with another key than srv-b's.
    link.feed(&signed(
        "srv-b",
        2,
        To::All,
        &advertise("xena", "srv-b", 13),
    ));
    // Signed by srv-b, then altered.
    let good = signed("srv-b", 1, To::All, &advertise("yuri", "srv-b", 13));
    let mut altered: Value = serde_json::from_str(&good).expect("json");
    altered["payload"]["user_id"] = json!("yves");
    link.feed(&altered.to_string());
    // Not signed at all.
    let mut unsigned: Value = serde_json::from_str(&good).expect("json");
    unsigned.as_object_mut().expect("object").remove("sig");
    link.feed(&unsigned.to_string());
    // From srv-c (known) but signed by srv-b: `from` decides the key.
    link.feed(&signed(
        "srv-c",
        1,
        To::All,
        &advertise("zack", "srv-c", 13),
    ));
    // From a server nobody knows.
    link.feed(&signed(
        "srv-x",
        1,
        To::All,
        &advertise("xavi", "srv-x", 13),
    ));

    node.barrier(&link, "rita").await;
    link.drain().await;
    // The link's own three bad frames are answered; the two it relayed (from
    // srv-c with the wrong key, from unknown srv-x) cannot be held against
    // it: dropped and counted.
    assert_eq!(link.codes(), ["INVALID_SIG"; 3]);
    assert_eq!(
        node.shared.metrics.get(
            socp_actors::metrics::family::RELAYED_UNVERIFIABLE,
            "USER_ADVERTISE"
        ),
        2
    );
    for t in link.texts().iter().filter(|t| t.as_ref() != MARKER) {
        let e = Envelope::parse(t.as_bytes()).expect("parses");
        if e.msg_type() == "ERROR" {
            assert_eq!(e.to(), &To::from(&sid("srv-b")));
        }
    }
    assert_eq!(node.alice_heard("USER_ADVERTISE"), ["rita"]);
    for user in ["xena", "yuri", "yves", "zack", "xavi"] {
        assert!(!node.online(user).await, "{user}");
    }
    assert!(
        link.closes().is_empty(),
        "bad frames alone do not close a link"
    );
}

#[actix::test]
async fn a_heartbeat_must_come_from_the_links_own_server() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    node.router
        .send(Remember(peer("srv-c", 2)))
        .await
        .expect("router alive");
    let beat = Message::Heartbeat(Default::default());
    link.feed(&signed("srv-c", 2, To::All, &beat));
    link.feed(&signed("srv-b", 1, To::All, &beat));
    let hello = Message::ServerHelloLink(ServerHelloLink(ServerAddress {
        host: "10.0.0.2".into(),
        port: 9002,
        pubkey: pk(2),
    }));
    link.feed(&signed("srv-c", 2, To::from(&sid("srv-a")), &hello));
    node.barrier(&link, "rita").await;
    link.drain().await;
    let errors = link.errors();
    assert_eq!(link.codes(), ["INVALID_SIG", "INVALID_SIG"], "{errors:?}");
    assert!(errors[0].1.contains("HEARTBEAT"), "{errors:?}");
    assert!(errors[1].1.contains("SERVER_HELLO_LINK"), "{errors:?}");
    assert!(link.closes().is_empty());
}

#[actix::test]
async fn unknown_and_malformed_frames_are_answered_and_the_link_stays_open() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    // srv-b is a socp server (its announce says so): what it sends that we
    // cannot read is a fault, answered.
    link.feed(&signed("srv-b", 1, To::All, &announce_of_b()));
    node.barrier(&link, "ben").await;

    let mut unknown: Value =
        serde_json::from_str(&signed("srv-b", 1, To::All, &advertise("u", "srv-b", 3)))
            .expect("json");
    unknown["type"] = json!("FROB_NICATE");
    link.feed(&unknown.to_string());
    link.feed("{not json");
    link.feed("[1, 2]");
    link.feed(r#"{"type":"HEARTBEAT","from":"srv-b","to":"*","ts":1}"#);
    link.feed(
        &signed(
            "srv-b",
            1,
            To::All,
            &Message::Ack(socp_protocol::message::Ack {
                msg_ref: "x".into(),
            }),
        )
        .replace("msg_ref", "other"),
    );
    let stale = Envelope::from_message(
        &sid("srv-b"),
        To::All,
        now_ms() - 60 * 60 * 1000,
        &advertise("old", "srv-b", 3),
    )
    .signed(private(1))
    .expect("signs")
    .to_json();
    link.feed(&stale);
    link.addr.do_send(Inbound::Binary);

    node.barrier(&link, "rita").await;
    link.drain().await;
    let errors = link.errors();
    assert_eq!(
        link.codes(),
        [
            "UNKNOWN_TYPE",
            "BAD_REQUEST",
            "BAD_REQUEST",
            "BAD_REQUEST",
            "BAD_REQUEST",
            "BAD_REQUEST",
            "BAD_REQUEST"
        ],
        "{errors:?}"
    );
    assert!(errors[0].1.contains("FROB_NICATE"));
    assert!(link.closes().is_empty());
    assert!(!node.online("old").await);
    assert_eq!(node.alice_heard("USER_ADVERTISE"), ["ben", "rita"]);
}

fn announce_of_b() -> Message {
    Message::ServerAnnounce(socp_protocol::message::ServerAnnounce(ServerAddress {
        host: "10.0.0.1".into(),
        port: 9001,
        pubkey: pk(1),
    }))
}

/// A server not known to speak socp has frames of its own and payloads of
/// other shapes: they are dropped, not answered (an ERROR would draw an
/// ERROR back from some), and never count towards closing the link.
#[actix::test]
async fn frames_of_another_dialect_we_cannot_read_are_dropped_unanswered() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    for n in 0..60 {
        let mut unknown: Value =
            serde_json::from_str(&signed("srv-b", 1, To::All, &advertise("u", "srv-b", 3)))
                .expect("json");
        unknown["type"] = json!(format!("PUBKEY_REQUEST_{n}"));
        link.feed(&unknown.to_string());
        let mut odd: Value =
            serde_json::from_str(&signed("srv-b", 1, To::All, &advertise("v", "srv-b", 3)))
                .expect("json");
        odd["payload"]["pubkey"] = Value::Null;
        link.feed(&odd.to_string());
    }
    let error = Message::Error(socp_protocol::message::ErrorPayload::new(
        socp_protocol::ErrorCode::UnknownType,
        "Unhandled type ERROR",
    ));
    link.feed(&signed("srv-b", 1, To::All, &error).replace("UNKNOWN_TYPE", "NOT_A_CODE_WE_KNOW"));
    node.barrier(&link, "rita").await;
    link.drain().await;
    assert_eq!(link.codes(), Vec::<String>::new(), "nothing answered");
    assert!(link.closes().is_empty(), "the link stays open");
    assert_eq!(node.alice_heard("USER_ADVERTISE"), ["rita"]);
}

#[actix::test]
async fn more_bad_frames_than_the_strike_limit_close_the_link() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    node.liveness.take().await;

    for _ in 0..50 {
        link.feed("{nope");
    }
    node.barrier(&link, "rita").await;
    link.drain().await;
    assert_eq!(link.codes().len(), 50);
    assert!(link.closes().is_empty(), "50 bad frames are tolerated");

    link.feed("{nope");
    until("the close", || (!link.closes().is_empty()).then_some(())).await;
    assert_eq!(link.closes(), [close::POLICY]);
    assert_eq!(
        link.codes().len(),
        51,
        "the 51st is answered before the close"
    );
    assert!(
        matches!(link.wire.with(|w| w.last().cloned()), Some(Wire::Close(..))),
        "nothing is written after the close"
    );

    // The link stopped: the router dropped srv-b and its users.
    until("USER_REMOVE", || {
        node.alice_heard("USER_REMOVE")
            .iter()
            .any(|u| u == "rita")
            .then_some(())
    })
    .await;
    assert!(!node.online("rita").await);
    assert!(matches!(
        node.liveness.take().await.as_slice(),
        [LinkEvent::Down(id)] if *id == sid("srv-b")
    ));
}

fn hello_link(from: &str, carries: usize, signed_by: usize) -> FrameText {
    let hello = Message::ServerHelloLink(ServerHelloLink(ServerAddress {
        host: format!("10.0.0.{carries}"),
        port: 9000 + carries as u16,
        pubkey: pk(carries),
    }));
    signed(from, signed_by, To::from(&sid("srv-a")), &hello)
}

#[actix::test]
async fn an_inbound_link_identifies_with_a_hello_signed_by_the_key_it_carries() {
    let node = Node::start().await;
    let start = || {
        let wire = Rec::start();
        let addr =
            PeerLink::start_with_transport(node.shared.clone(), wire.recipient(), None, false);
        Link { addr, wire }
    };

    let d = start();
    d.feed(&hello_link("srv-d", 3, 3));
    until("srv-d up", || {
        node.liveness
            .with(|l| {
                l.iter()
                    .any(|e| matches!(e, LinkEvent::Up(id) if *id == sid("srv-d")))
            })
            .then_some(())
    })
    .await;
    let key = node.router.send(ServerKey(sid("srv-d"))).await;
    assert_eq!(key.expect("router alive"), Some(pk(3)));
    d.feed(&signed(
        "srv-d",
        3,
        To::All,
        &advertise("dora", "srv-d", 13),
    ));
    until("dora", || node.alice_heard_of("dora")).await;
    d.drain().await;
    let written: Vec<Envelope> = d
        .texts()
        .iter()
        .filter(|t| t.as_ref() != MARKER)
        .map(|t| Envelope::parse(t.as_bytes()).expect("parses"))
        .collect();
    assert!(
        written
            .iter()
            .all(|e| matches!(e.msg_type(), "USER_ADVERTISE" | "DIRECTORY_SYNC")),
        "an inbound link sends no hello, only our users' adverts and its directory sync: {:?}",
        written.iter().map(Envelope::summary).collect::<Vec<_>>()
    );

    // A hello whose signature is not by the key it carries.
    let e = start();
    e.feed(&hello_link("srv-e", 4, 5));
    until("close", || (!e.closes().is_empty()).then_some(())).await;
    assert_eq!(e.codes(), ["INVALID_SIG"]);
    assert_eq!(e.closes(), [close::POLICY]);
    let key = node.router.send(ServerKey(sid("srv-e"))).await;
    assert_eq!(key.expect("router alive"), None);

    // srv-d's id with another key (self-signed, so it verifies): pinned.
    let imposter = start();
    imposter.feed(&hello_link("srv-d", 4, 4));
    until("close", || (!imposter.closes().is_empty()).then_some(())).await;
    let errors = imposter.errors();
    assert_eq!(imposter.codes(), ["INVALID_SIG"]);
    assert!(errors[0].1.contains("pinned"), "{errors:?}");
    let key = node.router.send(ServerKey(sid("srv-d"))).await;
    assert_eq!(key.expect("router alive"), Some(pk(3)));

    // Anything but a hello first.
    let rude = start();
    rude.feed(&signed(
        "srv-f",
        6,
        To::All,
        &Message::Heartbeat(Default::default()),
    ));
    until("close", || (!rude.closes().is_empty()).then_some(())).await;
    assert_eq!(rude.closes(), [close::POLICY]);
    assert!(rude.texts().is_empty());
}

#[actix::test]
async fn a_join_request_is_answered_with_a_welcome_and_the_connection_becomes_the_link() {
    let node = Node::start().await;
    let wire = Rec::start();
    let addr = PeerLink::start_with_transport(node.shared.clone(), wire.recipient(), None, false);
    let join = Link { addr, wire };
    let hello = Message::ServerHelloJoin(ServerHelloJoin(ServerAddress {
        host: "10.0.0.5".into(),
        port: 9005,
        pubkey: pk(5),
    }));
    join.feed(&signed(
        "srv-n",
        5,
        To::parse("127.0.0.1:9000").expect("host:port"),
        &hello,
    ));
    until("the welcome", || (!join.texts().is_empty()).then_some(())).await;
    let texts = join.texts();
    let welcome = Envelope::parse(texts[0].as_bytes()).expect("parses");
    assert_eq!(welcome.msg_type(), "SERVER_WELCOME");
    assert_eq!(welcome.to(), &To::from(&sid("srv-n")));
    welcome.verify(&pk(0)).expect("signed with our key");
    let p = welcome.payload();
    assert_eq!(p["assigned_id"], "srv-n");
    assert_eq!(p["servers"][0]["server_id"], "srv-a");
    assert_eq!(p["clients"][0]["user_id"], "alice");
    assert_eq!(p["socp"], json!({"v": 1}), "we say we speak socp");
    // Joining is not yet linking: a joiner that links separately closes the
    // join connection without a word, and is never pinned through it.
    let key = node.router.send(ServerKey(sid("srv-n"))).await;
    assert_eq!(key.expect("router alive"), None);
    // The joiner's first frame over it makes it the link (SPEC.md §5.1.5).
    join.feed(&signed(
        "srv-n",
        5,
        To::All,
        &advertise("nina", "srv-n", 15),
    ));
    until("nina", || node.alice_heard_of("nina")).await;
    let key = node.router.send(ServerKey(sid("srv-n"))).await;
    assert_eq!(key.expect("router alive"), Some(pk(5)));
    assert!(join.closes().is_empty(), "not closed");
}

#[actix::test]
async fn an_outbound_link_the_router_refuses_is_closed() {
    let node = Node::start().await;
    node.router
        .send(Remember(peer("srv-b", 1)))
        .await
        .expect("router alive");
    // Dialling srv-b's address, but the server there has another key.
    let wire = Rec::start();
    let addr = PeerLink::start_with_transport(
        node.shared.clone(),
        wire.recipient(),
        Some(peer("srv-b", 5)),
        true,
    );
    let link = Link { addr, wire };
    until("close", || (!link.closes().is_empty()).then_some(())).await;
    assert_eq!(link.closes(), [close::POLICY]);
    assert!(node.liveness.take().await.is_empty(), "never up");
    let key = node.router.send(ServerKey(sid("srv-b"))).await;
    assert_eq!(key.expect("router alive"), Some(pk(1)));
}

/// A link we open asks for the other side's directory only once that side
/// says it speaks socp (SPEC.md §11): servers of other implementations never
/// get DIRECTORY_SYNC, socp servers get it as soon as their announce arrives.
#[actix::test]
async fn an_outbound_link_asks_for_the_directory_once_the_peer_speaks_socp() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    link.drain().await;
    let syncs = |link: &Link| {
        link.texts()
            .iter()
            .filter(|t| t.contains("\"DIRECTORY_SYNC\""))
            .count()
    };
    assert_eq!(
        syncs(&link),
        0,
        "nothing asked of a server not known to be socp"
    );
    let announce = Message::ServerAnnounce(socp_protocol::message::ServerAnnounce(ServerAddress {
        host: "10.0.0.1".into(),
        port: 9001,
        pubkey: pk(1),
    }));
    link.feed(&signed("srv-b", 1, To::All, &announce));
    until("the directory sync", || (syncs(&link) == 1).then_some(())).await;
}

/// A server of another dialect passes every advert on to every link, the one
/// it came from too: our own frames coming back are dropped without a word
/// (they used to reach the router, which refused "our" user as taken).
#[actix::test]
async fn our_own_frames_echoed_back_are_dropped_quietly() {
    let node = Node::start().await;
    let link = node.link_to_b().await;
    link.feed(&signed(
        "srv-a",
        0,
        To::All,
        &advertise("alice", "srv-a", 10),
    ));
    node.barrier(&link, "rita").await;
    link.drain().await;
    assert!(link.codes().is_empty(), "{:?}", link.errors());
    assert!(link.closes().is_empty());
    assert_eq!(node.alice_heard("USER_ADVERTISE"), ["rita"]);
    let status = node
        .router
        .send(socp_actors::router::GetStatus)
        .await
        .expect("router alive");
    assert!(status.refusals.is_empty(), "{:?}", status.refusals);
    assert_eq!(
        node.shared
            .metrics
            .get("socp_link_frames_dropped_total", "own_echo"),
        1
    );
}
