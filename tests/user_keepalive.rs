//! End-to-end: the server pings every user connection each heartbeat interval
//! and detaches a user that sent nothing at all (no frame, no pong) for longer
//! than the peer timeout: a client that vanished without a close does not
//! stay "online" mesh-wide. A client that answers pings stays.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp_protocol::UserId;

fn local(status: &serde_json::Value, user: &UserId) -> bool {
    status["local_users"]
        .as_array()
        .is_some_and(|l| l.iter().any(|u| u == user.as_str()))
}

#[actix_rt::test]
async fn a_user_that_answers_nothing_is_detached_and_one_that_answers_pings_stays() {
    // A ping every 300 ms; silent for 1.5 s is gone.
    let settings = socp_actors::Settings {
        user_ping_interval: Duration::from_millis(300),
        user_timeout: Duration::from_millis(1500),
        ..fast_settings()
    };
    let a = socp::server::start(config_with(7, None, &[], settings))
        .await
        .expect("server starts");
    // Answers pings whenever its socket is pumped (the harness pongs them).
    let mut alive = User::join(a.addr, 10).await;
    // Identifies, then never reads again: no pong, no frame of any kind.
    let silent = User::hello(a.addr, 11, UserId::random()).await;
    eventually(
        Duration::from_secs(10),
        "the silent user attached",
        || async { local(&a.status().await, &silent.id) },
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Only the live user's socket is read (and its pings answered).
        alive.peer.pump(Duration::from_millis(200)).await;
        let status = a.status().await;
        assert!(local(&status, &alive.id), "the live user stays: {status}");
        if !local(&status, &silent.id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent user is still attached after 20 s: {status}"
        );
    }
    // Well past the timeout, the live user is still there and served.
    alive.peer.pump(Duration::from_secs(3)).await;
    assert!(alive.peer.closed.is_none(), "the live user was closed");
    let status = a.status().await;
    assert!(local(&status, &alive.id), "the live user stays: {status}");
    drop(silent);
}
