//! RFC 6455 conformance of both transports. Raw frames are written on an
//! in-memory socket to an inbound transport (and, from a scripted server on a
//! loopback port, to an outbound awc transport); every case asserts the exact
//! close code that comes back: 1002 for a protocol error (reserved bits or
//! opcodes, bad continuation, a control frame over 125 bytes or fragmented,
//! a bad close code or a 1-byte close payload), 1007 for text or a close
//! reason that is not UTF-8, 1009 for a message over the limit; a valid
//! close is echoed with its code. Control frames may come between the
//! fragments of a message, and a ping is answered with a pong carrying the
//! same payload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame};
use bytes::{Bytes, BytesMut};
use socp_actors::crypto::FrameText;
use socp_actors::transport::{Acceptor, AwcTransport, Inbound, Wire, WsTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

/// The frame limit of every transport here.
const MAX: usize = 64 * 1024;

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// What the owner of the connection was told.
#[derive(Default)]
struct Seen {
    texts: Vec<String>,
    binaries: usize,
    closed: bool,
}

struct Owner(Arc<Mutex<Seen>>);

impl Actor for Owner {
    type Context = Context<Self>;
}

impl Handler<Inbound> for Owner {
    type Result = ();
    fn handle(&mut self, msg: Inbound, _: &mut Self::Context) {
        let mut seen = self.0.lock().unwrap();
        match msg {
            Inbound::Text(t) => seen.texts.push(t.to_string()),
            Inbound::Binary => seen.binaries += 1,
            Inbound::Alive => {}
            Inbound::Closed => seen.closed = true,
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
        _: Recipient<Wire>,
    ) -> Result<Recipient<Inbound>, (u16, String)> {
        self.seen.lock().unwrap().texts.push(first.to_string());
        Ok(self.owner.clone())
    }
}

/// A server-side transport over an in-memory socket, bound by a first text
/// frame "hello"; the peer's end.
fn inbound() -> (Arc<Mutex<Seen>>, DuplexStream) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let owner = Owner(seen.clone()).start().recipient();
    let (server, peer) = tokio::io::duplex(1 << 20);
    WsTransport::new(
        Accept {
            seen: seen.clone(),
            owner,
        },
        MAX,
        Duration::from_secs(30),
        "test peer".into(),
    )
    .start_io(server, Bytes::from(raw(true, TEXT, b"hello", true)));
    (seen, peer)
}

/// One raw frame: FIN bit, first-byte `op` (opcode, and reserved bits if
/// set), payload, masked (as a client sends) or not (as a server sends).
fn raw(fin: bool, op: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | op];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A close payload: code, then reason bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Read the next frame `codec` decodes from `peer`; `None` once the socket ends.
async fn read_frame<R: AsyncRead + Unpin>(
    peer: &mut R,
    buf: &mut BytesMut,
    codec: &mut Codec,
) -> Option<Frame> {
    loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => return Some(frame),
            Ok(None) => {}
            Err(e) => panic!("the transport wrote a bad frame: {e}"),
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut chunk))
            .await
            .expect("a frame within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What came back, up to and including the close: the close code (`None`:
/// a close without one; the socket ending without a close fails) and the
/// pong payloads before it.
struct Answer {
    code: Option<u16>,
    pongs: Vec<Bytes>,
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    frames: &[Vec<u8>],
    mut codec: Codec,
) -> Answer {
    for f in frames {
        sock.write_all(f).await.expect("write");
    }
    let mut buf = BytesMut::new();
    let mut pongs = Vec::new();
    loop {
        match read_frame(sock, &mut buf, &mut codec).await {
            Some(Frame::Pong(p)) => pongs.push(p),
            Some(Frame::Close(reason)) => {
                return Answer {
                    code: reason.map(|r| u16::from(r.code)),
                    pongs,
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

/// Write `frames` to a fresh inbound transport; what it answered.
async fn inbound_answer(frames: &[Vec<u8>]) -> (Answer, Arc<Mutex<Seen>>) {
    let (seen, mut peer) = inbound();
    let a = answer(&mut peer, frames, Codec::new().client_mode()).await;
    (a, seen)
}

/// The close code an inbound transport answers `frames` with.
async fn inbound_close(frames: &[Vec<u8>]) -> Option<u16> {
    inbound_answer(frames).await.0.code
}

fn m(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    raw(fin, op, payload, true)
}

fn texts(seen: &Arc<Mutex<Seen>>) -> Vec<String> {
    seen.lock().unwrap().texts.clone()
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

// ----- fragmentation ---------------------------------------------------------

#[actix::test]
async fn control_frames_between_fragments_are_answered_and_the_message_is_whole() {
    let (a, seen) = inbound_answer(&[
        m(false, TEXT, b"frag"),
        m(true, PING, b"ping 1"),
        m(false, CONT, b"men"),
        m(true, PONG, b"unsolicited"),
        m(true, PING, b""),
        m(true, CONT, b"ted"),
        m(false, BINARY, b"\x00\x01"),
        m(true, PING, &[b'p'; 125]),
        m(true, CONT, b"\xff"),
        m(true, CLOSE, &close_payload(1000, b"done")),
    ])
    .await;
    assert_eq!(a.code, Some(1000), "the close is echoed");
    assert_eq!(
        a.pongs,
        [
            Bytes::from_static(b"ping 1"),
            Bytes::new(),
            Bytes::from(vec![b'p'; 125])
        ],
        "each ping answered with its payload, in order"
    );
    until("the messages", || seen.lock().unwrap().binaries == 1).await;
    assert_eq!(texts(&seen), ["hello", "fragmented"]);
}

#[actix::test]
async fn a_continuation_with_no_message_started_is_a_protocol_error() {
    assert_eq!(inbound_close(&[m(true, CONT, b"x")]).await, Some(1002));
    assert_eq!(inbound_close(&[m(false, CONT, b"x")]).await, Some(1002));
    // After a message ended, too.
    assert_eq!(
        inbound_close(&[
            m(false, TEXT, b"a"),
            m(true, CONT, b"b"),
            m(true, CONT, b"c")
        ])
        .await,
        Some(1002)
    );
}

#[actix::test]
async fn a_new_data_frame_inside_a_fragmented_message_is_a_protocol_error() {
    for (op, fin) in [(TEXT, true), (TEXT, false), (BINARY, true), (BINARY, false)] {
        assert_eq!(
            inbound_close(&[m(false, TEXT, b"a"), m(fin, op, b"b")]).await,
            Some(1002),
            "opcode {op} fin {fin}"
        );
    }
}

// ----- framing ---------------------------------------------------------------

#[actix::test]
async fn reserved_bits_are_a_protocol_error() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        for op in [TEXT, PING, CLOSE] {
            assert_eq!(
                inbound_close(&[m(true, rsv | op, b"")]).await,
                Some(1002),
                "rsv {rsv:#x} op {op}"
            );
        }
    }
}

#[actix::test]
async fn reserved_opcodes_are_a_protocol_error() {
    for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(
            inbound_close(&[m(true, op, b"")]).await,
            Some(1002),
            "opcode {op}"
        );
        assert_eq!(
            inbound_close(&[m(true, op, b"payload")]).await,
            Some(1002),
            "opcode {op} with a payload"
        );
    }
}

#[actix::test]
async fn an_unmasked_client_frame_is_a_protocol_error() {
    assert_eq!(
        inbound_close(&[raw(true, TEXT, b"hi", false)]).await,
        Some(1002)
    );
}

// ----- control frames --------------------------------------------------------

#[actix::test]
async fn control_frames_over_125_bytes_are_a_protocol_error() {
    for op in [PING, PONG, CLOSE] {
        assert_eq!(
            inbound_close(&[m(true, op, &[b'x'; 126])]).await,
            Some(1002),
            "opcode {op}"
        );
    }
    // 125 is fine.
    let (a, _) = inbound_answer(&[m(true, PING, &[b'x'; 125]), m(true, CLOSE, &[])]).await;
    assert_eq!(a.pongs, [Bytes::from(vec![b'x'; 125])]);
}

#[actix::test]
async fn fragmented_control_frames_are_a_protocol_error() {
    for op in [PING, PONG, CLOSE] {
        assert_eq!(
            inbound_close(&[m(false, op, b"x"), m(true, CONT, b"y")]).await,
            Some(1002),
            "opcode {op}"
        );
    }
}

// ----- UTF-8 -----------------------------------------------------------------

#[actix::test]
async fn utf8_split_anywhere_across_fragments_is_reassembled() {
    let text = "κόσμε €𝄞 café";
    let bytes = text.as_bytes();
    for split in 1..bytes.len() {
        let (a, seen) = inbound_answer(&[
            m(false, TEXT, &bytes[..split]),
            m(true, CONT, &bytes[split..]),
            m(true, CLOSE, &close_payload(1000, b"")),
        ])
        .await;
        assert_eq!(a.code, Some(1000), "split at {split}");
        until("the text", || texts(&seen).len() == 2).await;
        assert_eq!(texts(&seen)[1], text, "split at {split}");
    }
    // One byte per fragment.
    let mut frames = vec![m(false, TEXT, &bytes[..1])];
    frames.extend(
        bytes[1..bytes.len() - 1]
            .iter()
            .map(|b| m(false, CONT, &[*b])),
    );
    frames.push(m(true, CONT, &bytes[bytes.len() - 1..]));
    frames.push(m(true, CLOSE, &close_payload(1000, b"")));
    let (a, seen) = inbound_answer(&frames).await;
    assert_eq!(a.code, Some(1000));
    until("the text", || texts(&seen).len() == 2).await;
    assert_eq!(texts(&seen)[1], text);
}

#[actix::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let bad: [&[u8]; 6] = [
        b"\xff",
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
        // Truncated at the end.
        b"abc\xe2\x82",
        b"\xed\xbf\xbf",
    ];
    for b in bad {
        assert_eq!(
            inbound_close(&[m(true, TEXT, b)]).await,
            Some(1007),
            "{b:?} whole"
        );
        assert_eq!(
            inbound_close(&[m(false, TEXT, &b[..1]), m(true, CONT, &b[1..])]).await,
            Some(1007),
            "{b:?} in fragments"
        );
    }
    // Invalid in the first fragment: refused whatever follows.
    assert_eq!(
        inbound_close(&[m(false, TEXT, b"ok \xff"), m(false, CONT, b"more")]).await,
        Some(1007)
    );
    // Truncated at the end of a fragmented message.
    assert_eq!(
        inbound_close(&[m(false, TEXT, b"\xe2"), m(true, CONT, b"\x82")]).await,
        Some(1007)
    );
}

// ----- close codes -----------------------------------------------------------

#[actix::test]
async fn valid_close_codes_are_echoed() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let (a, seen) = inbound_answer(&[m(true, CLOSE, &close_payload(code, b"reason"))]).await;
        assert_eq!(a.code, Some(code), "code {code}");
        until("the owner told", || seen.lock().unwrap().closed).await;
    }
    // An empty close, and one with a UTF-8 reason.
    assert_eq!(inbound_close(&[m(true, CLOSE, b"")]).await, Some(1000));
    assert_eq!(
        inbound_close(&[m(true, CLOSE, &close_payload(1000, "κόσμε".as_bytes()))]).await,
        Some(1000)
    );
}

#[actix::test]
async fn invalid_close_codes_are_a_protocol_error() {
    for code in [
        0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        // 1012-1014 are registered since RFC 6455; a peer may send them.
        let expected = if (1012..=1014).contains(&code) {
            code
        } else {
            1002
        };
        assert_eq!(
            inbound_close(&[m(true, CLOSE, &close_payload(code, b""))]).await,
            Some(expected),
            "code {code}"
        );
    }
}

#[actix::test]
async fn a_one_byte_close_payload_is_a_protocol_error() {
    assert_eq!(inbound_close(&[m(true, CLOSE, b"\x03")]).await, Some(1002));
}

#[actix::test]
async fn a_close_reason_that_is_not_utf8_closes_with_1007() {
    assert_eq!(
        inbound_close(&[m(
            true,
            CLOSE,
            &close_payload(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"
            )
        )])
        .await,
        Some(1007)
    );
    assert_eq!(
        inbound_close(&[m(true, CLOSE, &close_payload(1000, b"\xff"))]).await,
        Some(1007)
    );
}

// ----- limits ----------------------------------------------------------------

#[actix::test]
async fn a_message_over_the_limit_closes_with_1009() {
    assert_eq!(
        inbound_close(&[m(true, TEXT, &vec![b'a'; MAX + 1])]).await,
        Some(1009),
        "one frame"
    );
    assert_eq!(
        inbound_close(&[
            m(false, TEXT, &vec![b'a'; MAX / 2]),
            m(false, CONT, &vec![b'a'; MAX / 2]),
            m(true, CONT, b"a"),
        ])
        .await,
        Some(1009),
        "in fragments"
    );
    // Exactly the limit is fine.
    let (a, seen) = inbound_answer(&[
        m(true, TEXT, &vec![b'a'; MAX]),
        m(true, CLOSE, &close_payload(1000, b"")),
    ])
    .await;
    assert_eq!(a.code, Some(1000));
    until("the text", || texts(&seen).len() == 2).await;
}

// ----- the outbound transport (awc) against a scripted server ----------------

/// A scripted WebSocket server: answers one upgrade on `listener` and hands
/// back the socket.
async fn scripted_server(listener: TcpListener) -> TcpStream {
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
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    );
    sock.write_all(response.as_bytes()).await.expect("write");
    sock
}

/// An outbound transport to a scripted server; what the owner saw, and the
/// server's end of the socket.
async fn dial() -> (Arc<Mutex<Seen>>, Addr<AwcTransport>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = actix::spawn(scripted_server(listener));
    let (_, framed) = awc::Client::new()
        .ws(format!("ws://{addr}/ws"))
        .max_frame_size(MAX)
        .connect()
        .await
        .expect("the handshake completes");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let owner = Owner(seen.clone()).start().recipient();
    let transport = AwcTransport::start(framed, owner, MAX);
    let sock = server.await.expect("the server task");
    (seen, transport, sock)
}

/// Server frames (unmasked) to a fresh outbound transport; its answer.
async fn outbound_answer(frames: &[Vec<u8>]) -> (Answer, Arc<Mutex<Seen>>) {
    let (seen, _transport, mut server) = dial().await;
    let a = answer(&mut server, frames, Codec::new()).await;
    (a, seen)
}

fn s(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    raw(fin, op, payload, false)
}

#[actix::test]
async fn an_outbound_link_answers_pings_between_fragments_and_echoes_a_valid_close() {
    let (a, seen) = outbound_answer(&[
        s(false, TEXT, "caf".as_bytes()),
        s(true, PING, b"between"),
        s(true, CONT, "é".as_bytes()),
        s(true, CLOSE, &close_payload(4000, b"bye")),
    ])
    .await;
    assert_eq!(a.pongs, [Bytes::from_static(b"between")]);
    assert_eq!(a.code, Some(4000));
    until("the owner told", || seen.lock().unwrap().closed).await;
    assert_eq!(texts(&seen), ["café"]);
}

#[actix::test]
async fn an_outbound_link_closes_with_the_rfc_6455_codes() {
    let cases: Vec<(&str, Vec<Vec<u8>>, u16)> = vec![
        ("reserved bits", vec![s(true, 0x40 | TEXT, b"x")], 1002),
        ("reserved opcode", vec![s(true, 0x3, b"")], 1002),
        ("reserved control opcode", vec![s(true, 0xB, b"")], 1002),
        ("continuation first", vec![s(true, CONT, b"x")], 1002),
        (
            "text inside a message",
            vec![s(false, TEXT, b"a"), s(true, TEXT, b"b")],
            1002,
        ),
        ("ping over 125", vec![s(true, PING, &[b'x'; 126])], 1002),
        ("fragmented ping", vec![s(false, PING, b"x")], 1002),
        (
            "close code 1005",
            vec![s(true, CLOSE, &close_payload(1005, b""))],
            1002,
        ),
        (
            "close code 5000",
            vec![s(true, CLOSE, &close_payload(5000, b""))],
            1002,
        ),
        ("1-byte close", vec![s(true, CLOSE, b"\x03")], 1002),
        (
            "close reason not UTF-8",
            vec![s(true, CLOSE, &close_payload(1000, b"\xff"))],
            1007,
        ),
        ("text not UTF-8", vec![s(true, TEXT, b"\xc0\xaf")], 1007),
        (
            "split text not UTF-8",
            vec![s(false, TEXT, b"\xe2\x82"), s(true, CONT, b"(")],
            1007,
        ),
        ("too big", vec![s(true, TEXT, &vec![b'a'; MAX + 1])], 1009),
        ("masked", vec![raw(true, TEXT, b"x", true)], 1002),
    ];
    for (what, frames, code) in cases {
        let (a, seen) = outbound_answer(&frames).await;
        assert_eq!(a.code, Some(code), "{what}");
        until("the owner told", || seen.lock().unwrap().closed).await;
        assert!(texts(&seen).is_empty(), "{what}");
    }
}
