//! End-to-end: a mesh of real servers on loopback, raw protocol users.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp_protocol::content;
use socp_protocol::{Base64Url, Signature};

const WAIT: Duration = Duration::from_secs(15);

#[actix_rt::test]
async fn three_servers_form_a_mesh_and_a_dm_crosses_it() {
    let a = server(0, &[]).await;
    let b = server(1, &[a.addr]).await;
    let c = server(2, &[a.addr]).await;
    for (name, s) in [("a", &a), ("b", &b), ("c", &c)] {
        eventually(WAIT, &format!("{name} links to both others"), || async {
            links_up(&s.status().await) == 2
        })
        .await;
    }

    let mut alice = User::join(a.addr, 10).await;
    let mut bob = User::join(c.addr, 11).await;
    let mut carol = User::join(b.addr, 12).await;
    let ids = [alice.id.clone(), bob.id.clone(), carol.id.clone()];
    for u in [&mut alice, &mut bob, &mut carol] {
        for other in &ids {
            assert!(u.sees_user(other, WAIT).await, "{} sees {other}", u.id);
        }
    }
    for s in [&a, &b, &c] {
        eventually(WAIT, "every server knows every user", || async {
            users_known(&s.status().await) == 3
        })
        .await;
    }

    let dm = alice.dm(&bob.id, bob.key.public_key(), "hello bob, from server a");
    alice.peer.send(&dm).await;
    let got = bob
        .peer
        .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
        .await;
    assert_eq!(got.payload()["kind"], "dm");
    assert_eq!(got.payload()["sender"], alice.id.as_str());
    assert_eq!(
        got.from(),
        c.server_id.as_str(),
        "delivered by bob's server"
    );
    // Signed by bob's server.
    got.verify(socp_protocol::fixtures::key(2).public_key())
        .expect("transport signature of server c");
    assert_eq!(bob.open(&got), "hello bob, from server a");
    let ct = Base64Url::parse(got.payload()["ciphertext"].as_str().unwrap()).unwrap();
    let sig = Signature::parse(got.payload()["content_sig"].as_str().unwrap()).unwrap();
    let ts = got.payload()["orig_ts"].as_i64().unwrap();
    content::verify_dm(
        alice.key.public_key(),
        &sig,
        &ct,
        alice.id.as_str(),
        bob.id.as_str(),
        ts,
    )
    .expect("content signature verifies end to end");
    // Exactly once.
    assert_eq!(
        bob.peer
            .count(Duration::from_millis(500), is("USER_DELIVER"))
            .await,
        0
    );
}

#[actix_rt::test]
async fn unknown_recipient_is_user_not_found_and_duplicate_id_is_name_in_use() {
    let a = server(3, &[]).await;
    let b = server(4, &[a.addr]).await;
    eventually(WAIT, "linked", || async {
        links_up(&a.status().await) == 1
    })
    .await;
    let mut alice = User::join(a.addr, 13).await;
    let nobody = socp_protocol::UserId::random();
    let dm = alice.dm(&nobody, alice.key.public_key(), "anyone?");
    alice.peer.send(&dm).await;
    alice
        .peer
        .expect(WAIT, "USER_NOT_FOUND", error_code("USER_NOT_FOUND"))
        .await;

    // The same id on another server of the mesh.
    eventually(WAIT, "b knows alice", || async {
        users_known(&b.status().await) == 1
    })
    .await;
    let mut twin = User::hello(b.addr, 14, alice.id.clone()).await;
    twin.peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
    // And on the same server.
    let mut twin2 = User::hello(a.addr, 15, alice.id.clone()).await;
    twin2
        .peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
    // Alice is unaffected.
    let dm = alice.dm(&alice.id, alice.key.public_key(), "note to self");
    alice.peer.send(&dm).await;
    let got = alice.peer.expect(WAIT, "own DM", is("USER_DELIVER")).await;
    assert_eq!(alice.open(&got), "note to self");
}
