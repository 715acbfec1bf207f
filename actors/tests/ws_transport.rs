//! The inbound WebSocket transport over an in-memory socket (the mocked peer
//! writes masked client frames and reads what the server writes): the first
//! frame binds an owner, frames keep their order, pings are answered, bytes
//! read past the upgrade count, and a peer that never reads is cut off once
//! too much waits for it instead of growing the server. And the outbound
//! transport (awc) against a scripted server on a loopback port: frames pass
//! both ways, and a frame announcing more than the limit is refused at its
//! header.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Decoder;
use actix_http::ws::{CloseCode, Codec, Frame, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use socp_actors::crypto::FrameText;
use socp_actors::transport::{close, Acceptor, AwcTransport, Inbound, Wire, WsTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

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
                Inbound::Binary | Inbound::Alive => {}
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
    read_frame(peer, buf, Codec::new().client_mode()).await
}

/// Read the next frame `codec` decodes from `peer`.
async fn read_frame<R: AsyncRead + Unpin>(
    peer: &mut R,
    buf: &mut BytesMut,
    mut codec: Codec,
) -> Frame {
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
            close::PROTOCOL,
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

// ----- the outbound transport (awc) ----------------------------------------

/// A scripted WebSocket server: answers one upgrade on `listener`, sending
/// `after_response` in the same write as the response, and hands back the
/// socket.
async fn scripted_server(listener: TcpListener, after_response: Vec<u8>) -> TcpStream {
    let (mut sock, _) = listener.accept().await.expect("accept");
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the client closed during the handshake");
        request.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    let key = request
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("a Sec-WebSocket-Key");
    let accept = actix_http::ws::hash_key(key.as_bytes());
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    )
    .into_bytes();
    response.extend(after_response);
    sock.write_all(&response).await.expect("write");
    sock
}

/// An outbound transport (frames of at most `max` bytes) to a scripted
/// server; the server's end of the socket.
async fn dial(
    after_response: Vec<u8>,
    max: usize,
) -> (Arc<Mutex<Seen>>, Addr<AwcTransport>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = actix::spawn(scripted_server(listener, after_response));
    let (_, framed) = awc::Client::new()
        .ws(format!("ws://{addr}/ws"))
        .max_frame_size(max)
        .connect()
        .await
        .expect("the handshake completes");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let owner = Owner(seen.clone()).start().recipient();
    let transport = AwcTransport::start(framed, owner, max);
    let sock = server.await.expect("the server task");
    (seen, transport, sock)
}

/// An unmasked server frame.
fn server_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Parser::write_message(&mut buf, payload, op, true, false);
    buf.to_vec()
}

#[actix::test]
async fn an_outbound_link_passes_frames_both_ways_including_those_sent_with_the_handshake() {
    let (seen, transport, mut server) =
        dial(server_frame(OpCode::Text, b"with the response"), 64 * 1024).await;
    server
        .write_all(&server_frame(OpCode::Text, b"later"))
        .await
        .expect("write");
    server
        .write_all(&server_frame(OpCode::Ping, b"ping"))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    // Server side: client frames are masked.
    match read_frame(&mut server, &mut buf, Codec::new()).await {
        Frame::Pong(p) => assert_eq!(&p[..], b"ping"),
        other => panic!("expected a pong, got {other:?}"),
    }
    until("two texts", || texts(&seen).len() == 2).await;
    assert_eq!(texts(&seen), ["with the response", "later"]);

    transport.do_send(Wire::Text(FrameText::from("from the link")));
    match read_frame(&mut server, &mut buf, Codec::new()).await {
        Frame::Text(t) => assert_eq!(&t[..], b"from the link"),
        other => panic!("expected a text, got {other:?}"),
    }
    transport.do_send(Wire::Close(close::NORMAL, "bye".into()));
    match read_frame(&mut server, &mut buf, Codec::new()).await {
        Frame::Close(Some(reason)) => assert_eq!(reason.code, CloseCode::Normal),
        other => panic!("expected a close, got {other:?}"),
    }
    until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
}

#[actix::test]
async fn a_linked_server_announcing_a_frame_over_the_limit_is_refused_at_its_header() {
    let (seen, _transport, mut server) = dial(Vec::new(), 64 * 1024).await;
    // A text frame announcing 10 MiB, then only its first KiB: awc's decoder
    // alone would wait (and buffer) until all 10 MiB had arrived.
    let mut header = vec![0x81, 127];
    header.extend_from_slice(&(10u64 << 20).to_be_bytes());
    server.write_all(&header).await.expect("write");
    server.write_all(&[b'x'; 1024]).await.expect("write");
    let mut buf = BytesMut::new();
    match read_frame(&mut server, &mut buf, Codec::new()).await {
        Frame::Close(Some(reason)) => assert_eq!(u16::from(reason.code), close::TOO_BIG),
        other => panic!("expected a close, got {other:?}"),
    }
    until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
    assert!(texts(&seen).is_empty());
}

#[actix::test]
async fn an_outbound_link_answers_the_servers_close_and_tells_its_owner() {
    let (seen, _transport, mut server) = dial(Vec::new(), 64 * 1024).await;
    let mut buf = BytesMut::new();
    Parser::write_close(&mut buf, Some(CloseCode::Away.into()), false);
    server.write_all(&buf).await.expect("write");
    let mut buf = BytesMut::new();
    match read_frame(&mut server, &mut buf, Codec::new()).await {
        Frame::Close(Some(reason)) => assert_eq!(reason.code, CloseCode::Away),
        other => panic!("expected the close answered, got {other:?}"),
    }
    until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
}

/// Whether the server's end of `peer` is gone (dropped: even an empty write
/// fails). Writes nothing, never reads.
async fn released(peer: &mut DuplexStream) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(50), peer.write(b"")).await,
        Ok(Err(_))
    )
}

#[actix::test]
async fn a_closed_connection_whose_peer_never_reads_is_released_after_a_deadline() {
    // Two ways to close: the owner closes, or the peer breaks the protocol.
    for owner_closes in [true, false] {
        // 1 KiB of socket buffer; the peer reads nothing at all.
        let (seen, mut peer) = connect(1024, &client_frame(OpCode::Text, b"hello"), 1 << 20);
        until("bound", || seen.lock().is_ok_and(|s| s.transport.is_some())).await;
        let transport = seen
            .lock()
            .ok()
            .and_then(|s| s.transport.clone())
            .expect("bound");
        // 64 KiB for the peer, which never reads them: the writer is stuck.
        for _ in 0..64 {
            transport.do_send(Wire::Text(FrameText::from("x".repeat(1024))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!released(&mut peer).await, "released before the close");
        if owner_closes {
            transport.do_send(Wire::Close(close::NORMAL, "bye".into()));
        } else {
            peer.write_all(&client_frame(OpCode::Text, &[0xff]))
                .await
                .expect("write");
        }
        until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
        // The writer gives up on the close within its deadline (seconds):
        // the socket is dropped, though the peer still reads nothing.
        let mut gone = false;
        for _ in 0..200 {
            if released(&mut peer).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            gone,
            "the socket is still held 20 s after the close (owner closes: {owner_closes})"
        );
    }
}

#[actix::test]
async fn keepalive_pings_a_peer_that_answers_and_closes_a_silent_one_with_1001() {
    let (seen, mut peer) = connect(64 * 1024, &client_frame(OpCode::Text, b"hello"), 1 << 20);
    until("bound", || seen.lock().is_ok_and(|s| s.transport.is_some())).await;
    let transport = seen
        .lock()
        .ok()
        .and_then(|s| s.transport.clone())
        .expect("bound");
    let mut buf = BytesMut::new();
    // Heard from within the last minute: a ping.
    transport.do_send(Wire::KeepAlive(Duration::from_secs(60)));
    match next_frame(&mut peer, &mut buf).await {
        Frame::Ping(p) => assert!(p.is_empty()),
        other => panic!("expected a ping, got {other:?}"),
    }
    // A pong counts as hearing from the peer: without it the peer would
    // have been silent for 350 ms here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peer.write_all(&client_frame(OpCode::Pong, b""))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    transport.do_send(Wire::KeepAlive(Duration::from_millis(250)));
    match next_frame(&mut peer, &mut buf).await {
        Frame::Ping(_) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    // Silent for longer than asked: closed with 1001, the owner told.
    tokio::time::sleep(Duration::from_millis(300)).await;
    transport.do_send(Wire::KeepAlive(Duration::from_millis(250)));
    match next_frame(&mut peer, &mut buf).await {
        Frame::Close(Some(reason)) => assert_eq!(u16::from(reason.code), close::AWAY),
        other => panic!("expected a close, got {other:?}"),
    }
    until("the owner told", || seen.lock().is_ok_and(|s| s.closed)).await;
}
