//! The inbound socket's reader and writer: bounded unread bytes, a writer that
//! gives up on a peer that never reads.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};

use crate::crypto::FrameText;

/// Bytes of frames a connection may leave unread before it is closed as
/// too slow (a reader that never reads must not grow the server without
/// bound).
pub(crate) const MAX_UNREAD_BYTES: usize = 64 << 20;

/// What an inbound connection has still to write, in order.
pub(super) enum Out {
    Text(FrameText),
    Ping,
    Pong(Bytes),
    Close(u16, String),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Text(t) => t.len(),
            Out::Ping => 0,
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
pub(super) struct Outgoing {
    frames: VecDeque<Out>,
    pub(super) bytes: usize,
    /// Nothing is queued after the frames already here (closed, or the
    /// transport stopped, or the connection is gone).
    finished: bool,
    waker: Option<std::task::Waker>,
}

impl Outgoing {
    pub(super) fn push(&mut self, out: Out) {
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

    pub(super) fn finish(&mut self) {
        self.finished = true;
        self.wake();
    }

    /// Drop every queued frame (the close that follows is written at once).
    pub(super) fn discard(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
    }

    /// The connection is gone: drop everything, queue nothing more.
    pub(super) fn abandon(&mut self) {
        self.discard();
        self.finish();
    }

    pub(super) fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Wake the writer's task on the next push, close or finish.
    fn register(&mut self, cx: &std::task::Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
    }
}

/// Encode one queued frame (server side: unmasked).
pub(super) fn encode(frame: Out, buf: &mut BytesMut) {
    match frame {
        Out::Text(text) => Parser::write_message(buf, text.as_bytes(), OpCode::Text, true, false),
        Out::Ping => Parser::write_message(buf, [], OpCode::Ping, true, false),
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
pub(super) const WRITE_CHUNK: usize = 8 * 1024;

/// Writes an inbound connection's queued frames to its socket: a few
/// kilobytes encoded at a time, only as fast as the socket takes them, and
/// no buffer kept while there is nothing to write. Ends (shutting the write
/// side down) once the queue is finished and empty, or the socket fails, or
/// `grace` after the queue was finished: a peer that stopped reading cannot
/// keep the socket (and its descriptor) past its close.
pub(super) struct Writer<W> {
    io: W,
    out: Rc<RefCell<Outgoing>>,
    buf: BytesMut,
    grace: Duration,
    /// Armed once the queue is finished.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<W> Writer<W> {
    pub(super) fn new(io: W, out: Rc<RefCell<Outgoing>>, grace: Duration) -> Self {
        Writer {
            io,
            out,
            buf: BytesMut::new(),
            grace,
            deadline: None,
        }
    }
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
        if this.deadline.is_none() && this.out.borrow().finished {
            this.deadline = Some(Box::pin(tokio::time::sleep(this.grace)));
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                log::debug!(
                    "closed connection not written within {:?}; dropped",
                    this.grace
                );
                this.out.borrow_mut().abandon();
                return Poll::Ready(());
            }
        }
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
                    out.register(cx);
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
                Poll::Pending => {
                    // A close queued meanwhile must arm the deadline.
                    this.out.borrow_mut().register(cx);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The read half of a connection as a stream of byte chunks, starting with
/// whatever the HTTP layer had already read past the upgrade request (or
/// awc past the upgrade response). Reads into a stack buffer: nothing is
/// kept between reads.
pub(super) struct ReadChunks<R> {
    pub(super) io: R,
    pub(super) early: Option<Bytes>,
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
