//! The Router actor in an actix System, with recorder actors standing in for
//! sessions, links, the store, the dialer and the heartbeat (ARCHITECTURE.md:
//! "actor-level unit tests with mocked peers"). No sockets, no RSA: the
//! router's state signs with the `Plain` signer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde_json::json;
use socp_actors::crypto::{FrameText, SignedFrame};
use socp_actors::router::{
    Attach, Detach, Dial, FirstSight, GetStatus, IsOnline, JoinRequest, Joined, LinkDown,
    LinkEvent, LinkFrame, LinkUp, Outbound, PeerDead, Reconnect, Remember, Router, RouterPorts,
    SendHeartbeats, ServerKey, Shutdown, UserFrame,
};
use socp_actors::routing::{Conn, RouterConfig, RouterState, Signer, StoreOp};
use socp_protocol::message::{
    DeliverContent, MsgDirect, ServerAddress, ServerDeliver, ServerGoodbye, ServerInfo,
    ServerWelcome, UserAdvertise,
};
use socp_protocol::{now_ms, Base64Url, Envelope, ErrorCode, Message, ServerId, Signature, To};

use common::{envs, outbound, peer, pk, resolved, sid, types, uid, Got, Plain, Rec};

/// A router for `srv-a` (fixture key 0) and the recorders of its ports.
struct Fixture {
    router: Addr<Router>,
    store: Rec<StoreOp>,
    dialer: Rec<Dial>,
    liveness: Rec<LinkEvent>,
}

impl Fixture {
    fn start() -> Self {
        Self::start_with(Arc::new(Plain))
    }

    fn start_with(signer: Arc<dyn Signer>) -> Self {
        let state = RouterState::new(
            RouterConfig {
                me: sid("srv-a"),
                host: "127.0.0.1".into(),
                port: 9000,
                pubkey: pk(0),
                introducer_only: false,
                seen_capacity: 1024,
                public_version: 0,
                presence_seq: 1,
                directory_cap: 10_000,
                budgets: Default::default(),
                allowlist: None,
            },
            signer,
        );
        let store = Rec::start();
        let dialer = Rec::start();
        let liveness = Rec::start();
        let router = Router::new(
            state,
            RouterPorts {
                store: store.recipient(),
                dialer: dialer.recipient(),
                liveness: liveness.recipient(),
            },
        )
        .start();
        Fixture {
            router,
            store,
            dialer,
            liveness,
        }
    }

    /// Attach `user` (key `n`) over a new recorder session.
    async fn attach(&self, user: &str, n: usize, conn: u64) -> Rec<Outbound> {
        let session = Rec::start();
        self.router
            .send(Attach {
                conn: Conn {
                    id: conn,
                    tx: session.recipient(),
                },
                user_id: uid(user),
                pubkey: pk(n),
                name: None,
                registered: false,
                fast_files: false,
                batched: false,
            })
            .await
            .expect("router alive")
            .expect("attached");
        session
    }

    /// Link to `id` (key `n`) over a new recorder link.
    async fn link(&self, id: &str, n: usize, conn: u64, opened_by_me: bool) -> Rec<Outbound> {
        let link = Rec::start();
        self.router
            .send(LinkUp {
                peer: peer(id, n),
                conn: Conn {
                    id: conn,
                    tx: link.recipient(),
                },
                opened_by_me,
            })
            .await
            .expect("router alive")
            .expect("link accepted");
        link
    }

    /// A verified frame from server `from` arriving on the link to `link`.
    async fn link_frame(&self, link: &str, from: &str, to: To, msg: Message) -> FrameText {
        let raw = FrameText::from(Envelope::from_message(&sid(from), to, now_ms(), &msg).to_json());
        let env = Envelope::parse(raw.as_bytes()).expect("parses");
        self.router
            .send(LinkFrame {
                link: sid(link),
                msg: env.message().expect("typed"),
                env,
                raw: raw.clone(),
                charge: None,
            })
            .await
            .expect("router alive");
        raw
    }

    async fn user_frame(&self, from: &str, to: To, msg: Message) {
        let env = Envelope::from_message(&uid(from), to, now_ms(), &msg);
        self.router
            .send(UserFrame {
                user_id: uid(from),
                env,
                msg,
                charge: None,
            })
            .await
            .expect("router alive");
    }

    async fn online(&self, user: &str) -> bool {
        self.router
            .send(IsOnline(uid(user)))
            .await
            .expect("router alive")
    }
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

fn dm() -> MsgDirect {
    MsgDirect {
        ciphertext: Base64Url::from_bytes(b"opaque"),
        sender_pub: pk(9),
        content_sig: Signature::from_bytes(&[5; 512]),
    }
}

fn field(env: &Envelope, name: &str) -> serde_json::Value {
    env.payload()[name].clone()
}

#[actix::test]
async fn attach_and_detach_reach_sessions_links_and_the_store() {
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    assert!(
        outbound(&link_b).await.is_empty(),
        "no announce over a link the peer opened"
    );
    assert!(matches!(
        f.liveness.take().await.as_slice(),
        [LinkEvent::Up(id)] if *id == sid("srv-b")
    ));
    assert_eq!(
        f.store.take().await,
        [StoreOp::KnownServer(peer("srv-b", 1))]
    );

    let alice = f.attach("alice", 10, 10).await;
    let expected = [
        "USER_ADVERTISE",
        "PUBLIC_CHANNEL_ADD",
        "PUBLIC_CHANNEL_UPDATED",
    ];
    assert_eq!(types(&outbound(&alice).await), expected);
    let to_b = outbound(&link_b).await;
    assert_eq!(types(&to_b), expected);
    assert_eq!(field(&envs(&to_b)[0], "user_id"), "alice");
    let ops = f.store.take().await;
    assert!(
        matches!(ops.as_slice(), [StoreOp::PublicJoin { user_id, version: 1, .. }] if *user_id == uid("alice")),
        "{ops:?}"
    );

    // The id is taken: a second session is refused and hears nothing.
    let imposter = Rec::<Outbound>::start();
    let refused = f
        .router
        .send(Attach {
            conn: Conn {
                id: 11,
                tx: imposter.recipient(),
            },
            user_id: uid("alice"),
            pubkey: pk(11),
            name: None,
            registered: false,
            fast_files: false,
            batched: false,
        })
        .await
        .expect("router alive");
    assert_eq!(refused.expect_err("refused").code, ErrorCode::NameInUse);
    assert!(outbound(&imposter).await.is_empty());
    assert!(outbound(&link_b).await.is_empty());

    // A stale detach (the imposter's connection) changes nothing.
    f.router
        .send(Detach {
            conn_id: 11,
            user_id: uid("alice"),
        })
        .await
        .expect("router alive");
    assert!(f.online("alice").await);
    assert!(outbound(&link_b).await.is_empty());

    f.router
        .send(Detach {
            conn_id: 10,
            user_id: uid("alice"),
        })
        .await
        .expect("router alive");
    assert!(!f.online("alice").await);
    assert_eq!(
        types(&outbound(&link_b).await),
        ["USER_REMOVE", "PUBLIC_CHANNEL_UPDATED"]
    );
    assert_eq!(
        f.store.take().await,
        [StoreOp::PublicLeave {
            user_id: uid("alice"),
            remove_row: true,
            version: 2,
        }]
    );

    // Detaching twice (session stopping after a heartbeat close) is harmless.
    f.router
        .send(Detach {
            conn_id: 10,
            user_id: uid("alice"),
        })
        .await
        .expect("router alive");
    assert!(outbound(&link_b).await.is_empty());
    assert!(f.store.take().await.is_empty());
}

#[actix::test]
async fn user_frames_are_routed_locally_to_the_link_or_answered() {
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    let alice = f.attach("alice", 10, 10).await;
    let bob = f.attach("bob", 11, 11).await;
    f.link_frame("srv-b", "srv-b", To::All, advertise("rita", "srv-b", 12))
        .await;
    for rec in [&link_b, &alice, &bob] {
        outbound(rec).await;
    }

    f.user_frame("alice", To::from(&uid("bob")), Message::MsgDirect(dm()))
        .await;
    let got = envs(&outbound(&bob).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "USER_DELIVER");
    assert_eq!(field(&got[0], "sender"), "alice");

    f.user_frame("alice", To::from(&uid("rita")), Message::MsgDirect(dm()))
        .await;
    let got = envs(&outbound(&link_b).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "SERVER_DELIVER");
    assert_eq!(field(&got[0], "user_id"), "rita");

    f.user_frame("alice", To::from(&uid("nobody")), Message::MsgDirect(dm()))
        .await;
    let got = envs(&outbound(&alice).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "ERROR");
    assert_eq!(field(&got[0], "code"), "USER_NOT_FOUND");

    assert!(outbound(&bob).await.is_empty());
    assert!(outbound(&link_b).await.is_empty());
}

#[actix::test]
async fn link_frames_reach_local_users_once() {
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    let link_c = f.link("srv-c", 2, 2, false).await;
    let alice = f.attach("alice", 10, 10).await;
    for rec in [&link_b, &link_c, &alice] {
        outbound(rec).await;
    }

    let raw = f
        .link_frame("srv-b", "srv-b", To::All, advertise("rita", "srv-b", 12))
        .await;
    assert_eq!(outbound(&alice).await, [Got::Frame(raw.clone())]);
    assert_eq!(outbound(&link_c).await, [Got::Frame(raw.clone())]);
    assert!(
        outbound(&link_b).await.is_empty(),
        "not back where it came from"
    );
    assert!(f.online("rita").await);

    // The same frame again (replayed, or relayed back by srv-c).
    let env = Envelope::parse(raw.as_bytes()).expect("parses");
    f.router
        .send(LinkFrame {
            link: sid("srv-c"),
            msg: env.message().expect("typed"),
            env,
            raw: raw.clone(),
            charge: None,
        })
        .await
        .expect("router alive");
    assert!(outbound(&alice).await.is_empty());
    assert!(outbound(&link_b).await.is_empty());

    // SERVER_DELIVER for alice.
    f.link_frame(
        "srv-b",
        "srv-b",
        To::from(&sid("srv-a")),
        Message::ServerDeliver(ServerDeliver {
            user_id: uid("alice"),
            sender: uid("rita"),
            orig_ts: Some(42),
            content: DeliverContent::Dm(dm()),
            mail: None,
        }),
    )
    .await;
    let got = envs(&outbound(&alice).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "USER_DELIVER");
    assert_eq!(field(&got[0], "orig_ts"), 42);

    // Content from a user id (another implementation relaying as-is).
    f.link_frame(
        "srv-b",
        "ulla",
        To::from(&uid("alice")),
        Message::MsgDirect(dm()),
    )
    .await;
    let got = envs(&outbound(&alice).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "USER_DELIVER");
    assert_eq!(field(&got[0], "sender"), "ulla");

    // A goodbye stops reconnects to that server.
    f.liveness.take().await;
    f.link_frame(
        "srv-b",
        "srv-b",
        To::All,
        Message::ServerGoodbye(ServerGoodbye {}),
    )
    .await;
    assert!(matches!(
        f.liveness.take().await.as_slice(),
        [LinkEvent::Gone(id)] if *id == sid("srv-b")
    ));
}

#[actix::test]
async fn a_link_we_open_carries_our_announce() {
    let f = Fixture::start();
    let link_c = f.link("srv-c", 2, 1, false).await;
    let link_b = f.link("srv-b", 1, 2, true).await;
    let got = envs(&outbound(&link_b).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "SERVER_ANNOUNCE");
    assert_eq!(got[0].from(), "srv-a");
    assert_eq!(
        got[0].payload(),
        &json!({ "host": "127.0.0.1", "port": 9000, "pubkey": pk(0).to_wire(),
                 "socp": {"v": 1} })
    );
    assert!(outbound(&link_c).await.is_empty(), "only over the new link");
    let events = f.liveness.take().await;
    assert!(
        matches!(events.as_slice(), [LinkEvent::Up(c), LinkEvent::Up(b)] if *c == sid("srv-c") && *b == sid("srv-b")),
        "{events:?}"
    );

    // A second link to srv-b, opened by srv-b (srv-a < srv-b: ours is kept).
    let dup = f.link("srv-b", 1, 3, false).await;
    assert_eq!(outbound(&dup).await, [Got::Close(1000)]);
    assert!(outbound(&link_b).await.is_empty());
    // Its late LinkDown is for a connection that is not current.
    f.liveness.take().await;
    f.router
        .send(LinkDown {
            server_id: sid("srv-b"),
            conn_id: 3,
            unanswered: false,
        })
        .await
        .expect("router alive");
    assert!(f.liveness.take().await.is_empty());
}

#[actix::test]
async fn link_down_and_peer_dead_drop_the_servers_users() {
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    let alice = f.attach("alice", 10, 10).await;
    f.link_frame("srv-b", "srv-b", To::All, advertise("rita", "srv-b", 12))
        .await;
    outbound(&alice).await;
    outbound(&link_b).await;
    f.liveness.take().await;

    f.router
        .send(LinkDown {
            server_id: sid("srv-b"),
            conn_id: 99,
            unanswered: false,
        })
        .await
        .expect("router alive");
    assert!(f.liveness.take().await.is_empty(), "stale connection");
    assert!(f.online("rita").await);

    f.router
        .send(LinkDown {
            server_id: sid("srv-b"),
            conn_id: 1,
            unanswered: false,
        })
        .await
        .expect("router alive");
    assert!(matches!(
        f.liveness.take().await.as_slice(),
        [LinkEvent::Down(id)] if *id == sid("srv-b")
    ));
    let got = envs(&outbound(&alice).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].msg_type(), "USER_REMOVE");
    assert_eq!(field(&got[0], "user_id"), "rita");
    assert!(!f.online("rita").await);
    assert!(outbound(&link_b).await.is_empty(), "the link closed itself");

    // Linked again; then silent past the timeout.
    let link_b2 = f.link("srv-b", 1, 2, false).await;
    f.link_frame("srv-b", "srv-b", To::All, advertise("ruth", "srv-b", 13))
        .await;
    outbound(&alice).await;
    f.liveness.take().await;
    f.router
        .send(PeerDead(sid("srv-b")))
        .await
        .expect("router alive");
    // The new link carried our users' adverts; then it is closed as dead.
    let out = outbound(&link_b2).await;
    assert_eq!(out.last(), Some(&Got::Close(1001)));
    assert_eq!(out.iter().filter(|g| matches!(g, Got::Close(_))).count(), 1);
    assert!(matches!(
        f.liveness.take().await.as_slice(),
        [LinkEvent::Down(id)] if *id == sid("srv-b")
    ));
    let got = envs(&outbound(&alice).await);
    assert_eq!(got.len(), 1);
    assert_eq!(field(&got[0], "user_id"), "ruth");

    // Declared dead twice: nothing more to do.
    f.router
        .send(PeerDead(sid("srv-b")))
        .await
        .expect("router alive");
    assert!(outbound(&link_b2).await.is_empty());
    assert!(f.liveness.take().await.is_empty());
    assert!(outbound(&alice).await.is_empty());
}

/// A server that closed a link we opened before sending anything (one
/// implementation takes no first frame from a server but SERVER_HELLO_JOIN)
/// is dialled with a join from then on; once a frame of its own says it
/// speaks socp it is dialled with SERVER_HELLO_LINK again, and a server known
/// to speak socp is never switched to joins.
#[actix::test]
async fn a_server_that_drops_our_hello_unanswered_is_dialled_with_a_join() {
    let f = Fixture::start();
    let joins = |got: Vec<Dial>| got.into_iter().map(|d| d.1).collect::<Vec<bool>>();
    f.router
        .send(Remember(peer("srv-d", 3)))
        .await
        .expect("router alive");
    assert_eq!(joins(f.dialer.take().await), [false], "a link hello first");
    let dropped = |conn| LinkDown {
        server_id: sid("srv-d"),
        conn_id: conn,
        unanswered: true,
    };
    f.link("srv-d", 3, 1, true).await;
    f.router.send(dropped(1)).await.expect("router alive");
    f.router
        .send(Reconnect(sid("srv-d")))
        .await
        .expect("router alive");
    assert_eq!(joins(f.dialer.take().await), [true], "then a join");

    // Its own frame says it speaks socp: link hellos again, for good.
    f.link("srv-d", 3, 2, true).await;
    let heartbeat = socp_protocol::message::Heartbeat {};
    let mut hb = Envelope::new(&sid("srv-d"), To::All, now_ms(), &heartbeat);
    hb = socp_protocol::dialect::with_capability(hb);
    let raw = FrameText::from(hb.to_json());
    f.router
        .send(LinkFrame {
            link: sid("srv-d"),
            msg: hb.message().expect("typed"),
            env: hb,
            raw,
            charge: None,
        })
        .await
        .expect("router alive");
    f.router.send(dropped(2)).await.expect("router alive");
    f.router
        .send(Reconnect(sid("srv-d")))
        .await
        .expect("router alive");
    assert_eq!(joins(f.dialer.take().await), [false]);
}

#[actix::test]
async fn reconnect_remember_and_joined_ask_the_dialer() {
    let f = Fixture::start();
    let dialled = |got: Vec<Dial>| -> Vec<ServerId> {
        let mut ids: Vec<ServerId> = got.into_iter().map(|d| d.0.server_id).collect();
        ids.sort();
        ids
    };

    f.router
        .send(Remember(peer("srv-d", 3)))
        .await
        .expect("router alive");
    assert_eq!(dialled(f.dialer.take().await), [sid("srv-d")]);
    f.router
        .send(Reconnect(sid("srv-d")))
        .await
        .expect("router alive");
    let got = f.dialer.take().await;
    assert_eq!(
        got.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        [peer("srv-d", 3)]
    );

    // Linked: no reconnect. Unknown: nothing to dial.
    f.link("srv-d", 3, 1, true).await;
    f.router
        .send(Reconnect(sid("srv-d")))
        .await
        .expect("router alive");
    f.router
        .send(Reconnect(sid("srv-x")))
        .await
        .expect("router alive");
    assert!(f.dialer.take().await.is_empty());

    // A remembered server whose id is pinned to another key is not dialled.
    f.router
        .send(Remember(peer("srv-d", 4)))
        .await
        .expect("router alive");
    assert!(f.dialer.take().await.is_empty());

    f.store.take().await;
    let info = |id: &str, n: usize| ServerInfo {
        server_id: sid(id),
        host: format!("10.0.0.{n}"),
        port: 9000 + n as u16,
        pubkey: pk(n),
    };
    f.router
        .send(Joined(
            ServerWelcome {
                assigned_id: sid("srv-a"),
                servers: vec![info("srv-e", 5), info("srv-f", 6), info("srv-d", 3)],
                clients: Vec::new(),
            },
            None,
        ))
        .await
        .expect("router alive");
    assert_eq!(
        dialled(f.dialer.take().await),
        [sid("srv-e"), sid("srv-f")],
        "srv-d is linked already"
    );
    // A welcome's servers are stored once a link to them comes up.
    let known: Vec<ServerId> = f
        .store
        .take()
        .await
        .into_iter()
        .filter_map(|op| match op {
            StoreOp::KnownServer(p) => Some(p.server_id),
            _ => None,
        })
        .collect();
    assert!(known.is_empty(), "{known:?}");
    f.link("srv-e", 5, 30, true).await;
    let known: Vec<ServerId> = f
        .store
        .take()
        .await
        .into_iter()
        .filter_map(|op| match op {
            StoreOp::KnownServer(p) => Some(p.server_id),
            _ => None,
        })
        .collect();
    assert_eq!(known, [sid("srv-e")]);

    // The introducer linked over the join connection is not dialled again.
    f.router
        .send(Joined(
            ServerWelcome {
                assigned_id: sid("srv-a"),
                servers: vec![info("srv-g", 7), info("srv-h", 8)],
                clients: Vec::new(),
            },
            Some(sid("srv-g")),
        ))
        .await
        .expect("router alive");
    assert_eq!(dialled(f.dialer.take().await), [sid("srv-h")]);
}

#[actix::test]
async fn heartbeats_go_to_links_and_shutdown_closes_everything() {
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    let link_c = f.link("srv-c", 2, 2, false).await;
    let alice = f.attach("alice", 10, 10).await;
    for rec in [&link_b, &link_c, &alice] {
        outbound(rec).await;
    }

    f.router.send(SendHeartbeats).await.expect("router alive");
    for link in [&link_b, &link_c] {
        assert_eq!(types(&outbound(link).await), ["HEARTBEAT"]);
    }
    assert!(outbound(&alice).await.is_empty());

    f.router.send(Shutdown).await.expect("router alive");
    for link in [&link_b, &link_c] {
        let got = outbound(link).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(types(&got), ["USER_REMOVE", "SERVER_GOODBYE"]);
        assert_eq!(got[2], Got::Close(1000));
    }
    assert_eq!(outbound(&alice).await, [Got::Close(1000)]);
}

#[actix::test]
async fn the_router_answers_questions() {
    let f = Fixture::start();
    f.link("srv-b", 1, 1, false).await;
    let ask = |id: &str| f.router.send(ServerKey(sid(id)));
    assert_eq!(ask("srv-b").await.expect("alive"), Some(pk(1)));
    assert_eq!(ask("srv-a").await.expect("alive"), Some(pk(0)), "our own");
    assert_eq!(ask("srv-x").await.expect("alive"), None);

    let now = now_ms();
    let first = f.router.send(FirstSight([9; 32], now)).await;
    let again = f.router.send(FirstSight([9; 32], now)).await;
    assert_eq!(
        (first.expect("alive"), again.expect("alive")),
        (true, false)
    );

    let welcome = f
        .router
        .send(JoinRequest {
            requested: sid("srv-n"),
            address: ServerAddress {
                host: "10.0.0.7".into(),
                port: 9007,
                pubkey: pk(7),
            },
        })
        .await
        .expect("alive");
    assert_eq!(welcome.assigned_id, sid("srv-n"));
    let mut ids: Vec<ServerId> = welcome.servers.into_iter().map(|s| s.server_id).collect();
    ids.sort();
    assert_eq!(ids, [sid("srv-a"), sid("srv-b")]);

    f.attach("alice", 10, 10).await;
    let status = f.router.send(GetStatus).await.expect("alive");
    let status = serde_json::to_value(status).expect("a status serialises");
    assert_eq!(status["server_id"], "srv-a");
    assert_eq!(status["local_users"], json!(["alice"]));
    assert_eq!(status["servers"][0]["link"], "up");
    assert_eq!(status["public_version"], 1);
}

/// Signs like `Plain`, but no frame is done before `gate` opens: the crypto
/// threads are busy.
struct Gated(Shared<BoxFuture<'static, ()>>);

impl Gated {
    fn frame(&self, text: Option<String>) -> SignedFrame {
        let gate = self.0.clone();
        SignedFrame::from_future(
            async move {
                gate.await;
                text.map(FrameText::from)
            }
            .boxed(),
        )
    }
}

impl Signer for Gated {
    fn sign(&self, env: Envelope) -> SignedFrame {
        self.frame(Some(env.to_json()))
    }

    fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        self.frame(build().map(|e| e.to_json()))
    }
}

#[actix::test]
async fn joins_while_the_last_announcement_is_signed_fold_into_the_next() {
    let (open, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = async move {
        let _ = gate.await;
    }
    .boxed()
    .shared();
    let f = Fixture::start_with(Arc::new(Gated(gate)));
    let link_b = f.link("srv-b", 1, 1, false).await;
    f.store.take().await;

    // A lone join is announced at once.
    f.attach("alice", 10, 10).await;
    f.router.send(GetStatus).await.expect("router alive");
    assert_eq!(link_b.take().await.len(), 3, "advert, ADD, UPDATED");

    // While that announcement is still being signed, two more users join:
    // their adverts go out, their joins wait.
    f.attach("bob", 11, 11).await;
    f.attach("carol", 14, 14).await;
    f.router.send(GetStatus).await.expect("router alive");
    let adverts = link_b.take().await;
    assert_eq!(adverts.len(), 2);

    let _ = open.send(());
    let mut announced = Vec::new();
    for _ in 0..500 {
        announced.extend(link_b.take().await);
        if announced.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(types(&resolved(adverts).await), ["USER_ADVERTISE"; 2]);
    let announced = envs(&resolved(announced).await);
    let kinds: Vec<&str> = announced.iter().map(Envelope::msg_type).collect();
    assert_eq!(kinds, ["PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"]);
    assert_eq!(field(&announced[0], "add"), json!(["bob", "carol"]));
    assert_eq!(field(&announced[0], "if_version"), 1);
    assert_eq!(field(&announced[1], "version"), 2);
    assert_eq!(
        field(&announced[1], "wraps").as_array().map(Vec::len),
        Some(2)
    );

    let versions: Vec<(String, u64)> = f
        .store
        .take()
        .await
        .into_iter()
        .filter_map(|op| match op {
            StoreOp::PublicJoin {
                user_id, version, ..
            } => Some((user_id.to_string(), version)),
            _ => None,
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("alice".to_owned(), 1),
            ("bob".to_owned(), 2),
            ("carol".to_owned(), 2)
        ]
    );
}

#[actix::test]
async fn a_burst_larger_than_one_version_is_announced_in_several() {
    use socp_actors::routing::MAX_JOINS_PER_VERSION;
    let f = Fixture::start();
    let link_b = f.link("srv-b", 1, 1, false).await;
    let n = MAX_JOINS_PER_VERSION + 4;
    let names: Vec<String> = (0..n).map(|i| format!("user-{i:04}")).collect();
    // Every Attach is queued before the router handles the first.
    let sessions = futures_util::future::join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| f.attach(name, i % 32, 100 + i as u64)),
    )
    .await;
    assert_eq!(sessions.len(), n);
    let mut got = Vec::new();
    for _ in 0..500 {
        got.extend(outbound(&link_b).await);
        if types(&got)
            .iter()
            .filter(|t| *t == "PUBLIC_CHANNEL_UPDATED")
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let adds: Vec<usize> = envs(&got)
        .iter()
        .filter(|e| e.msg_type() == "PUBLIC_CHANNEL_ADD")
        .map(|e| field(e, "add").as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(adds, [MAX_JOINS_PER_VERSION, 4]);
    let versions: Vec<u64> = envs(&got)
        .iter()
        .filter(|e| e.msg_type() == "PUBLIC_CHANNEL_UPDATED")
        .filter_map(|e| field(e, "version").as_u64())
        .collect();
    assert_eq!(versions, [1, 2]);
}

/// A user's frame comes with its memory charge; the frames the router makes
/// from it hold the charge until the recipient's session has them written
/// (here: until the recorder standing in for it lets them go), so the
/// sender's budget counts what it made the server hold.
#[actix::test]
async fn frames_made_from_a_charged_frame_hold_its_charge_until_written() {
    use socp_actors::budget::{Account, Budget};
    let f = Fixture::start();
    let _alice = f.attach("alice", 1, 1).await;
    let bob = f.attach("bob", 2, 2).await;
    outbound(&bob).await;
    let server = Budget::new(1 << 20);
    let account = Account::new(1 << 20, server.clone());
    let msg = Message::MsgDirect(dm());
    let env = Envelope::from_message(&uid("alice"), To::from(&uid("bob")), now_ms(), &msg);
    f.router
        .send(UserFrame {
            user_id: uid("alice"),
            env,
            msg,
            charge: Some(account.charge(5000).expect("room")),
        })
        .await
        .expect("router alive");
    let queued = bob.take().await;
    assert_eq!(queued.len(), 1, "one USER_DELIVER for bob");
    assert_eq!(
        (account.used(), server.used()),
        (5000, 5000),
        "held while the frame waits to be written"
    );
    let delivered = resolved(queued).await;
    assert_eq!(types(&delivered), ["USER_DELIVER"]);
    assert_eq!(
        (account.used(), server.used()),
        (0, 0),
        "given back once written"
    );
}
