//! A scripted WebSocket server on a loopback port, standing in for another
//! server or an introducer: it answers the upgrade itself, reads the masked
//! frames a client writes and writes unmasked ones, so a test sees exactly
//! what our side sent and answers as it likes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, OpCode, Parser};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener on 127.0.0.1 and its port.
pub async fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    (listener, port)
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// Accept connections on `listener` for as long as the test runs, counting
/// them, and hand each to `serve` on its own task. The count goes up as the
/// connection is accepted, before `serve` runs.
pub fn accept_all<F, Fut>(listener: TcpListener, serve: F) -> Arc<AtomicUsize>
where
    F: Fn(TcpStream) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    actix::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            actix::spawn(serve(sock));
        }
    });
    accepted
}

/// The server's end of one upgraded WebSocket connection.
pub struct WsConn {
    sock: TcpStream,
    buf: BytesMut,
    codec: Codec,
    /// The code of the close frame the client sent (1005 without a code);
    /// `None` while none arrived (or the socket just ended).
    pub close_code: Option<u16>,
}

impl WsConn {
    /// Answer the upgrade request on `sock`; `None` if the client went away
    /// or sent no WebSocket key.
    pub async fn upgrade(mut sock: TcpStream) -> Option<WsConn> {
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            request.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&request[..end]).into_owned();
        let key = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })?;
        let accept = actix_http::ws::hash_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            String::from_utf8_lossy(&accept)
        );
        sock.write_all(response.as_bytes()).await.ok()?;
        Some(WsConn {
            sock,
            buf: BytesMut::from(&request[end..]),
            codec: Codec::new().max_size(4 << 20),
            close_code: None,
        })
    }

    /// The client's next text frame (pings and other frames skipped); `None`
    /// once it closes or the socket ends.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Frame::Text(t))) => return Some(String::from_utf8_lossy(&t).into_owned()),
                Ok(Some(Frame::Close(reason))) => {
                    self.close_code = Some(reason.map_or(1005, |r| u16::from(r.code)));
                    return None;
                }
                Err(_) => return None,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Write a text frame (unmasked, as servers do).
    pub async fn send_text(&mut self, text: &str) {
        let mut out = BytesMut::new();
        Parser::write_message(&mut out, text.as_bytes(), OpCode::Text, true, false);
        self.sock
            .write_all(&out)
            .await
            .expect("write to the client");
    }
}
