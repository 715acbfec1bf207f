//! End-to-end: forged presence, replayed deliveries, and server frames from
//! users are refused (SPEC.md §5.2, §5.3, §5.5, §10).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::RunningServer;
use socp_protocol::message::{DeliverContent, MsgDirect, ServerDeliver, UserAdvertise, UserRemove};
use socp_protocol::{
    content, fixtures, now_ms, Base64Url, Envelope, Message, ServerId, To, UserId,
};

const WAIT: Duration = Duration::from_secs(15);

async fn patient_server(key: usize, bootstrap: &[std::net::SocketAddr]) -> RunningServer {
    socp::server::start(config_with(key, None, bootstrap, patient_settings()))
        .await
        .expect("server starts")
}

fn advertises(user: &UserId) -> impl Fn(&Envelope) -> bool {
    let id = user.to_string();
    move |e: &Envelope| e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == id.as_str()
}

async fn fake_linked_to(s: &RunningServer, key: usize) -> FakeServer {
    let fake = FakeServer::link(s.addr, key, &s.server_id).await;
    let id = fake.id.to_string();
    eventually(WAIT, "the fake server is linked", || async {
        s.status().await["servers"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["server_id"] == id.as_str() && x["link"] == "up")
        })
    })
    .await;
    fake
}

#[actix_rt::test]
async fn forged_user_advertise_is_refused() {
    let a = patient_server(0, &[]).await;
    let b = patient_server(1, &[a.addr]).await;
    for s in [&a, &b] {
        eventually(WAIT, "a and b linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    let mut alice = User::join(a.addr, 10).await;
    let mut fake = fake_linked_to(&a, 7).await;
    fake.announce().await;
    let forged: Vec<UserId> = (0..4).map(|_| UserId::random()).collect();

    // (a) signed by a key that is not the fake server's.
    let bad_sig = Envelope::from_message(
        &fake.id,
        To::All,
        now_ms(),
        &advertise(&forged[0], &fake.id, 20),
    )
    .signed(&fixtures::key(8))
    .expect("signs");
    // (b) no signature at all.
    let no_sig = Envelope::from_message(
        &fake.id,
        To::All,
        now_ms(),
        &advertise(&forged[1], &fake.id, 21),
    );
    // (c) correctly signed, but advertising a user of another server.
    let other_server = fake.signed(To::All, &advertise(&forged[2], &b.server_id, 22));
    // (d) claims to come from b, signed with the fake's key.
    let as_b = Envelope::from_message(
        &b.server_id,
        To::All,
        now_ms(),
        &advertise(&forged[3], &b.server_id, 23),
    )
    .signed(&fake.key)
    .expect("signs");
    for f in [&bad_sig, &no_sig, &other_server, &as_b] {
        fake.peer.send(f).await;
    }
    // A genuine advert last: once it is in, the forged ones before it were handled.
    let control = UserId::random();
    let genuine = fake.signed(To::All, &advertise(&control, &fake.id, 24));
    fake.peer.send(&genuine).await;

    eventually(WAIT, "a accepts the genuine advert", || async {
        knows(&a.status().await, &control)
    })
    .await;
    eventually(WAIT, "b learns the genuine advert from a", || async {
        knows(&b.status().await, &control)
    })
    .await;
    alice
        .peer
        .expect(WAIT, "the genuine advert", advertises(&control))
        .await;
    for (s, name) in [(&a, "a"), (&b, "b")] {
        let status = s.status().await;
        for u in &forged {
            assert!(
                !knows(&status, u),
                "{name} accepted forged user {u}: {status}"
            );
        }
    }
    for u in &forged {
        assert!(
            !alice.peer.inbox.iter().any(advertises(u)),
            "alice was told about forged user {u}"
        );
    }
    // (a) and (b), the link's own frames, are answered INVALID_SIG; (c) is
    // dropped silently; (d) claims another origin, so from the link's point
    // of view it is relayed: it cannot be held against the link (which may
    // be honest and relaying a server it trusts), and is dropped and counted.
    for _ in 0..2 {
        fake.peer
            .expect(WAIT, "INVALID_SIG", error_code("INVALID_SIG"))
            .await;
    }
    assert_eq!(
        fake.peer
            .count(Duration::from_millis(300), error_code("INVALID_SIG"))
            .await,
        0,
        "exactly two INVALID_SIG errors"
    );
    let metrics = http_get(a.addr, "/metrics").await;
    assert_eq!(
        counter(
            &metrics,
            "socp_relayed_unverifiable_total{type=\"USER_ADVERTISE\"}"
        ),
        1,
        "{metrics}"
    );
    assert!(fake.peer.closed.is_none(), "the link survives bad frames");
}

fn deliver(
    fake: &FakeServer,
    to: &ServerId,
    recipient: &User,
    sender: (&UserId, usize),
    text: &str,
) -> Envelope {
    let (sender, sender_key) = (sender.0, fixtures::key(sender.1));
    let ts = now_ms();
    let ct = Base64Url::from_bytes(
        &recipient
            .key
            .public_key()
            .encrypt(text.as_bytes())
            .expect("fits"),
    );
    let sig = content::sign_dm(&sender_key, &ct, sender.as_str(), recipient.id.as_str(), ts)
        .expect("signs");
    fake.signed(
        To::from(to),
        &Message::ServerDeliver(ServerDeliver {
            user_id: recipient.id.clone(),
            sender: sender.clone(),
            orig_ts: Some(ts),
            content: DeliverContent::Dm(MsgDirect {
                ciphertext: ct,
                sender_pub: sender_key.public_key().clone(),
                content_sig: sig,
            }),
            mail: None,
        }),
    )
}

#[actix_rt::test]
async fn a_replayed_server_deliver_is_delivered_once() {
    let a = patient_server(2, &[]).await;
    let mut alice = User::join(a.addr, 11).await;
    let mut fake = fake_linked_to(&a, 3).await;
    let mallory = UserId::random();
    let advert = fake.signed(To::All, &advertise(&mallory, &fake.id, 25));
    fake.peer.send(&advert).await;
    assert!(alice.sees_user(&mallory, WAIT).await, "alice sees mallory");

    let once = deliver(&fake, &a.server_id, &alice, (&mallory, 25), "only once");
    fake.peer.send(&once).await;
    fake.peer.send(&once).await;
    let control = deliver(&fake, &a.server_id, &alice, (&mallory, 25), "the next one");
    fake.peer.send(&control).await;
    fake.peer.send(&once).await;

    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("the next one") {
        let got = alice
            .peer
            .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
            .await;
        assert_eq!(got.payload()["sender"], mallory.as_str());
        texts.push(alice.open(&got));
    }
    assert_eq!(texts, ["only once", "the next one"]);
    assert_eq!(
        alice
            .peer
            .count(Duration::from_millis(500), is("USER_DELIVER"))
            .await,
        0,
        "the replay after the control is dropped too"
    );
}

#[actix_rt::test]
async fn server_frames_from_a_user_are_refused() {
    let a = server(4, &[]).await;
    let b = server(5, &[a.addr]).await;
    for s in [&a, &b] {
        eventually(WAIT, "a and b linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    let mut alice = User::join(a.addr, 12).await;
    let mut carol = User::join(a.addr, 13).await;
    let mut bob = User::join(b.addr, 14).await;
    let ids = [alice.id.clone(), carol.id.clone(), bob.id.clone()];
    for u in [&mut alice, &mut carol, &mut bob] {
        for id in &ids {
            assert!(u.sees_user(id, WAIT).await, "{} sees {id}", u.id);
        }
    }
    let ghost = UserId::random();
    let frames = [
        Message::UserAdvertise(UserAdvertise {
            user_id: ghost.clone(),
            server_id: a.server_id.clone(),
            pubkey: fixtures::key(26).public_key().clone(),
            meta: None,
            seq: None,
        }),
        Message::UserRemove(UserRemove {
            user_id: bob.id.clone(),
            server_id: b.server_id.clone(),
            seq: None,
        }),
        Message::UserRemove(UserRemove {
            user_id: carol.id.clone(),
            server_id: a.server_id.clone(),
            seq: None,
        }),
        // Presence news in one frame [ext] is a server's too.
        Message::NewsBatch(socp_protocol::message::NewsBatch {
            frames: vec![serde_json::json!({"type": "USER_REMOVE",
                "payload": {"user_id": bob.id.as_str(), "server_id": b.server_id.as_str()}})],
        }),
    ];
    for msg in &frames {
        let env = Envelope::from_message(&alice.id, To::All, now_ms(), msg)
            .signed(&alice.key)
            .expect("signs");
        alice.peer.send(&env).await;
    }
    // A SERVER_DELIVER to carol, as if relayed from bob's server.
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&carol.key.public_key().encrypt(b"forged").expect("fits"));
    let sig =
        content::sign_dm(&alice.key, &ct, bob.id.as_str(), carol.id.as_str(), ts).expect("signs");
    let relay = Envelope::from_message(
        &alice.id,
        To::from(&a.server_id),
        ts,
        &Message::ServerDeliver(ServerDeliver {
            user_id: carol.id.clone(),
            sender: bob.id.clone(),
            orig_ts: Some(ts),
            content: DeliverContent::Dm(MsgDirect {
                ciphertext: ct,
                sender_pub: alice.key.public_key().clone(),
                content_sig: sig,
            }),
            mail: None,
        }),
    );
    alice.peer.send(&relay).await;
    for _ in 0..5 {
        alice
            .peer
            .expect(WAIT, "BAD_REQUEST", error_code("BAD_REQUEST"))
            .await;
    }

    // Controls: real DMs after the refused frames arrive first.
    let to_carol = alice.dm(&carol.id, carol.key.public_key(), "control for carol");
    alice.peer.send(&to_carol).await;
    let to_bob = alice.dm(&bob.id, bob.key.public_key(), "control for bob");
    alice.peer.send(&to_bob).await;
    let got = carol
        .peer
        .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
        .await;
    assert_eq!(
        carol.open(&got),
        "control for carol",
        "no forged delivery first"
    );
    let got = bob
        .peer
        .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
        .await;
    assert_eq!(bob.open(&got), "control for bob");

    for u in [&carol, &bob] {
        assert!(
            !u.peer.inbox.iter().any(is("USER_REMOVE")),
            "{} saw a USER_REMOVE",
            u.id
        );
        assert!(
            !u.peer.inbox.iter().any(is("NEWS_BATCH")),
            "{} saw a NEWS_BATCH",
            u.id
        );
        assert!(
            !u.peer.inbox.iter().any(advertises(&ghost)),
            "{} saw the ghost",
            u.id
        );
    }
    assert!(alice.peer.closed.is_none(), "alice stays connected");
    for s in [&a, &b] {
        let status = s.status().await;
        assert_eq!(users_known(&status), 3, "nobody added or removed: {status}");
        assert!(!knows(&status, &ghost));
    }
}

#[actix_rt::test]
async fn a_server_announced_through_the_mesh_is_pinned_everywhere() {
    let a = patient_server(6, &[]).await;
    let b = patient_server(7, &[a.addr]).await;
    for s in [&a, &b] {
        eventually(WAIT, "a and b linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    // The fake links to a only; b learns it from the announce a forwards.
    let mut fake = fake_linked_to(&a, 8).await;
    fake.announce().await;
    let id = fake.id.to_string();
    eventually(WAIT, "b learns the fake server", || async {
        b.status().await["servers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["server_id"] == id.as_str()))
    })
    .await;

    // Another key claiming the fake's id is refused by b: the id is pinned.
    let mut impostor = FakeServer::link_as(b.addr, 9, fake.id.clone(), &b.server_id).await;
    impostor
        .peer
        .expect(WAIT, "INVALID_SIG", error_code("INVALID_SIG"))
        .await;
    assert_eq!(impostor.peer.closed_within(WAIT).await, Some(1008));
    let status = b.status().await;
    let linked = status["servers"].as_array().is_some_and(|l| {
        l.iter()
            .any(|x| x["server_id"] == id.as_str() && x["link"] == "up")
    });
    assert!(!linked, "the impostor did not link: {status}");
}

#[actix_rt::test]
async fn frames_sent_right_after_a_link_hello_are_handled_after_it() {
    let a = patient_server(10, &[]).await;
    let mut alice = User::join(a.addr, 15).await;
    let mut fake = FakeServer::connect_as(a.addr, 11, ServerId::random()).await;
    // The hello and two adverts in one write: the adverts wait for the link.
    let users = [UserId::random(), UserId::random()];
    let frames = [
        fake.hello(&a.server_id),
        fake.signed(To::All, &advertise(&users[0], &fake.id, 27)),
        fake.signed(To::All, &advertise(&users[1], &fake.id, 28)),
    ];
    fake.peer.send_batch(&frames).await;
    for u in &users {
        assert!(alice.sees_user(u, WAIT).await, "alice sees {u}");
    }
    assert!(fake.peer.closed.is_none(), "the link stays up");
    let status = a.status().await;
    assert!(users.iter().all(|u| knows(&status, u)), "{status}");
}
