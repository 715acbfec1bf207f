//! Large files between two `socp-client` processes on two linked servers,
//! while their users chat, in a test binary of their own so that they run
//! alone (minutes of RSA or hundreds of MiB on every core) and never slow the
//! tests beside them:
//! - 20 MiB in the standard mode (446-byte RSA chunks, what other
//!   implementations' clients get): 47,000 chunks, each encrypted and signed
//!   by the sender just before it goes, signed again by both servers and
//!   decrypted by the recipient. The per-user frame limit is raised (at the
//!   default 50 frames a second such a file takes twenty minutes): the pace
//!   is the sender's flow control and the servers' signing;
//! - 100 MiB in the fast mode [ext] (AES-256-GCM chunks of 384 KiB), with
//!   the servers' default limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod client_common;
mod common;

use std::time::Duration;

use client_common::{bytes, is_event, Client, Options};
use common::{fast_settings, linked_pair};
use socp_actors::Settings;
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::MAX_FAST_CHUNK;

/// Long enough for a loaded 2-core machine; completion is what is tested,
/// never a speed.
const DEADLINE: Duration = Duration::from_secs(40 * 60);

#[actix_rt::test]
async fn a_20_mib_file_in_the_standard_mode_arrives_whole_while_its_users_chat() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b) = linked_pair(Settings {
        user_rate: 100_000.0,
        user_burst: 100_000.0,
        peer_timeout: Duration::from_secs(60),
        ..fast_settings()
    })
    .await;
    let mut alice =
        Client::start("alice", a.addr, Options::new(17, &tmp.path().join("alice"))).await;
    let mut bob = Client::start(
        "bob",
        b.addr,
        Options {
            rate: Some(100_000.0),
            standard_files: true,
            ..Options::new(18, &tmp.path().join("bob"))
        },
    )
    .await;
    bob.sees_online(&alice.id).await;
    alice.sees_online(&bob.id).await;

    let data = bytes(20 * 1024 * 1024 + 7, 13);
    let file = (tmp.path().join("twenty.bin"), &data[..]);
    sends(&mut bob, &alice, file, ("standard", MAX_OAEP_PLAINTEXT)).await;

    // Both ways while the file goes.
    bob.send(&format!("/tell {} still here", alice.id));
    alice
        .expect_within(DEADLINE, "bob's DM during the file", |e| {
            e["event"] == "dm" && e["text"] == "still here"
        })
        .await;
    alice.send(&format!("/tell {} me too", bob.id));
    bob.expect_within(DEADLINE, "alice's DM during the file", |e| {
        e["event"] == "dm" && e["text"] == "me too"
    })
    .await;
    assert!(
        bob.logged(|e| e["event"] == "file_sent").is_empty(),
        "the DMs crossed while the file was still going"
    );

    arrives_whole(&mut alice, &mut bob, &data).await;
}

#[actix_rt::test]
async fn a_100_mib_file_in_the_fast_mode_arrives_whole_while_its_users_chat() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // The default limits; room for frames waiting on debug-build servers.
    let (a, b) = linked_pair(Settings {
        conn_memory_budget: 64 << 20,
        peer_timeout: Duration::from_secs(60),
        ..fast_settings()
    })
    .await;
    let mut alice =
        Client::start("alice", a.addr, Options::new(17, &tmp.path().join("alice"))).await;
    let mut bob = Client::start("bob", b.addr, Options::new(18, &tmp.path().join("bob"))).await;
    bob.sees_online(&alice.id).await;
    alice.sees_online(&bob.id).await;

    let data = bytes(100 * 1024 * 1024 + 3, 14);
    let file = (tmp.path().join("hundred.bin"), &data[..]);
    sends(&mut bob, &alice, file, ("fast", MAX_FAST_CHUNK as usize)).await;
    bob.send(&format!("/tell {} still here", alice.id));
    alice
        .expect_within(DEADLINE, "bob's DM during the file", |e| {
            e["event"] == "dm" && e["text"] == "still here"
        })
        .await;
    arrives_whole(&mut alice, &mut bob, &data).await;
}

/// Bob starts sending `data` (written at `path`) to Alice: in `mode`, in
/// chunks of `chunk` bytes.
async fn sends(
    bob: &mut Client,
    alice: &Client,
    (path, data): (std::path::PathBuf, &[u8]),
    (mode, chunk): (&str, usize),
) {
    std::fs::write(&path, data).expect("writes the file");
    bob.send(&format!("/file {} {}", alice.id, path.display()));
    let started = bob.expect("started", is_event("file_progress")).await;
    assert_eq!(started["mode"], mode, "{started}");
    assert_eq!(
        started["total"].as_u64(),
        Some(data.len().div_ceil(chunk) as u64)
    );
}

/// Bob's file reaches Alice byte-identical (its SHA-256 checked by the
/// client and again here), and neither client reported a problem.
async fn arrives_whole(alice: &mut Client, bob: &mut Client, data: &[u8]) {
    bob.expect_within(DEADLINE, "file_sent", is_event("file_sent"))
        .await;
    let received = alice
        .expect_within(DEADLINE, "file_received", is_event("file_received"))
        .await;
    assert_eq!(received["sha256"], sha256_hex(data).as_str());
    let path = std::path::Path::new(received["path"].as_str().expect("a path"));
    assert!(
        std::fs::read(path).expect("saved") == data,
        "the file arrived byte-identical"
    );
    // It went to disk as it arrived (a hidden part file), gone once saved.
    let dir = path.parent().expect("a directory");
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("the download directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for c in [alice, bob] {
        let problems = c.logged(|e| matches!(e["event"].as_str(), Some("error" | "warning")));
        assert!(problems.is_empty(), "{}: {problems:#?}", c.label);
    }
}
