//! The Router actor and its messages: the only owner of local users, user
//! locations, servers, server addresses and the seen-ids cache. A thin shell
//! over [`RouterState`]: handlers feed it and carry out the returned actions.

use actix::prelude::*;
use socp_protocol::message::{DirectoryRecord, ServerAddress, ServerWelcome};
use socp_protocol::{now_ms, Envelope, Message, PublicKey, ServerId, UserId};

use crate::budget::Charge;
use crate::crypto::{FrameText, SignedFrame};
mod links;

use crate::routing::{
    Action, Conn, ConnId, Peer, PeerFrame, Refusal, RouterState, Status, StoreOp,
};

/// What the router (or a session) tells a session or link to do.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// Write this frame (in the order queued).
    Frame(SignedFrame),
    /// Write this frame as soon as it is signed, ahead of frames still being
    /// signed (it carries no order: heartbeats).
    Urgent(SignedFrame),
    /// Close with this WebSocket close code, after the frames queued before.
    Close(u16, String),
}

/// A session's or link's handle as the router keeps it.
pub type Handle = Recipient<Outbound>;

/// Attach a user (a USER_HELLO passed its checks).
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Attach {
    /// The session and its handle.
    pub conn: Conn<Handle>,
    /// The user id the hello claimed.
    pub user_id: UserId,
    /// The key the user identified with (the registered key for a registered user).
    pub pubkey: PublicKey,
    /// The username of a registered user.
    pub name: Option<String>,
    /// Whether the user logged in as a registered user.
    pub registered: bool,
    /// Whether its client reads fast-mode file chunks [ext] (said in its advert).
    pub fast_files: bool,
    /// Whether its client reads batched presence news [ext].
    pub batched: bool,
}

/// A user's session ended or re-identified. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    /// The session that attached the user (only it can detach it).
    pub conn_id: ConnId,
    /// The user.
    pub user_id: UserId,
}

/// A checked frame from a local user.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UserFrame {
    /// The user the session identified as.
    pub user_id: UserId,
    /// The frame as received.
    pub env: Envelope,
    /// Its parsed payload.
    pub msg: Message,
    /// The memory it is charged to (the sender's budget): the frames made
    /// from it hold it until they are written or dropped.
    pub charge: Option<Charge>,
}

/// Whether a user id is attached anywhere in the mesh.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsOnline(pub UserId);

/// Publish the directory record of a user registered here (new, renamed, or
/// registered before records existed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub DirectoryRecord);

/// A directory record from a DIRECTORY_PAGE, verified with its home server's key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncedRecord(pub LinkFrame);

/// Record a frame in the seen-ids cache; false if it was seen before (replay).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FirstSight(pub [u8; 32], pub i64);

/// The pinned key of a server (for verifying frames from it).
#[derive(Message)]
#[rtype(result = "Option<PublicKey>")]
pub struct ServerKey(pub ServerId);

/// The key the network advertises for a user (for verifying a user's frame
/// that a server passed on with the user's own signature, SPEC.md §5.2).
#[derive(Message)]
#[rtype(result = "Option<PublicKey>")]
pub struct UserKey(pub UserId);

/// A server link is up.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct LinkUp {
    /// The server at the other end, with its pinned key.
    pub peer: Peer,
    /// The link and its handle.
    pub conn: Conn<Handle>,
    /// Whether we dialled it (of two links, the one opened by the lower id stays).
    pub opened_by_me: bool,
}

/// A server link closed. Idempotent per connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkDown {
    /// The server the link was to.
    pub server_id: ServerId,
    /// The link's connection (a newer link to the same server is not affected).
    pub conn_id: ConnId,
    /// We opened it, and the server closed it without sending anything.
    pub unanswered: bool,
}

/// A verified frame from a server link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkFrame {
    /// The server whose link it came over.
    pub link: ServerId,
    /// The frame, verified.
    pub env: Envelope,
    /// Its parsed payload.
    pub msg: Message,
    /// The frame text as received, for forwarding unchanged.
    pub raw: FrameText,
    /// The memory it is charged to (the link's budget), as for [`UserFrame`].
    pub charge: Option<Charge>,
}

/// A server asks to join through us.
#[derive(Message)]
#[rtype(result = "ServerWelcome")]
pub struct JoinRequest {
    /// The id the joining server asks for.
    pub requested: ServerId,
    /// Where it listens, and its key.
    pub address: ServerAddress,
}

/// Our join was answered: learn the mesh and link to every server but the
/// one already linked over the join connection, if any.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Joined(pub ServerWelcome, pub Option<ServerId>);

impl Joined {
    /// The welcome of `welcomed`, its join connection made our link to the
    /// introducer over `shared`'s ports (closed without them). The link's
    /// first message to the router comes after this one when this one is
    /// sent at once.
    pub fn new(welcomed: crate::introducer::Welcomed, shared: Option<&crate::Shared>) -> Joined {
        let (welcome, linked) = welcomed.link_over(shared);
        Joined(welcome, linked)
    }
}

/// Time to send heartbeats.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendHeartbeats;

/// A linked server went silent past the timeout.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerDead(pub ServerId);

/// Try to link to a known server again (after backoff).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconnect(pub ServerId);

/// A server remembered from an earlier run: learn it and link to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remember(pub Peer);

/// Announce the queued public channel membership changes (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct AnnounceMembership;

/// Say goodbye to everyone and close every connection. The answer is the
/// frames sent on the way out, so the caller can wait for them to be signed.
#[derive(Message)]
#[rtype(result = "Vec<SignedFrame>")]
pub struct Shutdown;

/// Ask for a status snapshot (`/status`, `/metrics`).
#[derive(Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

/// Ask a dialer to open an outbound link; `true`: open it with
/// SERVER_HELLO_JOIN, for a server that takes no other first frame (it closed
/// a link opened with SERVER_HELLO_LINK without a word).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Dial(pub Peer, pub bool);

/// What the router tells the heartbeat actor about links.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum LinkEvent {
    /// A link is up: start watching it, reset its backoff.
    Up(ServerId),
    /// A link went down: schedule a reconnect.
    Down(ServerId),
    /// A server left for good (goodbye): stop reconnecting.
    Gone(ServerId),
}

/// Where the router's side effects go: injected so tests can record them.
pub struct RouterPorts {
    /// Database changes.
    pub store: Recipient<StoreOp>,
    /// Outbound links to open.
    pub dialer: Recipient<Dial>,
    /// Links up, down and gone, for liveness and reconnects.
    pub liveness: Recipient<LinkEvent>,
}

/// The Router actor.
pub struct Router {
    state: RouterState<Handle>,
    ports: RouterPorts,
    /// Heartbeat rounds so far (the known-servers log line is periodic).
    rounds: u64,
    /// Shut down: no more links are made (reconnects, remembered servers).
    stopping: bool,
    /// An [`AnnounceMembership`] is on its way.
    announcing: bool,
}

impl Router {
    /// A router over `state`.
    pub fn new(state: RouterState<Handle>, ports: RouterPorts) -> Self {
        Router {
            state,
            ports,
            rounds: 0,
            stopping: false,
            announcing: false,
        }
    }

    /// Announce queued membership changes (and send the wraps of our channel
    /// key due to other servers' users) once the router has handled the
    /// messages already waiting, and not before the last announcement is
    /// signed: a lone join goes out at once, joins arriving in a burst (while
    /// the crypto threads are busy) fold into one version.
    fn announce_membership(&mut self, ctx: &mut Context<Self>) {
        if self.announcing || !self.state.membership_pending() {
            return;
        }
        self.announcing = true;
        match self.state.membership_signing() {
            Some(last) => {
                ctx.spawn(
                    actix::fut::wrap_future::<_, Self>(last.text())
                        .map(|_, _, ctx| ctx.notify(AnnounceMembership)),
                );
            }
            None => ctx.notify(AnnounceMembership),
        }
    }

    fn run(&mut self, actions: Vec<Action<Handle>>) {
        for action in actions {
            match action {
                Action::Send(to, frame) => to.do_send(Outbound::Frame(frame)),
                Action::SendNow(to, frame) => to.do_send(Outbound::Urgent(frame)),
                Action::Close(to, code, reason) => to.do_send(Outbound::Close(code, reason)),
                Action::Connect(peer) => self.dial(peer),
                Action::Store(op) => match op.frame().filter(|f| f.peek().is_none()) {
                    // A record is stored once its frame is signed.
                    Some(frame) => {
                        let (frame, store) = (frame.clone(), self.ports.store.clone());
                        actix::spawn(async move {
                            if frame.text().await.is_some() {
                                store.do_send(op);
                            }
                        });
                    }
                    None => self.ports.store.do_send(op),
                },
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `send` callers (sessions, links) wait when this many requests are
        // queued: backpressure instead of unbounded growth. `do_send` never waits.
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(NEWS_TICK, |act, _| {
            let now = now_ms();
            if act.state.news_due(now) {
                let actions = act.state.flush_news(now);
                act.run(actions);
            }
        });
    }
}

/// How often the router looks for presence news to batch [ext]
/// (`RouterState::news_due` says whether a batch is due).
const NEWS_TICK: std::time::Duration = std::time::Duration::from_millis(25);

impl Handler<Attach> for Router {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) -> Self::Result {
        let user = msg.user_id.clone();
        let traits = crate::routing::Traits {
            name: msg.name,
            registered: msg.registered,
            fast_files: msg.fast_files,
            batched: msg.batched,
        };
        let actions =
            self.state
                .attach_with(msg.conn, msg.user_id, msg.pubkey, traits, now_ms())?;
        log::info!("user {user} attached");
        self.run(actions);
        self.announce_membership(ctx);
        Ok(())
    }
}

impl Handler<Detach> for Router {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Self::Context) {
        let actions = self.state.detach(msg.conn_id, &msg.user_id, now_ms());
        if !actions.is_empty() {
            log::info!("user {} left", msg.user_id);
        }
        self.run(actions);
        self.announce_membership(ctx);
    }
}

impl Handler<AnnounceMembership> for Router {
    type Result = ();

    fn handle(&mut self, _: AnnounceMembership, ctx: &mut Self::Context) {
        self.announcing = false;
        let actions = self.state.flush_membership(now_ms());
        self.run(actions);
        // More joins than one version takes: the next waits for this one.
        self.announce_membership(ctx);
    }
}

impl Handler<UserFrame> for Router {
    type Result = ();

    fn handle(&mut self, msg: UserFrame, _: &mut Self::Context) {
        let actions = self
            .state
            .from_user(&msg.user_id, &msg.env, msg.msg, now_ms());
        self.run(charged(actions, msg.charge.as_ref()));
    }
}

impl Handler<Publish> for Router {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        let actions = self.state.publish_record(msg.0, now_ms());
        self.run(actions);
    }
}

impl Handler<SyncedRecord> for Router {
    type Result = ();

    fn handle(&mut self, msg: SyncedRecord, _: &mut Self::Context) {
        let f = msg.0;
        let actions = self.state.synced_record(
            PeerFrame {
                link: &f.link,
                env: &f.env,
                msg: f.msg,
                raw: &f.raw,
            },
            now_ms(),
        );
        self.run(actions);
    }
}

impl Handler<IsOnline> for Router {
    type Result = bool;

    fn handle(&mut self, msg: IsOnline, _: &mut Self::Context) -> bool {
        self.state.is_online(&msg.0)
    }
}

impl Handler<FirstSight> for Router {
    type Result = bool;

    fn handle(&mut self, msg: FirstSight, _: &mut Self::Context) -> bool {
        self.state.first_sight_key(msg.0, msg.1, now_ms())
    }
}

impl Handler<ServerKey> for Router {
    type Result = Option<PublicKey>;

    fn handle(&mut self, msg: ServerKey, _: &mut Self::Context) -> Self::Result {
        self.state.server_key(&msg.0).cloned()
    }
}

impl Handler<UserKey> for Router {
    type Result = Option<PublicKey>;

    fn handle(&mut self, msg: UserKey, _: &mut Self::Context) -> Self::Result {
        self.state.pubkey_of(&msg.0).cloned()
    }
}

impl Handler<LinkFrame> for Router {
    type Result = ();

    fn handle(&mut self, msg: LinkFrame, ctx: &mut Self::Context) {
        let now = now_ms();
        // A SERVER_ANNOUNCE from a server we do not know yet was verified
        // with the key it carries: it is how the rest of the mesh learns a
        // server that linked to only some of us.
        let from_is_server = self.state.server_key(&msg.env.from_server()).is_some()
            || matches!(msg.msg, Message::ServerAnnounce(_));
        if let (Message::ServerGoodbye(_), true) = (&msg.msg, from_is_server) {
            let server = msg.env.from_server();
            self.ports.liveness.do_send(LinkEvent::Gone(server.clone()));
        }
        let actions = if from_is_server {
            self.state.from_server(
                PeerFrame {
                    link: &msg.link,
                    env: &msg.env,
                    msg: msg.msg,
                    raw: &msg.raw,
                },
                now,
            )
        } else {
            self.state
                .from_server_user_frame(&msg.link, &msg.env, msg.msg, now)
        };
        self.run(charged(actions, msg.charge.as_ref()));
        // Users learnt may be due our channel key (`routing::sharing`).
        self.announce_membership(ctx);
    }
}

/// The frames to send made from a charged frame hold its charge until each
/// is written or dropped (the sender's memory budget counts them).
fn charged(actions: Vec<Action<Handle>>, charge: Option<&Charge>) -> Vec<Action<Handle>> {
    let Some(charge) = charge else {
        return actions;
    };
    actions
        .into_iter()
        .map(|action| match action {
            Action::Send(to, frame) => Action::Send(to, frame.charged(charge)),
            Action::SendNow(to, frame) => Action::SendNow(to, frame.charged(charge)),
            other => other,
        })
        .collect()
}

impl Handler<SendHeartbeats> for Router {
    type Result = ();

    fn handle(&mut self, _: SendHeartbeats, _: &mut Self::Context) {
        let now = now_ms();
        self.state.forget_unreachable(now);
        let expired = self.state.expire_mail(now);
        self.run(expired);
        let actions = self.state.heartbeat(now);
        self.run(actions);
        self.rounds += 1;
        if self.rounds % 4 == 1 {
            log::info!("{}", self.state.known_servers_line());
        }
    }
}

impl Handler<Shutdown> for Router {
    type Result = MessageResult<Shutdown>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        // The links about to close are not to be retried.
        self.stopping = true;
        for peer in self.state.peers() {
            self.ports.liveness.do_send(LinkEvent::Gone(peer.server_id));
        }
        let actions = self.state.shutdown(now_ms());
        let frames = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(_, f) | Action::SendNow(_, f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        self.run(actions);
        MessageResult(frames)
    }
}

impl Handler<GetStatus> for Router {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.status())
    }
}
