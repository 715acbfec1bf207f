//! The inbound WebSocket transport over an in-memory socket (the mocked peer
//! writes masked client frames and reads what the server writes): the first
//! frame binds an owner, frames keep their order, pings are answered, bytes
//! read past the upgrade count, and a peer that never reads is cut off once
//! too much waits for it instead of growing the server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Decoder;
use actix_http::ws::{CloseCode, Codec, Frame, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use socp_actors::crypto::FrameText;
use socp_actors::transport::{close, Acceptor, Inbound, Wire, WsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// What the owner of the connection was told.
#[derive(Default)]
struct Seen {
    texts: Vec<String>,
    closed: bool,
    transport: Option<Recipient<Wire>>,
}

struct Owner(Arc<Mutex<Seen>>);

impl Actor for Owner {
    type Context = Context<Self>;
}

impl Handler<Inbound> for Owner {
    type Result = ();
    fn handle(&mut self, msg: Inbound, _: &mut Self::Context) {
        if let Ok(mut seen) = self.0.lock() {
            match msg {
                Inbound::Text(t) => seen.texts.push(t.to_string()),
                Inbound::Closed => seen.closed = true,
                Inbound::Binary => {}
            }
        }
    }
}

/// Accepts any first frame, recording it like the later ones.
struct Accept {
    seen: Arc<Mutex<Seen>>,
    owner: Recipient<Inbound>,
}

impl Acceptor for Accept {
    fn accept(
        &self,
        first: FrameText,
        transport: Recipient<Wire>,
    ) -> Result<Recipient<Inbound>, (u16, String)> {
        if &*first == "refuse me" {
            return Err((close::POLICY, "refused".into()));
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.texts.push(first.to_string());
            seen.transport = Some(transport);
        }
        Ok(self.owner.clone())
    }
}

/// A server-side transport over one end of an in-memory socket of
/// `capacity` bytes; the other end is the peer.
fn connect(capacity: usize, early: &[u8], max_unread: usize) -> (Arc<Mutex<Seen>>, DuplexStream) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let owner = Owner(seen.clone()).start().recipient();
    let (server, peer) = tokio::io::duplex(capacity);
    WsTransport::new(
        Accept {
            seen: seen.clone(),
            owner,
        },
        64 * 1024,
        Duration::from_secs(30),
        "test peer".into(),
    )
    .max_unread(max_unread)
    .start_io(server, Bytes::copy_from_slice(early));
    (seen, peer)
}

/// A masked client frame.
fn client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Parser::write_message(&mut buf, payload, op, true, true);
    buf.to_vec()
}

/// Read the server's next frame.
async fn next_frame(peer: &mut DuplexStream, buf: &mut BytesMut) -> Frame {
    let mut codec = Codec::new().client_mode();
    loop {
        if let Ok(Some(frame)) = codec.decode(buf) {
            return frame;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut chunk))
            .await
            .expect("a frame within 10 s")
            .expect("read");
        assert!(n > 0, "the server closed the socket before the frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn texts(seen: &Arc<Mutex<Seen>>) -> Vec<String> {
    seen.lock().map(|s| s.texts.clone()).unwrap_or_default()
}

#[actix::test]
async fn frames_keep_their_order_both_ways_and_pings_are_answered() {
    // The first frame arrives with the upgrade request's bytes.
    let (seen, mut peer) = connect(64 * 1024, &client_frame(OpCode::Text, b"hello"), 1 << 20);
    for i in 0..20 {
        peer.write_all(&client_frame(OpCode::Text, format!("up {i}").as_bytes()))
            .await
            .expect("write");
    }
    peer.write_all(&client_frame(OpCode::Ping, b"are you there"))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    match next_frame(&mut peer, &mut buf).await {
        Frame::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    until("21 texts", || texts(&seen).len() == 21).await;
    let expected: Vec<String> = std::iter::once("hello".to_owned())
        .chain((0..20).map(|i| format!("up {i}")))
        .collect();
    assert_eq!(texts(&seen), expected);

    let transport = seen
        .lock()
        .ok()
        .and_then(|s| s.transport.clone())
        .expect("bound");
    for i in 0..50 {
        transport.do_send(Wire::Text(FrameText::from(format!("down {i}"))));
    }
    for i in 0..50 {
        match next_frame(&mut peer, &mut buf).await {
            Frame::Text(t) => assert_eq!(&t[..], format!("down {i}").as_bytes()),
            other => panic!("expected text {i}, got {other:?}"),
        }
    }
    transport.do_send(Wire::Close(close::NORMAL, "bye".into()));
    match next_frame(&mut peer, &mut buf).await {
        Frame::Close(Some(reason)) => {
            assert_eq!(reason.code, CloseCode::Normal);
            assert_eq!(reason.description.as_deref(), Some("bye"));
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // Then the socket ends, and the owner is told.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "nothing after the close");
    until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
}

#[actix::test]
async fn a_refused_first_frame_is_closed_with_the_acceptors_code() {
    let (seen, mut peer) = connect(64 * 1024, &[], 1 << 20);
    peer.write_all(&client_frame(OpCode::Text, b"refuse me"))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    match next_frame(&mut peer, &mut buf).await {
        Frame::Close(Some(reason)) => assert_eq!(u16::from(reason.code), close::POLICY),
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(texts(&seen).is_empty());
}

#[actix::test]
async fn an_unmasked_or_non_utf8_frame_closes_the_connection() {
    for (bytes, code) in [
        // Unmasked: only servers may send those.
        (
            {
                let mut b = BytesMut::new();
                Parser::write_message(&mut b, b"hi", OpCode::Text, true, false);
                b.to_vec()
            },
            close::POLICY,
        ),
        (
            client_frame(OpCode::Text, &[0xff, 0xfe]),
            close::INVALID_DATA,
        ),
    ] {
        let (seen, mut peer) = connect(64 * 1024, &[], 1 << 20);
        peer.write_all(&bytes).await.expect("write");
        let mut buf = BytesMut::new();
        match next_frame(&mut peer, &mut buf).await {
            Frame::Close(Some(reason)) => assert_eq!(u16::from(reason.code), code),
            other => panic!("expected a close {code}, got {other:?}"),
        }
        assert!(texts(&seen).is_empty());
    }
}

#[actix::test]
async fn a_peer_that_never_reads_is_closed_once_too_much_waits_for_it() {
    // 16 KiB of socket buffer, 256 KiB allowed to wait: a peer that stops
    // reading is cut off after about 272 KiB, not kept growing.
    let limit = 256 * 1024;
    let (seen, mut peer) = connect(16 * 1024, &client_frame(OpCode::Text, b"hello"), limit);
    until("bound", || seen.lock().is_ok_and(|s| s.transport.is_some())).await;
    let transport = seen
        .lock()
        .ok()
        .and_then(|s| s.transport.clone())
        .expect("bound");
    let frame = FrameText::from("x".repeat(8 * 1024));
    // Half the limit: still connected.
    for _ in 0..16 {
        transport.do_send(Wire::Text(frame.clone()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !seen.lock().is_ok_and(|s| s.closed),
        "closed below the limit"
    );
    // Past it: closed, and the owner is told.
    for _ in 0..40 {
        transport.do_send(Wire::Text(frame.clone()));
    }
    until("the slow peer closed", || {
        seen.lock().is_ok_and(|s| s.closed)
    })
    .await;
    // What the peer finally reads: whole frames, then the close.
    let mut buf = BytesMut::new();
    let mut texts_read = 0;
    loop {
        match next_frame(&mut peer, &mut buf).await {
            Frame::Text(t) => {
                assert_eq!(t.len(), 8 * 1024);
                texts_read += 1;
            }
            Frame::Close(Some(reason)) => {
                assert_eq!(u16::from(reason.code), close::POLICY);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(texts_read < 56, "the unread frames were dropped, not sent");
}
