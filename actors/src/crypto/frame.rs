//! [`SignedFrame`]: a shared handle that resolves to a frame's JSON text once
//! signed, so one signature serves every destination of a broadcast, and
//! destinations can queue it in order before it is ready.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::budget::Charge;

/// Frame text ready to write; shared between destinations.
pub type FrameText = Arc<str>;

/// A frame that is, or will be, signed: resolves to its JSON text, or `None`
/// if signing failed (the frame is then dropped and logged).
///
/// It may hold the [`Charge`] of the frame it was made from: the sender's
/// bytes stay counted until every destination has written or dropped it.
#[derive(Clone)]
pub struct SignedFrame {
    text: Shared<BoxFuture<'static, Option<FrameText>>>,
    charge: Option<Charge>,
    /// The user's own frame this one delivers, as the user sent it (signed
    /// by the user): what a peer of another dialect is given instead.
    original: Option<FrameText>,
}

impl SignedFrame {
    /// A frame whose text is already final (a relayed frame, unchanged).
    pub fn ready(text: FrameText) -> Self {
        let shared = futures_util::future::ready(Some(text)).boxed().shared();
        // A `Shared` shows its output to `peek` only once it has been polled.
        // This one is ready, so one poll completes it: writers then see the
        // text at once instead of waiting a round trip of the event loop.
        let _ready_now = shared.clone().now_or_never();
        SignedFrame::of(shared)
    }

    fn of(text: Shared<BoxFuture<'static, Option<FrameText>>>) -> Self {
        SignedFrame {
            text,
            charge: None,
            original: None,
        }
    }

    /// The same frame, delivering the user's frame `original` (its text as
    /// the user sent and signed it).
    pub fn delivering(mut self, original: Option<FrameText>) -> Self {
        self.original = original;
        self
    }

    /// The user's own frame this one delivers, as a frame of its own (the
    /// charge kept), if it has one.
    pub fn original(&self) -> Option<SignedFrame> {
        let original = self.original.clone()?;
        let mut frame = SignedFrame::ready(original);
        frame.charge = self.charge.clone();
        Some(frame)
    }

    /// The same frame, holding `charge` until it is written or dropped.
    pub fn charged(mut self, charge: &Charge) -> Self {
        self.charge = Some(charge.clone());
        self
    }

    /// A frame made by `fut` (`None`: it could not be made).
    pub fn from_future(fut: BoxFuture<'static, Option<FrameText>>) -> Self {
        SignedFrame::of(fut.shared())
    }

    /// This frame's text made into another by `f` once signed (`None` from
    /// `f`: nothing is written); the charge stays with it.
    pub fn then(
        self,
        f: impl FnOnce(FrameText) -> BoxFuture<'static, Option<FrameText>> + Send + 'static,
    ) -> Self {
        let text = self.text.clone();
        let made = async move {
            match text.await {
                Some(text) => f(text).await,
                None => None,
            }
        };
        SignedFrame {
            text: made.boxed().shared(),
            charge: self.charge,
            original: self.original,
        }
    }

    /// A frame that could not be made (dropped by writers, and logged).
    pub fn failed() -> Self {
        SignedFrame::of(futures_util::future::ready(None).boxed().shared())
    }

    /// Wait for the text.
    pub fn text(&self) -> impl Future<Output = Option<FrameText>> + Send + 'static {
        self.text.clone()
    }

    /// The text, if signing has finished.
    pub fn peek(&self) -> Option<FrameText> {
        self.text.peek().cloned().flatten()
    }

    /// Where signing is.
    pub fn state(&self) -> Signing {
        match self.text.peek() {
            None => Signing::Running,
            Some(None) => Signing::Failed,
            Some(Some(text)) => Signing::Done(text.clone()),
        }
    }
}

/// Two frames are equal when both are signed with the same text (a frame
/// still being signed equals nothing, not even itself).
impl PartialEq for SignedFrame {
    fn eq(&self, other: &Self) -> bool {
        matches!((self.peek(), other.peek()), (Some(a), Some(b)) if a == b)
    }
}

/// Where a [`SignedFrame`] is.
#[derive(Debug, Clone)]
pub enum Signing {
    /// Still being signed.
    Running,
    /// Signing failed (logged where it failed).
    Failed,
    /// Signed: the frame's text.
    Done(FrameText),
}

impl std::fmt::Debug for SignedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedFrame")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_frames_can_be_peeked_at_once() {
        let frame = SignedFrame::ready(FrameText::from("{}"));
        assert_eq!(frame.peek().as_deref(), Some("{}"));
        assert_eq!(frame.clone().peek().as_deref(), Some("{}"));
    }
}
