//! End-to-end: control work an attacker can cause while staying within every
//! limit (users attaching and leaving as fast as they can, login requests
//! within the server-wide rate) must not starve other users' DMs: the crypto
//! pool takes turns between origins (SECURITY.md, "Starve other users").
//!
//! In a binary of its own: it compares DM rates with and without the
//! attack in one run, which other tests running beside it would disturb.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use socp::server::start;
use socp_protocol::UserId;

const WAIT: Duration = Duration::from_secs(20);

/// DMs bob gets through to carol in `window`, one at a time (each sent once
/// the last one arrived).
async fn dms_in(bob: &mut User, carol: &mut User, window: Duration) -> usize {
    let start = tokio::time::Instant::now();
    let mut delivered = 0;
    while start.elapsed() < window {
        let dm = bob.dm(&carol.id, carol.key.public_key(), "ping");
        bob.peer.send(&dm).await;
        let left = window.saturating_sub(start.elapsed());
        if carol.peer.sees(left, is("USER_DELIVER")).await {
            carol.peer.inbox.retain(|e| !is("USER_DELIVER")(e));
            delivered += 1;
        }
        bob.peer.inbox.clear();
    }
    delivered
}

/// Users attaching and leaving in a loop (each attach and leave makes the
/// server sign presence and channel updates), plus login requests for a
/// registered account (each challenge is signed), from many connections.
/// Before origins took turns on the crypto pool, all of it was control work
/// served ahead of every DM: bob's DM rate fell to a small fraction.
#[actix_rt::test]
async fn attach_churn_and_login_requests_do_not_starve_dms() {
    let a = start(config(6, None, &[])).await.expect("server starts");
    let mut bob = User::join(a.addr, 1).await;
    let mut carol = User::join(a.addr, 2).await;
    assert!(bob.sees_user(&carol.id, WAIT).await);
    // An account to ask login challenges for.
    let mut owner = User::join(a.addr, 3).await;
    owner
        .peer
        .send(&register_frame(
            &owner.id,
            &UserId::random(),
            "target",
            REG_KEY,
            REG_KEY,
            key_store(),
        ))
        .await;
    owner
        .peer
        .expect(WAIT, "registered", is("REGISTER_OK"))
        .await;

    let window = Duration::from_secs(8);
    let quiet = dms_in(&mut bob, &mut carol, window).await;

    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for i in 0..6 {
        let (stop, churned, addr) = (stop.clone(), churned.clone(), a.addr);
        attackers.push(actix_rt::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut u = User::hello(addr, 10 + i, UserId::random()).await;
                u.peer.sees(Duration::from_secs(5), is("ACK")).await;
                churned.fetch_add(1, Ordering::Relaxed);
                // Dropping the connection detaches the user.
            }
        }));
    }
    for i in 0..4 {
        let (stop, addr) = (stop.clone(), a.addr);
        attackers.push(actix_rt::spawn(async move {
            let mut u = User::join(addr, 20 + i).await;
            while !stop.load(Ordering::Relaxed) {
                // 20 a second from each: inside the 50/s per connection.
                u.peer.send(&login_frame(&u.id, "target")).await;
                u.peer.pump(Duration::from_millis(50)).await;
                u.peer.inbox.clear();
            }
        }));
    }
    // Let the attack build up, then measure beside it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attacked = dms_in(&mut bob, &mut carol, window).await;
    stop.store(true, Ordering::Relaxed);
    for t in attackers {
        let _ = t.await;
    }
    let churned = churned.load(Ordering::Relaxed);
    println!("DMs in {window:?}: {quiet} quiet, {attacked} under attack; {churned} attaches");
    assert!(churned >= 20, "the attack ran ({churned} attaches)");
    assert!(
        attacked * 4 >= quiet,
        "under attack bob's DMs ran at less than a quarter of their rate: {attacked} vs {quiet}"
    );
}
