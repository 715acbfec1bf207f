//! Reading frames: the frame guard that refuses oversize frames at their header,
//! fragment reassembly under a cap, and the frame stream both transports read.

use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};

use super::close;

/// Why a connection's frames cannot be read on: the close code to answer
/// with (RFC 6455 §7.4.1) and a reason.
#[derive(Debug)]
pub struct Failure {
    /// The close code.
    pub code: u16,
    /// Why, for the close frame and the logs.
    pub reason: &'static str,
}

impl Failure {
    fn protocol(reason: &'static str) -> Self {
        Failure {
            code: close::PROTOCOL,
            reason,
        }
    }

    fn too_big() -> Self {
        Failure {
            code: close::TOO_BIG,
            reason: "message too big",
        }
    }
}

impl From<ProtocolError> for Failure {
    /// The decoder's errors: a frame over the limit is 1009, anything else
    /// it refuses (reserved bits or opcodes, bad continuation, masking, a
    /// control frame over 125 bytes or fragmented) is 1002.
    fn from(e: ProtocolError) -> Self {
        log::debug!("WebSocket protocol error: {e}");
        match e {
            ProtocolError::Overflow => Failure::too_big(),
            ProtocolError::UnmaskedFrame | ProtocolError::MaskedFrame => {
                Failure::protocol("bad masking")
            }
            ProtocolError::InvalidOpcode(_) | ProtocolError::BadOpCode => {
                Failure::protocol("reserved opcode")
            }
            ProtocolError::InvalidLength(_) => Failure::protocol("control frame over 125 bytes"),
            ProtocolError::ContinuationNotStarted
            | ProtocolError::ContinuationStarted
            | ProtocolError::ContinuationFragment(_) => Failure::protocol("bad fragmentation"),
            // The decoder's only I/O error: reserved bits set.
            ProtocolError::Io(_) => Failure::protocol("protocol error"),
        }
    }
}

/// Close codes a peer may send (RFC 6455 §7.4.1 and the IANA registry;
/// 1004-1006 and 1015 are never sent, 1016-2999 are reserved, 3000-4999
/// are for libraries and applications).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The payload of a close frame, checked: empty, or a valid code and a
/// UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<CloseReason>, Failure> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Failure::protocol("a close payload of one byte")),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    if !valid_close_code(code) {
        return Err(Failure::protocol("invalid close code"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Failure {
        code: close::INVALID_DATA,
        reason: "close reason is not UTF-8",
    })?;
    Ok(Some(CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then(|| reason.to_owned()),
    }))
}

/// Reassembles fragmented messages under a size cap, checking text as
/// UTF-8 fragment by fragment (a message that cannot become UTF-8 is refused
/// at the fragment that shows it, not buffered to its end).
#[derive(Default)]
pub(super) struct Fragments {
    /// The message being reassembled: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    /// Bytes of the partial text known to be UTF-8 (a character split
    /// across fragments may follow).
    checked: usize,
}

/// The result of feeding a frame to [`Fragments`].
pub(super) enum Assembled {
    Incomplete,
    Text(Bytes),
    Binary,
    TooBig,
    /// Text that is not UTF-8 (close 1007).
    NotUtf8,
    /// A continuation with no message started, or a new message inside one
    /// (close 1002).
    Protocol,
}

impl Fragments {
    pub(super) fn feed(&mut self, item: actix_http::ws::Item, cap: usize) -> Assembled {
        use actix_http::ws::Item;
        match item {
            Item::FirstText(_) | Item::FirstBinary(_) if self.partial.is_some() => {
                self.partial = None;
                Assembled::Protocol
            }
            Item::FirstText(b) => self.append(Some(true), &b, false, cap),
            Item::FirstBinary(b) => self.append(Some(false), &b, false, cap),
            Item::Continue(_) | Item::Last(_) if self.partial.is_none() => Assembled::Protocol,
            Item::Continue(b) => self.append(None, &b, false, cap),
            Item::Last(b) => self.append(None, &b, true, cap),
        }
    }

    /// Add `b` to the message (a new one of kind `start`, or the one under
    /// way), the last fragment if `last`.
    fn append(&mut self, start: Option<bool>, b: &[u8], last: bool, cap: usize) -> Assembled {
        if let Some(is_text) = start {
            self.partial = Some((is_text, BytesMut::new()));
            self.checked = 0;
        }
        let Some((is_text, buf)) = &mut self.partial else {
            return Assembled::Protocol;
        };
        if buf.len().saturating_add(b.len()) > cap {
            self.partial = None;
            return Assembled::TooBig;
        }
        buf.extend_from_slice(b);
        if *is_text {
            match std::str::from_utf8(&buf[self.checked..]) {
                Ok(_) => self.checked = buf.len(),
                // A character cut at the end of a fragment: the rest may follow.
                Err(e) if e.error_len().is_none() && !last => self.checked += e.valid_up_to(),
                Err(_) => {
                    self.partial = None;
                    return Assembled::NotUtf8;
                }
            }
        }
        if !last {
            return Assembled::Incomplete;
        }
        match self.partial.take() {
            Some((true, buf)) => Assembled::Text(buf.freeze()),
            _ => Assembled::Binary,
        }
    }
}

/// Decodes the frames of a byte stream, keeping no buffer between
/// frames.
pub(super) struct WsFrames<S> {
    inner: S,
    buf: BytesMut,
    codec: Codec,
    /// Frames come from a client (masked).
    server: bool,
    max_frame: usize,
    done: bool,
}

impl<S> WsFrames<S> {
    /// Frames a client sent us (masked).
    pub(super) fn new(inner: S, max_frame: usize) -> Self {
        Self::with_codec(inner, Codec::new().max_size(max_frame), true, max_frame)
    }

    /// Frames a server sent us, on a connection we opened (unmasked).
    pub(super) fn client(inner: S, max_frame: usize) -> Self {
        Self::with_codec(
            inner,
            Codec::new().max_size(max_frame).client_mode(),
            false,
            max_frame,
        )
    }

    fn with_codec(inner: S, codec: Codec, server: bool, max_frame: usize) -> Self {
        WsFrames {
            inner,
            buf: BytesMut::new(),
            codec,
            server,
            max_frame,
            done: false,
        }
    }

    /// Decode the next frame in the buffer. A whole, unfragmented close
    /// frame is decoded here rather than by the codec: the codec refuses a
    /// bad close code and a reason that is not UTF-8 with one and the same
    /// error, and they call for different close codes (1002, 1007).
    fn decode(&mut self) -> Result<Option<Frame>, Failure> {
        use actix_codec::Decoder;
        // FIN, no reserved bits, opcode 8 (close).
        if self.buf.first() != Some(&0x88) {
            return Ok(self.codec.decode(&mut self.buf)?);
        }
        match Parser::parse(&mut self.buf, self.server, self.max_frame)? {
            None => Ok(None),
            Some((_, _, payload)) => Ok(Some(Frame::Close(close_payload(
                payload.as_deref().unwrap_or_default(),
            )?))),
        }
    }
}

impl<S> futures_util::Stream for WsFrames<S>
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    type Item = Result<Frame, Failure>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use actix_web::error::PayloadError;
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                match this.decode() {
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
                Poll::Ready(Some(Err(PayloadError::Overflow))) => {
                    // The frame guard: a header announcing too much.
                    this.done = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(Failure::too_big())));
                }
                Poll::Ready(Some(Err(e))) => {
                    // The socket failed: no close frame can reach the peer.
                    log::debug!("WebSocket read failed: {e}");
                    this.done = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(None);
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
pub(super) fn short_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Watches the frame headers of an inbound WebSocket byte stream and fails it
/// as soon as a header announces a payload over `max` bytes. The WebSocket
/// decoder checks a frame's length only once the whole frame has arrived, so
/// a peer announcing gigabytes and sending them slowly would be buffered to
/// the end; with this guard it is refused at its header (close 1009).
pub(crate) struct FrameGuard<S> {
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
