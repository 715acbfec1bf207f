//! # socp-actors
//!
//! The server's actix actors (ARCHITECTURE.md):
//! - [`router`]: the Router, sole owner of presence, servers and seen-ids, over
//!   the plain [`routing::RouterState`] whose methods return what to send;
//! - [`session`]: ClientSession, one per connected user;
//! - [`peer`]: PeerLink, one per server link (inbound or outbound), and the dialer;
//! - [`introducer`]: joining a mesh through an introducer;
//! - [`heartbeat`]: liveness, dead-peer detection, reconnect with backoff;
//! - [`crypto`]: CryptoPool, all RSA off the event loops;
//! - [`budget`]: memory budgets for the frames a connection makes the server hold;
//! - [`store`]: Store, all SQLite off the event loops;
//! - [`transport`]: WebSocket transports and the ordered outbound queue;
//! - [`metrics`]: counters of every rejection, for `/metrics`.

pub mod budget;
pub mod crypto;
pub mod dialect;
pub mod episode;
pub mod error;
pub mod heartbeat;
pub mod introducer;
pub mod metrics;
pub mod peer;
pub mod ports;
pub mod router;
pub mod routing;
pub mod session;
pub mod store;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use socp_protocol::{Limits, ServerId};

use crate::crypto::CryptoPool;
use crate::heartbeat::Activity;
use crate::ports::{RouterPort, StorePort};
use crate::routing::ConnId;

/// Limits and timings of a server. The defaults are SPEC.md's.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Frame and envelope size limits.
    pub limits: Limits,
    /// A connection must identify within this long.
    pub identify_timeout: Duration,
    /// Sustained frames per second a user may send.
    pub user_rate: f64,
    /// Burst of frames a user may send.
    pub user_burst: f64,
    /// Frames from one user waiting to be processed before it is cut off.
    pub max_backlog: usize,
    /// Accept only registered users.
    pub require_registration: bool,
    /// A directory-only introducer: no users, no chat.
    pub introducer_only: bool,
    /// HEARTBEAT every this long.
    pub heartbeat_interval: Duration,
    /// A server silent this long is dead.
    pub peer_timeout: Duration,
    /// Users are WebSocket-pinged this often.
    pub user_ping_interval: Duration,
    /// A user silent this long (no frame, no pong) is detached.
    pub user_timeout: Duration,
    /// Signed hellos must be this fresh (ms).
    pub hello_window_ms: i64,
    /// Content frames must be this fresh (ms).
    pub ts_window_ms: i64,
    /// Most directory records kept per other server (SPEC.md §6.1 [ext]).
    pub directory_cap: usize,
    /// What linked servers may make this server hold or do.
    pub budgets: routing::Budgets,
    /// Frames per second one linked server may send (twice that in a burst).
    pub link_frames_per_second: f64,
    /// Bytes per second one linked server may send (twice that in a burst).
    pub link_bytes_per_second: f64,
    /// Registrations one connection may make.
    pub registrations_per_connection: u32,
    /// Registrations the server accepts in any hour.
    pub registrations_per_hour: usize,
    /// Login challenges the server hands out a minute, over every connection.
    pub logins_per_minute: f64,
    /// Bytes of a user's frames the server may hold at once (waiting to be
    /// checked, signed or written to their recipients); past it, RATE_LIMITED.
    pub conn_memory_budget: usize,
    /// The same for a linked server (it carries many users' traffic); past
    /// it, its frames are dropped and counted.
    pub link_memory_budget: usize,
    /// The same summed over every connection.
    pub server_memory_budget: usize,
    /// A closed federation's allowlist: only its servers may link, join or
    /// be learnt (`None`: an open mesh, SPEC.md §5.1).
    pub allowlist: Option<Arc<routing::Allowlist>>,
    /// Open WebSocket connections past which the oldest unidentified ones
    /// are shed (closed 1013) to make room (`None`: never; `socp-server`
    /// sets it from its descriptor limit).
    pub max_connections: Option<usize>,
    /// Bytes a second a user may send (frames count against `user_rate` as
    /// well), in bursts of up to two seconds' worth.
    pub user_bytes_per_second: f64,
    /// TLS for the links this server opens to other servers and introducers:
    /// `None` dials `ws://`, `Some` dials `wss://` and verifies the other side
    /// against these roots. Server addresses (SPEC's SERVER_ANNOUNCE, server
    /// lists) carry no scheme, so a mesh is all-TLS or all-plain.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            identify_timeout: Duration::from_secs(10),
            user_rate: 50.0,
            user_burst: 200.0,
            max_backlog: 256,
            require_registration: false,
            introducer_only: false,
            heartbeat_interval: Duration::from_secs(15),
            peer_timeout: Duration::from_secs(45),
            user_ping_interval: Duration::from_secs(15),
            user_timeout: Duration::from_secs(45),
            hello_window_ms: 2 * 60 * 1000,
            ts_window_ms: socp_protocol::envelope::TS_WINDOW_MS,
            directory_cap: 10_000,
            budgets: routing::Budgets::default(),
            link_frames_per_second: 2_000.0,
            link_bytes_per_second: 64.0 * 1024.0 * 1024.0,
            registrations_per_connection: 3,
            registrations_per_hour: 100,
            logins_per_minute: 600.0,
            conn_memory_budget: 8 << 20,
            link_memory_budget: 64 << 20,
            server_memory_budget: 512 << 20,
            user_bytes_per_second: 24.0 * 1024.0 * 1024.0,
            allowlist: None,
            max_connections: None,
            tls: None,
        }
    }
}

/// What every session and link needs: the router, the pools, our id.
#[derive(Clone)]
pub struct Shared {
    /// The router's ports (shared: a `Shared` is cloned per connection and
    /// per request, and a port set is a dozen boxed recipients).
    pub router: Arc<RouterPort>,
    /// RSA off the event loops.
    pub pool: CryptoPool,
    /// The store's ports (shared, as the router's).
    pub store: Arc<StorePort>,
    /// Where sessions and links report that a peer is alive (the heartbeat).
    pub liveness: Recipient<Activity>,
    /// Our server id.
    pub me: ServerId,
    /// Where other servers reach us (host, port), as our hellos say.
    pub advertised: (String, u16),
    /// Limits and timings.
    pub settings: Arc<Settings>,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Server-wide limits on registrations and logins.
    pub(crate) admission: Arc<session::Admission>,
    /// The server-wide memory budget every connection's is charged with.
    pub memory: Arc<budget::Budget>,
    /// Open connections, and the unidentified ones that can be shed.
    pub connections: Arc<transport::Connections>,
    conn_ids: Arc<AtomicU64>,
    /// Join connections kept open without being a link (welcomed and not
    /// yet used, or retired): bounded, see `peer::MAX_KEPT_JOINS`.
    pub(crate) kept_joins: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    /// Bundle the server's shared parts.
    pub fn new(
        router: RouterPort,
        pool: CryptoPool,
        store: StorePort,
        liveness: Recipient<Activity>,
        me: ServerId,
        advertised: (String, u16),
        settings: Settings,
    ) -> Self {
        Shared {
            router: Arc::new(router),
            pool,
            store: Arc::new(store),
            liveness,
            me,
            advertised,
            admission: Arc::new(session::Admission::new(
                settings.registrations_per_hour,
                settings.logins_per_minute,
            )),
            memory: budget::Budget::new(settings.server_memory_budget),
            connections: transport::Connections::new(
                settings.max_connections.unwrap_or(usize::MAX),
            ),
            settings: Arc::new(settings),
            metrics: Arc::default(),
            conn_ids: Arc::new(AtomicU64::new(1)),
            kept_joins: Arc::default(),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The URL of a server's WebSocket endpoint: `wss://HOST:PORT/ws` when `tls`,
/// `ws://HOST:PORT/ws` otherwise (an IPv6 host in brackets).
pub fn ws_url(tls: bool, host: &str, port: u16) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}/ws")
    } else {
        format!("{scheme}://{host}:{port}/ws")
    }
}

/// An awc client for WebSocket handshakes: plain, or TLS with `tls` (whose
/// roots decide whom we trust; `socp::config` builds it with ALPN `http/1.1`
/// only, as socp never speaks HTTP/2).
pub fn ws_client(tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> awc::Client {
    let builder = awc::Client::builder().timeout(timeout);
    match tls {
        Some(config) => builder
            .connector(awc::Connector::new().rustls_0_23(Arc::clone(config)))
            .finish(),
        None => builder.finish(),
    }
}
