//! PeerLink: one per server-to-server link, inbound or outbound. Owns the
//! socket (through its transport), the peer's pinned key and its outbound
//! queue. Every frame received is verified (on the crypto pool) against the
//! key pinned to its `from` server before the router sees it (SPEC.md §5.2).
//!
//! Also the [`Dialer`], which opens outbound links with awc.

use std::time::Instant;

use actix::prelude::*;
use socp_protocol::message::{ErrorPayload, ServerAddress, ServerHelloJoin, ServerHelloLink};
use socp_protocol::{now_ms, Dialect, Envelope, ErrorCode, Message, To};

use crate::budget::{Account, Charge};
use crate::crypto::FrameText;
use crate::heartbeat::Activity;
use crate::router::{LinkDown, LinkFrame, LinkUp, Outbound, ServerKey, UserKey};
use crate::routing::{Conn, ConnId, Peer};
use crate::transport::{
    close, AwcTransport, HasOutQueue, InOrder, InQueue, Inbound, OutQueue, Wire,
};
use crate::Shared;

mod dialect;
mod dialer;
mod directory;
mod join;
mod keys;
mod trust;
mod wire;

pub use dialer::Dialer;
pub use join::MAX_KEPT_JOINS;

/// Bad frames a link may send before it is closed.
const MAX_STRIKES: u32 = 50;

/// Most frames waiting on one link while one is verified.
const MAX_LINK_BACKLOG: usize = 4096;

/// One server link.
pub struct PeerLink {
    shared: Shared,
    conn_id: ConnId,
    out: OutQueue,
    /// The server at the other end: known from the start when we dial, after
    /// its verified hello when it dialled us.
    peer: Option<Peer>,
    /// Whether we opened this link.
    outbound: bool,
    /// Frames received, handled one at a time.
    inbox: InQueue,
    /// Bad frames so far.
    strikes: u32,
    /// When liveness was last reported (reports are throttled).
    reported: Option<Instant>,
    /// Relayed frames dropped as unverifiable: logged once per episode.
    unverifiable: crate::episode::Episode,
    /// Frames of another dialect we do not read: logged once per episode.
    foreign: crate::episode::Episode,
    /// Frames and bytes per second this link may send (budgets per linked
    /// server); past them frames are dropped and counted, not queued.
    frame_budget: crate::session::TokenBucket,
    byte_budget: crate::session::TokenBucket,
    /// Frames dropped over the budgets: logged once per episode.
    over_budget: crate::episode::Episode,
    /// This link's memory budget (within the server's).
    account: Account,
    /// The charge of the frame being handled, passed on to the router with it.
    holding: Option<Charge>,
    /// How the peer speaks (SPEC.md §11): learned from its hello, its key and
    /// its capability; what we write is rewritten for it when it is not socp.
    dialect: Dialect,
    /// We dialled and still owe the peer our DIRECTORY_SYNC: asked once it
    /// is known to speak socp.
    directory_owed: bool,
    /// A server we welcomed: the id we gave it and its address. Its join
    /// connection becomes the link when it sends a frame over it (a joiner
    /// that links separately closes it without a word).
    welcomed: Option<(socp_protocol::ServerId, ServerAddress)>,
    /// This link is a join connection.
    via_join: bool,
    /// Replaced by another link of a server that is not socp, and kept open
    /// (its implementation joins again, or forgets us, when it closes):
    /// nothing more is written on it; what arrives is still handled.
    retired: bool,
    /// Counted among the server's kept join connections.
    kept: bool,
    /// We dial a server that takes no first frame but SERVER_HELLO_JOIN.
    opens_with_join: bool,
    /// Types the server said it does not handle: not written to it.
    unhandled: crate::dialect::Unhandled,
    /// Something arrived from the other side.
    heard: bool,
    /// Adverts of the peer's users that came without a key (another
    /// dialect's), verified, by user id, until its PUBKEY_RESPONSE.
    keyless: std::collections::HashMap<String, (Envelope, FrameText)>,
}

impl PeerLink {
    fn new(shared: Shared, transport: Recipient<Wire>, peer: Option<Peer>, outbound: bool) -> Self {
        // Until it says more: a server we dial reads keys the way it wrote
        // its own where we learnt it, and is not known to speak socp.
        let dialect = Dialect {
            keys: peer
                .as_ref()
                .map(|p| p.pubkey.written())
                .unwrap_or_default(),
            socp: false,
        };
        let (frames, bytes) = (
            shared.settings.link_frames_per_second,
            shared.settings.link_bytes_per_second,
        );
        PeerLink {
            conn_id: shared.next_conn_id(),
            shared: shared.clone(),
            out: OutQueue::new(transport),
            peer,
            outbound,
            inbox: InQueue::default(),
            strikes: 0,
            reported: None,
            unverifiable: Default::default(),
            foreign: Default::default(),
            frame_budget: crate::session::TokenBucket::new(frames, 2.0 * frames),
            byte_budget: crate::session::TokenBucket::new(bytes, 2.0 * bytes),
            over_budget: Default::default(),
            account: Account::new(shared.settings.link_memory_budget, shared.memory.clone()),
            holding: None,
            dialect,
            directory_owed: false,
            welcomed: None,
            via_join: false,
            retired: false,
            opens_with_join: false,
            unhandled: Default::default(),
            heard: false,
            kept: false,
            keyless: Default::default(),
        }
        .speaking(dialect)
    }

    /// A link a server opened to us; `first` is its first frame.
    pub fn start_inbound(
        shared: Shared,
        transport: Recipient<Wire>,
        first: FrameText,
    ) -> Addr<PeerLink> {
        let addr = PeerLink::new(shared, transport, None, false).start();
        addr.do_send(Inbound::Text(first));
        addr
    }

    /// A link we open to `peer` over a connected awc socket.
    pub(crate) fn start_outbound(
        shared: Shared,
        framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
        peer: Peer,
        opens_with_join: bool,
    ) -> Addr<PeerLink> {
        let max_frame = shared.settings.limits.max_frame_bytes;
        PeerLink::create(move |ctx| {
            let transport = AwcTransport::start(framed, ctx.address().recipient(), max_frame);
            PeerLink {
                opens_with_join,
                ..PeerLink::new(shared, transport.recipient(), Some(peer), true)
            }
        })
    }

    /// A link over an arbitrary transport (tests stand a recorder in for the socket).
    pub fn start_with_transport(
        shared: Shared,
        transport: Recipient<Wire>,
        peer: Option<Peer>,
        outbound: bool,
    ) -> Addr<PeerLink> {
        PeerLink::new(shared, transport, peer, outbound).start()
    }

    fn conn(&self, ctx: &Context<Self>) -> Conn<crate::router::Handle> {
        Conn {
            id: self.conn_id,
            tx: ctx.address().recipient(),
        }
    }

    fn send(&mut self, ctx: &mut Context<Self>, to: To, msg: Message) {
        let env = Envelope::from_message(&self.shared.me, to, now_ms(), &msg);
        self.send_env(ctx, env);
    }

    /// Our hello or welcome: with the socp capability object (SPEC.md §11).
    fn send_hello(&mut self, ctx: &mut Context<Self>, to: To, msg: Message) {
        let env = Envelope::from_message(&self.shared.me, to, now_ms(), &msg);
        self.send_env(ctx, socp_protocol::dialect::with_capability(env));
    }

    fn send_env(&mut self, ctx: &mut Context<Self>, env: Envelope) {
        let frame = self.shared.pool.sign(env);
        OutQueue::push(ctx, self, Outbound::Frame(frame));
    }

    fn strike(&mut self, ctx: &mut Context<Self>, code: ErrorCode, detail: String) {
        self.strikes += 1;
        self.shared
            .metrics
            .inc(crate::metrics::family::SERVER_ERRORS, code.as_str());
        let who = self.peer.as_ref().map_or_else(
            || "unidentified server".to_owned(),
            |p| p.server_id.to_string(),
        );
        log::warn!("link {} ({who}): {code} {detail}", self.conn_id);
        let to = self
            .peer
            .as_ref()
            .map_or(To::All, |p| To::from(&p.server_id));
        self.send(ctx, to, Message::Error(ErrorPayload::new(code, detail)));
        if self.strikes > MAX_STRIKES || self.peer.is_none() {
            self.close(ctx, close::POLICY, "bad frames");
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        log::info!("link {}: closing ({code} {reason})", self.conn_id);
        self.shared
            .metrics
            .inc(crate::metrics::family::CLOSES, &code.to_string());
        OutQueue::push(ctx, self, Outbound::Close(code, reason.to_owned()));
    }

    fn report_alive(&mut self) {
        let Some(peer) = &self.peer else { return };
        let now = Instant::now();
        let every = self.shared.settings.heartbeat_interval / 4;
        if self.reported.is_none_or(|t| now.duration_since(t) >= every) {
            self.reported = Some(now);
            self.shared
                .liveness
                .do_send(Activity(peer.server_id.clone()));
        }
    }

    fn handle_frame(&mut self, ctx: &mut Context<Self>, raw: FrameText) {
        let env = match Envelope::parse_with(raw.as_bytes(), &self.shared.settings.limits) {
            Ok(env) => env,
            Err(e) => return self.strike(ctx, e.code(), e.to_string()),
        };
        // A welcomed joiner's first frame over its join connection makes it
        // the link, whatever the frame; then it is handled as any on the link.
        if self.peer.is_none() && self.welcomed.is_some() {
            return self.adopt(ctx, raw);
        }
        if env.known_type().is_none() {
            let t: String = env.msg_type().chars().take(64).collect();
            return self.unreadable(
                ctx,
                &env,
                ErrorCode::UnknownType,
                format!("unknown type {t}"),
            );
        }
        // The welcome answering a link we opened with a join: nothing in it
        // is for us (we have our id and our links), whatever its shape.
        if self.opens_with_join && env.msg_type() == "SERVER_WELCOME" {
            log::debug!("link {}: its welcome, ignored", self.conn_id);
            return;
        }
        let msg = match env.message() {
            Ok(msg) => msg,
            Err(_) if self.is_keyless_advert(&env) => return self.keyless_advert(ctx, env, raw),
            Err(e) => return self.unreadable(ctx, &env, e.code(), e.to_string()),
        };
        match self.peer.clone() {
            None => self.identify(ctx, env, msg, raw),
            Some(peer) => self.linked(ctx, peer, env, msg, raw),
        }
    }

    /// The first frame of an inbound link: a join request, or a hello from a
    /// server in the mesh. Self-signed with the key it carries.
    fn identify(&mut self, ctx: &mut Context<Self>, env: Envelope, msg: Message, raw: FrameText) {
        let address = match &msg {
            Message::ServerHelloJoin(ServerHelloJoin(a)) => a.clone(),
            Message::ServerHelloLink(ServerHelloLink(a)) => a.clone(),
            Message::ServerAnnounce(socp_protocol::message::ServerAnnounce(a)) => a.clone(),
            _ => {
                self.close(ctx, close::POLICY, "identify first");
                return;
            }
        };
        let server_id = env.from_server();
        if server_id == self.shared.me {
            self.close(ctx, close::POLICY, "that is our own server id");
            return;
        }
        self.learn(Dialect::learn(env.payload(), "pubkey"));
        if let Some(list) = &self.shared.settings.allowlist {
            // Refused before any RSA: a closed mesh spends nothing on strangers.
            if let Err(why) = list.admits(&server_id, &address.pubkey) {
                log::debug!("link {}: {why}", self.conn_id);
                self.close(ctx, close::POLICY, "not on this mesh's allowlist");
                return;
            }
        }
        let pool = self.shared.pool.clone();
        let server_key = self.shared.router.server_key.clone();
        let key = address.pubkey.clone();
        // The standard lets a join request, and the announce of a server whose
        // key is not pinned, go unsigned (a self-signature proves only that
        // the sender holds the key it claims, which every later frame, signed
        // with it, proves anyway): trust on first use, said in the log.
        let unsigned = env.sig().is_none();
        let join = matches!(msg, Message::ServerHelloJoin(_));
        let announce = matches!(msg, Message::ServerAnnounce(_));
        let fut = async move {
            let pinned = server_key
                .send(ServerKey(server_id.clone()))
                .await
                .ok()
                .flatten();
            if pinned.as_ref().is_some_and(|p| *p != key) {
                return Err(format!("server id {server_id} is pinned to another key"));
            }
            if unsigned && (join || (announce && pinned.is_none())) {
                if announce {
                    log::warn!("{server_id}: unsigned SERVER_ANNOUNCE, its key taken on trust");
                }
                return Ok(env);
            }
            match pool.verify(env, key).await {
                Some((env, true)) => Ok(env),
                _ => Err("hello signature does not verify with its key".to_owned()),
            }
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, checked| {
            let env = match checked {
                Ok(env) => env,
                Err(detail) => {
                    act.strike(ctx, ErrorCode::InvalidSig, detail);
                    return;
                }
            };
            match msg {
                Message::ServerHelloJoin(_) => act.join(ctx, env, address),
                _ => {
                    let server_id = env.from_server();
                    act.link(ctx, server_id, env, msg, address, raw)
                }
            }
        });
    }

    /// A frame on an established link: verify against the key pinned to its
    /// `from` server, then hand it to the router in arrival order.
    fn linked(
        &mut self,
        ctx: &mut Context<Self>,
        peer: Peer,
        env: Envelope,
        msg: Message,
        raw: FrameText,
    ) {
        let from = env.from_server();
        // Our own frame, echoed back (one implementation passes every
        // advert on to every link, the one it came from too): nothing new.
        if from == self.shared.me {
            self.shared
                .metrics
                .inc(crate::metrics::family::LINK_DROPPED, "own_echo");
            return;
        }
        let from_link = from == peer.server_id;
        let is_error = matches!(msg, Message::Error(_));
        if let Err(detail) = trust::only_from_link(&msg, from_link) {
            return self.strike(ctx, ErrorCode::InvalidSig, detail);
        }
        // A directory record keeps the `ts` its home server signed it with
        // (its version decides what is new), so it is not held to the window.
        let long_lived = matches!(msg, Message::DirectoryRecord(_));
        if !long_lived && !env.is_fresh(now_ms(), self.shared.settings.ts_window_ms) {
            return self.strike(
                ctx,
                ErrorCode::BadRequest,
                "`ts` is outside the accepted window".into(),
            );
        }
        let pool = self.shared.pool.clone();
        let lane = crate::crypto::Lane::flow(peer.server_id.as_str());
        let server_key = self.shared.router.server_key.clone();
        let user_key = self.shared.router.user_key.clone();
        let link_key = peer.pubkey.clone();
        let fut = async move {
            let pinned = if from_link {
                None
            } else {
                server_key
                    .send(ServerKey(from.clone()))
                    .await
                    .ok()
                    .flatten()
            };
            let relayed = |detail: String| {
                if from_link {
                    Failed::Link(detail)
                } else {
                    Failed::Relayed(msg.msg_type().as_str(), detail)
                }
            };
            keys::user_signed_ack(&msg, &pool, lane, &user_key)
                .await
                .map_err(relayed)?;
            let user_content = !from_link && pinned.is_none() && trust::is_user_content(&msg);
            let key =
                trust::verifying_key(&from, from_link, &link_key, pinned, &msg).map_err(relayed)?;
            let env = match pool.verify_in(lane, env, key).await {
                Some((env, true)) => return Ok((env, msg)),
                Some((env, false)) if user_content => env,
                _ => return Err(relayed("signature does not verify".to_owned())),
            };
            // A user's frame passed on with the user's own signature (SPEC.md
            // §5.2: verified with the key of its `from`): the key the network
            // advertises for that user.
            let user =
                socp_protocol::UserId::parse(env.from()).map_err(|e| relayed(e.to_string()))?;
            let key = user_key
                .send(UserKey(user))
                .await
                .ok()
                .flatten()
                .ok_or_else(|| relayed("its user is not advertised here".to_owned()))?;
            match pool.verify_in(lane, env, key).await {
                Some((env, true)) => Ok((env, msg)),
                _ => Err(relayed("signature does not verify".to_owned())),
            }
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, checked| match checked {
            Ok((env, msg)) => {
                act.report_alive();
                act.learn_from(ctx, &env, &msg);
                match msg {
                    Message::PubkeyResponse(answer) if from_link => act.keyed(&peer, answer),
                    Message::PubkeyRequest(ask) if from_link => act.answer_pubkey(ctx, &peer, ask),
                    Message::DirectorySync(sync) => act.serve_directory(ctx, &peer, sync),
                    Message::DirectoryPage(page) => act.take_page(ctx, &peer, page),
                    msg => act.shared.router.link_frame.do_send(LinkFrame {
                        link: peer.server_id,
                        env,
                        msg,
                        raw,
                        charge: act.holding.take(),
                    }),
                }
            }
            // Never an ERROR for an ERROR: two servers would trade them forever.
            Err(Failed::Link(_)) if is_error => act
                .shared
                .metrics
                .inc(crate::metrics::family::LINK_DROPPED, "unanswered_error"),
            Err(Failed::Link(detail)) => act.strike(ctx, ErrorCode::InvalidSig, detail),
            Err(Failed::Relayed(kind, detail)) => act.unverifiable(kind, &detail),
        });
    }
}

/// Why a frame on a link did not verify.
enum Failed {
    /// The link's own frame: the link is at fault (struck).
    Link(String),
    /// A frame relayed from another server (its type, and why).
    Relayed(&'static str, String),
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.outbound {
            let within = self.shared.settings.identify_timeout;
            ctx.run_later(within, |act, ctx| {
                if act.peer.is_none() && act.welcomed.is_none() {
                    act.close(ctx, close::POLICY, "identification timeout");
                }
            });
            return;
        }
        let Some(peer) = self.peer.clone() else {
            return;
        };
        // Our hello first, then the router learns the link is up (and sends
        // our SERVER_ANNOUNCE over it). A server whose key came in PEM is of
        // a dialect that links with SERVER_ANNOUNCE (and drops a
        // SERVER_HELLO_LINK): the announce is the hello (SPEC.md §11); one
        // that dropped it unanswered takes only SERVER_HELLO_JOIN (it then
        // answers with a welcome, read and ignored, and keeps the link).
        let address = ServerAddress {
            host: self.shared_host(),
            port: self.shared_port(),
            pubkey: self.shared.pool.public_key().clone(),
        };
        let hello = if self.opens_with_join {
            Message::ServerHelloJoin(ServerHelloJoin(address))
        } else if self.dialect.keys == socp_protocol::dialect::KeyEncoding::Der {
            Message::ServerHelloLink(ServerHelloLink(address))
        } else {
            Message::ServerAnnounce(socp_protocol::message::ServerAnnounce(address))
        };
        self.send_hello(ctx, To::from(&peer.server_id), hello);
        let up = self.shared.router.link_up.send(LinkUp {
            peer: peer.clone(),
            conn: self.conn(ctx),
            opened_by_me: true,
        });
        InQueue::wait_for(ctx, self, up, move |act, ctx, result| {
            if matches!(result, Ok(Ok(()))) {
                // Only a socp peer knows DIRECTORY_SYNC: asked once it says so.
                if act.dialect.socp {
                    act.ask_directory(ctx, &peer);
                } else {
                    act.directory_owed = true;
                }
            } else {
                log::warn!("link to {} refused by the router", peer.server_id);
                act.close(ctx, close::POLICY, "link refused");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.release();
        if let Some(peer) = &self.peer {
            self.shared.router.link_down.do_send(LinkDown {
                server_id: peer.server_id.clone(),
                conn_id: self.conn_id,
                unanswered: self.outbound && !self.heard && !self.opens_with_join,
            });
        }
    }
}

impl PeerLink {
    fn shared_host(&self) -> String {
        self.shared.advertised.0.clone()
    }

    fn shared_port(&self) -> u16 {
        self.shared.advertised.1
    }
}

impl InOrder for PeerLink {
    fn in_queue(&mut self) -> &mut InQueue {
        &mut self.inbox
    }

    fn process(&mut self, ctx: &mut Context<Self>, text: FrameText, charge: Option<Charge>) {
        self.holding = charge;
        self.handle_frame(ctx, text);
    }
}

impl HasOutQueue for PeerLink {
    fn out_queue(&mut self) -> &mut OutQueue {
        &mut self.out
    }
}
