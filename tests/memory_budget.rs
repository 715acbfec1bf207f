//! End-to-end: users who send within their frame rate, but more bytes than
//! the server can sign and forward, are refused with RATE_LIMITED once their
//! frames waiting to be signed or written reach their budget, and the
//! server's memory stays bounded (SECURITY.md, "Memory").
//!
//! In a binary of its own: it reads the process's resident memory, which
//! tests running beside it would disturb.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::start;
use socp_actors::Settings;
use socp_protocol::message::FileChunk;
use socp_protocol::message::FileId;
use socp_protocol::{now_ms, Base64Url, Envelope, Message, To};

/// The process's resident memory, in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Eight users each send 100 KB file chunks at 45 frames a second (inside
/// the 50/s limit) to a reader for 15 s: ~36 MB/s, 360 frames a second to
/// sign, far more than one crypto thread signs with the pure-Rust backend
/// (which this test uses for that reason: with AWS-LC on a fast machine one
/// thread kept up with the four senders it had, and nothing waited). Before the budgets, every chunk waiting to be signed was
/// kept (the server grew by hundreds of MB in this test); now each sender
/// is told RATE_LIMITED once its budget is reached, the growth stays within
/// a small multiple of the server-wide budget, and other users' DMs still
/// flow.
#[actix_rt::test]
async fn senders_past_their_memory_budget_are_refused_and_memory_stays_bounded() {
    // Before any RSA: the slower backend, so that the server falls behind.
    if let Some(rsa) = socp_protocol::crypto::Backend::from_name("rsa") {
        rsa.select();
    }
    const CONN_BUDGET: usize = 2 << 20;
    const SERVER_BUDGET: usize = 8 << 20;
    let settings = Settings {
        conn_memory_budget: CONN_BUDGET,
        server_memory_budget: SERVER_BUDGET,
        ..patient_settings()
    };
    let config = socp::server::ServerConfig {
        crypto_threads: 1,
        ..config_with(0, None, &[], settings)
    };
    let a = start(config).await.expect("server starts");
    let mut reader = User::join(a.addr, 1).await;
    let mut bob = User::join(a.addr, 2).await;
    let mut carol = User::join(a.addr, 3).await;
    let mut attackers = Vec::new();
    for key in 4..12 {
        attackers.push(User::join(a.addr, key).await);
    }
    assert!(bob.sees_user(&carol.id, Duration::from_secs(10)).await);
    let baseline = resident();

    let attack = Duration::from_secs(15);
    let chunk = Base64Url::from_bytes(&vec![7u8; 75_000]);
    let mut senders = Vec::new();
    for mut attacker in attackers {
        let (to, chunk) = (reader.id.clone(), chunk.clone());
        senders.push(actix_rt::spawn(async move {
            let file_id = FileId::random();
            let start = tokio::time::Instant::now();
            let mut index = 0u64;
            while start.elapsed() < attack {
                let frame = Envelope::from_message(
                    &attacker.id,
                    To::from(&to),
                    now_ms(),
                    &Message::FileChunk(FileChunk {
                        file_id: file_id.clone(),
                        index,
                        ciphertext: chunk.clone(),
                        sender_pub: None,
                        content_sig: None,
                        total: None,
                    }),
                );
                attacker.peer.send(&frame).await;
                index += 1;
                // Read what the server says (and drop it) while pacing.
                attacker.peer.pump(Duration::from_millis(22)).await;
            }
            attacker.peer.pump(Duration::from_secs(1)).await;
            attacker
                .peer
                .inbox
                .iter()
                .filter(|e| error_code("RATE_LIMITED")(e))
                .count()
        }));
    }
    let reading = actix_rt::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut chunks = 0;
        while start.elapsed() < attack + Duration::from_secs(2) {
            chunks += reader
                .peer
                .count(Duration::from_millis(200), is("USER_DELIVER"))
                .await;
            reader.peer.inbox.clear();
        }
        chunks
    });

    // Bob keeps talking to carol through the attack.
    let start = tokio::time::Instant::now();
    let mut peak = baseline;
    let mut sent = 0;
    while start.elapsed() < attack {
        let dm = bob.dm(&carol.id, carol.key.public_key(), &format!("dm {sent}"));
        bob.peer.send(&dm).await;
        sent += 1;
        for _ in 0..5 {
            peak = peak.max(resident());
            carol.peer.pump(Duration::from_millis(100)).await;
            bob.peer.pump(Duration::from_millis(1)).await;
        }
    }
    let mut limited = 0;
    for sender in senders {
        limited += sender.await.expect("sender task");
    }
    let chunks = reading.await.expect("reader task");
    let delivered = carol
        .peer
        .count(Duration::from_secs(20), is("USER_DELIVER"))
        .await;

    let growth = peak.saturating_sub(baseline);
    println!(
        "resident growth {} MiB; chunks delivered {chunks}; senders told RATE_LIMITED {limited} \
         times; bob's DMs delivered {delivered} of {sent}",
        growth >> 20
    );
    assert!(
        limited >= 8,
        "every sender was told RATE_LIMITED ({limited})"
    );
    assert!(
        growth < 8 * SERVER_BUDGET as u64,
        "resident memory grew by {} MiB, over 8 x the 8 MiB budget",
        growth >> 20
    );
    assert_eq!(delivered, sent, "every DM between honest users arrived");
}
