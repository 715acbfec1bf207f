//! [`AwcTransport`]: an outbound link made with awc, read through the same frame guard.

use std::time::Instant;

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;

use super::frames::short_reason;
use super::frames::{Failure, Fragments, WsFrames};
use super::socket::ReadChunks;
use super::*;

/// The write half of an awc WebSocket.
pub(super) type AwcSink =
    FlushOnClose<actix_codec::Framed<tokio::io::WriteHalf<awc::BoxedSocket>, awc::ws::Codec>>;

/// A sink that writes what it holds before it closes. actix-codec's
/// `Framed` shuts its socket down on close without writing the frames still
/// in its buffer, so a close frame queued just before never left.
pub(super) struct FlushOnClose<S>(S);

impl<S, I> futures_util::Sink<I> for FlushOnClose<S>
where
    S: futures_util::Sink<I> + Unpin,
{
    type Error = S::Error;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        std::pin::Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: std::pin::Pin<&mut Self>, item: I) -> Result<(), S::Error> {
        std::pin::Pin::new(&mut self.0).start_send(item)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        futures_util::ready!(std::pin::Pin::new(&mut self.0).poll_flush(cx))?;
        std::pin::Pin::new(&mut self.0).poll_close(cx)
    }
}

/// An outbound WebSocket made with awc.
pub struct AwcTransport {
    sink: SinkWrite<awc::ws::Message, AwcSink>,
    owner: Recipient<Inbound>,
    fragments: Fragments,
    max_frame: usize,
    /// Our close frame is on its way: nothing more is read or written.
    closing: bool,
    /// When the server last sent a frame (of any kind).
    last_heard: Instant,
}

impl AwcTransport {
    /// Wrap a connected awc socket; frames go to `owner`. awc's own decoder
    /// checks a frame's length only once the whole frame has arrived, so the
    /// socket is read as inbound ones are: through [`FrameGuard`], which
    /// refuses a frame announcing more than `max_frame` at its header.
    pub fn start(
        framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
        owner: Recipient<Inbound>,
        max_frame: usize,
    ) -> Addr<AwcTransport> {
        let parts = framed.into_parts();
        let (rd, wr) = tokio::io::split(parts.io);
        // Bytes awc read past the handshake response are the first frames.
        let chunks = ReadChunks {
            io: rd,
            early: Some(parts.read_buf.freeze()),
        };
        let frames = WsFrames::client(FrameGuard::new(chunks, max_frame), max_frame);
        let mut write = actix_codec::FramedParts::new(wr, parts.codec);
        write.write_buf = parts.write_buf;
        let sink = FlushOnClose(actix_codec::Framed::from_parts(write));
        AwcTransport::create(move |ctx| {
            ctx.add_stream(frames);
            AwcTransport {
                sink: SinkWrite::new(sink, ctx),
                owner,
                fragments: Fragments::default(),
                max_frame,
                closing: false,
                last_heard: Instant::now(),
            }
        })
    }

    /// Send a close frame, then stop once it is written (the sink's
    /// `finished`), or after [`CLOSE_GRACE`] if the peer does not take it.
    /// Stopping at once would drop the frame unwritten.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        let _ = self
            .sink
            .write(awc::ws::Message::Close(Some(awc::ws::CloseReason {
                code: awc::ws::CloseCode::from(code),
                description: Some(short_reason(reason)),
            })));
        self.sink.close();
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }
}

impl Actor for AwcTransport {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.owner.do_send(Inbound::Closed);
    }
}

impl WriteHandler<awc::error::WsProtocolError> for AwcTransport {}

impl StreamHandler<Result<awc::ws::Frame, Failure>> for AwcTransport {
    fn handle(&mut self, msg: Result<awc::ws::Frame, Failure>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if self.closing {
            return;
        }
        match receive(&mut self.fragments, self.max_frame, msg) {
            Received::Nothing => {}
            Received::Text(text) => self.owner.do_send(Inbound::Text(text)),
            Received::Binary => self.owner.do_send(Inbound::Binary),
            Received::Ping(payload) => {
                let _ = self.sink.write(awc::ws::Message::Pong(payload));
                self.owner.do_send(Inbound::Alive);
            }
            Received::Pong => self.owner.do_send(Inbound::Alive),
            Received::Closed(reason) => {
                log::info!("outbound link: the server closed it ({reason:?})");
                // Answer with a close frame (RFC 6455 §5.5.1), as inbound
                // connections do.
                let code = reason.map_or(close::NORMAL, |r| u16::from(r.code));
                self.close(ctx, code, "");
            }
            Received::Refuse(code, reason) => self.close(ctx, code, reason),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // While closing, the sink's end (or the grace timer) stops us.
        if !self.closing {
            log::info!("outbound link: the server closed the stream");
            ctx.stop();
        }
    }
}

impl Handler<Wire> for AwcTransport {
    type Result = ();

    fn handle(&mut self, msg: Wire, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        match msg {
            Wire::Text(text) => {
                if self
                    .sink
                    .write(awc::ws::Message::Text(bytestring::ByteString::from(&*text)))
                    .is_err()
                {
                    log::info!("outbound link: write failed; closing");
                    ctx.stop();
                }
            }
            Wire::Close(code, reason) => self.close(ctx, code, &reason),
            Wire::KeepAlive(silence) if self.last_heard.elapsed() > silence => {
                log::info!("outbound link: silent for over {silence:?}; closing it");
                self.close(ctx, close::AWAY, "no answer to pings");
            }
            Wire::KeepAlive(_) => {
                let _ = self.sink.write(awc::ws::Message::Ping(bytes::Bytes::new()));
            }
        }
    }
}
