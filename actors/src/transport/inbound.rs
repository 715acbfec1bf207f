//! [`WsTransport`]: an inbound connection, handed over by the HTTP layer after the upgrade.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Frame;
use bytes::Bytes;

use super::frames::{short_reason, Failure, Fragments, WsFrames};
use super::socket::{Out, Outgoing, ReadChunks, Writer};
use super::*;
use crate::crypto::FrameText;

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
    close_grace: Duration,
    /// When the peer last sent a frame (of any kind).
    last_heard: Instant,
    /// This connection among the server's (shed while unidentified if
    /// descriptors run short).
    ticket: Option<Ticket>,
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
            close_grace: CLOSE_GRACE,
            last_heard: Instant::now(),
            ticket: None,
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
        actix::spawn(Writer::new(wr, Rc::clone(&self.out), self.close_grace));
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

    /// Close on the transport's own account (a protocol error, a peer that
    /// reads nothing or answers no pings): counted here.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if let Some(m) = self.acceptor.metrics() {
            m.inc(crate::metrics::family::CLOSES, &code.to_string());
        }
        self.close_quietly(ctx, code, reason);
    }

    /// Close as the owner asked (it counted the close itself).
    fn close_quietly(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        log::debug!("closing connection from {}: {code} {reason}", self.peer);
        self.out
            .borrow_mut()
            .push(Out::Close(code, short_reason(reason)));
        ctx.stop();
    }

    fn text(&mut self, ctx: &mut Context<Self>, text: FrameText) {
        match &self.owner {
            Some(owner) => owner.do_send(Inbound::Text(text)),
            None => match self.acceptor.accept(text, ctx.address().recipient()) {
                Ok(owner) => {
                    self.owner = Some(owner);
                    if let Some(ticket) = &self.ticket {
                        ticket.identified();
                    }
                }
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
        if let Some(conns) = self.acceptor.connections() {
            self.ticket = Some(conns.opened(ctx.address().recipient()));
        }
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

impl<A: Acceptor> StreamHandler<Result<Frame, Failure>> for WsTransport<A> {
    fn handle(&mut self, frame: Result<Frame, Failure>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match receive(&mut self.fragments, self.max_frame, frame) {
            Received::Nothing => {}
            Received::Text(text) => self.text(ctx, text),
            Received::Binary => match &self.owner {
                Some(owner) => owner.do_send(Inbound::Binary),
                None => self.close(ctx, close::UNSUPPORTED, "binary frames are not accepted"),
            },
            Received::Ping(payload) => {
                self.write(ctx, Out::Pong(payload));
                if let Some(owner) = &self.owner {
                    owner.do_send(Inbound::Alive);
                }
            }
            Received::Pong => {
                if let Some(owner) = &self.owner {
                    owner.do_send(Inbound::Alive);
                }
            }
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

impl<A: Acceptor> Handler<Shed> for WsTransport<A> {
    type Result = ();

    /// Descriptors run short: an unidentified connection makes room.
    fn handle(&mut self, _: Shed, ctx: &mut Self::Context) {
        if self.owner.is_none() {
            log::debug!("shedding unidentified connection from {}", self.peer);
            self.close(ctx, SHED_CODE, "server busy, try again later");
        }
    }
}

impl<A: Acceptor> Handler<Wire> for WsTransport<A> {
    type Result = ();

    fn handle(&mut self, msg: Wire, ctx: &mut Self::Context) {
        match msg {
            Wire::Text(text) => self.write(ctx, Out::Text(text)),
            Wire::Close(code, reason) => self.close_quietly(ctx, code, &reason),
            Wire::KeepAlive(silence) if self.last_heard.elapsed() > silence => {
                log::info!(
                    "connection from {} silent for over {silence:?}; closing it",
                    self.peer
                );
                self.close(ctx, close::AWAY, "no answer to pings");
            }
            Wire::KeepAlive(_) => self.write(ctx, Out::Ping),
        }
    }
}
