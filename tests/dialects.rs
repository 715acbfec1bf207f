//! The dialect kit (SPEC.md §11): scripted servers and clients that speak
//! v1.3 as other implementations do, frame by frame, against real socp
//! servers. Written from the standard and from what those implementations
//! were seen to send (docs/PROTOCOL.md, "Dialects"), not from their code.
//!
//! - *PEM dialect*: keys as base64url of PEM text; a server links with
//!   SERVER_ANNOUNCE as its first frame, verifies every frame with the key of
//!   its `from`, keeps its links alive with WebSocket pings only and never
//!   sends HEARTBEAT; its users' frames travel as they came (user-signed);
//!   clients send a `password` in their hello and list with
//!   `COMMAND {command:"/list"}`.
//! - *Standard DER dialect*: keys as base64url of DER, no socp capability:
//!   what a socp server sends a peer it knows nothing about.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod client_common;
mod common;
#[path = "../actors/tests/common/loopback.rs"]
#[allow(dead_code)]
mod loopback;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use socp::server::{start, RunningServer};
use socp_protocol::dialect::KeyEncoding;
use socp_protocol::{
    content, fixtures, now_ms, Base64Url, Envelope, MessageType, PrivateKey, PublicKey, ServerId,
    To, UserId,
};

const WAIT: Duration = Duration::from_secs(10);

/// `key` as the PEM dialect writes it.
fn pem(key: &PrivateKey) -> String {
    KeyEncoding::PemBase64Url
        .write(key.public_key())
        .expect("writes PEM")
}

/// A frame of type `t`, signed by `key` over the payload as given.
fn signed(
    t: MessageType,
    from: &str,
    to: &str,
    ts: i64,
    payload: Value,
    key: &PrivateKey,
) -> Envelope {
    Envelope::raw(t, from, To::parse(to).expect("a valid to"), ts, payload)
        .signed(key)
        .expect("signs")
}

/// A server of the PEM dialect, linked to a socp server by SERVER_ANNOUNCE.
struct PemServer {
    id: String,
    key: PrivateKey,
    peer: Peer,
}

impl PemServer {
    async fn link(to: &RunningServer, key: usize) -> PemServer {
        PemServer::link_as(to, key, ServerId::random().to_string()).await
    }

    /// [`PemServer::link`] as server `id`.
    async fn link_as(to: &RunningServer, key: usize, id: String) -> PemServer {
        let key = fixtures::key(key);
        let mut peer = Peer::connect(to.addr).await;
        let announce = signed(
            MessageType::ServerAnnounce,
            &id,
            to.server_id.as_str(),
            now_ms(),
            json!({"host": "127.0.0.1", "port": 9, "pubkey": pem(&key)}),
            &key,
        );
        peer.send(&announce).await;
        PemServer { id, key, peer }
    }

    /// Advertise one of its users (PEM key, empty meta), as it does.
    async fn advertise(&mut self, user: &str, key: &PrivateKey) {
        let advert = signed(
            MessageType::UserAdvertise,
            &self.id,
            "*",
            now_ms(),
            json!({"user_id": user, "server_id": self.id, "pubkey": pem(key), "meta": {}}),
            &self.key,
        );
        self.peer.send(&advert).await;
    }

    /// Keep the link alive the way it does: WebSocket pings, no text frame.
    async fn ping_for(&mut self, how_long: Duration) {
        let end = tokio::time::Instant::now() + how_long;
        while tokio::time::Instant::now() < end {
            self.peer.send_ping().await;
            self.peer.pump(Duration::from_millis(250)).await;
        }
    }
}

/// The frames a socp client sends for a one-chunk file: FILE_START, a
/// FILE_CHUNK with its content signature, FILE_END, each signed by the user.
fn file_frames(
    user: &User,
    to: &str,
    to_key: &PublicKey,
    file_id: &str,
    data: &[u8],
) -> Vec<Envelope> {
    let to_id = To::parse(to).expect("a valid to");
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&to_key.encrypt(data).expect("fits"));
    let sig = content::sign_dm(&user.key, &ct, user.id.as_str(), to, ts).expect("signs");
    [
        Envelope::raw(
            MessageType::FileStart,
            user.id.as_str(),
            to_id.clone(),
            ts,
            json!({"file_id": file_id, "name": "notes.txt", "size": data.len(),
                   "sha256": socp_protocol::crypto::sha256_hex(data), "mode": "dm"}),
        ),
        Envelope::raw(
            MessageType::FileChunk,
            user.id.as_str(),
            to_id.clone(),
            ts,
            json!({"file_id": file_id, "index": 0, "ciphertext": ct.as_str(),
                   "sender_pub": user.key.public_key().to_wire(), "content_sig": sig.as_str()}),
        ),
        Envelope::raw(
            MessageType::FileEnd,
            user.id.as_str(),
            to_id,
            ts,
            json!({"file_id": file_id}),
        ),
    ]
    .into_iter()
    .map(|e| e.signed(&user.key).expect("signs"))
    .collect()
}

/// A server on a loopback port that records the first frame of every
/// connection and reads the rest: its port, and the frames.
async fn first_frames() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (listener, port) = loopback::listen().await;
    let firsts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = firsts.clone();
    loopback::accept_all(listener, move |sock| {
        let seen = seen.clone();
        async move {
            let Some(mut conn) = loopback::WsConn::upgrade(sock).await else {
                return;
            };
            if let Some(first) = conn.next_text().await {
                seen.lock().unwrap().push(first);
            }
            while conn.next_text().await.is_some() {}
        }
    });
    (port, firsts)
}

/// A PEM-dialect server (fixture key 5) that listens where it says, linked
/// to `a` by its announce: its id, the first frame of each connection made
/// to it, and its link.
async fn pem_server_listening(
    a: &RunningServer,
) -> (
    ServerId,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    Peer,
) {
    let (port, firsts) = first_frames().await;
    let key = fixtures::key(5);
    let id = ServerId::random();
    let mut peer = Peer::connect(a.addr).await;
    let announce = signed(
        MessageType::ServerAnnounce,
        id.as_str(),
        a.server_id.as_str(),
        now_ms(),
        json!({"host": "127.0.0.1", "port": port, "pubkey": pem(&key)}),
        &key,
    );
    peer.send(&announce).await;
    eventually(WAIT, "linked", || async {
        link_state(&a.status().await, &id).as_deref() == Some("up")
    })
    .await;
    (id, firsts, peer)
}

/// A scripted introducer on a loopback port: on each connection it reads the
/// join request, sends what `answer` makes for the joiner's id (given its own
/// port), keeps the connection open and hands each later frame to `then`,
/// then `None` when the joiner closed it. Its port, and how many connections
/// it accepted.
async fn scripted_introducer(
    answer: impl Fn(&str, u16) -> Vec<Envelope> + Clone + 'static,
    then: impl Fn(Option<Envelope>) + Clone + 'static,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (listener, port) = loopback::listen().await;
    let accepted = loopback::accept_all(listener, move |sock| {
        let (answer, then) = (answer.clone(), then.clone());
        async move {
            let Some(mut conn) = loopback::WsConn::upgrade(sock).await else {
                return;
            };
            let Some(join) = conn.next_text().await else {
                return;
            };
            let join: Value = serde_json::from_str(&join).expect("json");
            let joiner = join["from"].as_str().unwrap_or_default().to_owned();
            for frame in answer(&joiner, port) {
                conn.send_text(&frame.to_json()).await;
            }
            while let Some(text) = conn.next_text().await {
                then(Some(Envelope::parse(text.as_bytes()).expect("a frame")));
            }
            then(None);
        }
    });
    (port, accepted)
}

/// `text` is the SERVER_ANNOUNCE of socp server `a` opening a link to a PEM
/// server: its key written in PEM, signed over that payload.
fn our_announce_in_pem(text: &str, a: &RunningServer) -> Envelope {
    let first = Envelope::parse(text.as_bytes()).expect("a frame");
    assert_eq!(first.msg_type(), "SERVER_ANNOUNCE");
    assert_eq!(first.from(), a.server_id.as_str());
    assert_eq!(
        key_in(&first, "pubkey"),
        (KeyEncoding::PemBase64Url, server_key(0))
    );
    first
        .verify(&server_key(0))
        .expect("signed over the PEM payload");
    first
}

fn is_type(t: &'static str) -> impl Fn(&Envelope) -> bool {
    move |e| e.msg_type() == t
}

fn advert_of(user: &UserId) -> impl Fn(&Envelope) -> bool {
    let id = user.to_string();
    move |e| e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == id.as_str()
}

/// The key a frame's payload carries in `field`.
fn key_in(env: &Envelope, field: &str) -> (KeyEncoding, PublicKey) {
    let text = env.payload()[field].as_str().expect("a key");
    (
        KeyEncoding::of(text),
        PublicKey::parse(text).expect("a key that parses"),
    )
}

/// The socp server `a`'s key, as its own SERVER_ANNOUNCE... or its fixture.
fn server_key(n: usize) -> PublicKey {
    fixtures::key(n).public_key().clone()
}

#[actix_rt::test]
async fn a_pem_server_links_by_announce_and_everything_crosses_in_its_dialect() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut pem_server = PemServer::link(&a, 5).await;
    let server_id = ServerId::parse(&pem_server.id).expect("an id");
    eventually(WAIT, "the PEM server is linked", || async {
        link_state(&a.status().await, &server_id).as_deref() == Some("up")
    })
    .await;

    // Our own announce first, our key in its encoding (it takes a server's
    // key from that server's announce; it may hold ours as written by an
    // introducer, in an encoding it cannot read).
    let ours = pem_server
        .peer
        .expect(WAIT, "a's announce", is_type("SERVER_ANNOUNCE"))
        .await;
    assert_eq!(
        key_in(&ours, "pubkey"),
        (KeyEncoding::PemBase64Url, server_key(0))
    );
    ours.verify(&server_key(0)).expect("signed by a");

    // A socp user attaches: the PEM server hears of it with a PEM key,
    // signed by the socp server over exactly what it received.
    let mut alice = User::join(a.addr, 10).await;
    let advert = pem_server
        .peer
        .expect(WAIT, "alice's advert", advert_of(&alice.id))
        .await;
    assert_eq!(
        key_in(&advert, "pubkey"),
        (KeyEncoding::PemBase64Url, alice.key.public_key().clone())
    );
    advert
        .verify(&server_key(0))
        .expect("signed by the socp server");

    // Its user zed, advertised with a PEM key, reaches alice.
    let zed = fixtures::key(11);
    pem_server.advertise("zed", &zed).await;
    let zed_id = UserId::parse("zed").expect("an id");
    assert!(alice.sees_user(&zed_id, WAIT).await, "alice hears of zed");

    // alice → zed: a SERVER_DELIVER whose envelope ts is alice's, with a
    // content signature that verifies over it in the string form.
    let dm = alice.dm(&zed_id, zed.public_key(), "hello zed");
    let sent_ts = dm.ts();
    alice
        .peer
        .send(&dm.signed(&alice.key).expect("signs"))
        .await;
    let delivered = pem_server
        .peer
        .expect(WAIT, "the DM to zed", is_type("SERVER_DELIVER"))
        .await;
    assert_eq!(delivered.ts(), sent_ts, "the sender's ts in the envelope");
    let p = delivered.payload();
    let ct = Base64Url::parse(p["ciphertext"].as_str().expect("ciphertext")).expect("b64");
    let sig =
        socp_protocol::Signature::parse(p["content_sig"].as_str().expect("sig")).expect("sig");
    alice
        .key
        .public_key()
        .verify(
            &content::dm_string(ct.as_str(), alice.id.as_str(), "zed", delivered.ts()),
            &sig,
        )
        .expect("string form over the envelope ts");
    assert_eq!(
        key_in(&delivered, "sender_pub").0,
        KeyEncoding::PemBase64Url
    );
    assert_eq!(zed.decrypt(ct.bytes()).expect("decrypts"), b"hello zed");

    // zed → alice, as the PEM dialect sends it: no `orig_ts`, the sender's
    // ts in the envelope, PEM `sender_pub`.
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&alice.key.public_key().encrypt(b"hi alice").expect("fits"));
    let content_sig = content::sign_dm(&zed, &ct, "zed", alice.id.as_str(), ts).expect("signs");
    let back = signed(
        MessageType::ServerDeliver,
        &pem_server.id,
        a.server_id.as_str(),
        ts,
        json!({"user_id": alice.id, "ciphertext": ct.as_str(), "sender": "zed",
               "sender_pub": pem(&zed), "content_sig": content_sig.as_str()}),
        &pem_server.key,
    );
    pem_server.peer.send(&back).await;
    let got = alice
        .peer
        .expect(WAIT, "zed's DM", is_type("USER_DELIVER"))
        .await;
    assert_eq!(alice.open(&got), "hi alice");
    assert_eq!(got.payload()["sender"], "zed");

    // alice → zed, a file: the PEM server is given alice's own frames, as
    // she sent and signed them (it routes them so, and checks her signature).
    let data = b"a small file for zed";
    for frame in file_frames(&alice, "zed", zed.public_key(), "f-zed-1", data) {
        alice.peer.send(&frame).await;
    }
    for t in ["FILE_START", "FILE_CHUNK", "FILE_END"] {
        let got = pem_server
            .peer
            .expect(WAIT, t, move |e| e.msg_type() == t)
            .await;
        assert_eq!((got.from(), got.to().as_str()), (alice.id.as_str(), "zed"));
        got.verify(alice.key.public_key())
            .expect("alice's own signature");
        if t == "FILE_CHUNK" {
            let ct =
                Base64Url::parse(got.payload()["ciphertext"].as_str().expect("ct")).expect("b64");
            assert_eq!(zed.decrypt(ct.bytes()).expect("decrypts"), data);
        }
    }

    // The PEM server never sees a frame only socp knows.
    let socp_only = pem_server
        .peer
        .count(Duration::from_millis(300), |e| {
            e.msg_type().starts_with("DIRECTORY_") || e.msg_type() == "USER_RENAME"
        })
        .await;
    assert_eq!(socp_only, 0, "no socp-only frames toward a PEM server");

    // Pings only, for three times the silence after which a server is
    // declared dead: the link stays up, and zed stays known.
    pem_server.ping_for(3 * fast_settings().peer_timeout).await;
    let status = a.status().await;
    assert_eq!(link_state(&status, &server_id).as_deref(), Some("up"));
    assert!(knows(&status, &zed_id), "zed is still known");
}

/// A server that joins with SERVER_HELLO_JOIN and keeps the join connection
/// as its only link (SPEC.md §5.1.5), keeping it alive with HEARTBEAT text
/// frames; DER keys; no socp capability.
#[actix_rt::test]
async fn a_joiner_keeps_its_join_connection_as_the_link() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let key = fixtures::key(6);
    let id = ServerId::random().to_string();
    let mut joiner = Peer::connect(a.addr).await;
    let join = signed(
        MessageType::ServerHelloJoin,
        &id,
        &a.addr.to_string(),
        now_ms(),
        json!({"host": "127.0.0.1", "port": 9, "pubkey": key.public_key().to_wire(),
               "ws_uri": format!("ws://{}", a.addr)}),
        &key,
    );
    joiner.send(&join).await;
    let welcome = joiner
        .expect(WAIT, "the welcome", is_type("SERVER_WELCOME"))
        .await;
    welcome
        .verify(&server_key(0))
        .expect("signed by the introducer");
    let server_id = ServerId::parse(welcome.payload()["assigned_id"].as_str().expect("an id"))
        .expect("a server id");
    let beat = |key: &PrivateKey| {
        signed(
            MessageType::Heartbeat,
            server_id.as_str(),
            a.server_id.as_str(),
            now_ms(),
            json!({"now": now_ms() / 1000}),
            key,
        )
    };
    // Its first frame over the join connection makes it the link.
    joiner.send(&beat(&key)).await;
    eventually(WAIT, "the join connection is a link", || async {
        link_state(&a.status().await, &server_id).as_deref() == Some("up")
    })
    .await;

    // Over it: our users' adverts, and the joiner's heartbeats keep it up
    // past the silence after which a server is declared dead.
    let alice = User::join(a.addr, 10).await;
    joiner
        .expect(
            WAIT,
            "alice's advert over the join connection",
            advert_of(&alice.id),
        )
        .await;
    let end = tokio::time::Instant::now() + 3 * fast_settings().peer_timeout;
    while tokio::time::Instant::now() < end {
        joiner.send(&beat(&key)).await;
        assert!(joiner.pump(Duration::from_millis(300)).await, "still open");
    }
    assert_eq!(
        link_state(&a.status().await, &server_id).as_deref(),
        Some("up")
    );
    assert!(joiner.closed.is_none(), "the join connection stays open");
    // A DER server not known to speak socp: no socp-only frames.
    assert!(joiner
        .inbox
        .iter()
        .all(|e| !e.msg_type().starts_with("DIRECTORY_")));
}

/// A client of the PEM dialect on a socp server, as it speaks: a `password`
/// in its hello (ignored), a PEM key, no socp capability.
async fn pem_client(a: &RunningServer, name: &str, key: &PrivateKey) -> Peer {
    let mut peer = Peer::connect(a.addr).await;
    let hello = signed(
        MessageType::UserHello,
        name,
        "server",
        now_ms(),
        json!({"client": "cli-v1", "pubkey": pem(key), "enc_pubkey": null, "password": "pw"}),
        key,
    );
    peer.send(&hello).await;
    peer
}

#[actix_rt::test]
async fn a_pem_client_gets_keys_deliveries_and_files_in_its_dialect() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut alice = User::join(a.addr, 10).await;
    let ivy_key = fixtures::key(12);
    let mut ivy = pem_client(&a, "ivy", &ivy_key).await;
    let ivy_id = UserId::parse("ivy").expect("an id");

    // The roster it is sent has every key in PEM, signed by the server.
    let advert = ivy
        .expect(WAIT, "alice's advert", advert_of(&alice.id))
        .await;
    assert_eq!(
        key_in(&advert, "pubkey"),
        (KeyEncoding::PemBase64Url, alice.key.public_key().clone())
    );
    advert.verify(&server_key(0)).expect("signed by the server");
    assert!(alice.sees_user(&ivy_id, WAIT).await, "alice hears of ivy");

    // Its list command, in its form.
    let list = signed(
        MessageType::Command,
        "ivy",
        "server",
        now_ms(),
        json!({"command": "/list"}),
        &ivy_key,
    );
    ivy.send(&list).await;
    ivy.expect(WAIT, "the list", is_type("COMMAND_RESPONSE"))
        .await;

    // A DM from alice: the envelope ts is alice's; sender_pub in PEM.
    let dm = alice.dm(&ivy_id, ivy_key.public_key(), "hello ivy");
    let sent_ts = dm.ts();
    alice.peer.send(&dm).await;
    let got = ivy
        .expect(WAIT, "alice's DM", is_type("USER_DELIVER"))
        .await;
    assert_eq!(got.ts(), sent_ts);
    assert_eq!(key_in(&got, "sender_pub").0, KeyEncoding::PemBase64Url);
    let ct = Base64Url::parse(got.payload()["ciphertext"].as_str().expect("ct")).expect("b64");
    assert_eq!(ivy_key.decrypt(ct.bytes()).expect("decrypts"), b"hello ivy");

    // A file from alice arrives as the standard FILE_* frames, from alice.
    let data = b"a small file for ivy".to_vec();
    for frame in file_frames(&alice, "ivy", ivy_key.public_key(), "f-ivy-1", &data) {
        alice.peer.send(&frame).await;
    }
    let start = ivy.expect(WAIT, "FILE_START", is_type("FILE_START")).await;
    assert_eq!(
        (start.from(), start.payload()["name"].as_str()),
        (alice.id.as_str(), Some("notes.txt"))
    );
    let chunk = ivy.expect(WAIT, "FILE_CHUNK", is_type("FILE_CHUNK")).await;
    assert_eq!(chunk.from(), alice.id.as_str());
    let ct = Base64Url::parse(chunk.payload()["ciphertext"].as_str().expect("ct")).expect("b64");
    assert_eq!(ivy_key.decrypt(ct.bytes()).expect("decrypts"), data);
    ivy.expect(WAIT, "FILE_END", is_type("FILE_END")).await;
    assert!(
        ivy.inbox.iter().all(|e| e.msg_type() != "USER_DELIVER"
            || e.payload()
                .get("kind")
                .and_then(Value::as_str)
                .is_none_or(|k| !k.starts_with("file"))),
        "no socp-only file deliveries"
    );
}

/// A public message addressed to the channel itself (one ciphertext for
/// everyone, as the PEM dialect's clients send it) reaches every member: a
/// USER_DELIVER for clients of its dialect, the sender's frame for socp
/// clients, on this server and on a linked socp server, which checks the
/// sender's own signature.
#[actix_rt::test]
async fn a_message_to_the_channel_reaches_every_member_in_their_dialect() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let b = start(config_with(1, None, &[a.addr], fast_settings()))
        .await
        .expect("b starts");
    eventually(WAIT, "a and b linked", || async {
        links_up(&a.status().await) == 1 && links_up(&b.status().await) == 1
    })
    .await;
    let mut alice = User::join(a.addr, 10).await;
    let mut bob = User::join(b.addr, 11).await;
    let ivy_key = fixtures::key(12);
    let jay_key = fixtures::key(13);
    let mut ivy = pem_client(&a, "ivy", &ivy_key).await;
    let mut jay = pem_client(&a, "jay", &jay_key).await;
    let ivy_id = UserId::parse("ivy").expect("an id");
    assert!(bob.sees_user(&ivy_id, WAIT).await, "b knows ivy");
    assert!(alice.sees_user(&ivy_id, WAIT).await, "alice knows ivy");
    jay.expect(WAIT, "ivy's advert", advert_of(&ivy_id)).await;
    // bob's advert is b's, passed on by a: a PEM client gets it from a,
    // with bob's key in PEM (its client cannot read another encoding).
    let bobs = jay.expect(WAIT, "bob's advert", advert_of(&bob.id)).await;
    assert_eq!(
        key_in(&bobs, "pubkey"),
        (KeyEncoding::PemBase64Url, bob.key.public_key().clone())
    );
    bobs.verify(&server_key(0)).expect("vouched for by a");
    ivy.pump(Duration::from_millis(200)).await;

    let ts = now_ms();
    let ct = Base64Url::from_bytes(&[7u8; 60]);
    let sig = content::sign_public(&ivy_key, &ct, "ivy", ts).expect("signs");
    let msg = signed(
        MessageType::MsgPublicChannel,
        "ivy",
        "public",
        ts,
        json!({"ciphertext": ct.as_str(), "sender_pub": pem(&ivy_key), "content_sig": sig.as_str()}),
        &ivy_key,
    );
    ivy.send(&msg).await;

    let to_jay = jay
        .expect(WAIT, "the message, for jay", is_type("USER_DELIVER"))
        .await;
    assert_eq!(to_jay.payload()["sender"], "ivy");
    assert_eq!(to_jay.payload()["ciphertext"], ct.as_str());
    to_jay.verify(&server_key(0)).expect("signed by the server");
    for (who, user) in [("alice", &mut alice), ("bob", &mut bob)] {
        let got = user
            .peer
            .expect(WAIT, who, is_type("MSG_PUBLIC_CHANNEL"))
            .await;
        assert_eq!((got.from(), got.ts()), ("ivy", ts), "{who}");
        got.verify(ivy_key.public_key())
            .expect("ivy's own signature");
    }
    // Once each, and never back to its sender.
    assert_eq!(
        bob.peer
            .count(Duration::from_millis(500), is_type("MSG_PUBLIC_CHANNEL"))
            .await,
        0
    );
    assert_eq!(
        ivy.count(Duration::from_millis(100), |e| e.msg_type()
            == "USER_DELIVER"
            || e.msg_type() == "MSG_PUBLIC_CHANNEL")
            .await,
        0
    );
}

/// A server of the PEM dialect takes SERVER_ANNOUNCE as the first frame of a
/// link and drops SERVER_HELLO_LINK: when its link drops, the socp server
/// dials it back with its announce, its key written in PEM.
#[actix_rt::test]
async fn a_pem_server_is_dialled_back_with_an_announce_in_its_encoding() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let (_, firsts, peer) = pem_server_listening(&a).await;
    drop(peer);
    eventually(WAIT, "dialled back", || async {
        !firsts.lock().unwrap().is_empty()
    })
    .await;
    let first = firsts.lock().unwrap()[0].clone();
    our_announce_in_pem(&first, &a);
}

/// A welcomed join connection stays open for the joiner's first frame (some
/// implementations use it as their only link), but only so many at once: a
/// flood of join requests cannot hold the server's connections open.
#[actix_rt::test]
async fn join_connections_kept_open_are_bounded() {
    use socp_actors::peer::MAX_KEPT_JOINS;
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let key = fixtures::key(6);
    let mut joiners = Vec::new();
    for _ in 0..MAX_KEPT_JOINS + 6 {
        let mut joiner = Peer::connect(a.addr).await;
        let join = signed(
            MessageType::ServerHelloJoin,
            ServerId::random().as_str(),
            &a.addr.to_string(),
            now_ms(),
            json!({"host": "127.0.0.1", "port": 9, "pubkey": key.public_key().to_wire()}),
            &key,
        );
        joiner.send(&join).await;
        joiner
            .expect(WAIT, "the welcome", is_type("SERVER_WELCOME"))
            .await;
        joiners.push(joiner);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut open = 0;
    for joiner in &mut joiners {
        if joiner
            .closed_within(Duration::from_millis(20))
            .await
            .is_none()
        {
            open += 1;
        }
    }
    assert_eq!(open, MAX_KEPT_JOINS, "the rest closed after their welcome");
}

/// A server of the PEM dialect runs its public channel as one AES-256-GCM
/// key, wrapped in PUBLIC_CHANNEL_UPDATED for each member it knows (ours
/// included), and each public message as one ciphertext under it. A socp
/// client given the key reads its members' public messages and sends its own
/// to them too; socp clients without that key see each message once.
#[actix_rt::test]
async fn socp_clients_read_and_write_a_channel_of_one_aes_key() {
    use client_common::{is_event, Client, Options};
    use socp_protocol::crypto::group::GroupKey;
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut alice = Client::start("alice", a.addr, Options::new(10, &tmp.path().join("a"))).await;
    let mut bob = Client::start("bob", a.addr, Options::new(11, &tmp.path().join("b"))).await;
    alice.sees_online(&bob.id).await;
    let mut pem_server = PemServer::link(&a, 5).await;
    let zed = fixtures::key(13);
    pem_server.advertise("zed", &zed).await;
    alice.sees_online("zed").await;

    // Its channel key, wrapped for alice (its version above ours).
    let group_bytes = [42u8; 32];
    let group = GroupKey::from_bytes(&group_bytes).expect("a key");
    let alice_key = fixtures::key(10).public_key().clone();
    let wrapped = Base64Url::from_bytes(&alice_key.encrypt(&group_bytes).expect("wraps"));
    let updated = signed(
        MessageType::PublicChannelUpdated,
        &pem_server.id,
        "*",
        now_ms(),
        json!({"version": 1000, "wraps": [{"member_id": alice.id, "wrapped_key": wrapped.as_str()}]}),
        &pem_server.key,
    );
    pem_server.peer.send(&updated).await;

    // zed's public message: one ciphertext, zed's own frame passed on to "*".
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&group.seal(b"hello from zed").expect("seals"));
    let sig = content::sign_public(&zed, &ct, "zed", ts).expect("signs");
    let msg = signed(
        MessageType::MsgPublicChannel,
        "zed",
        "*",
        ts,
        json!({"ciphertext": ct.as_str(), "sender_pub": pem(&zed), "content_sig": sig.as_str()}),
        &zed,
    );
    // A barrier: frames of one link reach alice in order, so once she sees
    // yan, she holds the key.
    pem_server.advertise("yan", &fixtures::key(14)).await;
    alice.sees_online("yan").await;
    pem_server.peer.send(&msg).await;
    let shown = alice.expect("zed's message", is_event("public")).await;
    assert_eq!(shown["text"], "hello from zed");
    assert_eq!(shown["from"], "zed");

    // alice's /all: the RSA copy for bob, and one ciphertext under the
    // channel key for its members.
    alice.send("/all hi everyone");
    let got = pem_server
        .peer
        .expect(WAIT, "alice's message", |e| {
            e.msg_type() == "MSG_PUBLIC_CHANNEL" && e.to().as_str() == "public"
        })
        .await;
    got.verify(&alice_key).expect("alice's own signature");
    // Only the fields its servers know (they pass on nothing else, and the
    // signature must still verify after them).
    let mut fields: Vec<&String> = got
        .payload()
        .as_object()
        .expect("an object")
        .keys()
        .collect();
    fields.sort();
    assert_eq!(fields, ["ciphertext", "content_sig", "sender_pub"]);
    let ct = Base64Url::parse(got.payload()["ciphertext"].as_str().expect("ct")).expect("b64");
    assert_eq!(group.open(ct.bytes()).expect("opens"), b"hi everyone");
    let heard = bob.expect("alice's message", is_event("public")).await;
    assert_eq!(heard["text"], "hi everyone");
    // Once, and nothing said about the copy bob cannot open; zed's message,
    // under a key bob does not hold, said to be unreadable (not alarmed about).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob.logged(is_event("public")).len(), 1);
    let unreadable = bob.logged(is_event("unreadable"));
    assert_eq!(unreadable.len(), 1, "{:?}", bob.log);
    assert_eq!(unreadable[0]["from"], "zed");
    assert!(bob.logged(is_event("warning")).is_empty(), "{:?}", bob.log);
}

/// The channel key of `ivy`'s server (a PEM client, key `key`): from the
/// first update with a wrap for it.
async fn channel_key_of_ivy(
    ivy: &mut Peer,
    key: &PrivateKey,
) -> socp_protocol::crypto::group::GroupKey {
    let wraps_ivy = |e: &Envelope| {
        e.msg_type() == "PUBLIC_CHANNEL_UPDATED"
            && e.payload()["wraps"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["member_id"] == "ivy"))
    };
    let update = ivy
        .expect(WAIT, "a wrap of its server's key", wraps_ivy)
        .await;
    let wrap = update.payload()["wraps"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["member_id"] == "ivy").cloned())
        .expect("ivy's wrap");
    let wrapped = Base64Url::parse(wrap["wrapped_key"].as_str().expect("a key")).expect("b64");
    let bytes = key.decrypt(wrapped.bytes()).expect("unwraps");
    socp_protocol::crypto::group::GroupKey::from_bytes(&bytes).expect("a group key")
}

/// `from`'s public message `text` as the PEM dialect's clients send it: one
/// ciphertext under `group`, to the channel, signed in the public form.
fn to_the_channel(
    from: &str,
    key: &PrivateKey,
    group: &socp_protocol::crypto::group::GroupKey,
    text: &[u8],
) -> Envelope {
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&group.seal(text).expect("seals"));
    let sig = content::sign_public(key, &ct, from, ts).expect("signs");
    signed(
        MessageType::MsgPublicChannel,
        from,
        "public",
        ts,
        json!({"ciphertext": ct.as_str(), "sender_pub": pem(key), "content_sig": sig.as_str()}),
        key,
    )
}

/// The text of `sender`'s delivery to a PEM client, opened with `group`.
async fn opened_delivery(
    ivy: &mut Peer,
    sender: &str,
    group: &socp_protocol::crypto::group::GroupKey,
) -> Vec<u8> {
    let got = ivy
        .expect(WAIT, "a delivery", |e| {
            e.msg_type() == "USER_DELIVER" && e.payload()["sender"] == json!(sender)
        })
        .await;
    let ct = Base64Url::parse(got.payload()["ciphertext"].as_str().expect("ct")).expect("b64");
    group.open(ct.bytes()).expect("opens under the channel key")
}

/// A client of the PEM dialect attached to a socp server encrypts its public
/// messages under that server's channel key, which the server wraps for it;
/// the server wraps it for its socp clients too, so they read those messages
/// and send that client one ciphertext it can open, while socp clients still
/// get their own RSA copy (each shown once).
#[actix_rt::test]
async fn a_socp_servers_channel_key_is_shared_by_its_clients_of_every_dialect() {
    use client_common::{is_event, Client, Options};
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut alice = Client::start("alice", a.addr, Options::new(10, &tmp.path().join("a"))).await;
    let mut bob = Client::start("bob", a.addr, Options::new(11, &tmp.path().join("b"))).await;
    alice.sees_online(&bob.id).await;
    let ivy_key = fixtures::key(12);
    let mut ivy = pem_client(&a, "ivy", &ivy_key).await;

    // a's update with a wrap for ivy: a's channel key.
    let group = channel_key_of_ivy(&mut ivy, &ivy_key).await;
    alice.sees_online("ivy").await;
    bob.sees_online("ivy").await;

    // ivy's public message: one ciphertext under a's key, to the channel.
    ivy.send(&to_the_channel("ivy", &ivy_key, &group, b"hello from ivy"))
        .await;
    for (who, c) in [("alice", &mut alice), ("bob", &mut bob)] {
        let shown = c.expect("ivy's message", is_event("public")).await;
        assert_eq!(
            (&shown["text"], &shown["from"]),
            (&json!("hello from ivy"), &json!("ivy")),
            "{who}"
        );
    }

    // alice's /all: ivy gets one ciphertext under a's key; bob his RSA copy
    // (and the other copy too: shown once).
    alice.send("/all hi everyone");
    assert_eq!(
        opened_delivery(&mut ivy, &alice.id, &group).await,
        b"hi everyone"
    );
    let heard = bob.expect("alice's message", is_event("public")).await;
    assert_eq!(heard["text"], "hi everyone");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob.logged(is_event("public")).len(), 2, "{:?}", bob.log);
    assert!(
        bob.logged(is_event("unreadable")).is_empty(),
        "{:?}",
        bob.log
    );
    assert!(bob.logged(is_event("warning")).is_empty(), "{:?}", bob.log);
}

/// The same across servers: once a client of the PEM dialect has attached
/// to socp server a, a gives its channel key to the socp clients of linked
/// socp server b too, so that bob on b reads what that client sends to the
/// channel, and sends it one ciphertext it reads.
#[actix_rt::test]
async fn a_socp_servers_channel_key_reaches_socp_clients_on_other_servers() {
    use client_common::{is_event, Client, Options};
    let (a, b) = linked_pair(fast_settings()).await;
    let ivy_key = fixtures::key(12);
    let mut ivy = pem_client(&a, "ivy", &ivy_key).await;
    let group = channel_key_of_ivy(&mut ivy, &ivy_key).await;
    // bob comes after ivy: a learns of him from b, and sends him its key.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut bob = Client::start("bob", b.addr, Options::new(11, &tmp.path().join("b"))).await;
    bob.sees_online("ivy").await;
    let bob_id = UserId::parse(&bob.id).expect("an id");
    eventually(WAIT, "a knows bob", || async {
        knows(&a.status().await, &bob_id)
    })
    .await;
    // Its wrap for bob goes over the link before what ivy sends next.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ivy's public message under a's key, read by bob on b.
    ivy.send(&to_the_channel("ivy", &ivy_key, &group, b"hello from ivy"))
        .await;
    let shown = bob.expect("ivy's message", is_event("public")).await;
    assert_eq!(shown["text"], "hello from ivy", "{:?}", bob.log);

    // bob's /all: one ciphertext under a's key reaches ivy.
    bob.send("/all hi ivy");
    assert_eq!(opened_delivery(&mut ivy, &bob.id, &group).await, b"hi ivy");
}

/// A server of another dialect that answers a frame type with ERROR
/// UNKNOWN_TYPE ("Unhandled type PUBLIC_CHANNEL_ADD", as one does) is not
/// sent that type again over its link; other frames still go.
#[actix_rt::test]
async fn a_type_a_server_says_it_does_not_handle_is_not_sent_to_it_again() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut other = PemServer::link(&a, 5).await;
    let other_id = ServerId::parse(&other.id).expect("an id");
    eventually(WAIT, "linked", || async {
        link_state(&a.status().await, &other_id).as_deref() == Some("up")
    })
    .await;
    let _alice = User::join(a.addr, 10).await;
    other
        .peer
        .expect(WAIT, "a's channel news", is_type("PUBLIC_CHANNEL_ADD"))
        .await;
    let error = signed(
        MessageType::Error,
        &other.id,
        a.server_id.as_str(),
        now_ms(),
        json!({"code": "UNKNOWN_TYPE", "detail": "Unhandled type PUBLIC_CHANNEL_ADD"}),
        &other.key,
    );
    other.peer.send(&error).await;
    // Frames of a link are handled in order: once zed is known, so is that.
    other.advertise("zed", &fixtures::key(11)).await;
    let zed = UserId::parse("zed").expect("an id");
    eventually(WAIT, "zed known", || async {
        knows(&a.status().await, &zed)
    })
    .await;

    let bob = User::join(a.addr, 12).await;
    other
        .peer
        .expect(WAIT, "bob's advert", advert_of(&bob.id))
        .await;
    let bobs_version = |e: &Envelope| {
        e.msg_type() == "PUBLIC_CHANNEL_UPDATED"
            && e.payload()["wraps"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["member_id"] == json!(bob.id)))
    };
    other
        .peer
        .expect(WAIT, "bob's channel version", bobs_version)
        .await;
    let adds = other
        .peer
        .inbox
        .iter()
        .filter(|e| e.msg_type() == "PUBLIC_CHANNEL_ADD");
    assert_eq!(adds.count(), 0, "no PUBLIC_CHANNEL_ADD after its ERROR");
    assert_eq!(
        other
            .peer
            .count(Duration::from_millis(500), is_type("PUBLIC_CHANNEL_ADD"))
            .await,
        0
    );
}

/// A socp server joins a mesh of the PEM dialect: its introducer's welcome
/// has no `server_pub` and does not list the introducer (taken on trust),
/// its servers' keys are PEM; socp dials the listed server with
/// SERVER_ANNOUNCE, its own key written in PEM.
#[actix_rt::test]
async fn socp_joins_through_an_introducer_of_the_pem_dialect() {
    use std::sync::Arc;
    let intro_key = Arc::new(fixtures::key(7));
    let mesh_key = fixtures::key(8);
    let server_pem = pem(&mesh_key);
    let server_id = ServerId::random().to_string();
    // The mesh's server: records the first frame of each connection.
    let (server_port, firsts) = first_frames().await;
    // Its introducer: a welcome as it writes one, the connection kept.
    let (sid, spem) = (server_id.clone(), server_pem.clone());
    let welcome = move |joiner: &str, _| {
        vec![signed(
            MessageType::ServerWelcome,
            ServerId::random().as_str(),
            joiner,
            now_ms(),
            json!({"assigned_id": joiner, "clients": [],
                   "servers": [{"server_id": sid, "host": "127.0.0.1", "port": server_port,
                                "pubkey": spem}]}),
            &intro_key,
        )]
    };
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_closed = closed.clone();
    let on_close = move |frame: Option<Envelope>| {
        if frame.is_none() {
            seen_closed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let (intro_port, _) = scripted_introducer(welcome, on_close).await;
    let intro = std::net::SocketAddr::from(([127, 0, 0, 1], intro_port));
    let a = start(config_with(0, None, &[intro], fast_settings()))
        .await
        .expect("a starts and joins");
    eventually(WAIT, "the mesh's server dialled", || async {
        !firsts.lock().unwrap().is_empty()
    })
    .await;
    let first = our_announce_in_pem(&firsts.lock().unwrap()[0].clone(), &a);
    assert_eq!(first.to().as_str(), server_id);
    // The join connection stays open, though it is no link (the introducer's
    // key is unknown): that introducer forgets a server whose join
    // connection closed, and would welcome the next joiner without it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !closed.load(std::sync::atomic::Ordering::SeqCst),
        "the join connection was closed"
    );
}

/// Files from the PEM dialect: its server passes its user's FILE_* frames
/// on as the user sent and signed them (400-byte chunks, no chunk signature);
/// a socp user gets them as deliveries from that user.
#[actix_rt::test]
async fn files_from_a_pem_server_reach_a_socp_user() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut pem_server = PemServer::link(&a, 5).await;
    let mut alice = User::join(a.addr, 10).await;
    let zed = fixtures::key(11);
    pem_server.advertise("zed", &zed).await;
    let zed_id = UserId::parse("zed").expect("an id");
    assert!(alice.sees_user(&zed_id, WAIT).await, "alice hears of zed");
    let data = vec![b'z'; 700];
    let to = alice.id.as_str();
    let mut frames = vec![signed(
        MessageType::FileStart,
        "zed",
        to,
        now_ms(),
        json!({"file_id": "z-1", "name": "z.txt", "size": data.len(),
               "sha256": socp_protocol::crypto::sha256_hex(&data), "mode": "dm"}),
        &zed,
    )];
    for (index, piece) in data.chunks(400).enumerate() {
        let ct = Base64Url::from_bytes(&alice.key.public_key().encrypt(piece).expect("fits"));
        frames.push(signed(
            MessageType::FileChunk,
            "zed",
            to,
            now_ms(),
            json!({"file_id": "z-1", "index": index, "ciphertext": ct.as_str()}),
            &zed,
        ));
    }
    frames.push(signed(
        MessageType::FileEnd,
        "zed",
        to,
        now_ms(),
        json!({"file_id": "z-1"}),
        &zed,
    ));
    for frame in &frames {
        pem_server.peer.send(frame).await;
    }
    let mut got = Vec::new();
    for kind in ["file_start", "file_chunk", "file_chunk", "file_end"] {
        let d = alice
            .peer
            .expect(WAIT, kind, move |e| {
                e.msg_type() == "USER_DELIVER" && e.payload()["kind"] == kind
            })
            .await;
        assert_eq!(d.payload()["sender"], "zed");
        if kind == "file_chunk" {
            got.extend(
                alice
                    .key
                    .decrypt(
                        Base64Url::parse(d.payload()["ciphertext"].as_str().expect("ct"))
                            .expect("b64")
                            .bytes(),
                    )
                    .expect("decrypts"),
            );
        }
    }
    assert_eq!(got, data);
}

/// A dialect whose presence carries no keys: its server advertises users as
/// `{user_id, server_id}` and hands keys out on PUBKEY_REQUEST (and asks
/// for ours so). socp asks for the key, then tells its users with its own
/// signed advert; it answers the server's requests from what it knows.
#[actix_rt::test]
async fn keys_of_a_dialect_without_keys_in_its_presence_are_asked_for() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let key = fixtures::key(6);
    let id = ServerId::random();
    let mut link = Peer::connect(a.addr).await;
    let join = signed(
        MessageType::ServerHelloJoin,
        id.as_str(),
        &a.addr.to_string(),
        now_ms(),
        json!({"host": "127.0.0.1", "port": 9, "pubkey": key.public_key().to_wire()}),
        &key,
    );
    link.send(&join).await;
    link.expect(WAIT, "the welcome", is_type("SERVER_WELCOME"))
        .await;
    let mut alice = User::join(a.addr, 10).await;
    let user = UserId::random();
    let user_key = fixtures::key(12);
    let advert = signed(
        MessageType::UserAdvertise,
        id.as_str(),
        "*",
        now_ms(),
        json!({"user_id": user, "server_id": id}),
        &key,
    );
    link.send(&advert).await;
    let ask = link
        .expect(WAIT, "a key request", is_type("PUBKEY_REQUEST"))
        .await;
    assert_eq!(ask.payload()["user_id"], user.as_str());
    ask.verify(&server_key(0))
        .expect("signed by the socp server");
    let answer = signed(
        MessageType::PubkeyResponse,
        id.as_str(),
        a.server_id.as_str(),
        now_ms(),
        json!({"user_id": user, "pubkey": user_key.public_key().to_wire()}),
        &key,
    );
    link.send(&answer).await;
    let told = alice
        .peer
        .expect(WAIT, "the user's advert", advert_of(&user))
        .await;
    assert_eq!(key_in(&told, "pubkey").1, user_key.public_key().clone());
    told.verify(&server_key(0))
        .expect("the socp server's own advert");
    assert!(knows(&a.status().await, &user));

    // Its server asks for alice's key.
    let ask = signed(
        MessageType::PubkeyRequest,
        id.as_str(),
        a.server_id.as_str(),
        now_ms(),
        json!({"user_id": alice.id}),
        &key,
    );
    link.send(&ask).await;
    let answer = link
        .expect(WAIT, "alice's key", is_type("PUBKEY_RESPONSE"))
        .await;
    assert_eq!(key_in(&answer, "pubkey").1, alice.key.public_key().clone());
}

/// SPEC.md §5.1.5: a socp server that joins keeps the join connection open
/// as its link to the introducer and never dials it a second time: its
/// hello, heartbeats and users' adverts go over that connection, and what
/// the introducer sends over it is read (a user it advertises there is
/// known). It used to close the join connection and dial again.
#[actix_rt::test]
async fn a_socp_joiner_keeps_its_join_connection_as_its_link() {
    use std::sync::{Arc, Mutex};
    let intro_key = Arc::new(fixtures::key(7));
    let intro_id = ServerId::random().to_string();
    let carl = UserId::random();
    let after_welcome = Arc::new(Mutex::new(Vec::<Envelope>::new()));
    let (id, carl_id) = (intro_id.clone(), carl.clone());
    // Its welcome lists itself with its key, then one of its users comes.
    let answer = move |joiner: &str, port: u16| {
        let der = intro_key.public_key().to_wire().to_owned();
        let welcome = signed(
            MessageType::ServerWelcome,
            &id,
            joiner,
            now_ms(),
            json!({"assigned_id": joiner, "clients": [],
                   "servers": [{"server_id": id, "host": "127.0.0.1", "port": port,
                                "pubkey": der}]}),
            &intro_key,
        );
        let advert = signed(
            MessageType::UserAdvertise,
            &id,
            "*",
            now_ms(),
            json!({"user_id": carl_id.as_str(), "server_id": id, "meta": {},
                   "pubkey": fixtures::key(12).public_key().to_wire()}),
            &intro_key,
        );
        vec![welcome, advert]
    };
    let seen = after_welcome.clone();
    let (intro_port, connections) =
        scripted_introducer(answer, move |frame| seen.lock().unwrap().extend(frame)).await;
    let intro = std::net::SocketAddr::from(([127, 0, 0, 1], intro_port));
    let a = start(config_with(0, None, &[intro], fast_settings()))
        .await
        .expect("a starts and joins");
    let alice = User::join(a.addr, 10).await;
    let alice_id = alice.id.to_string();
    eventually(
        WAIT,
        "a heartbeat and alice's advert over the join connection",
        || {
            let seen = after_welcome.lock().unwrap().clone();
            let alice_id = alice_id.clone();
            async move {
                seen.iter().any(|e| e.msg_type() == "HEARTBEAT")
                    && seen.iter().any(|e| {
                        e.msg_type() == "USER_ADVERTISE"
                            && e.payload()["user_id"] == alice_id.as_str()
                    })
            }
        },
    )
    .await;
    eventually(WAIT, "carl, advertised over it, is known", || async {
        knows(&a.status().await, &carl)
    })
    .await;
    let seen = after_welcome.lock().unwrap().clone();
    assert_eq!(seen[0].msg_type(), "SERVER_HELLO_LINK", "our hello first");
    assert!(seen.iter().all(|e| e.from() == a.server_id.as_str()));
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the introducer is not dialled again"
    );
    assert_eq!(
        link_state(
            &a.status().await,
            &ServerId::parse(&intro_id).expect("an id")
        )
        .as_deref(),
        Some("up")
    );
}

/// SPEC.md §11: a server whose key is not pinned may open its link with an
/// unsigned SERVER_ANNOUNCE (its key taken on trust, logged); everything it
/// sends later must verify with that key. Once the key is pinned, an
/// unsigned announce is refused (INVALID_SIG, closed). Both were refused.
#[actix_rt::test]
async fn an_unsigned_announce_is_trusted_on_first_use_only() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut alice = User::join(a.addr, 10).await;
    let key = fixtures::key(5);
    let id = ServerId::random();
    let unsigned_announce = || {
        Envelope::raw(
            MessageType::ServerAnnounce,
            id.as_str(),
            To::parse(a.server_id.as_str()).expect("a valid to"),
            now_ms(),
            json!({"host": "127.0.0.1", "port": 9, "pubkey": pem(&key)}),
        )
    };
    let mut first = Peer::connect(a.addr).await;
    first.send(&unsigned_announce()).await;
    eventually(WAIT, "linked on trust", || async {
        link_state(&a.status().await, &id).as_deref() == Some("up")
    })
    .await;
    let zed = fixtures::key(11);
    let advert = signed(
        MessageType::UserAdvertise,
        id.as_str(),
        "*",
        now_ms(),
        json!({"user_id": "zed", "server_id": id.as_str(), "pubkey": pem(&zed), "meta": {}}),
        &key,
    );
    first.send(&advert).await;
    let zed_id = UserId::parse("zed").expect("an id");
    assert!(
        alice.sees_user(&zed_id, WAIT).await,
        "its signed frames count"
    );
    drop(first);
    eventually(WAIT, "its link down", || async {
        link_state(&a.status().await, &id).as_deref() != Some("up")
    })
    .await;

    let mut again = Peer::connect(a.addr).await;
    again.send(&unsigned_announce()).await;
    again
        .expect(WAIT, "INVALID_SIG", error_code("INVALID_SIG"))
        .await;
    assert!(again.closed_within(WAIT).await.is_some(), "closed");
    assert_ne!(link_state(&a.status().await, &id).as_deref(), Some("up"));
}

/// One implementation takes no first frame from a server but
/// SERVER_HELLO_JOIN (it drops a SERVER_HELLO_LINK without a word) and never
/// dials the servers it hears of. A socp server that learns of it through
/// the mesh dials it, is dropped unanswered, and dials again with a join: it
/// reads the welcome, keeps the connection as the link, and the server's
/// users are known. Before, it dialled with SERVER_HELLO_LINK for ever.
#[actix_rt::test]
async fn a_server_that_takes_only_joins_is_linked_with_a_join() {
    use std::sync::{Arc, Mutex};
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let g_key = Arc::new(fixtures::key(9));
    let g_id = ServerId::random();
    let gus = UserId::random();
    let openers = Arc::new(Mutex::new(Vec::<String>::new()));
    let (listener, g_port) = loopback::listen().await;
    let (seen, key, id, user) = (openers.clone(), g_key.clone(), g_id.clone(), gus.clone());
    loopback::accept_all(listener, move |sock| {
        let (seen, key, id, user) = (seen.clone(), key.clone(), id.clone(), user.clone());
        async move {
            let Some(mut conn) = loopback::WsConn::upgrade(sock).await else {
                return;
            };
            let Some(first) = conn.next_text().await else {
                return;
            };
            let first: Value = serde_json::from_str(&first).expect("json");
            let opener = first["type"].as_str().unwrap_or_default().to_owned();
            seen.lock().unwrap().push(opener.clone());
            if opener != "SERVER_HELLO_JOIN" {
                return; // dropped, without a close frame
            }
            let der = key.public_key().to_wire().to_owned();
            let joiner = first["from"].as_str().unwrap_or_default().to_owned();
            let welcome = signed(
                MessageType::ServerWelcome,
                id.as_str(),
                &joiner,
                now_ms(),
                json!({"server_id": id.as_str(), "server_pub": der, "assigned_id": null}),
                &key,
            );
            conn.send_text(&welcome.to_json()).await;
            let advert = signed(
                MessageType::UserAdvertise,
                id.as_str(),
                "*",
                now_ms(),
                json!({"user_id": user.as_str(), "server_id": id.as_str(), "meta": {},
                       "pubkey": fixtures::key(12).public_key().to_wire()}),
                &key,
            );
            conn.send_text(&advert.to_json()).await;
            while conn.next_text().await.is_some() {}
        }
    });
    // A linked server passes on the join-only server's announce: a's first
    // news of it.
    let relay = PemServer::link(&a, 5).await;
    let relay_id = ServerId::parse(&relay.id).expect("an id");
    eventually(WAIT, "the relaying server linked", || async {
        link_state(&a.status().await, &relay_id).as_deref() == Some("up")
    })
    .await;
    let mut relay = relay;
    let announce = signed(
        MessageType::ServerAnnounce,
        g_id.as_str(),
        "*",
        now_ms(),
        json!({"host": "127.0.0.1", "port": g_port,
               "pubkey": g_key.public_key().to_wire()}),
        &g_key,
    );
    relay.peer.send(&announce).await;
    eventually(
        WAIT,
        "its user known over a link opened with a join",
        || async {
            let status = a.status().await;
            knows(&status, &gus) && link_state(&status, &g_id).as_deref() == Some("up")
        },
    )
    .await;
    let openers = openers.lock().unwrap().clone();
    assert_eq!(
        openers.first().map(String::as_str),
        Some("SERVER_HELLO_LINK")
    );
    assert_eq!(
        openers.last().map(String::as_str),
        Some("SERVER_HELLO_JOIN")
    );
    // Its welcome (`assigned_id: null`) is for a joiner: ignored, not
    // counted as a frame we do not read.
    let text = metrics_text(a.addr).await;
    assert!(!text.contains("unread"), "{text}");
}

/// A joiner learns each server of the mesh from the welcome, and links to a
/// PEM-dialect server in its dialect only if it learns its key as PEM: the
/// welcome gives every key as its holder writes it. It gave them all as
/// DER, and a socp server joining later opened its link to the PEM server
/// with SERVER_HELLO_LINK and a DER key, which that server cannot read.
#[actix_rt::test]
async fn a_joiner_links_to_a_pem_server_in_its_dialect() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let (_, firsts, _link) = pem_server_listening(&a).await;
    // a dials it back (its own link): wait for that, then b joins.
    eventually(WAIT, "a dialled it", || async {
        !firsts.lock().unwrap().is_empty()
    })
    .await;
    let b = start(config_with(1, None, &[a.addr], fast_settings()))
        .await
        .expect("b starts and joins");
    let from_b = || {
        firsts
            .lock()
            .unwrap()
            .iter()
            .map(|t| Envelope::parse(t.as_bytes()).expect("a frame"))
            .find(|e| e.from() == b.server_id.as_str())
    };
    eventually(WAIT, "b dialled the PEM server", || async {
        from_b().is_some()
    })
    .await;
    let first = from_b().expect("b's first frame");
    assert_eq!(first.msg_type(), "SERVER_ANNOUNCE");
    assert_eq!(key_in(&first, "pubkey").0, KeyEncoding::PemBase64Url);
    first
        .verify(&server_key(1))
        .expect("signed over the PEM payload");
}

/// Of two links from a server of another implementation, the one replaced is
/// kept open instead of closed (one implementation forgets a server when any
/// of its links to it closes, and joins again when its join connection
/// closes), nothing more is written on it, and what arrives over it is still
/// read. It was closed as a duplicate.
#[actix_rt::test]
async fn a_replaced_link_of_another_implementation_is_kept_open_and_read() {
    let a = start(config_with(0, None, &[], fast_settings()))
        .await
        .expect("a starts");
    let mut first = PemServer::link(&a, 5).await;
    let id = ServerId::parse(&first.id).expect("an id");
    eventually(WAIT, "linked", || async {
        link_state(&a.status().await, &id).as_deref() == Some("up")
    })
    .await;
    // Its second link to a: the newer of two links it opened is kept.
    let mut second = PemServer::link_as(&a, 5, first.id.clone()).await;
    second.advertise("zed", &fixtures::key(11)).await;
    let zed = UserId::parse("zed").expect("an id");
    eventually(WAIT, "zed, over the second link", || async {
        knows(&a.status().await, &zed)
    })
    .await;
    // The first is not closed, and what comes over it is read.
    first.advertise("zoe", &fixtures::key(12)).await;
    let zoe = UserId::parse("zoe").expect("an id");
    eventually(WAIT, "zoe, over the first link", || async {
        knows(&a.status().await, &zoe)
    })
    .await;
    assert_eq!(first.peer.closed_within(Duration::from_secs(1)).await, None);
    assert_eq!(links_up(&a.status().await), 1, "one link in use");
}
