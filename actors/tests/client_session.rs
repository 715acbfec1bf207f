//! ClientSession at the actor level, with a fake router and a fake store
//! behind its ports and a recorder as its transport: what it asks the router,
//! what it writes to the user, and when it closes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use actix::prelude::*;
use socp_actors::crypto::{CryptoPool, FrameText};
use socp_actors::error::Refusal;
use socp_actors::heartbeat::Activity;
use socp_actors::session::ClientSession;
use socp_actors::transport::{close, Inbound, Wire};
use socp_actors::{Settings, Shared};
use socp_db::UserRecord;
use socp_protocol::content;
use socp_protocol::message::{LoginRequest, MsgDirect, UserHello};
use socp_protocol::{
    fixtures, now_ms, Base64Url, Envelope, ErrorCode, Message, To, UserId, Username,
};

use common::fakes::{Call, Router, Script, Store};
use common::{pk, private, sid, uid, Rec};

/// Fixture key of the registered user.
const REG_KEY: usize = 3;
/// Fixture key of guests and impostors.
const GUEST_KEY: usize = 4;

struct Session {
    addr: Addr<ClientSession>,
    wire: Rec<Wire>,
    router: Router,
    _store: Store,
    _activity: Rec<Activity>,
}

fn registered(id: &str, name: &str) -> UserRecord {
    UserRecord {
        user_id: uid(id),
        username: Some(Username::parse(name).expect("a valid name")),
        pubkey: pk(REG_KEY),
        privkey_store: "encrypted key store".into(),
        meta: None,
        version: 1,
        home_server: None,
        registered_at: 1,
    }
}

fn hello(id: &UserId, key: usize, nonce: Option<&str>) -> Envelope {
    let msg = Message::UserHello(UserHello {
        client: "test".into(),
        pubkey: pk(key),
        enc_pubkey: None,
        meta: None,
        nonce: nonce.map(str::to_owned),
    });
    Envelope::from_message(id, To::from(&sid("srv-a")), now_ms(), &msg)
        .signed(private(key))
        .expect("fixture key signs")
}

fn frame(env: &Envelope) -> FrameText {
    FrameText::from(env.to_json())
}

/// A session whose first frame is `first`, over a fake router and store.
fn start(first: &Envelope, script: Script, users: Vec<UserRecord>) -> Session {
    let router = Router::start(script);
    let store = Store::start(users);
    let activity = Rec::start();
    let wire = Rec::start();
    let shared = Shared::new(
        router.port(),
        CryptoPool::start(fixtures::key(0), 1),
        store.port(),
        activity.recipient(),
        sid("srv-a"),
        ("127.0.0.1".into(), 9000),
        Settings::default(),
    );
    let addr = ClientSession::start(shared, wire.recipient(), frame(first));
    Session {
        addr,
        wire,
        router,
        _store: store,
        _activity: activity,
    }
}

/// What the session wrote to its transport: frames' envelopes and close codes.
#[derive(Debug)]
enum Wrote {
    Frame(Envelope),
    Close(u16),
}

impl Session {
    /// Wait until the session wrote at least `n` things, then return them all.
    async fn wrote(&self, n: usize) -> Vec<Wrote> {
        for _ in 0..500 {
            if self.wire.with(|w| w.len()) >= n {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        self.wire
            .take()
            .await
            .into_iter()
            .filter_map(|w| match w {
                Wire::Text(t) => Some(Wrote::Frame(Envelope::parse(t.as_bytes()).expect("parses"))),
                Wire::Close(code, _) => Some(Wrote::Close(code)),
                Wire::KeepAlive(_) => None,
            })
            .collect()
    }

    fn send(&self, env: &Envelope) {
        self.addr.do_send(Inbound::Text(frame(env)));
    }
}

fn error_code(w: &Wrote) -> Option<String> {
    match w {
        Wrote::Frame(env) if env.msg_type() == "ERROR" => {
            env.payload()["code"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

fn is_ack(w: &Wrote) -> bool {
    matches!(w, Wrote::Frame(env) if env.msg_type() == "ACK")
}

#[actix::test]
async fn a_guest_hello_attaches_with_its_key_and_is_acknowledged() {
    let guest = uid("guest-1");
    let s = start(&hello(&guest, GUEST_KEY, None), Script::default(), vec![]);
    let wrote = s.wrote(1).await;
    assert!(is_ack(&wrote[0]), "{wrote:?}");
    assert_eq!(
        s.router.calls().await,
        [Call::Attach {
            user_id: guest,
            pubkey: pk(GUEST_KEY),
            name: None,
            registered: false,
        }]
    );
}

#[actix::test]
async fn a_hello_for_a_registered_id_with_another_key_never_reaches_the_router() {
    let alice = registered("alice-id", "alice");
    let s = start(
        &hello(&alice.user_id, GUEST_KEY, None),
        Script::default(),
        vec![alice],
    );
    let wrote = s.wrote(2).await;
    assert_eq!(error_code(&wrote[0]).as_deref(), Some("AUTH_FAILED"));
    assert!(matches!(wrote[1], Wrote::Close(close::POLICY)));
    assert!(s.router.calls().await.is_empty());
}

#[actix::test]
async fn a_refused_attach_is_reported_and_the_connection_closed() {
    let guest = uid("bob");
    let mut script = Script::default();
    script.refuse_attach.insert(
        guest.clone(),
        Refusal::new(ErrorCode::NameInUse, "bob is attached elsewhere"),
    );
    let s = start(&hello(&guest, GUEST_KEY, None), script, vec![]);
    let wrote = s.wrote(2).await;
    assert_eq!(error_code(&wrote[0]).as_deref(), Some("NAME_IN_USE"));
    assert!(matches!(wrote[1], Wrote::Close(close::POLICY)));
}

#[actix::test]
async fn a_login_answers_the_challenge_and_replaces_the_guest_identity() {
    let alice = registered("alice-id", "alice");
    let guest = uid("guest-2");
    let s = start(
        &hello(&guest, GUEST_KEY, None),
        Script::default(),
        vec![alice.clone()],
    );
    assert!(is_ack(&s.wrote(1).await[0]));
    let login = Envelope::from_message(
        &guest,
        To::from(&sid("srv-a")),
        now_ms(),
        &Message::LoginRequest(LoginRequest {
            who: "ALICE".into(),
        }),
    );
    s.send(&login);
    let wrote = s.wrote(1).await;
    let Wrote::Frame(challenge) = &wrote[0] else {
        panic!("a challenge: {wrote:?}")
    };
    assert_eq!(challenge.msg_type(), "LOGIN_CHALLENGE");
    assert_eq!(challenge.payload()["user_id"], "alice-id");
    assert_eq!(challenge.payload()["privkey_store"], "encrypted key store");
    let nonce = challenge.payload()["nonce"]
        .as_str()
        .expect("a nonce")
        .to_owned();

    s.send(&hello(&alice.user_id, REG_KEY, Some(&nonce)));
    assert!(is_ack(&s.wrote(1).await[0]));
    let calls = s.router.calls().await;
    assert_eq!(
        calls[1..],
        [
            Call::FirstSight,
            // The guest identity goes once the router took the new one (a
            // refused login leaves the connection as it was).
            Call::Attach {
                user_id: alice.user_id,
                pubkey: pk(REG_KEY),
                name: Some("alice".into()),
                registered: true,
            },
            Call::Detach(guest),
        ]
    );
}

#[actix::test]
async fn a_hello_answering_no_challenge_is_refused() {
    let alice = registered("alice-id", "alice");
    let s = start(
        &hello(&alice.user_id, REG_KEY, Some("a-nonce-nobody-issued")),
        Script::default(),
        vec![alice],
    );
    let wrote = s.wrote(2).await;
    assert_eq!(error_code(&wrote[0]).as_deref(), Some("AUTH_FAILED"));
    assert!(s.router.calls().await.is_empty());
}

fn dm(from: &UserId, to: &UserId, key: usize, sign_as: &UserId) -> Envelope {
    let ts = now_ms();
    let ciphertext = Base64Url::from_bytes(&pk(5).encrypt(b"hi").expect("encrypts"));
    let content_sig =
        content::sign_dm(private(key), &ciphertext, sign_as.as_str(), to.as_str(), ts)
            .expect("signs");
    let msg = Message::MsgDirect(MsgDirect {
        ciphertext,
        sender_pub: pk(key),
        content_sig,
    });
    Envelope::from_message(from, To::from(to), ts, &msg)
}

#[actix::test]
async fn content_reaches_the_router_only_when_its_signature_verifies() {
    let guest = uid("guest-3");
    let bob = uid("bob");
    let s = start(&hello(&guest, GUEST_KEY, None), Script::default(), vec![]);
    assert!(is_ack(&s.wrote(1).await[0]));

    s.send(&dm(&guest, &bob, GUEST_KEY, &guest));
    // Signed over another sender: refused.
    s.send(&dm(&guest, &bob, GUEST_KEY, &bob));
    // `from` is another user than the one this connection identified as.
    s.send(&dm(&bob, &guest, GUEST_KEY, &bob));
    let wrote = s.wrote(2).await;
    let codes: Vec<_> = wrote.iter().filter_map(error_code).collect();
    assert_eq!(codes, ["INVALID_SIG", "BAD_REQUEST"]);
    let frames: Vec<_> = s
        .router
        .calls()
        .await
        .into_iter()
        .filter(|c| matches!(c, Call::UserFrame { .. }))
        .collect();
    assert_eq!(
        frames,
        [Call::UserFrame {
            user_id: guest,
            msg_type: "MSG_DIRECT".into(),
        }]
    );
}

#[actix::test]
async fn a_frame_before_hello_closes_the_connection() {
    let guest = uid("guest-4");
    let s = start(
        &dm(&guest, &uid("bob"), GUEST_KEY, &guest),
        Script::default(),
        vec![],
    );
    let wrote = s.wrote(2).await;
    assert_eq!(error_code(&wrote[0]).as_deref(), Some("BAD_REQUEST"));
    assert!(matches!(wrote[1], Wrote::Close(close::POLICY)));
    assert!(s.router.calls().await.is_empty());
}

#[actix::test]
async fn the_session_detaches_its_user_when_the_socket_closes() {
    let guest = uid("guest-5");
    let s = start(&hello(&guest, GUEST_KEY, None), Script::default(), vec![]);
    assert!(is_ack(&s.wrote(1).await[0]));
    s.addr.do_send(Inbound::Closed);
    for _ in 0..500 {
        if s.router
            .calls()
            .await
            .contains(&Call::Detach(guest.clone()))
        {
            return;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    panic!("no detach: {:?}", s.router.calls().await);
}

/// A client that sends and closes at once (a DM then `/quit`) has every frame
/// it sent handled, in order, before its user is detached: the close arrives
/// while the DMs' signatures are still being checked.
#[actix::test]
async fn frames_sent_just_before_the_close_are_handled_before_the_detach() {
    let guest = uid("guest-6");
    let bob = uid("bob");
    let s = start(&hello(&guest, GUEST_KEY, None), Script::default(), vec![]);
    assert!(is_ack(&s.wrote(1).await[0]));
    for _ in 0..3 {
        s.send(&dm(&guest, &bob, GUEST_KEY, &guest));
    }
    s.addr.do_send(Inbound::Closed);
    let detached = Call::Detach(guest.clone());
    for _ in 0..500 {
        if s.router.calls().await.contains(&detached) {
            break;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    let calls: Vec<_> = s
        .router
        .calls()
        .await
        .into_iter()
        .filter(|c| matches!(c, Call::UserFrame { .. } | Call::Detach(_)))
        .collect();
    let dm_call = Call::UserFrame {
        user_id: guest.clone(),
        msg_type: "MSG_DIRECT".into(),
    };
    assert_eq!(calls, [dm_call.clone(), dm_call.clone(), dm_call, detached]);
}
