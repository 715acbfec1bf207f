//! End-to-end: servers that crash, restart, start out of order, and shut down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use socp::server::{start, ServerConfig};
use socp_protocol::{Envelope, ServerId, UserId};

const WAIT: Duration = Duration::from_secs(15);

/// A USER_REMOVE for `user` at `server`.
fn removes(user: &UserId, server: &ServerId) -> impl Fn(&Envelope) -> bool {
    let (user, server) = (user.to_string(), server.to_string());
    move |e: &Envelope| {
        e.msg_type() == "USER_REMOVE"
            && e.payload()["user_id"] == user.as_str()
            && e.payload()["server_id"] == server.as_str()
    }
}

async fn both_linked(a: &socp::server::RunningServer, b: &socp::server::RunningServer) {
    for (s, other) in [(a, b), (b, a)] {
        eventually(WAIT, "linked to the other", || async {
            link_state(&s.status().await, &other.server_id).as_deref() == Some("up")
        })
        .await;
    }
}

#[actix_rt::test]
async fn a_killed_server_is_detected_and_rejoins_from_its_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("b.db");
    let a = server(0, &[]).await;
    let b = start(config(1, Some(db.clone()), &[a.addr]))
        .await
        .expect("b starts");
    both_linked(&a, &b).await;

    let mut alice = User::join(a.addr, 10).await;
    let mut bob = User::join(b.addr, 11).await;
    assert!(alice.sees_user(&bob.id, WAIT).await, "alice sees bob");
    assert!(bob.sees_user(&alice.id, WAIT).await, "bob sees alice");

    let (b_id, b_addr) = (b.server_id.clone(), b.addr);
    b.kill().await;

    eventually(WAIT, "a sees the link to b down", || async {
        link_state(&a.status().await, &b_id).as_deref() == Some("down")
    })
    .await;
    alice
        .peer
        .expect(WAIT, "USER_REMOVE for bob", removes(&bob.id, &b_id))
        .await;
    let status = a.status().await;
    assert_eq!(users_known(&status), 1, "only alice is left: {status}");
    // Bob's connection died with its server.
    assert!(
        bob.peer.closed_within(WAIT).await.is_some(),
        "bob is cut off"
    );

    // Restart from the same database, on the same port.
    let b = start(ServerConfig {
        bind: b_addr,
        ..config(1, Some(db), &[a.addr])
    })
    .await
    .expect("b restarts");
    assert_eq!(b.server_id, b_id, "the persisted server id");
    both_linked(&a, &b).await;

    // Bob comes back under the same id, and presence converges.
    let mut bob = User::hello(b.addr, 11, bob.id.clone()).await;
    bob.peer.expect(WAIT, "hello ACK", is("ACK")).await;
    assert!(bob.sees_user(&alice.id, WAIT).await, "bob sees alice again");
    assert!(alice.sees_user(&bob.id, WAIT).await, "alice sees bob again");
    for s in [&a, &b] {
        eventually(WAIT, "both servers know both users", || async {
            users_known(&s.status().await) == 2
        })
        .await;
    }
    let dm = alice.dm(&bob.id, bob.key.public_key(), "welcome back");
    alice.peer.send(&dm).await;
    let got = bob.peer.expect(WAIT, "the DM", is("USER_DELIVER")).await;
    assert_eq!(bob.open(&got), "welcome back");
}

#[actix_rt::test]
async fn a_server_started_before_its_introducer_joins_once_it_is_up() {
    let a_addr: SocketAddr = free_addr();
    let b = server(3, &[a_addr]).await;
    let status = b.status().await;
    assert_eq!(links_up(&status), 0, "standalone at first: {status}");

    let a = start(ServerConfig {
        bind: a_addr,
        ..config(2, None, &[])
    })
    .await
    .expect("the introducer starts late");
    both_linked(&a, &b).await;

    let mut alice = User::join(a.addr, 12).await;
    let mut bob = User::join(b.addr, 13).await;
    assert!(alice.sees_user(&bob.id, WAIT).await, "alice sees bob");
    assert!(bob.sees_user(&alice.id, WAIT).await, "bob sees alice");
    let dm = bob.dm(&alice.id, alice.key.public_key(), "you came up");
    bob.peer.send(&dm).await;
    let got = alice.peer.expect(WAIT, "the DM", is("USER_DELIVER")).await;
    assert_eq!(alice.open(&got), "you came up");
}

#[actix_rt::test]
async fn graceful_shutdown_says_goodbye_to_peers_and_users() {
    let a = server(4, &[]).await;
    // b must not drop the fake server below, which sends no heartbeats.
    let b = start(config_with(5, None, &[a.addr], patient_settings()))
        .await
        .expect("b starts");
    both_linked(&a, &b).await;
    // A fake server linked to b records exactly what b's peers are told.
    let mut fake = FakeServer::link(b.addr, 6, &b.server_id).await;
    eventually(WAIT, "b links the fake server", || async {
        link_state(&b.status().await, &fake.id).as_deref() == Some("up")
    })
    .await;

    let mut alice = User::join(a.addr, 14).await;
    let mut bob = User::join(b.addr, 15).await;
    let mut carol = User::join(b.addr, 16).await;
    for u in [&bob.id, &carol.id] {
        assert!(alice.sees_user(u, WAIT).await, "alice sees {u}");
    }

    let b_id = b.server_id.clone();
    b.shutdown().await;

    // b's users: close code 1000.
    assert_eq!(bob.peer.closed_within(WAIT).await, Some(1000));
    assert_eq!(carol.peer.closed_within(WAIT).await, Some(1000));
    // b's peers: USER_REMOVE for each of its users, then SERVER_GOODBYE.
    for u in [&bob.id, &carol.id] {
        let rm = fake
            .peer
            .expect(WAIT, "USER_REMOVE", removes(u, &b_id))
            .await;
        rm.verify(socp_protocol::fixtures::key(5).public_key())
            .expect("signed by b");
        assert_eq!(rm.from(), b_id.as_str());
    }
    let bye = fake
        .peer
        .expect(WAIT, "SERVER_GOODBYE", is("SERVER_GOODBYE"))
        .await;
    assert_eq!(bye.from(), b_id.as_str());
    bye.verify(socp_protocol::fixtures::key(5).public_key())
        .expect("signed by b");
    assert_eq!(fake.peer.closed_within(WAIT).await, Some(1000));

    // The real peer: b's users are gone, and alice is told.
    for u in [&bob.id, &carol.id] {
        alice
            .peer
            .expect(WAIT, "USER_REMOVE", removes(u, &b_id))
            .await;
    }
    eventually(WAIT, "a sees b's link down", || async {
        link_state(&a.status().await, &b_id).as_deref() != Some("up")
    })
    .await;
    let status = a.status().await;
    assert_eq!(users_known(&status), 1, "only alice is left: {status}");
    // A server that shut down stays down: it does not link again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = a.status().await;
    assert_eq!(links_up(&status), 0, "b stays gone: {status}");
}

#[actix_rt::test]
async fn a_silent_server_is_declared_dead_after_the_timeout() {
    use socp_protocol::message::UserAdvertise;
    use socp_protocol::{fixtures, Message, To};

    // A timeout long enough that the link is up while the ghost is advertised.
    let settings = socp_actors::Settings {
        peer_timeout: Duration::from_secs(3),
        ..fast_settings()
    };
    let a = start(config_with(7, None, &[], settings))
        .await
        .expect("a starts");
    let mut alice = User::join(a.addr, 17).await;
    // A server that links, advertises a user, and then never sends again
    // (its socket stays open: only the heartbeat timeout can tell).
    let mut fake = FakeServer::link(a.addr, 8, &a.server_id).await;
    let ghost = UserId::random();
    let advert = fake.signed(
        To::All,
        &Message::UserAdvertise(UserAdvertise {
            user_id: ghost.clone(),
            server_id: fake.id.clone(),
            pubkey: fixtures::key(18).public_key().clone(),
            meta: None,
            seq: None,
        }),
    );
    fake.peer.send(&advert).await;
    assert!(alice.sees_user(&ghost, WAIT).await, "alice sees the ghost");
    assert_eq!(
        link_state(&a.status().await, &fake.id).as_deref(),
        Some("up")
    );

    alice
        .peer
        .expect(WAIT, "USER_REMOVE for the ghost", removes(&ghost, &fake.id))
        .await;
    let status = a.status().await;
    assert_eq!(link_state(&status, &fake.id).as_deref(), Some("down"));
    assert_eq!(users_known(&status), 1, "only alice is left: {status}");
    // The silent link was closed as going away.
    assert_eq!(fake.peer.closed_within(WAIT).await, Some(1001));
}

#[actix_rt::test]
async fn a_server_that_links_is_told_every_local_user() {
    // Adverts sent before a link existed (or over a duplicate link that was
    // then closed) are not lost: a link that comes up gets every local user.
    let a = start(config_with(9, None, &[], patient_settings()))
        .await
        .expect("a starts");
    let alice = User::join(a.addr, 19).await;
    let bob = User::join(a.addr, 20).await;
    let mut fake = FakeServer::link(a.addr, 6, &a.server_id).await;
    for u in [&alice, &bob] {
        let id = u.id.to_string();
        let advert = fake
            .peer
            .expect(WAIT, "USER_ADVERTISE", move |e| {
                e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == id.as_str()
            })
            .await;
        assert_eq!(advert.payload()["server_id"], a.server_id.as_str());
        assert_eq!(
            advert.payload()["pubkey"],
            u.key.public_key().to_wire(),
            "the user's key"
        );
        advert
            .verify(socp_protocol::fixtures::key(9).public_key())
            .expect("signed by a");
    }
}

/// Some implementations keep a link alive with WebSocket pings alone and
/// never send HEARTBEAT: while a linked server answers or sends pings it is
/// not declared dead. (Before, only text frames counted: such a server was
/// declared dead after the peer timeout, its users lost for good.)
#[actix_rt::test]
async fn a_linked_server_that_only_pings_stays_linked() {
    // Peer timeout 1.5 s; the fake server pings every 300 ms for 6 s.
    let a = server(4, &[]).await;
    let mut fake = FakeServer::link(a.addr, 9, &a.server_id).await;
    let id = fake.id.clone();
    eventually(WAIT, "linked", || async {
        link_state(&a.status().await, &id).as_deref() == Some("up")
    })
    .await;
    for _ in 0..20 {
        fake.peer.send_ping().await;
        fake.peer.pump(Duration::from_millis(300)).await;
        fake.peer.inbox.clear();
    }
    assert_eq!(
        link_state(&a.status().await, &id).as_deref(),
        Some("up"),
        "declared dead while it pinged"
    );
    assert!(fake.peer.closed.is_none(), "closed: {:?}", fake.peer.closed);
}
