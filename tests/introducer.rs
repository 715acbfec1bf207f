//! End-to-end: a directory-only introducer, and pinned introducer keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::start;
use socp_actors::introducer::Bootstrap;
use socp_protocol::fixtures;

const WAIT: Duration = Duration::from_secs(15);

#[actix_rt::test]
async fn a_directory_only_introducer_admits_servers_and_hosts_no_users() {
    let mut cfg = config(0, None, &[]);
    cfg.settings.introducer_only = true;
    let intro = start(cfg).await.expect("introducer starts");
    let a = server(1, &[intro.addr]).await;
    let b = server(2, &[intro.addr]).await;
    for s in [&a, &b] {
        eventually(
            WAIT,
            "linked to the other server and the introducer",
            || async { links_up(&s.status().await) == 2 },
        )
        .await;
    }
    assert_eq!(intro.status().await["introducer_only"], true);

    // Users attach to the chat servers; the introducer refuses them.
    let mut nobody = User::hello(intro.addr, 10, socp_protocol::UserId::random()).await;
    assert_eq!(nobody.peer.closed_within(WAIT).await, Some(1008));

    let mut alice = User::join(a.addr, 11).await;
    let mut bob = User::join(b.addr, 12).await;
    assert!(alice.sees_user(&bob.id, WAIT).await);
    // The introducer tracks presence.
    eventually(WAIT, "introducer knows both users", || async {
        users_known(&intro.status().await) == 2
    })
    .await;

    let dm = alice.dm(
        &bob.id,
        bob.key.public_key(),
        "via the mesh, not the introducer",
    );
    alice.peer.send(&dm).await;
    let got = bob.peer.expect(WAIT, "DM", is("USER_DELIVER")).await;
    assert_eq!(got.from(), b.server_id.as_str());
    assert_eq!(bob.open(&got), "via the mesh, not the introducer");
}

#[actix_rt::test]
async fn a_pinned_introducer_key_must_sign_the_welcome() {
    let intro = server(3, &[]).await;
    let pinned = |key: usize| Bootstrap {
        host: intro.addr.ip().to_string(),
        port: intro.addr.port(),
        pubkey: Some(fixtures::key(key).public_key().clone()),
    };
    // Pinned to the wrong key: the welcome is refused and the server runs alone.
    let mut wrong = config(4, None, &[]);
    wrong.bootstrap = vec![pinned(9)];
    let wrong = start(wrong).await.expect("starts standalone");
    // Pinned to the right key: it joins.
    let mut right = config(5, None, &[]);
    right.bootstrap = vec![pinned(3)];
    let right = start(right).await.expect("starts");
    eventually(WAIT, "the right pin joins", || async {
        links_up(&right.status().await) == 1
    })
    .await;
    assert_eq!(
        links_up(&wrong.status().await),
        0,
        "the wrong pin never links"
    );
    // The introducer lists the right server once it has handled its link
    // hello, which may come a moment after the right server counts the
    // link as up.
    let listed = |status: &serde_json::Value, id: &str, up: bool| {
        status["servers"].as_array().is_some_and(|servers| {
            servers
                .iter()
                .any(|s| s["server_id"] == id && (!up || s["link"] == "up"))
        })
    };
    let right_id = right.server_id.as_str().to_owned();
    eventually(WAIT, "the introducer lists the right pin", || async {
        listed(&intro.status().await, &right_id, false)
    })
    .await;
    assert!(!listed(
        &intro.status().await,
        wrong.server_id.as_str(),
        true
    ));
}

/// The standard lets SERVER_HELLO_JOIN go unsigned (other implementations
/// send it so): a socp introducer answers it with a signed SERVER_WELCOME,
/// as it answers a signed one. It used to refuse it with INVALID_SIG.
#[actix_rt::test]
async fn an_unsigned_join_request_is_welcomed() {
    use socp_protocol::message::{ServerAddress, ServerHelloJoin};
    use socp_protocol::{now_ms, Envelope, Message, ServerId, To};
    let intro = server(0, &[]).await;
    let mut joiner = FakeServer::connect_as(intro.addr, 5, ServerId::random()).await;
    let hello = Envelope::from_message(
        &joiner.id,
        To::parse(&intro.addr.to_string()).expect("host:port"),
        now_ms(),
        &Message::ServerHelloJoin(ServerHelloJoin(ServerAddress {
            host: "127.0.0.1".into(),
            port: 9,
            pubkey: fixtures::key(5).public_key().clone(),
        })),
    );
    assert!(hello.sig().is_none());
    joiner.peer.send(&hello).await;
    let welcome = joiner
        .peer
        .expect(WAIT, "SERVER_WELCOME", is("SERVER_WELCOME"))
        .await;
    welcome
        .verify(fixtures::key(0).public_key())
        .expect("signed by the introducer");
    assert_eq!(welcome.payload()["assigned_id"], joiner.id.as_str());
}
