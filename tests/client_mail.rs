//! End-to-end: offline delivery [ext] with the `socp-client` binary
//! (scripting mode, `--json`) and real servers. A DM to a registered user
//! who is offline is queued at the user's home server (the sender is told),
//! delivered once at the next login (also after the home server restarted,
//! and through another server of the mesh), the sender told it arrived; a
//! full mailbox is refused with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod client_common;
mod common;

use std::path::Path;

use client_common::{is_event, Client, Options, WAIT};
use common::{config_with, eventually, fast_settings, linked_pair};
use serde_json::Value;
use socp::server::start;

/// A `mail` event (a receipt) with this status.
fn receipt(status: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "mail" && e["status"] == status
}

/// A `dm` event with this text.
fn dm(text: &str) -> impl Fn(&Value) -> bool {
    let text = text.to_owned();
    move |e| e["event"] == "dm" && e["text"] == text.as_str()
}

/// Register `name` (fixture key `key`) through `server`, then leave: a
/// registered user who is offline. Its user id.
async fn register_and_leave(
    name: &str,
    key: usize,
    server: std::net::SocketAddr,
    home: &Path,
) -> String {
    let mut c = Client::start(
        name,
        server,
        Options {
            register_key: Some(key),
            password: Some(format!("{name}'s password")),
            ..Options::new(key + 1, home)
        },
    )
    .await;
    c.send(&format!("/register {name}"));
    let registered = c.expect("registered", is_event("registered")).await;
    c.expect("login", is_event("login")).await;
    let id = registered["user_id"].as_str().expect("an id").to_owned();
    c.quit().await;
    id
}

/// `name` logging in through `server` from a fresh home (so nothing the
/// client kept can hide a second delivery).
async fn log_in(name: &str, key: usize, server: std::net::SocketAddr, home: &Path) -> Client {
    let mut c = Client::start(
        name,
        server,
        Options {
            password: Some(format!("{name}'s password")),
            ..Options::new(key + 2, home)
        },
    )
    .await;
    c.send(&format!("/login {name}"));
    c.expect("login", is_event("login")).await;
    c
}

#[actix_rt::test]
async fn an_offline_dm_is_delivered_once_at_the_next_login_also_after_the_home_server_restarts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = tmp.path().join("a.db");
    let addr = common::free_addr();
    let server_a = || socp::server::ServerConfig {
        bind: addr,
        ..config_with(5, Some(db.clone()), &[], fast_settings())
    };
    let a = start(server_a()).await.expect("a starts");
    let carol_id = register_and_leave("carol", 26, a.addr, &tmp.path().join("carol")).await;

    let mut alice =
        Client::start("alice", a.addr, Options::new(10, &tmp.path().join("alice"))).await;
    alice.send("/tell carol written while you were away");
    let queued = alice.expect("queued", receipt("queued")).await;
    assert_eq!(queued["to"], carol_id.as_str());
    assert_eq!(queued["shown"], "carol");
    alice.expect("sent", is_event("sent")).await;
    assert!(
        alice.logged(is_event("error")).is_empty(),
        "{:#?}",
        alice.log
    );

    // The home server restarts with its database: the DM is still there.
    a.shutdown().await;
    alice.expect("disconnected", is_event("disconnected")).await;
    let a = start(server_a()).await.expect("a starts again");
    alice.expect("reconnected", is_event("reconnected")).await;

    let mut carol = log_in("carol", 26, a.addr, &tmp.path().join("carol-2")).await;
    let got = carol
        .expect("the kept DM", dm("written while you were away"))
        .await;
    assert_eq!(got["from"], alice.id.as_str());
    let delivered = alice.expect("delivered", receipt("delivered")).await;
    assert_eq!(delivered["to"], carol_id.as_str());
    carol.quit().await;

    // Acknowledged: the next login (again from a fresh home) gets only what
    // is new. The marker is sent after carol is online, so it comes after
    // any repeat would have.
    let mut carol = log_in("carol", 26, a.addr, &tmp.path().join("carol-3")).await;
    alice.sees_online(&carol_id).await;
    alice.send("/tell carol marker");
    carol.expect("the marker", dm("marker")).await;
    assert!(
        carol.logged(dm("written while you were away")).is_empty(),
        "delivered once: {:#?}",
        carol.log
    );
}

#[actix_rt::test]
async fn a_dm_for_a_user_of_another_server_waits_there_and_follows_the_user() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b) = linked_pair(fast_settings()).await;
    // carol's home is A; alice is on B.
    let carol_id = register_and_leave("carol", 26, a.addr, &tmp.path().join("carol")).await;
    let mut alice =
        Client::start("alice", b.addr, Options::new(10, &tmp.path().join("alice"))).await;
    alice.send("/tell carol kept at your home server");
    let queued = alice.expect("queued", receipt("queued")).await;
    assert_eq!(queued["to"], carol_id.as_str());

    // carol logs in through B: A sends her DM to B, her client acknowledges
    // through B, and A tells alice.
    let mut carol = log_in("carol", 26, b.addr, &tmp.path().join("carol-2")).await;
    let got = carol
        .expect("the kept DM", dm("kept at your home server"))
        .await;
    assert_eq!(got["from"], alice.id.as_str());
    alice.expect("delivered", receipt("delivered")).await;
    eventually(WAIT, "A's mailbox is empty", || async {
        a.status().await["mail_kept"] == 0
    })
    .await;
}

#[actix_rt::test]
async fn a_full_mailbox_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut settings = fast_settings();
    settings.budgets.mail.per_user = 4; // one DM a sender
    let a = start(config_with(5, None, &[], settings))
        .await
        .expect("a starts");
    register_and_leave("carol", 26, a.addr, &tmp.path().join("carol")).await;
    let mut alice =
        Client::start("alice", a.addr, Options::new(10, &tmp.path().join("alice"))).await;
    alice.send("/tell carol first");
    alice.expect("queued", receipt("queued")).await;
    alice.send("/tell carol second");
    let refused = alice.expect("refused", receipt("refused")).await;
    assert_eq!(refused["shown"], "carol");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("from one sender"), "{refused}");
}
