//! The listener's HTTP side: WebSocket upgrades on `/ws` (or `/`) handed to
//! the actors, the first frame deciding whether a user or a server connected,
//! and the plain endpoints `/`, `/health`, `/status` and `/metrics`.

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::{h1, Request, Response};
use actix_web::{web, HttpResponse};
use futures_util::SinkExt;
use socp_actors::crypto::FrameText;
use socp_actors::peer::PeerLink;
use socp_actors::router::{GetStatus, Router};
use socp_actors::routing::LinkState;
use socp_actors::session::ClientSession;
use socp_actors::transport::{close, Acceptor, Inbound, Wire, WsTransport};
use socp_actors::Shared;
use socp_protocol::{Envelope, MessageType};

/// The upgrade service of a worker (any IO: TCP or TLS).
pub(crate) fn upgrade_service<T>(
    shared: Shared,
) -> impl actix_service::ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_http::Error,
    InitError = (),
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    actix_service::fn_service(move |(req, framed): (Request, Framed<T, h1::Codec>)| {
        let shared = shared.clone();
        async move {
            upgrade(req, framed, shared).await;
            Ok(())
        }
    })
}

/// Answers a WebSocket upgrade on `/ws` (or `/`) and hands the socket over
/// to a [`WsTransport`]: from then on the HTTP layer holds nothing for the
/// connection (its 8 KiB read and write buffers are dropped with it).
async fn upgrade<T>(req: Request, mut framed: Framed<T, h1::Codec>, shared: Shared)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_owned(), |a| a.to_string());
    let response = match (req.path(), actix_http::ws::handshake(req.head())) {
        ("/ws" | "/", Ok(mut ok)) => ok.message_body(()).map_err(|_| Response::bad_request()),
        ("/ws" | "/", Err(refused)) => Err(Response::from(refused)),
        _ => Err(Response::not_found()),
    };
    let response = match response {
        Ok(switching) => switching,
        Err(refused) => {
            log::debug!("upgrade from {peer} refused: {}", refused.status());
            let refused = refused.drop_body();
            let _ = framed.send((refused, BodySize::Sized(0)).into()).await;
            return;
        }
    };
    if let Err(e) = framed.send((response, BodySize::None).into()).await {
        log::debug!("upgrade from {peer}: {e}");
        return;
    }
    let parts = framed.into_parts();
    let settings = &shared.settings;
    WsTransport::new(
        ServerAcceptor {
            shared: shared.clone(),
        },
        settings.limits.max_frame_bytes,
        settings.identify_timeout,
        peer,
    )
    .start_io(parts.io, parts.read_buf.freeze());
}

/// Decides from its first frame whether a connection is a user or a server.
struct ServerAcceptor {
    shared: Shared,
}

impl Acceptor for ServerAcceptor {
    fn accept(
        &self,
        first: FrameText,
        transport: Recipient<Wire>,
    ) -> Result<Recipient<Inbound>, (u16, String)> {
        let env = Envelope::parse_with(first.as_bytes(), &self.shared.settings.limits)
            .map_err(|e| (close::POLICY, format!("first frame: {e}")))?;
        let settings = &self.shared.settings;
        match env.known_type() {
            Some(MessageType::UserHello) if settings.introducer_only => Err((
                close::POLICY,
                "this is a directory-only introducer; it hosts no users".into(),
            )),
            Some(MessageType::UserHello) => {
                Ok(ClientSession::start(self.shared.clone(), transport, first).recipient())
            }
            Some(MessageType::UserRegister | MessageType::LoginRequest)
                if settings.require_registration && !settings.introducer_only =>
            {
                Ok(ClientSession::start(self.shared.clone(), transport, first).recipient())
            }
            Some(
                MessageType::ServerHelloJoin
                | MessageType::ServerHelloLink
                | MessageType::ServerAnnounce,
            ) => Ok(PeerLink::start_inbound(self.shared.clone(), transport, first).recipient()),
            _ => Err((
                close::POLICY,
                format!("first frame must identify the peer, not {}", env.msg_type()),
            )),
        }
    }

    fn metrics(&self) -> Option<&socp_actors::metrics::Metrics> {
        Some(&self.shared.metrics)
    }

    fn connections(&self) -> Option<&std::sync::Arc<socp_actors::transport::Connections>> {
        Some(&self.shared.connections)
    }
}

/// `/`: what this endpoint is.
pub(crate) async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("socp server: WebSocket endpoint at /ws (SOCP v1.3); /health, /status, /metrics\n")
}

/// `/ws` without the upgrade headers.
pub(crate) async fn not_upgraded() -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body("expected a WebSocket upgrade (SOCP v1.3)\n")
}

/// `/health`: `ok` while the server serves.
pub(crate) async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// `/status`: the router's JSON snapshot (servers, links, users).
pub(crate) async fn status(router: web::Data<Addr<Router>>) -> HttpResponse {
    match router.send(GetStatus).await {
        Ok(status) => HttpResponse::Ok().json(status),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// `/metrics`: the server's figures in the Prometheus text format.
pub(crate) async fn metrics(
    router: web::Data<Addr<Router>>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let Ok(status) = router.send(GetStatus).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let count = |n: usize| n as f64;
    let linked = status
        .servers
        .iter()
        .filter(|s| s.link == LinkState::Up)
        .count();
    let body = shared.metrics.render(&[
        (
            "socp_local_users",
            "users attached to this server",
            count(status.local_users.len()),
        ),
        (
            "socp_remote_users",
            "users attached elsewhere in the mesh",
            count(status.remote_users.len()),
        ),
        (
            "socp_known_servers",
            "servers this one knows",
            count(status.servers.len()),
        ),
        (
            "socp_linked_servers",
            "servers with a live link",
            count(linked),
        ),
        (
            "socp_open_connections",
            "WebSocket connections open",
            count(shared.connections.open()),
        ),
        (
            "socp_memory_held_bytes",
            "bytes of frames held for their senders (memory budgets)",
            count(shared.memory.used()),
        ),
        (
            "process_resident_memory_bytes",
            "resident memory of this process",
            resident_bytes(),
        ),
        (
            "socp_heap_trims_total",
            "times freed heap pages were handed back to the system",
            crate::HEAP_TRIMS.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
    ]);
    let body = body + &refusals(&status.refusals);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// The router's refusals as one counter family, by reason.
fn refusals(counts: &std::collections::BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    if !counts.is_empty() {
        out.push_str("# TYPE socp_refused_total counter\n");
    }
    for (reason, n) in counts {
        out.push_str(&format!("socp_refused_total{{reason=\"{reason}\"}} {n}\n"));
    }
    out
}

/// This process's resident memory (Linux: VmRSS), 0 where unknown.
fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib * 1024.0)
}
