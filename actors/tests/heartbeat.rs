//! The Heartbeat actor on paused tokio time (SPEC.md §5.6): recorders stand in
//! for the router; time moves only when a test advances it, so nothing here
//! depends on how fast the machine is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use actix::prelude::*;
use socp_actors::heartbeat::{Activity, Heartbeat, HeartbeatPorts};
use socp_actors::router::{LinkEvent, PeerDead, Reconnect, SendHeartbeats};
use socp_protocol::ServerId;

use common::{sid, Rec};

const INTERVAL: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(30);
/// With a 10 s interval: the first retry after 1 s, doubling up to 30 s.
const BASE: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(30);
const MS: Duration = Duration::from_millis(1);

struct Fixture {
    hb: Addr<Heartbeat>,
    beats: Rec<SendHeartbeats>,
    dead: Rec<PeerDead>,
    reconnect: Rec<Reconnect>,
}

impl Fixture {
    /// Pause time, then start a heartbeat with recorder ports.
    fn start() -> Self {
        tokio::time::pause();
        let beats = Rec::start();
        let dead = Rec::start();
        let reconnect = Rec::start();
        let hb = Heartbeat::new(
            HeartbeatPorts {
                send_heartbeats: beats.recipient(),
                dead: dead.recipient(),
                reconnect: reconnect.recipient(),
            },
            INTERVAL,
            TIMEOUT,
        )
        .start();
        Fixture {
            hb,
            beats,
            dead,
            reconnect,
        }
    }

    /// Let the heartbeat handle its queue and any timer due now.
    async fn settle(&self) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        // An activity report for a server nobody watches changes nothing; its
        // answer means the actor has run since the clock moved.
        self.hb
            .send(Activity(sid("nobody")))
            .await
            .expect("heartbeat alive");
        self.beats.flush().await;
        self.dead.flush().await;
        self.reconnect.flush().await;
    }

    /// Move the clock on by `total`, in steps of at most one second.
    async fn advance(&self, total: Duration) {
        let mut left = total;
        while !left.is_zero() {
            let step = left.min(Duration::from_secs(1));
            tokio::time::advance(step).await;
            self.settle().await;
            left -= step;
        }
    }

    async fn event(&self, e: LinkEvent) {
        self.hb.send(e).await.expect("heartbeat alive");
        self.settle().await;
    }

    async fn activity(&self, id: &str) {
        self.hb
            .send(Activity(sid(id)))
            .await
            .expect("heartbeat alive");
    }

    async fn dead(&self) -> Vec<ServerId> {
        self.dead.take().await.into_iter().map(|d| d.0).collect()
    }

    async fn reconnects(&self) -> Vec<ServerId> {
        self.reconnect
            .take()
            .await
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

#[actix::test]
async fn heartbeats_are_sent_every_interval() {
    let f = Fixture::start();
    f.settle().await;
    f.advance(INTERVAL - MS).await;
    assert_eq!(f.beats.take().await.len(), 0);
    f.advance(2 * MS).await;
    assert_eq!(f.beats.take().await.len(), 1);
    f.advance(3 * INTERVAL).await;
    assert_eq!(f.beats.take().await.len(), 3);
}

#[actix::test]
async fn a_silent_server_is_declared_dead_once() {
    let f = Fixture::start();
    f.event(LinkEvent::Up(sid("srv-b"))).await;
    f.event(LinkEvent::Up(sid("srv-c"))).await;
    // Not before the timeout.
    f.advance(TIMEOUT - MS).await;
    assert!(f.dead().await.is_empty());
    f.activity("srv-c").await;
    // By the first check after it.
    f.advance(INTERVAL + 2 * MS).await;
    assert_eq!(f.dead().await, [sid("srv-b")]);
    // Declared once, not at every later check.
    f.advance(3 * INTERVAL).await;
    assert_eq!(
        f.dead().await,
        [sid("srv-c")],
        "srv-c's activity ran out later"
    );
    f.advance(3 * TIMEOUT).await;
    assert!(f.dead().await.is_empty());
    assert!(
        f.reconnects().await.is_empty(),
        "reconnects follow LinkEvent::Down"
    );
}

#[actix::test]
async fn activity_keeps_a_server_alive() {
    let f = Fixture::start();
    f.event(LinkEvent::Up(sid("srv-b"))).await;
    for _ in 0..40 {
        f.advance(Duration::from_secs(5)).await;
        f.activity("srv-b").await;
    }
    assert!(f.dead().await.is_empty(), "200 s with a frame every 5 s");
    f.advance(TIMEOUT + INTERVAL + MS).await;
    assert_eq!(f.dead().await, [sid("srv-b")]);
}

#[actix::test]
async fn activity_does_not_revive_a_server_that_is_down() {
    let f = Fixture::start();
    f.event(LinkEvent::Up(sid("srv-b"))).await;
    f.event(LinkEvent::Down(sid("srv-b"))).await;
    f.activity("srv-b").await;
    f.advance(TIMEOUT + 2 * INTERVAL).await;
    assert!(f.dead().await.is_empty(), "only linked servers are watched");
}

#[actix::test]
async fn reconnects_back_off_exponentially_up_to_the_cap() {
    let f = Fixture::start();
    let b = sid("srv-b");
    let mut expected = Vec::new();
    // Every attempt fails: the dialer reports the link down again.
    for attempt in 0..8u32 {
        let delay = (BASE * 2u32.pow(attempt)).min(CAP);
        expected.push(delay);
        f.event(LinkEvent::Down(b.clone())).await;
        f.advance(delay - MS).await;
        assert!(
            f.reconnects().await.is_empty(),
            "attempt {attempt}: too early"
        );
        f.advance(2 * MS).await;
        assert_eq!(
            f.reconnects().await,
            std::slice::from_ref(&b),
            "attempt {attempt}"
        );
    }
    assert_eq!(
        expected,
        [1, 2, 4, 8, 16, 30, 30, 30].map(Duration::from_secs),
        "what this test walked through"
    );

    // A link comes up and is dropped before the server said a word: the
    // backoff goes on (a server that drops every link we open was dialled
    // every second for ever).
    f.event(LinkEvent::Up(b.clone())).await;
    f.event(LinkEvent::Down(b.clone())).await;
    f.advance(CAP - MS).await;
    assert!(
        f.reconnects().await.is_empty(),
        "not reset by the link alone"
    );
    f.advance(2 * MS).await;
    assert_eq!(f.reconnects().await, std::slice::from_ref(&b));

    // The server is heard over a link: the next failure starts from the
    // base delay again.
    f.event(LinkEvent::Up(b.clone())).await;
    f.activity("srv-b").await;
    f.event(LinkEvent::Down(b.clone())).await;
    f.advance(BASE - MS).await;
    assert!(f.reconnects().await.is_empty());
    f.advance(2 * MS).await;
    assert_eq!(f.reconnects().await, [b]);
}

#[actix::test]
async fn one_reconnect_at_a_time_and_none_once_the_link_is_back() {
    let f = Fixture::start();
    let b = sid("srv-b");
    f.event(LinkEvent::Down(b.clone())).await;
    f.event(LinkEvent::Down(b.clone())).await;
    f.advance(BASE + MS).await;
    assert_eq!(
        f.reconnects().await,
        std::slice::from_ref(&b),
        "one retry for two reports"
    );

    // Down, then up again before the retry is due: no retry.
    f.event(LinkEvent::Down(b.clone())).await;
    f.event(LinkEvent::Up(b.clone())).await;
    f.advance(CAP + MS).await;
    assert!(f.reconnects().await.is_empty());
}

#[actix::test]
async fn a_server_that_said_goodbye_is_not_retried() {
    let f = Fixture::start();
    let b = sid("srv-b");
    f.event(LinkEvent::Up(b.clone())).await;
    f.event(LinkEvent::Gone(b.clone())).await;
    f.event(LinkEvent::Down(b.clone())).await;
    f.advance(2 * CAP).await;
    assert!(f.reconnects().await.is_empty());
    assert!(f.dead().await.is_empty(), "no longer watched");

    // Gone while a retry is pending cancels it.
    let c = sid("srv-c");
    f.event(LinkEvent::Down(c.clone())).await;
    f.event(LinkEvent::Gone(c.clone())).await;
    f.advance(2 * CAP).await;
    assert!(f.reconnects().await.is_empty());

    // It came back (linked to us again): retried as usual after that.
    f.event(LinkEvent::Up(b.clone())).await;
    f.event(LinkEvent::Down(b.clone())).await;
    f.advance(BASE + MS).await;
    assert_eq!(f.reconnects().await, [b]);
}

#[actix::test]
async fn backoff_starts_at_the_interval_or_a_second_and_caps() {
    let f = Fixture::start();
    let ports = || HeartbeatPorts {
        send_heartbeats: f.beats.recipient(),
        dead: f.dead.recipient(),
        reconnect: f.reconnect.recipient(),
    };
    let fast = Heartbeat::new(ports(), Duration::from_millis(200), Duration::from_secs(1));
    let delays: Vec<Duration> = (0..9).map(|a| fast.backoff(a)).collect();
    assert_eq!(
        delays,
        [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000].map(Duration::from_millis)
    );
    let slow = Heartbeat::new(ports(), Duration::from_secs(60), Duration::from_secs(180));
    assert_eq!(slow.backoff(0), Duration::from_secs(1));
    assert_eq!(
        slow.backoff(6),
        Duration::from_secs(60),
        "the cap is at least the interval"
    );
    assert_eq!(slow.backoff(u32::MAX), Duration::from_secs(60));
}
