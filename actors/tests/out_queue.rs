//! The ordered outbound queue: frames in queue order whatever order their
//! signatures finish in; urgent frames (heartbeats) do not wait behind them,
//! except behind a link's first frame (its hello).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures_util::FutureExt;
use socp_actors::crypto::{FrameText, SignedFrame};
use socp_actors::router::Outbound;
use socp_actors::transport::{HasOutQueue, OutQueue, Wire};
use tokio::sync::oneshot;

/// Records what the queue writes.
struct Transport(Arc<Mutex<Vec<String>>>);

impl Actor for Transport {
    type Context = Context<Self>;
}

impl Handler<Wire> for Transport {
    type Result = ();
    fn handle(&mut self, msg: Wire, _: &mut Self::Context) {
        if let (Wire::Text(t), Ok(mut log)) = (msg, self.0.lock()) {
            log.push(t.to_string());
        }
    }
}

/// An actor owning an OutQueue.
struct Owner(OutQueue);

impl Actor for Owner {
    type Context = Context<Self>;
}

impl HasOutQueue for Owner {
    fn out_queue(&mut self) -> &mut OutQueue {
        &mut self.0
    }
}

impl Handler<Outbound> for Owner {
    type Result = ();
    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        OutQueue::push(ctx, self, msg);
    }
}

/// A frame whose "signature" finishes when `tx` is sent.
fn pending() -> (oneshot::Sender<FrameText>, SignedFrame) {
    let (tx, rx) = oneshot::channel::<FrameText>();
    (tx, SignedFrame::from_future(rx.map(Result::ok).boxed()))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[actix::test]
async fn frames_leave_in_queue_order_and_urgent_ones_do_not_wait() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let transport = Transport(log.clone()).start();
    let owner = Owner(OutQueue::new(transport.recipient())).start();
    owner.do_send(Outbound::Frame(SignedFrame::ready(FrameText::from(
        "hello",
    ))));

    let (first_tx, first) = pending();
    let (second_tx, second) = pending();
    owner.do_send(Outbound::Frame(first));
    owner.do_send(Outbound::Frame(second));
    owner.do_send(Outbound::Frame(SignedFrame::ready(FrameText::from(
        "third",
    ))));
    owner.do_send(Outbound::Urgent(SignedFrame::ready(FrameText::from(
        "heartbeat",
    ))));
    settle().await;
    assert_eq!(
        *log.lock().unwrap(),
        ["hello", "heartbeat"],
        "urgent goes ahead; the rest waits for 'first'"
    );

    let _ = second_tx.send(FrameText::from("second"));
    settle().await;
    assert_eq!(
        *log.lock().unwrap(),
        ["hello", "heartbeat"],
        "'second' is signed but 'first' is not"
    );

    let _ = first_tx.send(FrameText::from("first"));
    settle().await;
    assert_eq!(
        *log.lock().unwrap(),
        ["hello", "heartbeat", "first", "second", "third"]
    );
}

#[actix::test]
async fn nothing_overtakes_the_first_frame() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let transport = Transport(log.clone()).start();
    let owner = Owner(OutQueue::new(transport.recipient())).start();

    // A link's hello is still being signed when a heartbeat is due: the peer
    // must see the hello first, or it refuses the link.
    let (hello_tx, hello) = pending();
    owner.do_send(Outbound::Frame(hello));
    owner.do_send(Outbound::Urgent(SignedFrame::ready(FrameText::from(
        "heartbeat",
    ))));
    settle().await;
    assert!(log.lock().unwrap().is_empty(), "the heartbeat waits");

    let _ = hello_tx.send(FrameText::from("hello"));
    settle().await;
    assert_eq!(*log.lock().unwrap(), ["hello", "heartbeat"]);

    // Once the link has spoken, urgent frames overtake again.
    let (late_tx, late) = pending();
    owner.do_send(Outbound::Frame(late));
    owner.do_send(Outbound::Urgent(SignedFrame::ready(FrameText::from(
        "heartbeat 2",
    ))));
    settle().await;
    assert_eq!(*log.lock().unwrap(), ["hello", "heartbeat", "heartbeat 2"]);
    let _ = late_tx.send(FrameText::from("late"));
    settle().await;
    assert_eq!(
        *log.lock().unwrap(),
        ["hello", "heartbeat", "heartbeat 2", "late"]
    );
}
