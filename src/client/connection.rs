//! The connection to the server: dialling (`ws://` or `wss://`), the
//! WebSocket, the writer task that owns its write half, the reader task that
//! hands every frame to [`receiving`], and requests waiting
//! for the server's answers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use socp_protocol::{Envelope, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use super::{fail, receiving, ClientConfig, Failure, Shared};
use crate::url::ws_url;

/// How long to wait for the server's answer to a request.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest frame the client reads or accepts.
pub(crate) const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// What the writer task writes.
pub(crate) enum Outgoing {
    Text(String),
    Pong(bytes::Bytes),
    Close,
}

/// The writer task's queue: every frame the client sends goes through it.
pub(crate) type Sink = mpsc::UnboundedSender<Outgoing>;

/// An open connection: its URL, the writer's queue, why the server closed it.
pub(crate) struct Connection {
    /// The server's WebSocket URL.
    pub(crate) url: String,
    /// The writer task's queue.
    pub(crate) tx: Sink,
    /// Why the connection ended, once it has.
    pub(crate) closed: oneshot::Receiver<String>,
    writer: actix_web::rt::task::JoinHandle<()>,
}

impl Connection {
    /// Say goodbye (a Close frame) and give the writer two seconds to send it.
    pub(crate) async fn close(self) {
        let _ = self.tx.send(Outgoing::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
    }
}

/// Dial the server of `config` and start the writer and the reader (which
/// hands every frame to [`receiving::handle_frame`] with `shared`). On
/// failure, why, with a hint for the usual TLS mistakes.
pub(crate) async fn open(config: &ClientConfig, shared: &Shared) -> Result<Connection, String> {
    let url = ws_url(config.tls.is_some(), &config.host, config.port);
    let client = ws_client(config.tls.as_ref(), Duration::from_secs(15));
    let framed = match client
        .ws(url.as_str())
        .max_frame_size(MAX_FRAME_BYTES)
        .connect()
        .await
    {
        Ok((_, framed)) => framed,
        Err(e) => {
            let e = e.to_string();
            // rustls says "invalid peer certificate: UnknownIssuer" and the like.
            let hint = if config.tls.is_some() && e.contains("certificate") {
                " (the server's TLS certificate was refused: if a private CA signed it, \
                 give --ca FILE with that CA)"
            } else if config.tls.is_none() && e.contains("HTTP version") {
                // A TLS server answers an HTTP request with a TLS alert.
                " (does the server use TLS? try --server wss://HOST:PORT)"
            } else {
                ""
            };
            return Err(format!("cannot connect to {url}: {e}{hint}"));
        }
    };
    let (mut sink, mut stream) = framed.split();
    let number = {
        let mut c = shared.borrow_mut();
        c.connection += 1;
        c.connection
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    // The writer: the only owner of the socket's write half.
    let writer = actix_web::rt::spawn(async move {
        while let Some(item) = rx.recv().await {
            let msg = match item {
                Outgoing::Text(text) => awc::ws::Message::Text(text.into()),
                Outgoing::Pong(p) => awc::ws::Message::Pong(p),
                Outgoing::Close => {
                    let _ = sink
                        .send(awc::ws::Message::Close(Some(awc::ws::CloseReason {
                            code: awc::ws::CloseCode::Normal,
                            description: Some("bye".into()),
                        })))
                        .await;
                    break;
                }
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });

    // The reader: every frame from the server, in order.
    let reader_state = shared.clone();
    let reader_tx = tx.clone();
    let (closed_tx, closed) = oneshot::channel::<String>();
    actix_web::rt::spawn(async move {
        let reason = loop {
            match stream.next().await {
                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                    receiving::handle_frame(&reader_state, &reader_tx, &bytes).await;
                }
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    let _ = reader_tx.send(Outgoing::Pong(p));
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    break format!(
                        "server closed the connection{}",
                        reason
                            .map(|r| format!(
                                " ({:?} {})",
                                r.code,
                                r.description.unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    )
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("connection error: {e}"),
                None => break "connection closed".to_owned(),
            }
        };
        // Requests still waiting for an answer get none on this connection:
        // they fail now (the connection is lost), not after their timeout.
        // Those sent over a newer connection wait on (an old connection
        // closing once its successor was open failed the new hello).
        reader_state
            .borrow_mut()
            .waiters
            .retain(|w| w.connection != number);
        let _ = closed_tx.send(reason);
    });
    Ok(Connection {
        url,
        tx,
        closed,
        writer,
    })
}

/// An awc client for the WebSocket handshake: plain, or TLS with `tls` (whose
/// roots decide whom we trust; [`client_tls`](crate::config::client_tls)
/// builds it with ALPN `http/1.1` only, as socp never speaks HTTP/2).
fn ws_client(tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> awc::Client {
    let builder = awc::Client::builder().timeout(timeout);
    match tls {
        Some(config) => builder
            .connector(awc::Connector::new().rustls_0_23(Arc::clone(config)))
            .finish(),
        None => builder.finish(),
    }
}

/// A request waiting for the server's answer.
pub(crate) struct Waiter {
    /// Whether a frame is the answer.
    pub(crate) want: fn(&Envelope) -> bool,
    /// Where the answer goes.
    pub(crate) tx: oneshot::Sender<Envelope>,
    /// The connection the request went over.
    pub(crate) connection: u64,
}

/// Register a waiter before sending the request it answers.
pub(crate) fn expect(shared: &Shared, want: fn(&Envelope) -> bool) -> oneshot::Receiver<Envelope> {
    let (tx, rx) = oneshot::channel();
    let mut c = shared.borrow_mut();
    let connection = c.connection;
    c.waiters.push(Waiter {
        want,
        tx,
        connection,
    });
    rx
}

/// The server's answer to a request about `what`: an ERROR (or none within
/// [`ANSWER_TIMEOUT`], or the connection closing) is a failure in words.
pub(crate) async fn answer(
    rx: oneshot::Receiver<Envelope>,
    what: &str,
) -> Result<Envelope, Failure> {
    answer_within(rx, what, ANSWER_TIMEOUT).await
}

/// [`answer`], waiting at most `wait`.
pub(crate) async fn answer_within(
    rx: oneshot::Receiver<Envelope>,
    what: &str,
    wait: Duration,
) -> Result<Envelope, Failure> {
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(env)) if env.msg_type() == "ERROR" => {
            let code = env.payload()["code"].as_str().unwrap_or("ERROR").to_owned();
            let detail = env.payload()["detail"].as_str().unwrap_or("").to_owned();
            let words = ErrorCode::parse(&code).describe().to_owned();
            Err(Failure {
                code,
                detail: format!(
                    "{what}: {words}{}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({detail})")
                    }
                ),
            })
        }
        Ok(Ok(env)) => Ok(env),
        Ok(Err(_)) => Err(fail("CLOSED", format!("{what}: connection closed"))),
        Err(_) => Err(fail(
            "TIMEOUT",
            format!("{what}: no answer from the server"),
        )),
    }
}

/// Queue one frame for the writer.
pub(crate) fn send(tx: &Sink, env: &Envelope) -> Result<(), Failure> {
    tx.send(Outgoing::Text(env.to_json()))
        .map_err(|_| fail("CLOSED", "the connection is closed"))
}
