//! The ordered outbound queue sessions and links share, and the inbound queue that keeps
//! a connection's frames in order while they are verified.

use std::collections::VecDeque;

use actix::prelude::*;

use super::*;
use crate::budget::Charge;
use crate::crypto::{FrameText, SignedFrame, Signing};
use crate::router::Outbound;

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
    /// How the peer speaks, when it is not socp: frames are rewritten for it.
    translator: Option<crate::dialect::Translator>,
}

pub(super) enum Queued {
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
            translator: None,
        }
    }

    /// The peer speaks `dialect`: what is queued from now on is written for it.
    pub fn speak(&mut self, translator: Option<crate::dialect::Translator>) {
        self.translator = translator;
    }

    /// Queue a frame or a close; it is written after everything queued before.
    pub fn push<A: HasOutQueue>(ctx: &mut Context<A>, act: &mut A, out: Outbound) {
        let queue = act.out_queue();
        if queue.closed {
            return;
        }
        let out = match &queue.translator {
            Some(t) => t.apply(out),
            None => out,
        };
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

    /// Ping the peer now (ahead of queued frames: a control frame), unless
    /// it has been silent for `silence`, when its transport closes it with
    /// 1001 instead. Nothing once a close was released.
    pub(crate) fn keepalive(&self, silence: std::time::Duration) {
        if !self.closed {
            self.transport.do_send(Wire::KeepAlive(silence));
        }
    }
}

/// Received frames, handled one at a time in arrival order: a frame whose
/// checks run off the loop (crypto pool, database) holds the next ones back.
#[derive(Default)]
pub(crate) struct InQueue {
    /// Each frame with the memory charged for it (given back once it and
    /// everything made from it are written or dropped).
    backlog: VecDeque<(FrameText, Option<Charge>)>,
    /// A frame's checks are running off the loop.
    busy: bool,
    /// The peer closed: the actor stops once what it sent before is handled.
    finishing: bool,
}

/// An actor that handles its frames through an [`InQueue`].
pub(crate) trait InOrder: Actor<Context = Context<Self>> {
    /// The queue.
    fn in_queue(&mut self) -> &mut InQueue;
    /// Handle one frame (may call [`InQueue::wait_for`]); `charge` is what
    /// it is charged to, to pass on to what is made from it.
    fn process(&mut self, ctx: &mut Context<Self>, text: FrameText, charge: Option<Charge>);
}

impl InQueue {
    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.backlog.len()
    }

    /// Queue a frame and handle what can be handled now.
    pub fn push<A: InOrder>(
        ctx: &mut Context<A>,
        act: &mut A,
        text: FrameText,
        charge: Option<Charge>,
    ) {
        act.in_queue().backlog.push_back((text, charge));
        Self::drain(ctx, act);
    }

    /// The peer closed its connection: handle every frame it sent before
    /// (a DM then `/quit`; a server's adverts then its close), in order, then
    /// stop the actor. Nothing more arrives on a closed socket, and the
    /// backlog is bounded by the actor's limits on it.
    pub(crate) fn finish<A: InOrder>(ctx: &mut Context<A>, act: &mut A) {
        act.in_queue().finishing = true;
        Self::drain(ctx, act);
    }

    fn drain<A: InOrder>(ctx: &mut Context<A>, act: &mut A) {
        while !act.in_queue().busy {
            let Some((text, charge)) = act.in_queue().backlog.pop_front() else {
                if act.in_queue().finishing {
                    ctx.stop();
                }
                return;
            };
            act.process(ctx, text, charge);
        }
    }

    /// Run `fut` off the loop; later frames wait until `then` has run.
    pub(crate) fn wait_for<A, F, T>(ctx: &mut Context<A>, act: &mut A, fut: F, then: T)
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
