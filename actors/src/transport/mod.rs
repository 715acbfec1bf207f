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

use actix::prelude::*;
use actix_http::ws::{CloseReason, Frame};
use bytes::Bytes;

use crate::crypto::FrameText;

mod frames;
mod inbound;
mod outbound;
mod queue;
mod shedding;
mod socket;

pub use frames::Failure;
pub(crate) use frames::FrameGuard;
use frames::{Assembled, Fragments};
pub use inbound::WsTransport;
pub use outbound::AwcTransport;
pub use queue::{HasOutQueue, OutQueue};
pub(crate) use queue::{InOrder, InQueue};
pub use shedding::{Connections, Shed, Ticket, SHED_CODE};
pub(crate) use socket::MAX_UNREAD_BYTES;

/// How long a closing connection may take to write its close frame (and
/// whatever was queued before it): past this the socket is dropped, so a
/// peer that stopped reading cannot hold it open.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// WebSocket close codes we use (RFC 6455 §7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (shutdown, heartbeat timeout).
    pub const AWAY: u16 = 1001;
    /// Protocol error: a frame RFC 6455 forbids (reserved bits or opcodes,
    /// bad fragmentation, a bad control frame or close code).
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (a binary frame before identification).
    pub(crate) const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (text or a close reason that is not UTF-8).
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
    /// A WebSocket ping or pong: the peer is alive (some implementations
    /// keep their links alive with pings alone, never a HEARTBEAT).
    Alive,
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
    /// Ping the peer; but if it sent nothing at all (no frame of any kind,
    /// pong included) for this long, close with 1001 and stop instead.
    KeepAlive(Duration),
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

    /// The server's open connections, from which unidentified ones are shed
    /// when descriptors run short (`None`: nothing is shed).
    fn connections(&self) -> Option<&std::sync::Arc<Connections>> {
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
    /// A pong.
    Pong,
    /// The peer closed the socket.
    Closed(Option<CloseReason>),
    /// Close with this code and reason.
    Refuse(u16, &'static str),
}

/// Classify one decoded frame (both transports share this).
fn receive(fragments: &mut Fragments, max_frame: usize, frame: Result<Frame, Failure>) -> Received {
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
            Assembled::NotUtf8 => Received::Refuse(close::INVALID_DATA, "text is not UTF-8"),
            Assembled::Protocol => Received::Refuse(close::PROTOCOL, "bad fragmentation"),
        },
        Ok(Frame::Ping(payload)) => Received::Ping(payload),
        Ok(Frame::Pong(_)) => Received::Pong,
        Ok(Frame::Close(reason)) => Received::Closed(reason),
        Err(Failure { code, reason }) => Received::Refuse(code, reason),
    }
}
