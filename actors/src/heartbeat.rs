//! Heartbeat: owns liveness. Every interval it has the router send HEARTBEAT
//! to every linked server and checks the last frame time of each; a server
//! silent past the timeout is declared dead. Links that go down are retried
//! with exponential backoff (SPEC.md §5.6).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;
use socp_protocol::ServerId;
use tokio::time::Instant;

use crate::router::{LinkEvent, PeerDead, Reconnect, SendHeartbeats};

/// A frame arrived from this server.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Activity(pub ServerId);

/// Where the heartbeat's decisions go (the router; recorders in tests).
pub struct HeartbeatPorts {
    /// Time to send HEARTBEATs (the router signs and sends them).
    pub send_heartbeats: Recipient<SendHeartbeats>,
    /// A linked server went silent past the timeout.
    pub dead: Recipient<PeerDead>,
    /// Time to dial a lost server again (after backoff).
    pub reconnect: Recipient<Reconnect>,
}

/// The liveness actor.
pub struct Heartbeat {
    ports: HeartbeatPorts,
    interval: Duration,
    timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `max_backoff`.
    base_backoff: Duration,
    max_backoff: Duration,
    /// Last frame time of each linked server.
    last_seen: HashMap<ServerId, Instant>,
    /// Failed attempts per server since its link was last up.
    attempts: HashMap<ServerId, u32>,
    /// Servers with a reconnect already scheduled.
    scheduled: HashSet<ServerId>,
    /// Servers that said goodbye: not retried.
    gone: HashSet<ServerId>,
}

impl Heartbeat {
    /// A heartbeat with the given interval and timeout.
    pub fn new(ports: HeartbeatPorts, interval: Duration, timeout: Duration) -> Self {
        Heartbeat {
            ports,
            interval,
            timeout,
            base_backoff: interval.min(Duration::from_secs(1)),
            max_backoff: Duration::from_secs(30).max(interval),
            last_seen: HashMap::new(),
            attempts: HashMap::new(),
            scheduled: HashSet::new(),
            gone: HashSet::new(),
        }
    }

    /// The delay before reconnect attempt number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff)
    }

    fn tick(&mut self) {
        self.ports.send_heartbeats.do_send(SendHeartbeats);
        let now = Instant::now();
        let dead: Vec<ServerId> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > self.timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            log::warn!("no frame from server {id} for {:?}: dead", self.timeout);
            self.last_seen.remove(&id);
            self.ports.dead.do_send(PeerDead(id));
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, id: ServerId) {
        if self.gone.contains(&id) || !self.scheduled.insert(id.clone()) {
            return;
        }
        let attempt = self.attempts.get(&id).copied().unwrap_or(0);
        let delay = self.backoff(attempt);
        self.attempts.insert(id.clone(), attempt.saturating_add(1));
        log::info!("reconnecting to server {id} in {delay:?}");
        ctx.run_later(delay, move |act, _| {
            act.scheduled.remove(&id);
            if !act.gone.contains(&id) && !act.last_seen.contains_key(&id) {
                act.ports.reconnect.do_send(Reconnect(id));
            }
        });
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, _| act.tick());
    }
}

impl Handler<Activity> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: Activity, _: &mut Self::Context) {
        if let Some(seen) = self.last_seen.get_mut(&msg.0) {
            *seen = Instant::now();
            // Heard over a link: the next failure starts the backoff afresh.
            self.attempts.remove(&msg.0);
        }
    }
}

impl Handler<LinkEvent> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: LinkEvent, ctx: &mut Self::Context) {
        match msg {
            // The backoff is not reset until the server is heard: one that
            // drops every link we open is not dialled every second for ever.
            LinkEvent::Up(id) => {
                self.gone.remove(&id);
                self.last_seen.insert(id, Instant::now());
            }
            LinkEvent::Down(id) => {
                self.last_seen.remove(&id);
                self.schedule(ctx, id);
            }
            LinkEvent::Gone(id) => {
                self.last_seen.remove(&id);
                self.gone.insert(id);
            }
        }
    }
}
