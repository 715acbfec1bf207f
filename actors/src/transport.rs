//! WebSocket transports, and the ordered outbound queue sessions and links share.
//!
//! A transport owns one socket and nothing else: it reassembles fragmented
//! messages under a size cap, checks UTF-8, answers pings, and hands complete
//! text frames to its owner (a [`ClientSession`](crate::session::ClientSession)
//! or [`PeerLink`](crate::peer::PeerLink)) as [`Inbound`]; the owner writes with
//! [`Wire`]. Inbound connections arrive on the server's endpoint
//! ([`WsTransport`]: the HTTP layer answers the upgrade and hands the socket
//! over) and are bound to an owner by their first frame; outbound links are
//! made with awc ([`AwcTransport`]: awc's handshake, then the same guarded
//! frame reader as inbound connections).

use std::time::Duration;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};

use crate::crypto::{FrameText, SignedFrame, Signing};
use crate::router::Outbound;

/// WebSocket close codes we use.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (shutdown, heartbeat timeout).
    pub const AWAY: u16 = 1001;
    /// Unsupported data (a binary frame before identification).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (text that is not UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (identification failed or timed out, abuse).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// What a transport hands its owner.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum Inbound {
    /// One complete text message.
    Text(FrameText),
    /// A binary message (not part of the protocol).
    Binary,
    /// The socket closed or failed; the owner should stop.
    Closed,
}

/// What an owner tells its transport.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Wire {
    /// Write one text message.
    Text(FrameText),
    /// Close with a code and reason, then stop.
    Close(u16, String),
}

/// Frames waiting for their signatures, written strictly in queue order.
///
/// Signing runs on the crypto pool as soon as a frame is made; the queue
/// only waits for the frame at its front (one waiting future per queue,
/// whatever the burst), writes every frame behind it that is already signed,
/// and gives its memory back once empty.
pub struct OutQueue {
    queue: VecDeque<Queued>,
    transport: Recipient<Wire>,
    /// A future is waiting for the front frame's signature.
    waiting: bool,
    /// Set once a close is released: nothing more is written.
    closed: bool,
    /// Set once the first frame is written: until then nothing overtakes
    /// (a link's hello must be its first frame, whatever else is urgent).
    started: bool,
}

enum Queued {
    Frame(SignedFrame),
    Close(u16, String),
}

/// An actor with an [`OutQueue`].
pub trait HasOutQueue: Actor<Context = Context<Self>> {
    /// The queue.
    fn out_queue(&mut self) -> &mut OutQueue;
}

impl OutQueue {
    /// A queue writing to `transport`.
    pub fn new(transport: Recipient<Wire>) -> Self {
        OutQueue {
            queue: VecDeque::new(),
            transport,
            waiting: false,
            closed: false,
            started: false,
        }
    }

    /// Queue a frame or a close; it is written after everything queued before.
    pub fn push<A: HasOutQueue>(ctx: &mut Context<A>, act: &mut A, out: Outbound) {
        let queue = act.out_queue();
        if queue.closed {
            return;
        }
        let item = match out {
            Outbound::Urgent(frame) if queue.started => return Self::urgent(ctx, act, frame),
            Outbound::Urgent(frame) | Outbound::Frame(frame) => Queued::Frame(frame),
            Outbound::Close(code, reason) => Queued::Close(code, reason),
        };
        queue.queue.push_back(item);
        Self::flush(ctx, act);
    }

    /// Write `frame` as soon as it is signed, whatever is still queued (once
    /// the first frame is out).
    fn urgent<A: HasOutQueue>(ctx: &mut Context<A>, act: &mut A, frame: SignedFrame) {
        match frame.peek() {
            Some(text) => act.out_queue().transport.do_send(Wire::Text(text)),
            None => {
                ctx.spawn(frame.text().into_actor(act).map(|text, act: &mut A, _| {
                    let queue = act.out_queue();
                    if let (Some(text), false) = (text, queue.closed) {
                        queue.transport.do_send(Wire::Text(text));
                    }
                }));
            }
        }
    }

    /// Write what is ready at the front; wait for the first frame still
    /// being signed.
    fn flush<A: HasOutQueue>(ctx: &mut Context<A>, act: &mut A) {
        let queue = act.out_queue();
        if queue.waiting {
            return;
        }
        while let Some(front) = queue.queue.front() {
            match front {
                Queued::Frame(frame) => match frame.state() {
                    Signing::Done(text) => {
                        queue.queue.pop_front();
                        queue.started = true;
                        queue.transport.do_send(Wire::Text(text));
                    }
                    // Logged by the pool; the frames behind it go on.
                    Signing::Failed => {
                        queue.queue.pop_front();
                    }
                    Signing::Running => {
                        queue.waiting = true;
                        let wait = frame.text();
                        ctx.spawn(wait.into_actor(act).map(|_, act: &mut A, ctx| {
                            act.out_queue().waiting = false;
                            Self::flush(ctx, act);
                        }));
                        return;
                    }
                },
                Queued::Close(..) => {
                    if let Some(Queued::Close(code, reason)) = queue.queue.pop_front() {
                        queue.transport.do_send(Wire::Close(code, reason));
                    }
                    queue.closed = true;
                    queue.queue = VecDeque::new();
                    ctx.stop();
                    return;
                }
            }
        }
        // Give back what a burst made the queue grow to.
        if queue.queue.capacity() > 16 {
            queue.queue = VecDeque::new();
        }
    }

    /// Frames queued and not yet written.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

/// Received frames, handled one at a time in arrival order: a frame whose
/// checks run off the loop (crypto pool, database) holds the next ones back.
#[derive(Default)]
pub struct InQueue {
    backlog: VecDeque<FrameText>,
    /// A frame's checks are running off the loop.
    busy: bool,
}

/// An actor that handles its frames through an [`InQueue`].
pub trait InOrder: Actor<Context = Context<Self>> {
    /// The queue.
    fn in_queue(&mut self) -> &mut InQueue;
    /// Handle one frame (may call [`InQueue::wait_for`]).
    fn process(&mut self, ctx: &mut Context<Self>, text: FrameText);
}

impl InQueue {
    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.backlog.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    /// Queue a frame and handle what can be handled now.
    pub fn push<A: InOrder>(ctx: &mut Context<A>, act: &mut A, text: FrameText) {
        act.in_queue().backlog.push_back(text);
        Self::drain(ctx, act);
    }

    fn drain<A: InOrder>(ctx: &mut Context<A>, act: &mut A) {
        while !act.in_queue().busy {
            let Some(text) = act.in_queue().backlog.pop_front() else {
                return;
            };
            act.process(ctx, text);
        }
    }

    /// Run `fut` off the loop; later frames wait until `then` has run.
    pub fn wait_for<A, F, T>(ctx: &mut Context<A>, act: &mut A, fut: F, then: T)
    where
        A: InOrder,
        F: std::future::Future + 'static,
        T: FnOnce(&mut A, &mut Context<A>, F::Output) + 'static,
    {
        act.in_queue().busy = true;
        ctx.spawn(fut.into_actor(act).map(move |out, act: &mut A, ctx| {
            // Not busy before `then`: if `then` waits for something else in
            // turn, it sets `busy` again and the next frame keeps waiting.
            act.in_queue().busy = false;
            then(act, ctx, out);
            Self::drain(ctx, act);
        }));
    }
}

/// Reassembles fragmented messages under a size cap.
#[derive(Default)]
struct Fragments {
    /// The message being reassembled: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
}

/// The result of feeding a frame to [`Fragments`].
enum Assembled {
    Incomplete,
    Text(Bytes),
    Binary,
    TooBig,
    Protocol,
}

impl Fragments {
    fn feed(&mut self, item: actix_http::ws::Item, cap: usize) -> Assembled {
        match item {
            actix_http::ws::Item::FirstText(b) | actix_http::ws::Item::FirstBinary(b)
                if self.partial.is_some() =>
            {
                let _ = b;
                Assembled::Protocol
            }
            actix_http::ws::Item::FirstText(b) => self.start(true, b, cap),
            actix_http::ws::Item::FirstBinary(b) => self.start(false, b, cap),
            actix_http::ws::Item::Continue(b) => match &mut self.partial {
                None => Assembled::Protocol,
                Some((_, buf)) if buf.len() + b.len() > cap => {
                    self.partial = None;
                    Assembled::TooBig
                }
                Some((_, buf)) => {
                    buf.extend_from_slice(&b);
                    Assembled::Incomplete
                }
            },
            actix_http::ws::Item::Last(b) => match self.partial.take() {
                None => Assembled::Protocol,
                Some((_, buf)) if buf.len() + b.len() > cap => Assembled::TooBig,
                Some((is_text, mut buf)) => {
                    buf.extend_from_slice(&b);
                    if is_text {
                        Assembled::Text(buf.freeze())
                    } else {
                        Assembled::Binary
                    }
                }
            },
        }
    }

    fn start(&mut self, is_text: bool, b: Bytes, cap: usize) -> Assembled {
        if b.len() > cap {
            return Assembled::TooBig;
        }
        let mut buf = BytesMut::with_capacity(b.len().min(64 * 1024));
        buf.extend_from_slice(&b);
        self.partial = Some((is_text, buf));
        Assembled::Incomplete
    }
}

/// Decides what owns an inbound connection, from its first frame.
pub trait Acceptor: Unpin + 'static {
    /// Bind the connection whose first text frame is `first`: start its owner
    /// (which gets `first` too) and return where to send later frames, or the
    /// close code and reason to refuse it.
    fn accept(
        &self,
        first: FrameText,
        transport: Recipient<Wire>,
    ) -> Result<Recipient<Inbound>, (u16, String)>;

    /// Where closes are counted.
    fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        None
    }
}

/// What a received WebSocket frame asks of its transport.
enum Received {
    /// Nothing to do (a pong, or a fragment of a message still arriving).
    Nothing,
    /// A complete text message.
    Text(FrameText),
    /// A complete binary message.
    Binary,
    /// A ping to answer.
    Ping(Bytes),
    /// The peer closed the socket.
    Closed(Option<CloseReason>),
    /// Close with this code and reason.
    Refuse(u16, &'static str),
}

/// Classify one decoded frame (both transports share this).
fn receive(
    fragments: &mut Fragments,
    max_frame: usize,
    frame: Result<Frame, ProtocolError>,
) -> Received {
    let text = |bytes: Bytes| match std::str::from_utf8(&bytes) {
        Ok(text) => Received::Text(FrameText::from(text)),
        Err(_) => Received::Refuse(close::INVALID_DATA, "text is not UTF-8"),
    };
    match frame {
        Ok(Frame::Text(bytes)) => text(bytes),
        Ok(Frame::Binary(_)) => Received::Binary,
        Ok(Frame::Continuation(item)) => match fragments.feed(item, max_frame) {
            Assembled::Incomplete => Received::Nothing,
            Assembled::Text(bytes) => text(bytes),
            Assembled::Binary => Received::Binary,
            Assembled::TooBig => Received::Refuse(close::TOO_BIG, "message too big"),
            Assembled::Protocol => Received::Refuse(close::POLICY, "bad fragmentation"),
        },
        Ok(Frame::Ping(payload)) => Received::Ping(payload),
        Ok(Frame::Pong(_)) => Received::Nothing,
        Ok(Frame::Close(reason)) => Received::Closed(reason),
        Err(ProtocolError::Overflow) => Received::Refuse(close::TOO_BIG, "message too big"),
        Err(e) => {
            log::debug!("WebSocket protocol error: {e}");
            Received::Refuse(close::POLICY, "protocol error")
        }
    }
}

/// Bytes of frames a connection may leave unread before it is closed as
/// too slow (a reader that never reads must not grow the server without
/// bound).
pub const MAX_UNREAD_BYTES: usize = 64 << 20;

/// What an inbound connection has still to write, in order.
enum Out {
    Text(FrameText),
    Pong(Bytes),
    Close(u16, String),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Text(t) => t.len(),
            Out::Pong(p) => p.len(),
            Out::Close(_, r) => r.len() + 2,
        }
    }
}

/// Frames waiting for the socket, shared by an inbound transport (which
/// queues them) and its [`Writer`] (which encodes them only as the socket
/// takes the previous ones). The frames are shared texts: a burst to a slow
/// reader costs a pointer per frame, and nothing is kept once the queue is
/// empty.
#[derive(Default)]
struct Outgoing {
    frames: VecDeque<Out>,
    bytes: usize,
    /// Nothing is queued after the frames already here (closed, or the
    /// transport stopped, or the connection is gone).
    finished: bool,
    waker: Option<std::task::Waker>,
}

impl Outgoing {
    fn push(&mut self, out: Out) {
        if self.finished {
            return;
        }
        if matches!(out, Out::Close(..)) {
            self.finished = true;
        }
        self.bytes += out.len();
        self.frames.push_back(out);
        self.wake();
    }

    fn finish(&mut self) {
        self.finished = true;
        self.wake();
    }

    /// Drop every queued frame (the close that follows is written at once).
    fn discard(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
    }

    /// The connection is gone: drop everything, queue nothing more.
    fn abandon(&mut self) {
        self.discard();
        self.finish();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Encode one queued frame (server side: unmasked).
fn encode(frame: Out, buf: &mut BytesMut) {
    match frame {
        Out::Text(text) => Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false),
        Out::Pong(payload) => Parser::write_message(buf, payload, OpCode::Pong, true, false),
        Out::Close(code, reason) => Parser::write_close(
            buf,
            Some(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason),
            }),
            false,
        ),
    }
}

/// Bytes encoded ahead of one socket write.
const WRITE_CHUNK: usize = 8 * 1024;

/// Writes an inbound connection's queued frames to its socket: a few
/// kilobytes encoded at a time, only as fast as the socket takes them, and
/// no buffer kept while there is nothing to write. Ends (shutting the write
/// side down) once the queue is finished and empty, or the socket fails.
struct Writer<W> {
    io: W,
    out: Rc<RefCell<Outgoing>>,
    buf: BytesMut,
}

impl<W: tokio::io::AsyncWrite + Unpin> std::future::Future for Writer<W> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::pin::Pin;
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.buf.is_empty() {
                let mut out = this.out.borrow_mut();
                while this.buf.len() < WRITE_CHUNK {
                    let Some(frame) = out.frames.pop_front() else {
                        break;
                    };
                    out.bytes = out.bytes.saturating_sub(frame.len());
                    encode(frame, &mut this.buf);
                }
                if this.buf.is_empty() {
                    // Give back what a burst made the queue grow to.
                    if out.frames.capacity() > 16 {
                        out.frames = VecDeque::new();
                    }
                    if out.finished {
                        drop(out);
                        return Pin::new(&mut this.io).poll_shutdown(cx).map(|_| ());
                    }
                    if !out.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        out.waker = Some(cx.waker().clone());
                    }
                    drop(out);
                    // A TLS stream may hold the last bytes until flushed.
                    return match Pin::new(&mut this.io).poll_flush(cx) {
                        Poll::Ready(Err(_)) => {
                            this.out.borrow_mut().abandon();
                            Poll::Ready(())
                        }
                        _ => Poll::Pending,
                    };
                }
            }
            match Pin::new(&mut this.io).poll_write(cx, &this.buf) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    bytes::Buf::advance(&mut this.buf, n);
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                }
                Poll::Ready(_) => {
                    // The connection is gone: queue nothing more for it.
                    this.out.borrow_mut().abandon();
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The read half of a connection as a stream of byte chunks, starting with
/// whatever the HTTP layer had already read past the upgrade request (or
/// awc past the upgrade response). Reads into a stack buffer: nothing is
/// kept between reads.
struct ReadChunks<R> {
    io: R,
    early: Option<Bytes>,
}

impl<R: tokio::io::AsyncRead + Unpin> futures_util::Stream for ReadChunks<R> {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(early) = self.early.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(early)));
        }
        let mut chunk = [0u8; 8 * 1024];
        let mut read = tokio::io::ReadBuf::new(&mut chunk);
        match std::pin::Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Bytes::copy_from_slice(read.filled())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Decodes the frames of a byte stream, keeping no buffer between
/// frames.
struct WsFrames<S> {
    inner: S,
    buf: BytesMut,
    codec: Codec,
    done: bool,
}

impl<S> WsFrames<S> {
    /// Frames a client sent us (masked).
    fn new(inner: S, max_frame: usize) -> Self {
        Self::with_codec(inner, Codec::new().max_size(max_frame))
    }

    /// Frames a server sent us, on a connection we opened (unmasked).
    fn client(inner: S, max_frame: usize) -> Self {
        Self::with_codec(inner, Codec::new().max_size(max_frame).client_mode())
    }

    fn with_codec(inner: S, codec: Codec) -> Self {
        WsFrames {
            inner,
            buf: BytesMut::new(),
            codec,
            done: false,
        }
    }
}

impl<S> futures_util::Stream for WsFrames<S>
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use actix_codec::Decoder;
        use actix_web::error::PayloadError;
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => {
                        if this.buf.is_empty() {
                            this.buf = BytesMut::new();
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.done = true;
                        this.buf = BytesMut::new();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(match e {
                        PayloadError::Overflow => ProtocolError::Overflow,
                        e => ProtocolError::Io(std::io::Error::other(e.to_string())),
                    })));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A close reason as it fits a control frame (at most 123 bytes).
fn short_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// An inbound WebSocket: unidentified until its first frame, then a
/// transport for a user session or a server link. The HTTP layer answers the
/// upgrade and hands over the socket; from then on the connection keeps no
/// read or write buffer between frames (see README, Performance).
pub struct WsTransport<A: Acceptor> {
    acceptor: A,
    owner: Option<Recipient<Inbound>>,
    fragments: Fragments,
    max_frame: usize,
    identify_within: Duration,
    peer: String,
    out: Rc<RefCell<Outgoing>>,
    max_unread: usize,
}

impl<A: Acceptor> WsTransport<A> {
    /// A transport for a connection from `peer` (address, for logs).
    pub fn new(acceptor: A, max_frame: usize, identify_within: Duration, peer: String) -> Self {
        WsTransport {
            acceptor,
            owner: None,
            fragments: Fragments::default(),
            max_frame,
            identify_within,
            peer,
            out: Rc::default(),
            max_unread: MAX_UNREAD_BYTES,
        }
    }

    /// Close the connection once more than `bytes` of frames wait for it
    /// (default [`MAX_UNREAD_BYTES`]).
    pub fn max_unread(mut self, bytes: usize) -> Self {
        self.max_unread = bytes;
        self
    }

    /// Run the transport over an upgraded connection `io` (the upgrade
    /// already answered); `early` holds bytes read past the upgrade request.
    pub fn start_io<T>(self, io: T, early: Bytes)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        actix::spawn(Writer {
            io: wr,
            out: Rc::clone(&self.out),
            buf: BytesMut::new(),
        });
        let max = self.max_frame;
        let chunks = ReadChunks {
            io: rd,
            early: Some(early),
        };
        WsTransport::create(move |ctx| {
            ctx.add_stream(WsFrames::new(FrameGuard::new(chunks, max), max));
            self
        });
    }

    fn write(&mut self, ctx: &mut Context<Self>, out: Out) {
        let behind = {
            let mut queue = self.out.borrow_mut();
            queue.push(out);
            queue.bytes > self.max_unread
        };
        if behind {
            log::warn!(
                "connection from {} left over {} bytes unread; closing it",
                self.peer,
                self.max_unread
            );
            self.out.borrow_mut().discard();
            self.close(ctx, close::POLICY, "too many frames left unread");
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        log::debug!("closing connection from {}: {code} {reason}", self.peer);
        if let Some(m) = self.acceptor.metrics() {
            m.inc(crate::metrics::family::CLOSES, &code.to_string());
        }
        self.out
            .borrow_mut()
            .push(Out::Close(code, short_reason(reason)));
        ctx.stop();
    }

    fn text(&mut self, ctx: &mut Context<Self>, text: FrameText) {
        match &self.owner {
            Some(owner) => owner.do_send(Inbound::Text(text)),
            None => match self.acceptor.accept(text, ctx.address().recipient()) {
                Ok(owner) => self.owner = Some(owner),
                Err((code, reason)) => {
                    log::info!("refused connection from {}: {reason}", self.peer);
                    self.close(ctx, code, &reason);
                }
            },
        }
    }
}

impl<A: Acceptor> Actor for WsTransport<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_later(self.identify_within, |act, ctx| {
            if act.owner.is_none() {
                log::info!("connection from {} did not identify in time", act.peer);
                act.close(ctx, close::POLICY, "identification timeout");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.out.borrow_mut().finish();
        if let Some(owner) = &self.owner {
            owner.do_send(Inbound::Closed);
        }
    }
}

impl<A: Acceptor> StreamHandler<Result<Frame, ProtocolError>> for WsTransport<A> {
    fn handle(&mut self, frame: Result<Frame, ProtocolError>, ctx: &mut Self::Context) {
        match receive(&mut self.fragments, self.max_frame, frame) {
            Received::Nothing => {}
            Received::Text(text) => self.text(ctx, text),
            Received::Binary => match &self.owner {
                Some(owner) => owner.do_send(Inbound::Binary),
                None => self.close(ctx, close::UNSUPPORTED, "binary frames are not accepted"),
            },
            Received::Ping(payload) => self.write(ctx, Out::Pong(payload)),
            Received::Closed(reason) => {
                let (code, text) = reason.map_or((close::NORMAL, String::new()), |r| {
                    (u16::from(r.code), r.description.unwrap_or_default())
                });
                self.out
                    .borrow_mut()
                    .push(Out::Close(code, short_reason(&text)));
                ctx.stop();
            }
            Received::Refuse(code, reason) => self.close(ctx, code, reason),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl<A: Acceptor> Handler<Wire> for WsTransport<A> {
    type Result = ();

    fn handle(&mut self, msg: Wire, ctx: &mut Self::Context) {
        match msg {
            Wire::Text(text) => self.write(ctx, Out::Text(text)),
            Wire::Close(code, reason) => self.close(ctx, code, &reason),
        }
    }
}

/// The write half of an awc WebSocket.
type AwcSink =
    FlushOnClose<actix_codec::Framed<tokio::io::WriteHalf<awc::BoxedSocket>, awc::ws::Codec>>;

/// A sink that writes what it holds before it closes. actix-codec's
/// `Framed` shuts its socket down on close without writing the frames still
/// in its buffer, so a close frame queued just before never left.
struct FlushOnClose<S>(S);

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
}

/// How long a closing outbound link waits for its close frame to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

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

impl StreamHandler<Result<awc::ws::Frame, awc::error::WsProtocolError>> for AwcTransport {
    fn handle(
        &mut self,
        msg: Result<awc::ws::Frame, awc::error::WsProtocolError>,
        ctx: &mut Self::Context,
    ) {
        if self.closing {
            return;
        }
        match receive(&mut self.fragments, self.max_frame, msg) {
            Received::Nothing => {}
            Received::Text(text) => self.owner.do_send(Inbound::Text(text)),
            Received::Binary => self.owner.do_send(Inbound::Binary),
            Received::Ping(payload) => {
                let _ = self.sink.write(awc::ws::Message::Pong(payload));
            }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_under_the_cap() {
        let mut f = Fragments::default();
        assert!(matches!(
            f.feed(
                actix_http::ws::Item::FirstText(Bytes::from_static(b"{\"a\"")),
                16
            ),
            Assembled::Incomplete
        ));
        assert!(matches!(
            f.feed(
                actix_http::ws::Item::Continue(Bytes::from_static(b":1")),
                16
            ),
            Assembled::Incomplete
        ));
        match f.feed(actix_http::ws::Item::Last(Bytes::from_static(b"}")), 16) {
            Assembled::Text(b) => assert_eq!(&b[..], b"{\"a\":1}"),
            _ => panic!("expected text"),
        }
    }

    #[test]
    fn fragments_past_the_cap_are_refused_without_growing() {
        let mut f = Fragments::default();
        assert!(matches!(
            f.feed(
                actix_http::ws::Item::FirstText(Bytes::from(vec![b'a'; 10])),
                16
            ),
            Assembled::Incomplete
        ));
        assert!(matches!(
            f.feed(
                actix_http::ws::Item::Continue(Bytes::from(vec![b'a'; 10])),
                16
            ),
            Assembled::TooBig
        ));
        assert!(f.partial.is_none(), "the buffer is dropped");
        assert!(matches!(
            f.feed(
                actix_http::ws::Item::FirstText(Bytes::from(vec![b'a'; 17])),
                16
            ),
            Assembled::TooBig
        ));
    }

    #[test]
    fn continuation_without_start_is_a_protocol_error() {
        let mut f = Fragments::default();
        assert!(matches!(
            f.feed(actix_http::ws::Item::Continue(Bytes::new()), 16),
            Assembled::Protocol
        ));
        assert!(matches!(
            f.feed(actix_http::ws::Item::Last(Bytes::new()), 16),
            Assembled::Protocol
        ));
        assert!(matches!(
            f.feed(actix_http::ws::Item::FirstBinary(Bytes::new()), 16),
            Assembled::Incomplete
        ));
        assert!(matches!(
            f.feed(actix_http::ws::Item::FirstText(Bytes::new()), 16),
            Assembled::Protocol
        ));
    }
}

/// Watches the frame headers of an inbound WebSocket byte stream and fails it
/// as soon as a header announces a payload over `max` bytes. The WebSocket
/// decoder checks a frame's length only once the whole frame has arrived, so
/// a peer announcing gigabytes and sending them slowly would be buffered to
/// the end; with this guard it is refused at its header (close 1009).
pub struct FrameGuard<S> {
    inner: S,
    max: u64,
    /// Header bytes of the frame being read (at most 14).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    failed: bool,
}

impl<S> FrameGuard<S> {
    /// Guard `inner`, allowing frames of at most `max` payload bytes.
    pub fn new(inner: S, max: usize) -> Self {
        FrameGuard {
            inner,
            max: max as u64,
            header: Vec::with_capacity(14),
            payload_left: 0,
            failed: false,
        }
    }

    /// Follow `chunk`; whether every header in it is within the limit.
    fn follow(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                chunk = &chunk[n..];
                self.payload_left -= n as u64;
                continue;
            }
            self.header.push(chunk[0]);
            chunk = &chunk[1..];
            let h = &self.header;
            if h.len() < 2 {
                continue;
            }
            let masked = h[1] & 0x80 != 0;
            let (ext, short) = match h[1] & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(u64::from(n))),
            };
            let need = 2 + ext + if masked { 4 } else { 0 };
            if h.len() < need {
                continue;
            }
            let len = short.unwrap_or_else(|| {
                h[2..2 + ext]
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            });
            if len > self.max {
                return false;
            }
            self.payload_left = len;
            self.header.clear();
        }
        true
    }
}

impl<S> futures_util::Stream for FrameGuard<S>
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.failed {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.follow(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.failed = true;
                    Poll::Ready(Some(Err(actix_web::error::PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod frame_guard_tests {
    use super::*;

    fn frame(len: u64, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(
            b'x',
            usize::try_from(len.min(1 << 20)).unwrap(),
        ));
        f
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_split() {
        let mut bytes = frame(5, true);
        bytes.extend(frame(300, true));
        bytes.extend(frame(70_000, true));
        bytes.extend(frame(0, false));
        for split in [1, 2, 3, 7, 1000, bytes.len()] {
            let mut g = FrameGuard::new((), 100_000);
            assert!(bytes.chunks(split).all(|c| g.follow(c)), "split {split}");
            assert_eq!((g.payload_left, g.header.len()), (0, 0));
        }
    }

    #[test]
    fn a_header_over_the_limit_fails_before_its_payload() {
        for len in [100_001, 10 << 20, u64::MAX >> 1] {
            let mut bytes = frame(5, true);
            let header_end = bytes.len() + 14;
            bytes.extend(frame(len, true));
            let mut g = FrameGuard::new((), 100_000);
            assert!(!g.follow(&bytes[..header_end]), "{len}");
        }
    }
}
