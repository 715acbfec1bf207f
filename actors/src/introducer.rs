//! IntroducerLink: the joining side of bootstrap (SPEC.md §5.1). The
//! introducer side (answering SERVER_HELLO_JOIN) is in
//! [`PeerLink`](crate::peer::PeerLink) and [`RouterState::welcome`](crate::routing::RouterState::welcome).
//!
//! A joining server tries the introducers of its bootstrap list in order:
//! SERVER_HELLO_JOIN, then a SERVER_WELCOME signed by the introducer (by the
//! key pinned in the list when there is one). The join connection stays open
//! and becomes our link to the introducer (SPEC.md §5.1.5) when we know its
//! key; else it is closed with a close frame and nothing links to it. None
//! reachable: it runs standalone and the IntroducerLink keeps retrying in
//! the background.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use socp_protocol::message::{ServerAddress, ServerHelloJoin, ServerWelcome};
use socp_protocol::{now_ms, Envelope, Message, PublicKey, ServerId, To};

use crate::crypto::CryptoPool;
use crate::router::Joined;
use crate::routing::Peer;

/// An open WebSocket connection we dialled.
pub type Connection = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// A join answered.
pub struct Welcomed {
    /// The welcome to apply.
    pub welcome: ServerWelcome,
    /// The introducer, when its key is known, and the join connection, open:
    /// our link to it (SPEC.md §5.1.5).
    pub link: Option<(Peer, Connection)>,
}

impl Welcomed {
    /// Make the join connection our link to the introducer, over `shared`'s
    /// ports (after the router was given the welcome); without `shared` it
    /// is closed and nothing links to the introducer. Returns the server the
    /// connection links, not to be dialled.
    pub fn link_over(self, shared: Option<&crate::Shared>) -> (ServerWelcome, Option<ServerId>) {
        let Some((peer, conn)) = self.link else {
            return (self.welcome, None);
        };
        match shared {
            Some(shared) => {
                let linked = peer.server_id.clone();
                crate::peer::PeerLink::start_outbound(shared.clone(), conn, peer, false);
                (self.welcome, Some(linked))
            }
            None => {
                actix::spawn(close(conn, "joined; not linking"));
                (self.welcome, None)
            }
        }
    }
}

/// Close a connection with a close frame (not a dropped socket, 1006).
async fn close(mut conn: Connection, why: &str) {
    let bye = awc::ws::Message::Close(Some(awc::ws::CloseReason {
        code: awc::ws::CloseCode::Normal,
        description: Some(why.to_owned()),
    }));
    let _ = conn.send(bye).await;
    let _ = conn.close().await;
}

/// One introducer of the bootstrap list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// Host name or address of the introducer.
    pub host: String,
    /// Its WebSocket port.
    pub port: u16,
    /// The introducer's key, if pinned: its WELCOME must verify with it.
    pub pubkey: Option<PublicKey>,
}

impl Bootstrap {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// How long one introducer gets to answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Join through one introducer: send our signed SERVER_HELLO_JOIN and return
/// the introducer's verified SERVER_WELCOME, with the join connection. Over
/// `wss://` with `tls` (see [`Settings::tls`](crate::Settings::tls)), else
/// `ws://`.
pub async fn join_once(
    pool: &CryptoPool,
    entry: &Bootstrap,
    me: &ServerId,
    address: &ServerAddress,
    max_frame: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Welcomed, String> {
    let client = crate::ws_client(tls, JOIN_TIMEOUT);
    let url = crate::ws_url(tls.is_some(), &entry.host, entry.port);
    let hello = socp_protocol::dialect::with_capability(Envelope::new(
        me,
        To::HostPort(entry.address()),
        now_ms(),
        &ServerHelloJoin(address.clone()),
    ));
    let text = pool
        .sign(hello)
        .text()
        .await
        .ok_or_else(|| "could not sign SERVER_HELLO_JOIN".to_owned())?;
    let exchange = async {
        let (_, mut framed) = client
            .ws(url.as_str())
            .max_frame_size(max_frame)
            .connect()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        framed
            .send(awc::ws::Message::Text(bytestring::ByteString::from(&*text)))
            .await
            .map_err(|e| format!("send to {url}: {e}"))?;
        loop {
            match framed.next().await {
                Some(Ok(awc::ws::Frame::Text(bytes))) => return Ok((bytes, framed)),
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    let _ = framed.send(awc::ws::Message::Pong(p)).await;
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    return Err(format!("{url} closed the join: {reason:?}"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("{url}: {e}")),
                None => return Err(format!("{url} closed the join")),
            }
        }
    };
    let (bytes, conn) = tokio::time::timeout(JOIN_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url} did not answer in time"))??;
    let checked = read_welcome(pool, entry, me, &url, &bytes, max_frame).await;
    let (welcome, introducer) = match checked {
        Ok(read) => read,
        Err(e) => {
            close(conn, "bad welcome").await;
            return Err(e);
        }
    };
    let link = match introducer {
        Some(peer) => Some((peer, conn)),
        None => {
            keep_open(conn, url);
            None
        }
    };
    Ok(Welcomed { welcome, link })
}

/// The join connection to an introducer whose key we do not know (it
/// signed nothing we can check): no link, but kept open, its pings
/// answered and its frames left unread. One implementation's introducer
/// forgets a server as soon as that connection closes, and would then
/// welcome the next joiner without us: it would never link to us.
fn keep_open(mut conn: Connection, url: String) {
    actix::spawn(async move {
        let mut unread = 0u64;
        loop {
            match conn.next().await {
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    if conn.send(awc::ws::Message::Pong(p)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(awc::ws::Frame::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => unread += 1,
            }
        }
        log::info!(
            "the join connection to {url} (an introducer we hold no key for) closed; \
             {unread} frames on it were left unread"
        );
    });
}

/// The verified SERVER_WELCOME in answer to our join through `entry`, and
/// the introducer as a link peer when its key is known.
async fn read_welcome(
    pool: &CryptoPool,
    entry: &Bootstrap,
    me: &ServerId,
    url: &str,
    bytes: &[u8],
    max_frame: usize,
) -> Result<(ServerWelcome, Option<Peer>), String> {
    let env = Envelope::parse_with(
        bytes,
        &socp_protocol::Limits {
            max_frame_bytes: max_frame,
            ..Default::default()
        },
    )
    .map_err(|e| format!("bad answer from {url}: {e}"))?;
    match env.message() {
        Ok(Message::ServerWelcome(_)) => {}
        Ok(Message::Error(e)) => {
            return Err(format!("{url} refused the join: {} {}", e.code, e.detail))
        }
        // A welcome the typed form refuses (no `assigned_id`, say) is read
        // leniently below.
        Err(_) if env.msg_type() == "SERVER_WELCOME" => {}
        Ok(other) => return Err(format!("{url} answered {}", other.msg_type().as_str())),
        Err(e) => return Err(format!("bad answer from {url}: {e}")),
    }
    let welcome: LenientWelcome = serde_json::from_value(env.payload().clone())
        .map_err(|e| format!("bad SERVER_WELCOME from {url}: {e}"))?;
    let introducer = env.from_server();
    // The key that must have signed it: pinned; else the one it gives as
    // `server_pub`, or lists for its sender (trust on first use).
    let listed = welcome
        .servers
        .iter()
        .find(|s| s.server_id == introducer)
        .map(|s| s.pubkey.clone());
    let key = entry
        .pubkey
        .clone()
        .or_else(|| welcome.server_pub.clone())
        .or(listed.clone());
    match (&key, env.sig().is_some()) {
        (Some(key), true) => match pool.verify(env, key.clone()).await {
            Some((_, true)) => {}
            _ => return Err(format!("{url}: SERVER_WELCOME signature does not verify")),
        },
        (_, false) if entry.pubkey.is_some() => {
            return Err(format!(
                "{url}: unsigned SERVER_WELCOME from a pinned introducer"
            ))
        }
        // Not pinned, and unsigned or with no key to check it by: trust on
        // first use, as for an unpinned key, said in the log.
        _ => log::warn!(
            "{url}: SERVER_WELCOME taken on trust (not pinned, {})",
            if key.is_some() {
                "unsigned"
            } else {
                "no key to check it with"
            }
        ),
    }
    let welcome =
        welcome.into_welcome(me, introducer.clone(), entry, key.clone(), listed.is_some());
    // Where the introducer says it is reached (its welcome lists it), else
    // where we reached it.
    let peer = key.map(|pubkey| {
        let at = welcome.servers.iter().find(|s| s.server_id == introducer);
        Peer {
            server_id: introducer.clone(),
            host: at.map_or_else(|| entry.host.clone(), |s| s.host.clone()),
            port: at.map_or(entry.port, |s| s.port),
            pubkey,
        }
    });
    Ok((welcome, peer))
}

/// SERVER_WELCOME as introducers send it: `assigned_id` null or absent
/// (keep the id asked with), no `servers` list, the introducer's key as
/// `server_pub`, the introducer not among `servers`.
#[derive(serde::Deserialize)]
struct LenientWelcome {
    #[serde(default)]
    assigned_id: Option<ServerId>,
    #[serde(default)]
    servers: Vec<socp_protocol::message::ServerInfo>,
    #[serde(default)]
    clients: Vec<socp_protocol::message::ClientInfo>,
    #[serde(default)]
    server_pub: Option<PublicKey>,
}

impl LenientWelcome {
    /// The welcome to apply: the id it assigns (ours if none), and the
    /// introducer among the servers to link to when it did not list itself
    /// but its key is known (it is reached where we reached it).
    fn into_welcome(
        self,
        me: &ServerId,
        introducer: ServerId,
        entry: &Bootstrap,
        key: Option<PublicKey>,
        listed: bool,
    ) -> ServerWelcome {
        let mut servers = self.servers;
        if let (false, Some(pubkey)) = (listed, key) {
            servers.insert(
                0,
                socp_protocol::message::ServerInfo {
                    server_id: introducer,
                    host: entry.host.clone(),
                    port: entry.port,
                    pubkey,
                },
            );
        }
        ServerWelcome {
            assigned_id: self.assigned_id.unwrap_or_else(|| me.clone()),
            servers,
            clients: self.clients,
        }
    }
}

/// Try each introducer in order; the first welcome wins.
pub async fn join_any(
    pool: &CryptoPool,
    list: &[Bootstrap],
    me: &ServerId,
    address: &ServerAddress,
    max_frame: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Welcomed, String> {
    let mut errors = Vec::new();
    for entry in list {
        if entry.host == address.host && entry.port == address.port {
            continue; // ourselves
        }
        match join_once(pool, entry, me, address, max_frame, tls).await {
            Ok(w) => return Ok(w),
            Err(e) => {
                log::info!("join through {} failed: {e}", entry.address());
                errors.push(e);
            }
        }
    }
    Err(if errors.is_empty() {
        "no introducer to join".to_owned()
    } else {
        errors.join("; ")
    })
}

/// A join made by [`join_on`] whose connection waits, on its arbiter, to
/// become our link to the introducer.
pub struct Pending {
    link: Option<(
        ServerId,
        tokio::sync::oneshot::Sender<Option<crate::Shared>>,
    )>,
}

impl Pending {
    /// The server the join connection will link (not to be dialled).
    pub fn introducer(&self) -> Option<&ServerId> {
        self.link.as_ref().map(|(id, _)| id)
    }

    /// Make the join connection our link over `shared`'s ports (once the
    /// router has the welcome), or close it (`None`, or dropped unused).
    pub fn link(self, shared: Option<crate::Shared>) {
        if let Some((_, tx)) = self.link {
            let _ = tx.send(shared);
        }
    }
}

/// [`join_any`] on `arbiter`'s thread, where the server's links run (a
/// connection stays on the thread that opened it): the welcome, and the join
/// connection waiting there for [`Pending::link`].
pub async fn join_on(
    arbiter: &actix::ArbiterHandle,
    pool: CryptoPool,
    list: Vec<Bootstrap>,
    me: ServerId,
    address: ServerAddress,
    max_frame: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(ServerWelcome, Pending), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    arbiter.spawn_fn(move || {
        actix::spawn(async move {
            let result = join_any(&pool, &list, &me, &address, max_frame, tls.as_ref()).await;
            let Welcomed { welcome, link } = match result {
                Ok(welcomed) => welcomed,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let Some((peer, conn)) = link else {
                let _ = tx.send(Ok((welcome, None)));
                return;
            };
            let (link_tx, link_rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Ok((welcome, Some((peer.server_id.clone(), link_tx)))));
            match link_rx.await {
                Ok(Some(shared)) => {
                    crate::peer::PeerLink::start_outbound(shared, conn, peer, false);
                }
                _ => close(conn, "joined; not linking").await,
            }
        });
    });
    match rx.await {
        Ok(Ok((welcome, link))) => Ok((welcome, Pending { link })),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the join was dropped".to_owned()),
    }
}

/// Keeps trying to join while the server runs standalone.
pub struct IntroducerLink {
    pool: CryptoPool,
    /// Where the welcome goes (the router).
    joined: Recipient<Joined>,
    list: Vec<Bootstrap>,
    me: ServerId,
    address: ServerAddress,
    max_frame: usize,
    retry: Duration,
    attempt: u32,
    /// `Some`: join over `wss://` with these roots (see [`IntroducerLink::tls`]).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The server's ports: the join connection becomes our link to the
    /// introducer (see [`IntroducerLink::links`]); `None`: it is closed.
    shared: Option<crate::Shared>,
}

impl IntroducerLink {
    /// A link that retries every `retry` (doubling up to 60 s).
    pub fn new(
        pool: CryptoPool,
        joined: Recipient<Joined>,
        list: Vec<Bootstrap>,
        me: ServerId,
        address: ServerAddress,
        max_frame: usize,
        retry: Duration,
    ) -> Self {
        IntroducerLink {
            pool,
            joined,
            list,
            me,
            address,
            max_frame,
            retry,
            attempt: 0,
            tls: None,
            shared: None,
        }
    }

    /// Join over `wss://`, trusting the roots of `tls` (`None`: `ws://`).
    pub fn tls(self, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        IntroducerLink { tls, ..self }
    }

    /// Keep the join connection as our link to the introducer, over the
    /// server's `shared` ports (started in this actor's arbiter).
    pub fn links(self, shared: crate::Shared) -> Self {
        IntroducerLink {
            shared: Some(shared),
            ..self
        }
    }

    fn try_join(&mut self, ctx: &mut Context<Self>) {
        let (pool, list, me, address, max_frame, tls) = (
            self.pool.clone(),
            self.list.clone(),
            self.me.clone(),
            self.address.clone(),
            self.max_frame,
            self.tls.clone(),
        );
        let fut =
            async move { join_any(&pool, &list, &me, &address, max_frame, tls.as_ref()).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok(welcomed) if welcomed.welcome.assigned_id == act.me => {
                let w = &welcomed.welcome;
                log::info!("joined the mesh: {} servers, {} users", w.servers.len(), w.clients.len());
                act.joined.do_send(Joined::new(welcomed, act.shared.as_ref()));
                ctx.stop();
            }
            Ok(welcomed) => {
                log::error!(
                    "the introducer assigned id {} but we run as {}: another server holds our id; not joining",
                    welcomed.welcome.assigned_id,
                    act.me
                );
                welcomed.link_over(None);
                ctx.stop();
            }
            Err(e) => {
                let delay = act
                    .retry
                    .saturating_mul(1u32 << act.attempt.min(6))
                    .min(Duration::from_secs(60));
                act.attempt += 1;
                log::warn!("running standalone, no introducer reachable ({e}); retrying in {delay:?}");
                ctx.run_later(delay, |act, ctx| act.try_join(ctx));
            }
        }));
    }
}

impl Actor for IntroducerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.try_join(ctx);
    }
}
