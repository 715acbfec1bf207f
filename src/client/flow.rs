//! Pacing and flow control of a run of frames, and the list request a
//! server answers (which the flow control uses as its round trip).

use std::time::Duration;

use serde_json::json;
use socp_protocol::message::ListRequest;
use socp_protocol::{now_ms, Envelope, To};
use tokio::sync::oneshot;

use super::connection::{answer, expect, send, Sink};
use super::{blocking, fail, Failure, Shared};

/// The predicates of a list request's answer: the answer, and the answer or
/// an ERROR.
type ListAnswer = (fn(&Envelope) -> bool, fn(&Envelope) -> bool);

/// The list request this server answers, and what its answer looks like:
/// LIST_REQUEST → LIST_RESPONSE, or, on a server of the PEM dialect (which
/// answers only that), `COMMAND {command:"/list"}` → COMMAND_RESPONSE, signed.
pub(super) async fn list_request(shared: &Shared) -> Result<(Envelope, ListAnswer), Failure> {
    let (me, keys) = {
        let c = shared.borrow();
        (c.me.clone(), c.key_encoding)
    };
    if keys == socp_protocol::dialect::KeyEncoding::Der {
        let env = Envelope::new(&me.id, To::Id("server".into()), now_ms(), &ListRequest {});
        return Ok((
            env,
            (
                |e| e.msg_type() == "LIST_RESPONSE",
                |e| matches!(e.msg_type(), "LIST_RESPONSE" | "ERROR"),
            ),
        ));
    }
    let env = Envelope::raw(
        socp_protocol::MessageType::Command,
        me.id.as_str(),
        To::Id("server".into()),
        now_ms(),
        json!({ "command": "/list" }),
    );
    // RSA: off the event loop.
    let env = blocking(move || me.sign_frame(env, keys))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    Ok((
        env,
        (
            |e| e.msg_type() == "COMMAND_RESPONSE",
            |e| matches!(e.msg_type(), "COMMAND_RESPONSE" | "ERROR"),
        ),
    ))
}

/// Frames sent between two flow-control round trips.
pub(super) const FLOW_WINDOW: usize = 64;

/// Sends a run of frames: paced at the server's rate limit, and with at most
/// about two windows of frames waiting at the server. A server processes a
/// user's frames in order and cuts off a user with too many frames waiting
/// (256 by default), which a loaded server reaches even at the allowed rate.
/// So after every [`FLOW_WINDOW`] frames the client asks for the user list
/// and, before the next window, waits for the answer to the previous request:
/// the answer comes only once every frame before it was handled. In a
/// `strict` run an ERROR meanwhile (a frame refused, the recipient gone) ends
/// the run; otherwise it is shown and the run goes on.
pub(super) struct Flow {
    pacer: Pacer,
    sent: usize,
    sync: Option<oneshot::Receiver<Envelope>>,
    strict: bool,
    window: usize,
}

impl Flow {
    pub(super) fn new(rate: f64, strict: bool) -> Self {
        Flow {
            pacer: Pacer::new(rate),
            sent: 0,
            sync: None,
            strict,
            window: FLOW_WINDOW,
        }
    }

    /// Round trips every `window` frames instead of [`FLOW_WINDOW`] (large
    /// frames: the server holds a few megabytes of a user's frames at most).
    pub(super) fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// At most `frames` sent at once before the pace applies (100 by
    /// default: the server's burst allowance).
    pub(super) fn burst(mut self, frames: u32) -> Self {
        self.pacer.burst = frames;
        self
    }

    pub(super) async fn send(
        &mut self,
        shared: &Shared,
        tx: &Sink,
        env: &Envelope,
    ) -> Result<(), Failure> {
        self.pacer.wait().await;
        send(tx, env)?;
        self.sent += 1;
        if self.sent % self.window == 0 {
            self.settle().await?;
            self.request(shared, tx).await?;
        }
        Ok(())
    }

    async fn request(&mut self, shared: &Shared, tx: &Sink) -> Result<(), Failure> {
        let (request, (answer_only, answer_or_error)) = list_request(shared).await?;
        let rx = if self.strict {
            expect(shared, answer_or_error)
        } else {
            expect(shared, answer_only)
        };
        self.pacer.wait().await;
        send(tx, &request)?;
        self.sync = Some(rx);
        Ok(())
    }

    /// Wait for the outstanding round trip, if any.
    pub(super) async fn settle(&mut self) -> Result<(), Failure> {
        match self.sync.take() {
            Some(rx) => answer(rx, "sending").await.map(drop),
            None => Ok(()),
        }
    }

    /// Wait until the server has handled every frame sent.
    pub(super) async fn confirm(&mut self, shared: &Shared, tx: &Sink) -> Result<(), Failure> {
        self.settle().await?;
        self.request(shared, tx).await?;
        self.settle().await
    }
}

/// Paces sending at the server's frame-rate limit.
struct Pacer {
    interval: Duration,
    next: tokio::time::Instant,
    burst: u32,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        // Stay a little under the server's limit.
        let rate = (rate * 0.9).max(1.0);
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: tokio::time::Instant::now(),
            burst: 100,
        }
    }

    async fn wait(&mut self) {
        if self.burst > 0 {
            self.burst -= 1;
            return;
        }
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now().max(self.next) + self.interval;
    }
}
