//! Server assembly: the database and identity, the actors, and the actix-web
//! App (WebSocket at `/ws` and `/`, `/health`, `/status`).
//!
//! [`start`] binds first (tests pass port 0 and read the real port back), then
//! runs until [`RunningServer::shutdown`] (SIGINT/SIGTERM in the binary).
//!
//! With [`ServerConfig::tls`] the same App is served over TLS (`wss://`,
//! HTTP/1.1 only) and every link to another server or introducer is `wss://`.
//!
//! `http`: the listener's HTTP side (WebSocket upgrades and the plain
//! endpoints); this module: the configuration, the identity and [`start`].

mod http;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App};
use socp_actors::crypto::{CryptoPool, SignedFrame};
use socp_actors::heartbeat::{Heartbeat, HeartbeatPorts};
use socp_actors::introducer::{join_on, Bootstrap, IntroducerLink};
use socp_actors::peer::Dialer;
use socp_actors::ports::{RouterPort, StorePort};
use socp_actors::router::{GetStatus, Joined, Router, RouterPorts, Shutdown};
use socp_actors::routing::LinkState;
use socp_actors::routing::{Peer, RouterConfig, RouterState, Signer};
use socp_actors::store::Store;
use socp_actors::{Settings, Shared};
use socp_db::Db;
use socp_protocol::message::ServerAddress;
use socp_protocol::{Envelope, PrivateKey, ServerId};

use self::http::{health, index, metrics, not_upgraded, status, upgrade_service};

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port).
    pub bind: SocketAddr,
    /// Host other servers use to reach us (default: the bind host, or
    /// 127.0.0.1 when binding every interface).
    pub public_host: Option<String>,
    /// Our id: `None` for the persisted one, or a fresh UUID v4 on first start.
    pub server_id: Option<ServerId>,
    /// Introducers to join through, tried in order.
    pub bootstrap: Vec<Bootstrap>,
    /// The SQLite database file (`None`: in memory, for tests).
    pub db_path: Option<PathBuf>,
    /// Key to use when the database has no identity yet (tests pass fixture
    /// keys; otherwise a key is generated on first start, which takes seconds).
    pub first_key_pem: Option<String>,
    /// Limits, timings and modes.
    pub settings: Settings,
    /// Threads signing and verifying (default: one per core).
    pub crypto_threads: usize,
    /// `Some`: listen with TLS (`wss://`) and dial other servers with TLS;
    /// `None` (the default): plain `ws://` both ways.
    pub tls: Option<ServerTls>,
}

/// A server's TLS, both ways ([`server_tls`](crate::config::server_tls) builds it from PEM files).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The listener's certificate chain and key (ALPN `http/1.1` only).
    pub server: Arc<rustls::ServerConfig>,
    /// The roots trusted when dialling other servers and introducers; it
    /// becomes [`Settings::tls`].
    pub client: Arc<rustls::ClientConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8765)),
            public_host: None,
            server_id: None,
            bootstrap: Vec::new(),
            db_path: Some(PathBuf::from("chat.db")),
            first_key_pem: None,
            settings: Settings::default(),
            crypto_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            tls: None,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database cannot be opened or used.
    #[error("database: {0}")]
    Db(#[from] socp_db::Error),
    /// The listening socket cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it cannot be bound.
        source: std::io::Error,
    },
    /// The server's key cannot be read, generated or used.
    #[error("server key: {0}")]
    Key(#[from] socp_protocol::Error),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

/// A started server. Dropping it stops the server at once, as [`kill`](Self::kill)
/// does: keep it for as long as the server should run.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its server id.
    pub server_id: ServerId,
    router: Addr<Router>,
    handle: actix_web::dev::ServerHandle,
    /// The thread the router, heartbeat, dialer, introducer link and outbound
    /// links run on. Stopping it stops them all at once: without it a stopped
    /// server's outbound links and heartbeats would outlive it (and its
    /// reconnects would link it to the mesh again).
    core: Arbiter,
    /// The heartbeat's own thread: liveness checks must not starve behind a
    /// router busy with a burst (peers would be declared dead mid-transfer).
    beat: Arbiter,
}

/// The longest a graceful shutdown waits for its goodbyes to be written.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

impl RunningServer {
    /// The `/status` snapshot as JSON (what `/status` serves).
    pub async fn status(&self) -> serde_json::Value {
        match self.router.send(GetStatus).await {
            Ok(status) => serde_json::to_value(status).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Graceful shutdown: SERVER_GOODBYE and USER_REMOVE to every server,
    /// close code 1000 to everyone, then stop listening and stop every actor.
    /// It waits for the goodbye frames to be signed and for every session and
    /// link to close (their transports write what was queued, then the close
    /// frame), for at most [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        let deadline = actix_web::rt::time::Instant::now() + SHUTDOWN_GRACE;
        if let Ok(frames) = self.router.send(Shutdown).await {
            let signed = futures_util::future::join_all(frames.iter().map(|f| f.text()));
            let left = deadline.saturating_duration_since(actix_web::rt::time::Instant::now());
            if actix_web::rt::time::timeout(left, signed).await.is_err() {
                log::warn!("shutdown: goodbye frames still being signed; stopping anyway");
            }
        }
        while actix_web::rt::time::Instant::now() < deadline {
            match self.router.send(GetStatus).await {
                Ok(s)
                    if !s.local_users.is_empty()
                        || s.servers.iter().any(|x| x.link == LinkState::Up) =>
                {
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await
                }
                _ => break,
            }
        }
        self.handle.stop(true).await;
        // Dropping `self` stops the actors.
    }

    /// Stop at once without goodbyes (a crash, for tests): connections are
    /// dropped, not closed with a code.
    pub async fn kill(self) {
        self.core.stop();
        self.beat.stop();
        self.handle.stop(false).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.core.stop();
        self.beat.stop();
        // Sends the stop command now; the returned future only reports completion.
        drop(self.handle.stop(false));
    }
}

struct PoolSigner(CryptoPool);

impl Signer for PoolSigner {
    fn sign(&self, env: Envelope) -> SignedFrame {
        self.0.sign(env)
    }

    fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        self.0.sign_built(build)
    }
}

/// Load the server's identity, creating it on first start.
async fn identity(config: &ServerConfig, db: &Db) -> Result<(ServerId, PrivateKey), StartError> {
    let stored = {
        let db = db.clone();
        actix_web::rt::task::spawn_blocking(move || db.load_identity())
            .await
            .map_err(|e| StartError::Other(e.to_string()))??
    };
    if let Some(id) = stored {
        let key = PrivateKey::from_pem(&id.private_key_pem)?;
        if let Some(wanted) = &config.server_id {
            if *wanted != id.server_id {
                log::warn!(
                    "--server-id {wanted} ignored: this database belongs to server {}",
                    id.server_id
                );
            }
        }
        return Ok((id.server_id, key));
    }
    let server_id = config.server_id.clone().unwrap_or_else(ServerId::random);
    let pem = config.first_key_pem.clone();
    let key = actix_web::rt::task::spawn_blocking(move || match pem {
        Some(pem) => PrivateKey::from_pem(&pem),
        None => {
            log::info!("generating the server's RSA-4096 key (first start; takes a few seconds)");
            PrivateKey::generate()
        }
    })
    .await
    .map_err(|e| StartError::Other(e.to_string()))??;
    let pem = key.to_pkcs8_pem()?;
    let (db2, id2) = (db.clone(), server_id.clone());
    actix_web::rt::task::spawn_blocking(move || db2.save_identity(&id2, &pem))
        .await
        .map_err(|e| StartError::Other(e.to_string()))??;
    log::info!("created server identity {server_id}");
    Ok((server_id, key))
}

/// Start a server inside the running actix System.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let db = match &config.db_path {
        Some(path) => {
            let path = path.clone();
            actix_web::rt::task::spawn_blocking(move || Db::open(path))
                .await
                .map_err(|e| StartError::Other(e.to_string()))??
        }
        None => Db::open_in_memory()?,
    };
    let (mut me, key) = identity(&config, &db).await?;

    let listener = TcpListener::bind(config.bind).map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let host = config.public_host.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        }
    });
    // Links to other servers are TLS exactly when we serve TLS.
    let settings = Settings {
        tls: config.tls.as_ref().map(|t| Arc::clone(&t.client)),
        ..config.settings.clone()
    };
    let pool = CryptoPool::start(key, config.crypto_threads);
    let address = ServerAddress {
        host: host.clone(),
        port: addr.port(),
        pubkey: pool.public_key().clone(),
    };

    // The server's actors run on their own thread, so that stopping it stops
    // them all (see `RunningServer::core`).
    let core = Arbiter::try_new()
        .map_err(|e| StartError::Other(format!("cannot start the actors' thread: {e}")))?;

    // Join before serving, so the id the introducer assigns is the one we use.
    // The join runs on the actors' thread: its connection stays open there to
    // become our link to the introducer (SPEC.md §5.1.5).
    let max_frame = settings.limits.max_frame_bytes;
    let welcome = if config.bootstrap.is_empty() {
        None
    } else {
        match join_on(
            &core.handle(),
            pool.clone(),
            config.bootstrap.clone(),
            me.clone(),
            address.clone(),
            max_frame,
            settings.tls.clone(),
        )
        .await
        {
            Ok((w, pending)) => {
                if w.assigned_id != me {
                    log::warn!(
                        "introducer assigned id {} (another server holds {me})",
                        w.assigned_id
                    );
                    me = w.assigned_id.clone();
                    let (db2, id2, pem) = (db.clone(), me.clone(), pool_pem(&db)?);
                    actix_web::rt::task::spawn_blocking(move || db2.replace_identity(&id2, &pem))
                        .await
                        .map_err(|e| StartError::Other(e.to_string()))??;
                }
                Some((w, pending))
            }
            Err(e) => {
                log::warn!("no introducer reachable ({e}): running standalone, retrying");
                None
            }
        }
    };

    let public_version = {
        let db = db.clone();
        actix_web::rt::task::spawn_blocking(move || db.public_version())
            .await
            .map_err(|e| StartError::Other(e.to_string()))??
    };
    let known = {
        let db = db.clone();
        actix_web::rt::task::spawn_blocking(move || db.known_servers())
            .await
            .map_err(|e| StartError::Other(e.to_string()))??
    };
    // The directory of registered users, a block of presence sequence
    // numbers no earlier run used (2^40 per run; never below the clock in µs),
    // and the DMs kept for offline users.
    let (directory, presence_seq, mail) = {
        let db = db.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let floor = u64::try_from(socp_protocol::now_ms()).unwrap_or(0) * 1000;
            Ok::<_, socp_db::Error>((
                db.directory()?,
                db.take_counter("presence_seq", floor, 1 << 40)?,
                db.mailboxes()?,
            ))
        })
        .await
        .map_err(|e| StartError::Other(e.to_string()))??
    };
    let store = Store::start(db, 2);
    let mut state = RouterState::new(
        RouterConfig {
            me: me.clone(),
            host: host.clone(),
            port: addr.port(),
            pubkey: pool.public_key().clone(),
            introducer_only: settings.introducer_only,
            seen_capacity: 262_144,
            public_version,
            presence_seq,
            directory_cap: settings.directory_cap,
            budgets: settings.budgets.clone(),
            allowlist: settings.allowlist.clone(),
        },
        Arc::new(PoolSigner(pool.clone())),
    );
    state.load_directory(&directory);
    state.load_mail(&mail);

    // Liveness on its own thread: a router busy with a burst must not make
    // its peers look dead.
    let beat = Arbiter::try_new()
        .map_err(|e| StartError::Other(format!("cannot start the heartbeat thread: {e}")))?;
    let beat_thread = beat.handle();
    let (shared_tx, shared_rx) = std::sync::mpsc::channel();
    let (interval, timeout) = (settings.heartbeat_interval, settings.peer_timeout);
    let (pool2, store2, me2, host2, settings2) = (
        pool.clone(),
        store.clone(),
        me.clone(),
        host.clone(),
        settings.clone(),
    );
    let port = addr.port();
    let router = Router::start_in_arbiter(&core.handle(), move |ctx| {
        let (pool, store, me, host, settings) = (pool2, store2, me2, host2, settings2);
        let ports = HeartbeatPorts {
            send_heartbeats: ctx.address().recipient(),
            dead: ctx.address().recipient(),
            reconnect: ctx.address().recipient(),
        };
        let heartbeat = Heartbeat::start_in_arbiter(&beat_thread, move |_| {
            Heartbeat::new(ports, interval, timeout)
        });
        let shared = Shared::new(
            RouterPort::of(&ctx.address()),
            pool.clone(),
            StorePort::of(&store),
            heartbeat.clone().recipient(),
            me,
            (host, port),
            settings,
        );
        let dialer = Dialer::new(shared.clone(), heartbeat.clone().recipient()).start();
        // The receiver waits below; it is gone only if `start` was dropped.
        let _ = shared_tx.send(shared);
        Router::new(
            state,
            RouterPorts {
                store: store.clone().recipient(),
                dialer: dialer.recipient(),
                liveness: heartbeat.recipient(),
            },
        )
    });
    let shared = actix_web::rt::task::spawn_blocking(move || shared_rx.recv())
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
        .map_err(|_| StartError::Other("router did not start".into()))?;

    // Users registered here before records existed: published now.
    for entry in directory
        .iter()
        .filter(|e| e.user.home_server.is_none() && e.record.is_none())
    {
        if let Some(record) = socp_actors::routing::own_record(&entry.user, &me) {
            router.do_send(socp_actors::router::Publish(record));
        }
    }

    // Servers remembered from earlier runs: learn them and link again.
    for k in known {
        if k.server_id == me {
            continue;
        }
        let peer = Peer {
            server_id: k.server_id,
            host: k.host,
            port: k.port,
            pubkey: k.pubkey,
        };
        router.do_send(socp_actors::router::Remember(peer));
    }
    // A closed mesh's servers with an address: linked from the start.
    for peer in settings.allowlist.iter().flat_map(|l| l.peers()) {
        if peer.server_id != me {
            router.do_send(socp_actors::router::Remember(peer));
        }
    }
    match welcome {
        Some((w, pending)) => {
            // The welcome first: the link's first message comes after it.
            router.do_send(Joined(w, pending.introducer().cloned()));
            pending.link(Some(shared.clone()));
        }
        None if !config.bootstrap.is_empty() => {
            let link = IntroducerLink::new(
                pool.clone(),
                router.clone().recipient(),
                config.bootstrap.clone(),
                me.clone(),
                address,
                max_frame,
                Duration::from_secs(2).min(settings.heartbeat_interval),
            )
            .tls(settings.tls.clone())
            .links(shared.clone());
            IntroducerLink::start_in_arbiter(&core.handle(), move |_| link);
        }
        None => {}
    }

    let ws_shared = shared.clone();
    let data = web::Data::new(shared);
    let router_data = web::Data::new(router.clone());
    // A connection that never completes its HTTP request is closed by the HTTP
    // layer on the same deadline as one that upgrades and never identifies,
    // but never sooner than actix-web's 5 s (a slow handshake is not cut short).
    let identify_timeout = settings.identify_timeout.max(Duration::from_secs(5));
    let app = move || {
        let app = App::new()
            .app_data(data.clone())
            .app_data(router_data.clone())
            .route("/ws", web::get().to(not_upgraded))
            .route("/", web::get().to(index))
            .route("/health", web::get().to(health))
            .route("/status", web::get().to(status))
            .route("/metrics", web::get().to(metrics));
        actix_service::map_config(app, |()| actix_web::dev::AppConfig::default())
    };
    let bind_error = |source| StartError::Bind {
        addr: config.bind,
        source,
    };
    // The App behind actix-http's HTTP/1.1 service (HttpServer's own rustls
    // listener would offer h2 in ALPN, as awc turns actix-http's http2 feature
    // on), with an upgrade service that takes WebSocket connections over.
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    macro_rules! http {
        ($secure:expr) => {{
            let shutdown = shutdown.clone();
            let http = actix_http::HttpService::build()
                .client_request_timeout(identify_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .upgrade(upgrade_service(ws_shared.clone()));
            if $secure {
                http.secure().h1(app())
            } else {
                http.h1(app())
            }
        }};
    }
    let builder = builder.workers(2).disable_signals();
    let server = match &config.tls {
        None => builder
            .listen("socp-ws", listener, move || http!(false).tcp())
            .map_err(bind_error)?
            .run(),
        Some(tls) => {
            let tls = Arc::clone(&tls.server);
            builder
                .listen("socp-wss", listener, move || {
                    http!(true).rustls_0_23(rustls::ServerConfig::clone(&tls))
                })
                .map_err(bind_error)?
                .run()
        }
    };
    let handle = server.handle();
    actix_web::rt::spawn(server);
    log::info!(
        "socp server {me} listening on {}{}",
        crate::url::ws_url(config.tls.is_some(), &addr.ip().to_string(), addr.port()),
        if settings.introducer_only {
            " (directory-only introducer)"
        } else {
            ""
        }
    );
    Ok(RunningServer {
        addr,
        server_id: me,
        router,
        handle,
        core,
        beat,
    })
}

fn pool_pem(db: &Db) -> Result<String, StartError> {
    db.load_identity()?
        .map(|i| i.private_key_pem)
        .ok_or_else(|| StartError::Other("identity vanished".into()))
}
