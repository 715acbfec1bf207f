//! IntroducerLink: the joining side of bootstrap (SPEC.md §5.1). The
//! introducer side (answering SERVER_HELLO_JOIN) is in
//! [`PeerLink`](crate::peer::PeerLink) and [`RouterState::welcome`](crate::routing::RouterState::welcome).
//!
//! A joining server tries the introducers of its bootstrap list in order:
//! SERVER_HELLO_JOIN, then a SERVER_WELCOME signed by the introducer (by the
//! key pinned in the list when there is one). None reachable: it runs
//! standalone and the IntroducerLink keeps retrying in the background.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use socp_protocol::message::{ServerAddress, ServerHelloJoin, ServerWelcome};
use socp_protocol::{now_ms, Envelope, Message, PublicKey, ServerId, To};

use crate::crypto::CryptoPool;
use crate::router::Joined;

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
/// the introducer's verified SERVER_WELCOME. Over `wss://` with `tls`
/// (see [`Settings::tls`](crate::Settings::tls)), else `ws://`.
pub async fn join_once(
    pool: &CryptoPool,
    entry: &Bootstrap,
    me: &ServerId,
    address: &ServerAddress,
    max_frame: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<ServerWelcome, String> {
    let client = crate::ws_client(tls, JOIN_TIMEOUT);
    let url = crate::ws_url(tls.is_some(), &entry.host, entry.port);
    let hello = Envelope::new(
        me,
        To::HostPort(entry.address()),
        now_ms(),
        &ServerHelloJoin(address.clone()),
    );
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
                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                    let _ = framed.close().await;
                    return Ok(bytes);
                }
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
    let bytes = tokio::time::timeout(JOIN_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url} did not answer in time"))??;
    let env = Envelope::parse_with(
        &bytes,
        &socp_protocol::Limits {
            max_frame_bytes: max_frame,
            ..Default::default()
        },
    )
    .map_err(|e| format!("bad answer from {url}: {e}"))?;
    let welcome = match env.message() {
        Ok(Message::ServerWelcome(w)) => w,
        Ok(Message::Error(e)) => {
            return Err(format!("{url} refused the join: {} {}", e.code, e.detail))
        }
        Ok(other) => return Err(format!("{url} answered {}", other.msg_type().as_str())),
        Err(e) => return Err(format!("bad answer from {url}: {e}")),
    };
    // The key that must have signed it: pinned, or the one the welcome lists
    // for its sender (trust on first use).
    let key = match &entry.pubkey {
        Some(k) => k.clone(),
        None => welcome
            .servers
            .iter()
            .find(|s| s.server_id.as_str() == env.from())
            .map(|s| s.pubkey.clone())
            .ok_or_else(|| format!("{url}: the welcome does not list its sender"))?,
    };
    match pool.verify(env, key).await {
        Some((_, true)) => Ok(welcome),
        _ => Err(format!("{url}: SERVER_WELCOME signature does not verify")),
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
) -> Result<ServerWelcome, String> {
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
        }
    }

    /// Join over `wss://`, trusting the roots of `tls` (`None`: `ws://`).
    pub fn tls(self, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        IntroducerLink { tls, ..self }
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
            Ok(welcome) if welcome.assigned_id == act.me => {
                log::info!("joined the mesh: {} servers, {} users", welcome.servers.len(), welcome.clients.len());
                act.joined.do_send(Joined(welcome));
                ctx.stop();
            }
            Ok(welcome) => {
                log::error!(
                    "the introducer assigned id {} but we run as {}: another server holds our id; not joining",
                    welcome.assigned_id,
                    act.me
                );
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
