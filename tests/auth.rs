//! End-to-end: identification, registration and login (SPEC.md §6.1, §7).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::start;
use socp_protocol::message::UserHello;
use socp_protocol::{fixtures, now_ms, Envelope, PrivateKey, UserId};

const WAIT: Duration = Duration::from_secs(15);

/// USER_REGISTER from `from` for `user_id`/`username` with fixture key `key`,
/// signed with fixture key `signer`.
fn register(
    from: &UserId,
    user_id: &UserId,
    username: &str,
    key: usize,
    signer: usize,
) -> Envelope {
    register_frame(from, user_id, username, key, signer, key_store())
}

fn login(from: &UserId, who: &str) -> Envelope {
    login_frame(from, who)
}

/// An unsigned USER_HELLO for `id` carrying fixture key `key`.
fn hello(id: &UserId, key: usize, ts: i64, nonce: Option<&str>) -> Envelope {
    Envelope::new(
        id,
        server_to(),
        ts,
        &UserHello {
            client: "socp-tests".into(),
            pubkey: fixtures::key(key).public_key().clone(),
            enc_pubkey: None,
            meta: None,
            nonce: nonce.map(str::to_owned),
        },
    )
}

fn signed_hello(id: &UserId, key: &PrivateKey, nonce: Option<&str>) -> Envelope {
    hello(id, REG_KEY, now_ms(), nonce)
        .signed(key)
        .expect("signs")
}

/// Register `user_id` as `username` (key `REG_KEY`) from a fresh ephemeral
/// user with fixture key `key`; the connection stays open.
async fn registered(
    addr: std::net::SocketAddr,
    key: usize,
    user_id: &UserId,
    username: &str,
) -> User {
    let mut user = User::join(addr, key).await;
    let reg = register(&user.id, user_id, username, REG_KEY, REG_KEY);
    user.peer.send(&reg).await;
    let ok = user
        .peer
        .expect(WAIT, "REGISTER_OK", is("REGISTER_OK"))
        .await;
    assert_eq!(ok.payload()["user_id"], user_id.as_str());
    assert_eq!(ok.payload()["username"], username);
    user
}

/// The advert of `id` with its `meta.name`.
fn advert_of(id: &UserId) -> impl Fn(&Envelope) -> bool {
    let id = id.to_string();
    move |e: &Envelope| e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == id.as_str()
}

#[actix_rt::test]
async fn frames_sent_right_after_the_hello_are_handled_after_it() {
    let a = server(0, &[]).await;
    // No waiting for the ACK: the DMs arrive together with the hello.
    let mut alice = User::connect(a.addr, 10, UserId::random()).await;
    let mut frames = vec![alice.hello_frame(None)];
    frames.extend(
        (0..3).map(|i| alice.dm(&alice.id, alice.key.public_key(), &format!("pipelined {i}"))),
    );
    alice.peer.send_batch(&frames).await;
    alice.peer.expect(WAIT, "hello ACK", is("ACK")).await;
    for i in 0..3 {
        let got = alice.peer.expect(WAIT, "a DM", is("USER_DELIVER")).await;
        assert_eq!(alice.open(&got), format!("pipelined {i}"));
    }
    assert!(alice.peer.closed.is_none());
}

#[actix_rt::test]
async fn a_user_registers_then_logs_in_with_the_challenge() {
    let a = server(1, &[]).await;
    let mut dave = User::join(a.addr, 20).await;
    let quinn = UserId::random();

    // Registration must be signed with the key it registers.
    let forged = register(&dave.id, &quinn, "Quinn", REG_KEY, 22);
    dave.peer.send(&forged).await;
    dave.peer
        .expect(WAIT, "INVALID_SIG", error_code("INVALID_SIG"))
        .await;

    let reg = register(&dave.id, &quinn, "Quinn", REG_KEY, REG_KEY);
    dave.peer.send(&reg).await;
    let ok = dave
        .peer
        .expect(WAIT, "REGISTER_OK", is("REGISTER_OK"))
        .await;
    assert_eq!(ok.payload()["user_id"], quinn.as_str());
    assert_eq!(ok.payload()["username"], "Quinn");

    // The name is taken in any case; the id is taken too.
    let other = UserId::random();
    let same_name = register(&dave.id, &other, "qUINN", 22, 22);
    dave.peer.send(&same_name).await;
    dave.peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
    let same_id = register(&dave.id, &quinn, "Quentin", 22, 22);
    dave.peer.send(&same_id).await;
    dave.peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;

    // Nobody by that name.
    dave.peer.send(&login(&dave.id, "nobody-here")).await;
    dave.peer
        .expect(WAIT, "USER_NOT_FOUND", error_code("USER_NOT_FOUND"))
        .await;

    // Login by username, in another case.
    dave.peer.send(&login(&dave.id, "QUINN")).await;
    let challenge = dave
        .peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    assert_eq!(challenge.payload()["user_id"], quinn.as_str());
    assert_eq!(challenge.payload()["privkey_store"], key_store());
    let nonce = challenge.payload()["nonce"]
        .as_str()
        .expect("nonce")
        .to_owned();
    assert!(nonce.len() >= 16, "a real nonce: {nonce:?}");

    // The key store opens with the password only.
    let store = challenge.payload()["privkey_store"]
        .as_str()
        .expect("store");
    assert!(PrivateKey::from_encrypted(store, "wrong password").is_err());
    let key = PrivateKey::from_encrypted(store, PASSWORD).expect("opens");
    assert_eq!(key.public_key(), fixtures::key(REG_KEY).public_key());

    // The signed hello answering the challenge attaches the registered id.
    dave.peer
        .send(&signed_hello(&quinn, &key, Some(&nonce)))
        .await;
    dave.peer.expect(WAIT, "ACK", is("ACK")).await;
    let advert = dave
        .peer
        .expect(WAIT, "own advert", advert_of(&quinn))
        .await;
    assert_eq!(advert.payload()["meta"]["name"], "Quinn");
    let status = a.status().await;
    let local = local_users(&status);
    assert!(local.contains(&quinn.to_string()), "{status}");
    assert!(
        !local.contains(&dave.id.to_string()),
        "the ephemeral id is gone: {status}"
    );
    // Others see the name too.
    let mut erin = User::join(a.addr, 23).await;
    let seen = erin
        .peer
        .expect(WAIT, "quinn's advert", advert_of(&quinn))
        .await;
    assert_eq!(seen.payload()["meta"]["name"], "Quinn");
}

#[actix_rt::test]
async fn a_registered_id_needs_a_fresh_signed_hello_never_replayed() {
    let a = server(2, &[]).await;
    let rita = UserId::random();
    let _registrar = registered(a.addr, 24, &rita, "Rita").await;
    let key = fixtures::key(REG_KEY);

    let cases = [
        ("unsigned", hello(&rita, REG_KEY, now_ms(), None)),
        (
            "signed by another key",
            hello(&rita, REG_KEY, now_ms(), None)
                .signed(&fixtures::key(25))
                .expect("signs"),
        ),
        (
            "another key altogether",
            hello(&rita, 25, now_ms(), None)
                .signed(&fixtures::key(25))
                .expect("signs"),
        ),
        (
            "stale",
            hello(&rita, REG_KEY, now_ms() - 5 * 60 * 1000, None)
                .signed(&key)
                .expect("signs"),
        ),
        (
            "answering no challenge",
            signed_hello(&rita, &key, Some("made-up-nonce")),
        ),
    ];
    for (what, frame) in &cases {
        let mut peer = Peer::connect(a.addr).await;
        peer.send(frame).await;
        peer.expect(WAIT, what, error_code("AUTH_FAILED")).await;
        assert_eq!(peer.closed_within(WAIT).await, Some(1008), "{what}: closed");
    }
    assert!(!local_users(&a.status().await).contains(&rita.to_string()));

    // Signed by the registered key, fresh, never seen, but answering no
    // LOGIN_CHALLENGE: what a hello captured on the wire becomes once its
    // unsigned `ts` is changed. Refused (SPEC.md §6.1).
    let mut bare = Peer::connect(a.addr).await;
    bare.send(&signed_hello(&rita, &key, None)).await;
    let err = bare
        .expect(WAIT, "AUTH_FAILED", error_code("AUTH_FAILED"))
        .await;
    assert!(
        err.payload()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("LOGIN_REQUEST")),
        "refused for want of a challenge: {err:?}"
    );
    assert!(!local_users(&a.status().await).contains(&rita.to_string()));

    // The login flow's hello cannot be replayed either.
    let mut user = User::join(a.addr, 26).await;
    user.peer.send(&login(&user.id, "rita")).await;
    let challenge = user
        .peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    let nonce = challenge.payload()["nonce"].as_str().expect("nonce");
    let answer = signed_hello(&rita, &key, Some(nonce));
    user.peer.send(&answer).await;
    user.peer.expect(WAIT, "ACK", is("ACK")).await;
    let mut again = Peer::connect(a.addr).await;
    again.send(&answer).await;
    again
        .expect(WAIT, "AUTH_FAILED", error_code("AUTH_FAILED"))
        .await;
    assert!(
        user.peer.closed.is_none(),
        "the logged-in session is unaffected"
    );
}

#[actix_rt::test]
async fn registered_users_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let a = start(config(3, Some(db.clone()), &[]))
        .await
        .expect("a starts");
    let percy = UserId::random();
    let registrar = registered(a.addr, 27, &percy, "Persephone").await;
    let a_id = a.server_id.clone();
    a.shutdown().await;
    drop(registrar);

    let a = start(config(3, Some(db), &[])).await.expect("a restarts");
    assert_eq!(a.server_id, a_id);
    let mut user = User::join(a.addr, 28).await;
    // The name is still taken.
    let again = register(&user.id, &UserId::random(), "PERSEPHONE", 29, 29);
    user.peer.send(&again).await;
    user.peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
    // And the user logs in by id.
    user.peer.send(&login(&user.id, percy.as_str())).await;
    let challenge = user
        .peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    assert_eq!(challenge.payload()["user_id"], percy.as_str());
    assert_eq!(challenge.payload()["privkey_store"], key_store());
    let nonce = challenge.payload()["nonce"].as_str().expect("nonce");
    user.peer
        .send(&signed_hello(&percy, &fixtures::key(REG_KEY), Some(nonce)))
        .await;
    user.peer.expect(WAIT, "ACK", is("ACK")).await;
    let advert = user
        .peer
        .expect(WAIT, "own advert", advert_of(&percy))
        .await;
    assert_eq!(advert.payload()["meta"]["name"], "Persephone");
}

#[actix_rt::test]
async fn a_registration_only_server_admits_registered_users_only() {
    let settings = socp_actors::Settings {
        require_registration: true,
        ..fast_settings()
    };
    let a = start(config_with(4, None, &[], settings))
        .await
        .expect("a starts");
    // An ephemeral hello is refused.
    let mut stranger = User::hello(a.addr, 30, UserId::random()).await;
    stranger
        .peer
        .expect(WAIT, "AUTH_FAILED", error_code("AUTH_FAILED"))
        .await;
    assert_eq!(stranger.peer.closed_within(WAIT).await, Some(1008));

    // Registration and login are accepted as the first frames.
    let uma = UserId::random();
    let mut peer = Peer::connect(a.addr).await;
    peer.send(&register(&uma, &uma, "Uma", REG_KEY, REG_KEY))
        .await;
    peer.expect(WAIT, "REGISTER_OK", is("REGISTER_OK")).await;
    peer.send(&login(&uma, "uma")).await;
    let challenge = peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    let nonce = challenge.payload()["nonce"].as_str().expect("nonce");
    peer.send(&signed_hello(&uma, &fixtures::key(REG_KEY), Some(nonce)))
        .await;
    peer.expect(WAIT, "ACK", is("ACK")).await;
    assert!(local_users(&a.status().await).contains(&uma.to_string()));
}
