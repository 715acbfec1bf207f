//! ClientSession: one per connected user. Owns the user's identity once a
//! hello succeeded, its rate limiter, and its ordered outbound queue.
//!
//! Frames from the user are handled one at a time, in order: checks that need
//! the database or RSA run off the loop and the next frame waits for them. A
//! user is limited to `user_rate` frames/s (burst `user_burst`) anyway, so
//! order costs no throughput; parallelism comes from many users.

use std::time::Instant;

use actix::prelude::*;
use socp_protocol::content;
use socp_protocol::message::ErrorPayload;
use socp_protocol::{now_ms, Envelope, ErrorCode, Message, PublicKey, To, UserId};

use crate::budget::{Account, Charge};
use crate::crypto::FrameText;
use crate::router::{Detach, Outbound, UserFrame};
use crate::routing::ConnId;
use crate::transport::{close, HasOutQueue, InOrder, InQueue, Inbound, OutQueue, Wire};
use crate::Shared;

mod admission;
mod auth;
mod bucket;
mod identify;

pub(crate) use admission::Admission;
pub(crate) use bucket::TokenBucket;
use identify::Challenge;

/// A content-signature check to run on the crypto pool.
type ContentCheck = Box<dyn FnOnce(&PublicKey) -> bool + Send>;

/// Tokens a malformed or refused frame costs, on top of its own: garbage
/// floods reach the limit sooner than traffic.
const BAD_FRAME_COST: f64 = 4.0;

/// Who the session is.
#[derive(Debug, Clone)]
struct Identity {
    user_id: UserId,
    pubkey: PublicKey,
    /// A registered user (logged in with its registered key).
    registered: bool,
}

/// One connected user.
pub struct ClientSession {
    shared: Shared,
    conn_id: ConnId,
    out: OutQueue,
    /// Set once a hello succeeded.
    identity: Option<Identity>,
    /// Frames received, handled one at a time.
    inbox: InQueue,
    bucket: TokenBucket,
    /// RATE_LIMITED was sent and the user has not been within the limit
    /// since: one notice per episode, not one signed ERROR per frame (a flood
    /// must not make the server sign hundreds of frames).
    limited: bool,
    /// The last LOGIN_CHALLENGE sent: for whom, and its nonce.
    challenge: Option<Challenge>,
    /// A close is queued: frames still arriving are dropped, and the close
    /// is made (and logged) once.
    closing: bool,
    /// Registrations this connection made.
    registrations: u32,
    /// Bytes a second the user may send.
    bytes: TokenBucket,
    /// This connection's memory budget (within the server's).
    account: Account,
    /// The charge of the frame being handled, passed on to the router with it.
    holding: Option<Charge>,
    /// The client's hello says it reads fast-mode file chunks [ext]: its
    /// advert will say so.
    fast_files: bool,
    /// Its hello said the client reads batched presence news [ext].
    batched: bool,
}

impl ClientSession {
    /// Start a session for a connection whose first frame is `first`.
    pub fn start(
        shared: Shared,
        transport: Recipient<Wire>,
        first: FrameText,
    ) -> Addr<ClientSession> {
        let settings = shared.settings.clone();
        let session = ClientSession {
            shared: shared.clone(),
            conn_id: shared.next_conn_id(),
            out: OutQueue::new(transport),
            identity: None,
            inbox: InQueue::default(),
            bucket: TokenBucket::new(settings.user_rate, settings.user_burst),
            limited: false,
            closing: false,
            registrations: 0,
            challenge: None,
            bytes: TokenBucket::new(
                settings.user_bytes_per_second,
                2.0 * settings.user_bytes_per_second,
            ),
            account: Account::new(settings.conn_memory_budget, shared.memory.clone()),
            holding: None,
            fast_files: false,
            batched: false,
        };
        let addr = session.start();
        addr.do_send(Inbound::Text(first));
        addr
    }

    fn handle_of(ctx: &Context<Self>) -> crate::router::Handle {
        ctx.address().recipient()
    }

    /// Sign and queue a frame to the user. `to` is the frame's `from` as
    /// the user wrote it; the reply goes to this connection whatever its `to`
    /// says, so one that does not parse (bad input being answered) is
    /// addressed to `*`, said in the log.
    fn reply(&mut self, ctx: &mut Context<Self>, to: &str, msg: Message) {
        let to = To::parse(to).unwrap_or_else(|_| {
            log::debug!(
                "session {}: reply to an unparseable `from`, as `*`",
                self.conn_id
            );
            To::All
        });
        let frame =
            self.shared
                .pool
                .sign(Envelope::from_message(&self.shared.me, to, now_ms(), &msg));
        OutQueue::push(ctx, self, Outbound::Frame(frame));
    }

    fn error(
        &mut self,
        ctx: &mut Context<Self>,
        to: &str,
        code: ErrorCode,
        detail: impl Into<String>,
    ) {
        let detail = detail.into();
        log::debug!("session {}: ERROR {code} {detail}", self.conn_id);
        self.shared
            .metrics
            .inc(crate::metrics::family::USER_ERRORS, code.as_str());
        self.reply(ctx, to, Message::Error(ErrorPayload::new(code, detail)));
    }

    /// An error for bad input: costs extra tokens; a flood is cut off.
    fn bad_input(
        &mut self,
        ctx: &mut Context<Self>,
        to: &str,
        code: ErrorCode,
        detail: impl Into<String>,
    ) {
        self.bucket.take_at(BAD_FRAME_COST, Instant::now());
        self.error(ctx, to, code, detail);
        if self.bucket.flooding() {
            self.close(ctx, close::POLICY, "too many bad frames");
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        log::info!("session {}: closing ({code} {reason})", self.conn_id);
        self.shared
            .metrics
            .inc(crate::metrics::family::CLOSES, &code.to_string());
        OutQueue::push(ctx, self, Outbound::Close(code, reason.to_owned()));
    }

    fn handle_frame(&mut self, ctx: &mut Context<Self>, text: FrameText) {
        let env = match Envelope::parse_with(text.as_bytes(), &self.shared.settings.limits) {
            Ok(env) => env,
            Err(e) => {
                let to = self
                    .identity
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |i| i.user_id.to_string());
                self.bad_input(ctx, &to, e.code(), e.to_string());
                if self.identity.is_none() {
                    self.close(ctx, close::POLICY, "identify with USER_HELLO first");
                }
                return;
            }
        };
        let from = env.from().to_owned();
        if env.known_type().is_none() {
            self.bad_input(
                ctx,
                &from,
                ErrorCode::UnknownType,
                format!(
                    "unknown type {}",
                    env.msg_type().chars().take(64).collect::<String>()
                ),
            );
            return;
        }
        let msg = match env.message() {
            Ok(msg) => msg,
            Err(e) => {
                self.bad_input(ctx, &from, e.code(), e.to_string());
                if self.identity.is_none() {
                    self.close(ctx, close::POLICY, "identification failed");
                }
                return;
            }
        };
        match msg {
            Message::UserHello(hello) => self.hello(ctx, env, hello),
            Message::UserRegister(reg) if self.may_register() => self.register(ctx, env, reg),
            Message::LoginRequest(req) if self.may_register() => self.login(ctx, &from, req),
            _ if self.identity.is_none() => {
                self.bad_input(
                    ctx,
                    &from,
                    ErrorCode::BadRequest,
                    "identify with USER_HELLO first",
                );
                self.close(ctx, close::POLICY, "identify with USER_HELLO first");
            }
            msg => self.attached_frame(ctx, env, msg),
        }
    }

    /// USER_REGISTER and LOGIN_REQUEST are accepted once attached, or first
    /// when the server accepts only registered users.
    fn may_register(&self) -> bool {
        self.identity.is_some() || self.shared.settings.require_registration
    }

    fn attached_frame(&mut self, ctx: &mut Context<Self>, env: Envelope, msg: Message) {
        let Some(me) = self.identity.clone() else {
            return;
        };
        let from = env.from().to_owned();
        if from != me.user_id.as_str() {
            self.bad_input(
                ctx,
                me.user_id.as_str(),
                ErrorCode::BadRequest,
                "`from` is not the user this connection identified as",
            );
            return;
        }
        let now = now_ms();
        match msg {
            Message::CtrlClose(_) => self.close(ctx, close::NORMAL, "bye"),
            Message::Ack(_) | Message::Heartbeat(_) => {}
            Message::ListRequest(_)
            | Message::Command(_)
            | Message::PublicChannelKeyShare(_)
            | Message::MailAck(_) => self.route(me.user_id, env, msg),
            Message::UserLookup(req) => self.lookup(ctx, &from, req),
            Message::MsgDirect(_)
            | Message::MsgPublicChannel(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_) => {
                if !env.is_fresh(now, self.shared.settings.ts_window_ms) {
                    self.bad_input(
                        ctx,
                        &from,
                        ErrorCode::BadRequest,
                        "`ts` is outside the accepted window",
                    );
                    return;
                }
                self.content(ctx, me, env, msg);
            }
            Message::UserRename(rename) => self.rename(ctx, me, rename),
            Message::UserRegister(_) | Message::LoginRequest(_) | Message::UserHello(_) => {}
            other => self.bad_input(
                ctx,
                &from,
                ErrorCode::BadRequest,
                format!("{} is not accepted from a user", other.msg_type().as_str()),
            ),
        }
    }

    fn route(&mut self, user_id: UserId, env: Envelope, msg: Message) {
        self.shared.router.user_frame.do_send(UserFrame {
            user_id,
            env,
            msg,
            charge: self.holding.take(),
        });
    }

    /// A content frame: `sender_pub` must be the session's key and the content
    /// signature must verify (on the pool) before it is routed.
    fn content(&mut self, ctx: &mut Context<Self>, me: Identity, env: Envelope, msg: Message) {
        let from = env.from().to_owned();
        let to = env.to().as_str().to_owned();
        let ts = env.ts();
        let check: Option<(PublicKey, ContentCheck)> = match &msg {
            Message::MsgDirect(m) => {
                let (sig, ct, f, t) = (
                    m.content_sig.clone(),
                    m.ciphertext.clone(),
                    from.clone(),
                    to.clone(),
                );
                Some((
                    m.sender_pub.clone(),
                    Box::new(move |k| content::verify_dm(k, &sig, &ct, &f, &t, ts).is_ok()),
                ))
            }
            Message::MsgPublicChannel(m) => {
                let (sig, ct, f) = (m.content_sig.clone(), m.ciphertext.clone(), from.clone());
                Some((
                    m.sender_pub.clone(),
                    Box::new(move |k| content::verify_public(k, &sig, &ct, &f, ts).is_ok()),
                ))
            }
            Message::FileChunk(m) => match (&m.sender_pub, &m.content_sig) {
                (Some(pk), Some(sig)) => {
                    let (sig, ct, f, t) =
                        (sig.clone(), m.ciphertext.clone(), from.clone(), to.clone());
                    let place = (m.file_id.clone(), m.index, m.total);
                    Some((
                        pk.clone(),
                        Box::new(move |k| {
                            let (id, index, total) = (place.0.as_str(), place.1, place.2);
                            content::verify_chunk(k, &sig, &ct, (&f, &t, ts), (id, index, total))
                                .is_ok()
                        }),
                    ))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((sender_pub, verify)) = check else {
            self.route(me.user_id, env, msg);
            return;
        };
        if sender_pub != me.pubkey {
            self.bad_input(
                ctx,
                &from,
                ErrorCode::BadKey,
                "`sender_pub` is not the key this user identified with",
            );
            return;
        }
        let key = me.pubkey.clone();
        let lane = crate::crypto::Lane::flow(me.user_id.as_str());
        let fut = self.shared.pool.run_in(lane, move |_| verify(&key));
        InQueue::wait_for(ctx, self, fut, move |act, ctx, ok| {
            if ok == Some(true) {
                act.route(me.user_id, env, msg);
            } else {
                act.bad_input(
                    ctx,
                    &from,
                    ErrorCode::InvalidSig,
                    "content signature does not verify",
                );
            }
        });
    }
}

impl ClientSession {
    /// RATE_LIMITED with `detail`, once per episode: not again until a frame
    /// was within the limits (a flood must not make the server sign
    /// hundreds of errors).
    fn limit_once(&mut self, ctx: &mut Context<Self>, to: &str, detail: &str) {
        if !self.limited {
            self.limited = true;
            self.error(ctx, to, ErrorCode::RateLimited, detail);
        }
    }
}

impl Actor for ClientSession {
    type Context = Context<Self>;

    /// Ping the user every `user_ping_interval`; its transport closes the
    /// connection (and the session stops, detaching the user) once the user
    /// sent nothing at all, not even a pong, for `user_timeout`: a client
    /// that vanished without a close does not stay online mesh-wide.
    fn started(&mut self, ctx: &mut Self::Context) {
        let settings = &self.shared.settings;
        let silence = settings.user_timeout;
        ctx.run_interval(settings.user_ping_interval, move |act, _| {
            act.out.keepalive(silence);
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(identity) = self.identity.take() {
            self.shared.router.detach.do_send(Detach {
                conn_id: self.conn_id,
                user_id: identity.user_id,
            });
        }
    }
}

impl InOrder for ClientSession {
    fn in_queue(&mut self) -> &mut InQueue {
        &mut self.inbox
    }

    fn process(&mut self, ctx: &mut Context<Self>, text: FrameText, charge: Option<Charge>) {
        self.holding = charge;
        if !self.closing {
            self.handle_frame(ctx, text);
        }
    }
}

impl HasOutQueue for ClientSession {
    fn out_queue(&mut self) -> &mut OutQueue {
        &mut self.out
    }
}

impl Handler<Inbound> for ClientSession {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        let to = self
            .identity
            .as_ref()
            .map_or_else(|| "*".to_owned(), |i| i.user_id.to_string());
        match msg {
            Inbound::Text(_) if self.closing => {}
            Inbound::Text(text) => {
                self.shared
                    .metrics
                    .inc(crate::metrics::family::FRAMES_IN, "user");
                let now = Instant::now();
                if !self.bucket.take_at(1.0, now) || !self.bytes.try_take_at(text.len() as f64, now)
                {
                    if self.bucket.flooding() {
                        self.close(ctx, close::POLICY, "flooding");
                    } else {
                        self.limit_once(ctx, &to, "slow down: frames over the limit are dropped");
                    }
                    return;
                }
                if self.inbox.len() >= self.shared.settings.max_backlog {
                    // Within the rate but faster than the server can check
                    // (signatures run on a shared pool): dropped and told
                    // once, not cut off.
                    self.limit_once(
                        ctx,
                        &to,
                        "server busy: frames are dropped until it catches up",
                    );
                    return;
                }
                let charge = match self.account.charge(text.len()) {
                    Ok(charge) => charge,
                    Err(over) => {
                        // Within the rates but faster than the server can
                        // sign and forward: what it holds for this user (or
                        // for everyone) is at its budget.
                        self.shared
                            .metrics
                            .inc(crate::metrics::family::MEMORY_REFUSED, over.as_str());
                        self.limit_once(
                            ctx,
                            &to,
                            "server busy: frames waiting for your earlier ones are dropped \
                             until those are delivered",
                        );
                        return;
                    }
                };
                self.limited = false;
                InQueue::push(ctx, self, text, Some(charge));
            }
            Inbound::Binary => self.bad_input(
                ctx,
                &to,
                ErrorCode::BadRequest,
                "binary frames are not part of the protocol",
            ),
            Inbound::Alive => {}
            Inbound::Closed => InQueue::finish(ctx, self),
        }
    }
}

impl Handler<Outbound> for ClientSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        OutQueue::push(ctx, self, msg);
    }
}
