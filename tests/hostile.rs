//! End-to-end: hostile or broken clients. Bad frames are answered with ERROR
//! and the connection survives; abuse and failed identification close it
//! (SPEC.md §1, §3, ARCHITECTURE.md "How a message travels").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::start;
use socp_protocol::{now_ms, Envelope, Message, To, UserId};

const WAIT: Duration = Duration::from_secs(15);

/// A DM to itself arrives: the connection is open and served.
async fn still_served(user: &mut User, text: &str) {
    let dm = user.dm(&user.id, user.key.public_key(), text);
    user.peer.send(&dm).await;
    let got = user.peer.expect(WAIT, "own DM", is("USER_DELIVER")).await;
    assert_eq!(user.open(&got), text);
    assert!(user.peer.closed.is_none());
}

#[actix_rt::test]
async fn frames_before_identification_close_the_connection() {
    let a = server(0, &[]).await;
    let alice = User::join(a.addr, 10).await;

    // A DM as the first frame.
    let mut peer = Peer::connect(a.addr).await;
    let dm = alice.dm(&alice.id, alice.key.public_key(), "who am I");
    peer.send(&dm).await;
    assert_eq!(peer.closed_within(WAIT).await, Some(1008), "DM first");

    // Garbage as the first frame.
    let mut peer = Peer::connect(a.addr).await;
    peer.send_text("this is not json").await;
    assert_eq!(peer.closed_within(WAIT).await, Some(1008), "garbage first");

    // A binary frame as the first frame.
    let mut peer = Peer::connect(a.addr).await;
    peer.send_binary(b"\x00\x01binary").await;
    assert_eq!(peer.closed_within(WAIT).await, Some(1003), "binary first");

    // The DM was not delivered to alice.
    let mut alice = alice;
    assert_eq!(
        alice
            .peer
            .count(Duration::from_millis(300), is("USER_DELIVER"))
            .await,
        0
    );
    still_served(&mut alice, "still here").await;
}

#[actix_rt::test]
async fn no_identification_within_the_timeout_closes_the_connection() {
    let settings = socp_actors::Settings {
        identify_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let a = start(config_with(1, None, &[], settings))
        .await
        .expect("a starts");
    let mut silent = Peer::connect(a.addr).await;
    assert_eq!(silent.closed_within(WAIT).await, Some(1008));
    // Someone who identifies is served.
    let mut alice = User::join(a.addr, 11).await;
    still_served(&mut alice, "identified in time").await;
}

#[actix_rt::test]
async fn bad_frames_after_identification_get_errors_and_the_connection_stays() {
    let a = server(2, &[]).await;
    let mut alice = User::join(a.addr, 12).await;

    alice.peer.send_text("{\"type\": \"MSG_DIRECT\", ").await;
    alice
        .peer
        .expect(WAIT, "BAD_REQUEST for bad JSON", error_code("BAD_REQUEST"))
        .await;
    still_served(&mut alice, "after bad JSON").await;

    let unknown = format!(
        r#"{{"type":"FROBNICATE","from":"{}","to":"server","ts":{},"payload":{{}}}}"#,
        alice.id,
        now_ms()
    );
    alice.peer.send_text(&unknown).await;
    alice
        .peer
        .expect(WAIT, "UNKNOWN_TYPE", error_code("UNKNOWN_TYPE"))
        .await;
    still_served(&mut alice, "after an unknown type").await;

    alice.peer.send_binary(b"\x00\xffnot text").await;
    alice
        .peer
        .expect(WAIT, "ERROR for binary", is("ERROR"))
        .await;
    still_served(&mut alice, "after a binary frame").await;

    // A payload of the wrong shape.
    let bad_payload = format!(
        r#"{{"type":"MSG_DIRECT","from":"{}","to":"{}","ts":{},"payload":{{"ciphertext":5}}}}"#,
        alice.id,
        alice.id,
        now_ms()
    );
    alice.peer.send_text(&bad_payload).await;
    alice
        .peer
        .expect(
            WAIT,
            "BAD_REQUEST for a bad payload",
            error_code("BAD_REQUEST"),
        )
        .await;
    still_served(&mut alice, "after a bad payload").await;
}

#[actix_rt::test]
async fn a_spoofed_from_is_refused_and_nothing_is_delivered() {
    let a = server(3, &[]).await;
    let mut alice = User::join(a.addr, 13).await;
    let mut bob = User::join(a.addr, 14).await;
    assert!(alice.sees_user(&bob.id, WAIT).await);

    // Alice sends as bob, to bob, content signed with her own key.
    let mut as_bob = alice.dm(&bob.id, bob.key.public_key(), "I am bob");
    as_bob = Envelope::parse(
        as_bob
            .to_json()
            .replacen(
                &format!("\"from\":\"{}\"", alice.id),
                &format!("\"from\":\"{}\"", bob.id),
                1,
            )
            .as_bytes(),
    )
    .expect("parses");
    assert_eq!(as_bob.from(), bob.id.as_str());
    alice.peer.send(&as_bob).await;
    alice
        .peer
        .expect(WAIT, "BAD_REQUEST", error_code("BAD_REQUEST"))
        .await;

    // The next real DM is the first thing bob receives.
    let real = alice.dm(&bob.id, bob.key.public_key(), "really alice");
    alice.peer.send(&real).await;
    let got = bob
        .peer
        .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
        .await;
    assert_eq!(bob.open(&got), "really alice");
    assert_eq!(got.payload()["sender"], alice.id.as_str());
    assert!(alice.peer.closed.is_none());
}

#[actix_rt::test]
async fn a_frame_over_the_limit_is_refused_and_others_are_served() {
    let a = server(4, &[]).await;
    let mut alice = User::join(a.addr, 15).await;
    let mut bob = User::join(a.addr, 16).await;

    let padding = "x".repeat(2 * 1024 * 1024);
    let huge = format!(
        r#"{{"type":"LIST_REQUEST","from":"{}","to":"server","ts":{},"payload":{{"pad":"{padding}"}}}}"#,
        alice.id,
        now_ms()
    );
    alice.peer.send_text(&huge).await;
    let refused = alice
        .peer
        .sees(WAIT, |e| {
            e.msg_type() == "ERROR" && e.payload()["code"] == "TOO_LARGE"
        })
        .await;
    assert!(
        refused || alice.peer.closed == Some(1009),
        "closed with 1009 or answered TOO_LARGE; closed: {:?}",
        alice.peer.closed
    );

    // The server serves everyone else.
    still_served(&mut bob, "bob is fine").await;
    let mut carol = User::join(a.addr, 17).await;
    let dm = carol.dm(&bob.id, bob.key.public_key(), "hi bob");
    carol.peer.send(&dm).await;
    let got = bob
        .peer
        .expect(WAIT, "carol's DM", is("USER_DELIVER"))
        .await;
    assert_eq!(bob.open(&got), "hi bob");
}

#[actix_rt::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let a = server(5, &[]).await;
    // One frame.
    let mut alice = User::join(a.addr, 18).await;
    alice
        .peer
        .send_raw_frame(true, 0x1, b"{\"type\":\"\xff\xfe\"}")
        .await;
    assert_eq!(alice.peer.closed_within(WAIT).await, Some(1007));
    // Fragmented: a text frame and its continuation.
    let mut bob = User::join(a.addr, 19).await;
    bob.peer
        .send_raw_frame(false, 0x1, b"{\"type\":\"\xc3")
        .await;
    bob.peer.send_raw_frame(true, 0x0, b"\x28\"}").await;
    assert_eq!(bob.peer.closed_within(WAIT).await, Some(1007));
    // A character split across fragments is fine.
    let mut carol = User::join(a.addr, 20).await;
    let text = format!(
        r#"{{"type":"LIST_REQUEST","from":"{}","to":"server","ts":{},"payload":{{"note":"café"}}}}"#,
        carol.id,
        now_ms()
    );
    let bytes = text.as_bytes();
    let split = text.find('\u{e9}').expect("has é") + 1;
    carol.peer.send_raw_frame(false, 0x1, &bytes[..split]).await;
    carol.peer.send_raw_frame(true, 0x0, &bytes[split..]).await;
    carol
        .peer
        .expect(WAIT, "LIST_RESPONSE", is("LIST_RESPONSE"))
        .await;
    still_served(&mut carol, "fragments are fine").await;
}

#[actix_rt::test]
async fn a_flood_is_rate_limited_and_others_are_still_served() {
    let a = server(6, &[]).await;
    let mut mallory = User::join(a.addr, 21).await;
    let mut bob = User::join(a.addr, 22).await;
    let mut carol = User::join(a.addr, 23).await;
    assert!(bob.sees_user(&carol.id, WAIT).await);

    let flood = heartbeats(&mallory, 1000);
    for chunk in flood.chunks(100) {
        mallory.peer.send_batch(chunk).await;
    }
    mallory
        .peer
        .expect(WAIT, "RATE_LIMITED", error_code("RATE_LIMITED"))
        .await;
    // A flood this deep is cut off, once: one close (and one log line), not
    // one per frame still arriving.
    assert_eq!(mallory.peer.closed_within(WAIT).await, Some(1008));
    assert_eq!(
        counter(
            &http_get(a.addr, "/metrics").await,
            "socp_connections_closed_total{code=\"1008\"}"
        ),
        1
    );

    let dm = bob.dm(&carol.id, carol.key.public_key(), "still talking");
    bob.peer.send(&dm).await;
    let got = carol
        .peer
        .expect(WAIT, "bob's DM", is("USER_DELIVER"))
        .await;
    assert_eq!(carol.open(&got), "still talking");
    let status = a.status().await;
    assert!(
        !status["local_users"]
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u == mallory.id.as_str())),
        "mallory is detached: {status}"
    );
}

/// `n` HEARTBEAT frames from `user` (accepted and ignored: cheap to handle).
fn heartbeats(user: &User, n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|_| {
            Envelope::from_message(
                &user.id,
                To::parse("server").expect("valid"),
                now_ms(),
                &Message::Heartbeat(Default::default()),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn a_user_over_the_limit_is_told_and_served_again_once_it_slows_down() {
    let a = server(7, &[]).await;
    let mut alice = User::join(a.addr, 24).await;
    // The burst and then some: over the limit, far from a flood.
    let burst = heartbeats(&alice, 260);
    for chunk in burst.chunks(65) {
        alice.peer.send_batch(chunk).await;
    }
    alice
        .peer
        .expect(WAIT, "RATE_LIMITED", error_code("RATE_LIMITED"))
        .await;
    // Frames are dropped until the bucket refills; then a DM goes through.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let dm = alice.dm(&alice.id, alice.key.public_key(), "slowed down");
        alice.peer.send(&dm).await;
        if alice
            .peer
            .sees(Duration::from_millis(400), is("USER_DELIVER"))
            .await
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
    }
    assert!(alice.peer.closed.is_none(), "not cut off");
}

/// Within the rate but faster than the server checks content signatures: the
/// frames past the backlog are dropped with a RATE_LIMITED notice (one per
/// episode, not one per frame), and the user is not cut off.
#[actix_rt::test]
async fn a_backlog_past_its_bound_drops_frames_but_keeps_the_user() {
    let settings = socp_actors::Settings {
        max_backlog: 2,
        ..fast_settings()
    };
    let a = start(config_with(7, None, &[], settings))
        .await
        .expect("starts");
    let mut alice = User::join(a.addr, 24).await;
    let burst: Vec<Envelope> = (0..30)
        .map(|i| alice.dm(&alice.id, alice.key.public_key(), &format!("burst {i}")))
        .collect();
    alice.peer.send_batch(&burst).await;
    alice
        .peer
        .expect(WAIT, "RATE_LIMITED", error_code("RATE_LIMITED"))
        .await;
    let delivered = alice
        .peer
        .count(Duration::from_secs(3), is("USER_DELIVER"))
        .await;
    assert!((1..30).contains(&delivered), "{delivered} of 30 delivered");
    // One notice per episode of drops, not one per dropped frame.
    let notices = 1 + alice
        .peer
        .count(Duration::ZERO, error_code("RATE_LIMITED"))
        .await;
    let drops = 30 - delivered;
    assert!(notices < drops, "{notices} notices for {drops} drops");
    still_served(&mut alice, "after the burst").await;
}

/// Every rejection is counted on `/metrics` (Prometheus text).
#[actix_rt::test]
async fn rejections_are_counted_on_metrics() {
    let a = server(8, &[]).await;
    let mut alice = User::join(a.addr, 25).await;
    alice.peer.send_text("{not json").await;
    alice
        .peer
        .expect(WAIT, "BAD_REQUEST", error_code("BAD_REQUEST"))
        .await;
    let mut early = Peer::connect(a.addr).await;
    early.send_text("{\"type\":\"HEARTBEAT\"}").await;
    assert_eq!(early.closed_within(WAIT).await, Some(1008));

    let text = metrics_text(a.addr).await;
    assert!(
        text.contains("socp_user_errors_total{code=\"BAD_REQUEST\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("socp_connections_closed_total{code=\"1008\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("socp_local_users 1\n"), "{text}");
    assert!(
        text.contains("socp_frames_received_total{from=\"user\"}"),
        "{text}"
    );
    // What socp-bench reads for idle memory.
    let figure = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    if cfg!(target_os = "linux") {
        assert!(
            figure("process_resident_memory_bytes").is_some_and(|b| b > 0.0),
            "{text}"
        );
    }
    assert!(figure("socp_heap_trims_total").is_some(), "{text}");
}

/// Upgrade a raw TCP connection to a WebSocket; the stream is positioned
/// just after the 101 response head.
async fn raw_upgraded(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(upgrade.as_bytes()).await.expect("writes");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("reads the upgrade response"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgraded");
    s
}

/// Read until the server closes; the close code of its close frame, if any.
async fn close_code_of(s: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes the connection in time");
    // Server frames are unmasked: find a close frame (0x88) and its code.
    let mut i = 0;
    while i + 1 < got.len() {
        let (op, len) = (got[i] & 0x0f, usize::from(got[i + 1] & 0x7f));
        let (start, len) = match len {
            126 if i + 4 <= got.len() => (
                i + 4,
                usize::from(u16::from_be_bytes([got[i + 2], got[i + 3]])),
            ),
            127 => return None,
            _ => (i + 2, len),
        };
        if op == 0x8 && len >= 2 && start + 2 <= got.len() {
            return Some(u16::from_be_bytes([got[start], got[start + 1]]));
        }
        i = start + len;
    }
    None
}

#[actix_rt::test]
async fn a_frame_announcing_a_huge_length_then_trickling_is_closed_with_1009() {
    use tokio::io::AsyncWriteExt;
    let a = server(5, &[]).await;
    let mut alice = User::join(a.addr, 18).await;
    // A masked text frame announcing 10 MiB (64-bit length), then a trickle
    // of payload: refused from its header, before the payload is awaited.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(10u64 * 1024 * 1024).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    for identified_first in [false, true] {
        let mut s = raw_upgraded(a.addr).await;
        if identified_first {
            // A hello, masked, as the first frame: then the huge one.
            let user = User::connect(a.addr, 19, socp_protocol::UserId::random()).await;
            let hello = user.hello_frame(None).to_json();
            drop(user);
            let mut frame = vec![0x81, 0x80 | 126];
            frame.extend_from_slice(&u16::try_from(hello.len()).expect("fits").to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0]);
            frame.extend_from_slice(hello.as_bytes());
            s.write_all(&frame).await.expect("writes the hello");
        }
        s.write_all(&header).await.expect("writes the header");
        for _ in 0..3 {
            if s.write_all(b"xxxx").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            close_code_of(&mut s).await,
            Some(1009),
            "closed as too big (identified first: {identified_first})"
        );
    }
    still_served(&mut alice, "after the huge frames").await;
}

/// Send `request` on a fresh connection; the response's status code.
async fn status_of(addr: std::net::SocketAddr, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    s.write_all(request.as_bytes()).await.expect("writes");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n") {
        match tokio::time::timeout(WAIT, s.read_u8()).await {
            Ok(Ok(b)) => head.push(b),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

#[actix_rt::test]
async fn only_a_websocket_upgrade_at_the_endpoint_is_taken_over() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = server(6, &[]).await;
    let mut alice = User::join(a.addr, 20).await;
    let ws_headers = "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let cases = [
        (format!("GET /ws HTTP/1.1\r\n{ws_headers}"), 101),
        (format!("GET / HTTP/1.1\r\n{ws_headers}"), 101),
        (format!("GET /elsewhere HTTP/1.1\r\n{ws_headers}"), 404),
        // Not a WebSocket upgrade, or no upgrade at all.
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                .to_owned(),
            400,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\n\r\n"
                .to_owned(),
            400,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
            400,
        ),
    ];
    for (request, expected) in &cases {
        assert_eq!(
            status_of(a.addr, request).await,
            *expected,
            "{}",
            request.lines().next().unwrap_or_default()
        );
    }

    // A hello sent in the same write as the upgrade request (bytes the HTTP
    // layer reads past the request) is served like any first frame.
    let user = User::connect(a.addr, 21, socp_protocol::UserId::random()).await;
    let hello = user.hello_frame(None).to_json();
    drop(user);
    let mut bytes = format!("GET /ws HTTP/1.1\r\n{ws_headers}").into_bytes();
    bytes.extend_from_slice(&[0x81, 0x80 | 126]);
    bytes.extend_from_slice(&u16::try_from(hello.len()).expect("fits").to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(hello.as_bytes());
    let mut s = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    s.write_all(&bytes).await.expect("writes");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("USER_ADVERTISE") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the server answers the hello in time")
            .expect("reads");
        assert!(n > 0, "closed before answering the hello");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    still_served(&mut alice, "after the upgrades").await;
}

/// Findings 5 and 6: registration spam grows the database for good, and
/// login requests hand out key stores. Per connection a few registrations;
/// server-wide a bounded number an hour, and a bounded number of login
/// challenges a minute — over every connection, each within its frame rate.
#[actix_rt::test]
async fn registrations_and_logins_are_bounded_per_connection_and_server_wide() {
    let settings = socp_actors::Settings {
        registrations_per_hour: 5,
        logins_per_minute: 60.0,
        ..fast_settings()
    };
    let a = socp::server::start(config_with(6, None, &[], settings))
        .await
        .expect("server starts");
    let register = |user: &User, name: &str| {
        register_frame(
            &user.id,
            &UserId::random(),
            name,
            REG_KEY,
            REG_KEY,
            key_store(),
        )
    };
    let answer = |e: &Envelope| e.msg_type() == "REGISTER_OK" || e.msg_type() == "ERROR";
    // One connection: three accounts, not four.
    let mut one = User::join(a.addr, 21).await;
    let mut codes = Vec::new();
    for i in 0..4 {
        one.peer.send(&register(&one, &format!("spam{i}"))).await;
        let got = one.peer.expect(WAIT, "an answer", answer).await;
        codes.push(got.payload()["code"].as_str().unwrap_or("OK").to_owned());
    }
    assert_eq!(codes, ["OK", "OK", "OK", "RATE_LIMITED"]);
    // Server-wide: five an hour, whatever the number of connections.
    let mut accepted = 3;
    for i in 0..3 {
        let mut other = User::join(a.addr, 22 + i).await;
        other
            .peer
            .send(&register(&other, &format!("more{i}")))
            .await;
        let got = other.peer.expect(WAIT, "an answer", answer).await;
        if got.msg_type() == "REGISTER_OK" {
            accepted += 1;
        } else {
            assert_eq!(got.payload()["code"], "RATE_LIMITED");
        }
    }
    assert_eq!(accepted, 5, "the hour's registrations");

    // Logins: 16 connections, each well within its own rate, ask for
    // challenges; the server hands out a burst of 6 (a tenth of a minute's),
    // and answers the rest RATE_LIMITED.
    let mut challenges = 0;
    let mut limited = 0;
    let mut askers = Vec::new();
    for i in 0..16 {
        let mut u = User::join(a.addr, 30 + i).await;
        u.peer.send(&login_frame(&u.id, "spam0")).await;
        askers.push(u);
    }
    for u in &mut askers {
        let got = u
            .peer
            .expect(WAIT, "an answer", |e| {
                e.msg_type() == "LOGIN_CHALLENGE" || e.msg_type() == "ERROR"
            })
            .await;
        match got.msg_type() {
            "LOGIN_CHALLENGE" => challenges += 1,
            _ => {
                assert_eq!(got.payload()["code"], "RATE_LIMITED");
                limited += 1;
            }
        }
    }
    assert!(challenges <= 7, "{challenges} challenges handed out");
    assert_eq!(challenges + limited, 16);
    // Other users are served meanwhile.
    let mut bob = User::join(a.addr, 50).await;
    let mut carol = User::join(a.addr, 51).await;
    assert!(bob.sees_user(&carol.id, WAIT).await);
    let dm = bob.dm(&carol.id, carol.key.public_key(), "still here");
    bob.peer.send(&dm).await;
    let got = carol
        .peer
        .expect(WAIT, "bob's DM", is("USER_DELIVER"))
        .await;
    assert_eq!(carol.open(&got), "still here");
}
