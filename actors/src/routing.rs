//! `RouterState`: presence, server table, seen-ids and routing (SPEC.md §5, §6, §8)
//! as a plain struct whose methods return what to send.
//!
//! The [`Router`](crate::router::Router) actor is a thin shell over it: it feeds
//! in what sessions and links report and carries out the returned [`Action`]s.
//! Handles (`H`) are whatever the shell uses to reach a session or link
//! (`Recipient<Outbound>` in the server, plain values in tests).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use socp_protocol::crypto::random_bytes;
use socp_protocol::envelope::TS_WINDOW_MS;
use socp_protocol::message::{
    ClientInfo, Command, CommandResponse, DeliverContent, ErrorPayload, ListResponse, ListedUser,
    PublicChannelAdd, PublicChannelKeyShare, PublicChannelUpdated, ServerAddress, ServerAnnounce,
    ServerDeliver, ServerInfo, ServerWelcome, UserAdvertise, UserDeliver, UserRemove, Wrap,
};
use socp_protocol::{Base64Url, Envelope, ErrorCode, Message, PublicKey, ServerId, To, UserId};

use crate::crypto::{FrameText, SignedFrame};

/// Identifies one connection (a user session or a server link).
pub type ConnId = u64;

/// A session or link: its connection id and the handle to reach it.
#[derive(Debug, Clone)]
pub struct Conn<H> {
    pub id: ConnId,
    pub tx: H,
}

/// Produces signed frames. The server's is the crypto pool; tests sign inline.
pub trait Signer: Send + Sync {
    /// Sign `env` and serialise it.
    fn sign(&self, env: Envelope) -> SignedFrame;
    /// Build an envelope on a crypto thread (it may need RSA, e.g. OAEP key
    /// wraps), then sign it. `None` from `build` drops the frame.
    fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame;
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action<H> {
    /// Write a frame to a session or link.
    Send(H, SignedFrame),
    /// Write a frame as soon as it is signed, ahead of frames still being
    /// signed (heartbeats: liveness must not wait behind a deep queue).
    SendNow(H, SignedFrame),
    /// Close a session or link with a WebSocket close code.
    Close(H, u16, String),
    /// Open an outbound link to a server.
    Connect(Peer),
    /// Persist a change.
    Store(StoreOp),
}

/// A server we know: id, address and pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub server_id: ServerId,
    pub host: String,
    pub port: u16,
    pub pubkey: PublicKey,
}

/// Changes for the database.
#[derive(Debug, Clone, PartialEq, actix::Message)]
#[rtype(result = "()")]
pub enum StoreOp {
    /// A user joined the public channel: the store wraps the group key for
    /// them (RSA-OAEP, off the event loop), keeps the row, and the version.
    PublicJoin {
        user_id: UserId,
        pubkey: PublicKey,
        group_key: Arc<Vec<u8>>,
        version: u64,
    },
    /// A user left the public channel (ephemeral users only: registered users
    /// stay members); the new version.
    PublicLeave {
        user_id: UserId,
        remove_row: bool,
        version: u64,
    },
    /// Remember a server for reconnecting after a restart.
    KnownServer(Peer),
}

/// Why a user could not attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

/// Settings of the routing state.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Our server id.
    pub me: ServerId,
    /// Where other servers reach us.
    pub host: String,
    pub port: u16,
    /// Our public key (what SERVER_WELCOME lists for us).
    pub pubkey: PublicKey,
    /// Directory-only introducer: hosts no users, relays no chat.
    pub introducer_only: bool,
    /// Most entries in the seen-ids cache.
    pub seen_capacity: usize,
    /// Public channel version at start (persisted).
    pub public_version: u64,
}

/// A user attached to this server.
struct LocalUser<H> {
    conn: Conn<H>,
    pubkey: PublicKey,
    /// Username if registered; the listing shows it.
    name: Option<String>,
    /// Registered users stay public channel members when they leave.
    registered: bool,
    /// Our signed USER_ADVERTISE for this user: gossiped once, then reused for
    /// every later roster.
    advert: SignedFrame,
    /// When it attached ([`RouterState::epoch`]).
    attached: u64,
}

/// Most members one announcement adds: its PUBLIC_CHANNEL_UPDATED carries a
/// ~760-byte wrap for each, and must stay well inside every receiver's frame
/// limit (1 MiB by default). More joins go out in the next version.
pub const MAX_JOINS_PER_VERSION: usize = 256;

/// Public channel membership changes not announced yet. Changes that arrive
/// together (a burst of joins while the last announcement is still being
/// signed) make one version: one PUBLIC_CHANNEL_ADD listing every new member
/// and one PUBLIC_CHANNEL_UPDATED with their wraps (SPEC.md §6.4: `add` and
/// `wraps` are lists), two signatures instead of two per user.
#[derive(Default)]
struct Membership {
    joins: Vec<(UserId, PublicKey)>,
    /// Members who left, and whether they were registered (they keep their row).
    leaves: Vec<(UserId, bool)>,
}

/// A user attached elsewhere in the mesh.
struct RemoteUser {
    server_id: ServerId,
    pubkey: PublicKey,
    name: Option<String>,
    meta: Option<Value>,
    /// The origin server's USER_ADVERTISE as received (forwarded unchanged to
    /// our users), or our own re-signed one when we learnt the user otherwise.
    advert: Option<SignedFrame>,
}

/// A server in the mesh.
struct ServerEntry<H> {
    peer: Peer,
    /// The live link, if any.
    link: Option<Link<H>>,
}

struct Link<H> {
    conn: Conn<H>,
    /// Who opened the connection: of two simultaneous links, both sides keep
    /// the one opened by the lower server id.
    opened_by: ServerId,
    /// When it came up ([`RouterState::epoch`]).
    since: u64,
}

/// The seen-ids cache (SPEC.md §5.5), bounded in entries. When the cache is
/// full, the entry with the oldest `ts` is evicted and its `ts` becomes a
/// floor: anything at or below it counts as seen, so eviction never lets a
/// replay through. Evicting by `ts` rather than by arrival keeps the floor
/// below every entry still held: a frame stamped ahead (a peer whose clock runs
/// fast, still inside the window) cannot lift the floor over frames from
/// correctly set clocks.
pub struct SeenCache {
    set: HashSet<[u8; 32]>,
    /// The same keys ordered by `ts`, oldest first: what pruning and eviction take.
    by_ts: BTreeSet<(i64, [u8; 32])>,
    capacity: usize,
    floor_ts: i64,
}

impl SeenCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        SeenCache {
            set: HashSet::new(),
            by_ts: BTreeSet::new(),
            capacity: capacity.max(1),
            floor_ts: i64::MIN,
        }
    }

    /// Record `key` (for a frame stamped `ts`); false if it was already seen.
    pub fn insert(&mut self, key: [u8; 32], ts: i64, now: i64) -> bool {
        // Entries older than the acceptance window can go: such frames are
        // rejected as stale before they reach the cache.
        let horizon = now.saturating_sub(2 * TS_WINDOW_MS);
        while let Some(&(t, k)) = self.by_ts.first() {
            if t >= horizon {
                break;
            }
            self.by_ts.pop_first();
            self.set.remove(&k);
        }
        if ts <= self.floor_ts || self.set.contains(&key) {
            return false;
        }
        if self.by_ts.len() >= self.capacity {
            if let Some((t, k)) = self.by_ts.pop_first() {
                self.set.remove(&k);
                self.floor_ts = self.floor_ts.max(t);
            }
            if ts <= self.floor_ts {
                return false;
            }
        }
        self.set.insert(key);
        self.by_ts.insert((ts, key));
        true
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// A frame received from a server link, verified.
pub struct PeerFrame<'a> {
    /// The link's server.
    pub link: &'a ServerId,
    pub env: &'a Envelope,
    pub msg: Message,
    /// The frame text as received, for forwarding unchanged.
    pub raw: &'a FrameText,
}

/// One row of a listing.
fn listed(user_id: &UserId, server_id: &ServerId, name: Option<&str>) -> ListedUser {
    ListedUser {
        user_id: user_id.clone(),
        server_id: server_id.clone(),
        name: name.map_or_else(|| user_id.to_string(), str::to_owned),
    }
}

/// The display name carried in an advert's `meta` (ours write `name`; other
/// implementations use `username` or `display_name`).
fn meta_name(meta: Option<&Value>) -> Option<String> {
    let meta = meta?;
    ["name", "username", "display_name"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_owned)
}

/// Presence, servers, seen-ids and routing.
pub struct RouterState<H> {
    config: RouterConfig,
    signer: Arc<dyn Signer>,
    local: HashMap<UserId, LocalUser<H>>,
    remote: HashMap<UserId, RemoteUser>,
    servers: HashMap<ServerId, ServerEntry<H>>,
    seen: SeenCache,
    public_version: u64,
    /// Membership changes waiting to be announced as one version.
    membership: Membership,
    /// The last PUBLIC_CHANNEL_UPDATED we announced: while it is still being
    /// signed, further changes wait and fold into the next version.
    announced: Option<SignedFrame>,
    /// The public channel's group key (SPEC.md §6.4: wrapped for each member,
    /// encrypts nothing in socp, never rotated).
    group_key: Arc<Vec<u8>>,
    /// Counts attaches and links up: orders "this user attached" against
    /// "this link came up" for resolving ids claimed on both sides of a
    /// partition.
    epoch: u64,
}

impl<H: Clone> RouterState<H> {
    /// A router with no users and no servers.
    pub fn new(config: RouterConfig, signer: Arc<dyn Signer>) -> Self {
        RouterState {
            seen: SeenCache::new(config.seen_capacity),
            public_version: config.public_version,
            membership: Membership::default(),
            announced: None,
            config,
            signer,
            local: HashMap::new(),
            remote: HashMap::new(),
            servers: HashMap::new(),
            group_key: Arc::new(random_bytes(32)),
            epoch: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// Our server id.
    pub fn me(&self) -> &ServerId {
        &self.config.me
    }

    /// Change our id (the introducer assigned another).
    pub fn set_me(&mut self, id: ServerId) {
        self.config.me = id;
    }

    fn sign(&self, to: To, ts: i64, msg: Message) -> SignedFrame {
        self.signer
            .sign(Envelope::from_message(&self.config.me, to, ts, &msg))
    }

    fn error_frame(&self, to: To, now: i64, code: ErrorCode, detail: &str) -> SignedFrame {
        self.sign(
            to,
            now,
            Message::Error(ErrorPayload::new(code, detail.to_owned())),
        )
    }

    fn linked_servers(&self) -> impl Iterator<Item = (&ServerId, &Conn<H>)> {
        self.servers
            .iter()
            .filter_map(|(id, e)| e.link.as_ref().map(|l| (id, &l.conn)))
    }

    fn to_all_servers(&self, frame: &SignedFrame, except: &[&ServerId], out: &mut Vec<Action<H>>) {
        for (id, conn) in self.linked_servers() {
            if !except.contains(&id) {
                out.push(Action::Send(conn.tx.clone(), frame.clone()));
            }
        }
    }

    fn to_all_users(&self, frame: &SignedFrame, except: Option<&UserId>, out: &mut Vec<Action<H>>) {
        for (id, user) in &self.local {
            if Some(id) != except {
                out.push(Action::Send(user.conn.tx.clone(), frame.clone()));
            }
        }
    }

    // ----- users -----------------------------------------------------------

    /// Whether `user` is attached here or anywhere in the mesh.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.local.contains_key(user) || self.remote.contains_key(user)
    }

    /// Attach a user after a successful USER_HELLO. Sends the user the roster,
    /// gossips the new user, tells local users, and queues the user's public
    /// channel join: [`flush_membership`](Self::flush_membership) announces it
    /// (a new version), together with any other change queued by then.
    pub fn attach(
        &mut self,
        conn: Conn<H>,
        user_id: UserId,
        pubkey: PublicKey,
        name: Option<String>,
        registered: bool,
        now: i64,
    ) -> Result<Vec<Action<H>>, Refusal> {
        if self.config.introducer_only {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "this is a directory-only introducer; it hosts no users",
            ));
        }
        if self.local.contains_key(&user_id) {
            return Err(Refusal::new(
                ErrorCode::NameInUse,
                format!("{user_id} is already attached to this server"),
            ));
        }
        if let Some(r) = self.remote.get(&user_id) {
            if self.is_linked(&r.server_id) {
                return Err(Refusal::new(
                    ErrorCode::NameInUse,
                    format!("{user_id} is attached to server {}", r.server_id),
                ));
            }
            // Learnt from a welcome or gossip, at a server we have no link
            // to: not reachable, so not in use (as for USER_ADVERTISE).
            self.remote.remove(&user_id);
        }
        let mut out = Vec::new();
        // The roster first, so the client has every pubkey.
        for user in self.local.values() {
            out.push(Action::Send(conn.tx.clone(), user.advert.clone()));
        }
        let mut missing = Vec::new();
        for (id, user) in &self.remote {
            match &user.advert {
                Some(advert) => out.push(Action::Send(conn.tx.clone(), advert.clone())),
                None => missing.push(id.clone()),
            }
        }
        for id in missing {
            if let Some(frame) = self.resign_remote_advert(&id, now) {
                out.push(Action::Send(conn.tx.clone(), frame));
            }
        }

        let advert = self.local_advert(&user_id, &pubkey, name.as_deref(), now);
        // The user itself learns its own advert too: the client sees itself online.
        out.push(Action::Send(conn.tx.clone(), advert.clone()));
        self.to_all_servers(&advert, &[], &mut out);
        self.to_all_users(&advert, None, &mut out);

        let attached = self.tick();
        self.local.insert(
            user_id.clone(),
            LocalUser {
                conn: conn.clone(),
                pubkey: pubkey.clone(),
                name,
                registered,
                advert,
                attached,
            },
        );
        // A leave still queued for the same id stays: the store takes leaves
        // first, then joins.
        self.membership.joins.push((user_id, pubkey));
        Ok(out)
    }

    /// Our USER_ADVERTISE for a local user (`meta.name` = username if registered).
    fn local_advert(
        &self,
        user_id: &UserId,
        pubkey: &PublicKey,
        name: Option<&str>,
        now: i64,
    ) -> SignedFrame {
        self.sign(
            To::All,
            now,
            Message::UserAdvertise(UserAdvertise {
                user_id: user_id.clone(),
                server_id: self.config.me.clone(),
                pubkey: pubkey.clone(),
                meta: name.map(|n| serde_json::json!({ "name": n })),
            }),
        )
    }

    /// Our own signed advert for a remote user we learnt without one (from a
    /// SERVER_WELCOME), made once and kept.
    fn resign_remote_advert(&mut self, id: &UserId, now: i64) -> Option<SignedFrame> {
        let user = self.remote.get(id)?;
        let frame = self.sign(
            To::All,
            now,
            Message::UserAdvertise(UserAdvertise {
                user_id: id.clone(),
                server_id: user.server_id.clone(),
                pubkey: user.pubkey.clone(),
                meta: user.meta.clone(),
            }),
        );
        if let Some(user) = self.remote.get_mut(id) {
            user.advert = Some(frame.clone());
        }
        Some(frame)
    }

    /// Whether public channel membership changes wait to be announced.
    pub fn membership_pending(&self) -> bool {
        !self.membership.joins.is_empty() || !self.membership.leaves.is_empty()
    }

    /// The last announced PUBLIC_CHANNEL_UPDATED while it is still being
    /// signed: the shell lets changes queue behind it, so that a burst of joins
    /// makes a few versions rather than one per user.
    pub fn membership_signing(&self) -> Option<SignedFrame> {
        self.announced
            .as_ref()
            .filter(|f| matches!(f.state(), crate::crypto::Signing::Running))
            .cloned()
    }

    /// Announce the queued membership changes as one new version: a
    /// PUBLIC_CHANNEL_ADD listing the members who joined (if any; at most
    /// [`MAX_JOINS_PER_VERSION`], the rest stay queued) and a
    /// PUBLIC_CHANNEL_UPDATED with a wrap of the group key for each of them, to
    /// every linked server and local user; and the changes for the store.
    pub fn flush_membership(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        if !self.membership_pending() {
            return out;
        }
        let take = self.membership.joins.len().min(MAX_JOINS_PER_VERSION);
        let joins: Vec<(UserId, PublicKey)> = self.membership.joins.drain(..take).collect();
        let leaves = std::mem::take(&mut self.membership.leaves);
        let old = self.public_version;
        self.public_version += 1;
        let version = self.public_version;
        let mut frames = Vec::with_capacity(2);
        if !joins.is_empty() {
            frames.push(self.sign(
                To::Public,
                now,
                Message::PublicChannelAdd(PublicChannelAdd {
                    add: joins.iter().map(|(id, _)| id.clone()).collect(),
                    if_version: old,
                }),
            ));
        }
        let (me, members, group_key) = (
            self.config.me.clone(),
            joins.clone(),
            self.group_key.clone(),
        );
        // The wraps are RSA encryptions: made on a crypto thread.
        let updated = self.signer.sign_built(Box::new(move || {
            let wraps = members
                .into_iter()
                .filter_map(|(member_id, key)| {
                    let wrapped = key.encrypt(&group_key).ok()?;
                    Some(Wrap {
                        member_id,
                        wrapped_key: Base64Url::from_bytes(&wrapped),
                    })
                })
                .collect();
            Some(Envelope::new(
                &me,
                To::Public,
                now,
                &PublicChannelUpdated { version, wraps },
            ))
        }));
        frames.push(updated.clone());
        for frame in &frames {
            self.to_all_servers(frame, &[], &mut out);
            self.to_all_users(frame, None, &mut out);
        }
        self.announced = Some(updated);
        for (user_id, registered) in leaves {
            out.push(Action::Store(StoreOp::PublicLeave {
                user_id,
                remove_row: !registered,
                version,
            }));
        }
        for (user_id, pubkey) in joins {
            out.push(Action::Store(StoreOp::PublicJoin {
                user_id,
                pubkey,
                group_key: self.group_key.clone(),
                version,
            }));
        }
        out
    }

    /// Detach a user (session closed, or re-identified): gossips the removal
    /// and queues the user's leave of the public channel (announced by
    /// [`flush_membership`](Self::flush_membership)). Idempotent: only the
    /// connection that attached the user can detach it.
    pub fn detach(&mut self, conn_id: ConnId, user_id: &UserId, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        match self.local.get(user_id) {
            Some(u) if u.conn.id == conn_id => {}
            _ => return out,
        }
        let registered = self.local.remove(user_id).is_some_and(|u| u.registered);
        let remove = self.sign(
            To::All,
            now,
            Message::UserRemove(UserRemove {
                user_id: user_id.clone(),
                server_id: self.config.me.clone(),
            }),
        );
        self.to_all_servers(&remove, &[], &mut out);
        self.to_all_users(&remove, None, &mut out);
        match self
            .membership
            .joins
            .iter()
            .position(|(id, _)| id == user_id)
        {
            // Gone before its join was announced: there is nothing to take back.
            Some(i) => {
                self.membership.joins.remove(i);
            }
            None => self.membership.leaves.push((user_id.clone(), registered)),
        }
        out
    }

    /// The local session of a user, if attached here.
    pub fn session(&self, user_id: &UserId) -> Option<&Conn<H>> {
        self.local.get(user_id).map(|u| &u.conn)
    }

    /// The pubkey the network advertised for a user.
    pub fn pubkey_of(&self, user_id: &UserId) -> Option<&PublicKey> {
        self.local
            .get(user_id)
            .map(|u| &u.pubkey)
            .or_else(|| self.remote.get(user_id).map(|u| &u.pubkey))
    }

    /// Every online user, sorted by name, then id (SPEC.md §6.2).
    pub fn listing(&self) -> Vec<ListedUser> {
        let mut users: Vec<ListedUser> = self
            .local
            .iter()
            .map(|(id, u)| listed(id, &self.config.me, u.name.as_deref()))
            .chain(
                self.remote
                    .iter()
                    .filter(|(_, u)| self.is_linked(&u.server_id))
                    .map(|(id, u)| listed(id, &u.server_id, u.name.as_deref())),
            )
            .collect();
        users.sort_by(|a, b| (&a.name, &a.user_id).cmp(&(&b.name, &b.user_id)));
        users
    }

    /// Handle a frame from a local user, already checked by its session
    /// (identity, freshness, rate, content signature).
    pub fn from_user(
        &mut self,
        user_id: &UserId,
        env: &Envelope,
        msg: Message,
        now: i64,
    ) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let Some(origin) = self.local.get(user_id).map(|u| u.conn.tx.clone()) else {
            return out;
        };
        let reply_to = To::from(user_id);
        match msg {
            Message::ListRequest(_) => {
                let frame = self.sign(
                    reply_to,
                    now,
                    Message::ListResponse(ListResponse {
                        users: self.listing(),
                    }),
                );
                out.push(Action::Send(origin, frame));
            }
            Message::Command(Command { cmd }) => {
                let frame = if cmd.eq_ignore_ascii_case("list") {
                    self.sign(
                        reply_to,
                        now,
                        Message::CommandResponse(CommandResponse {
                            cmd,
                            users: self.listing(),
                        }),
                    )
                } else {
                    self.error_frame(reply_to, now, ErrorCode::UnknownType, "unknown command")
                };
                out.push(Action::Send(origin, frame));
            }
            Message::MsgDirect(m) => {
                self.route_content(env, DeliverContent::Dm(m), &origin, now, &mut out)
            }
            Message::MsgPublicChannel(m) => {
                self.route_content(env, DeliverContent::Public(m), &origin, now, &mut out)
            }
            Message::FileStart(m) => {
                self.route_content(env, DeliverContent::FileStart(m), &origin, now, &mut out)
            }
            Message::FileChunk(m) => {
                self.route_content(env, DeliverContent::FileChunk(m), &origin, now, &mut out)
            }
            Message::FileEnd(m) => {
                self.route_content(env, DeliverContent::FileEnd(m), &origin, now, &mut out)
            }
            Message::PublicChannelKeyShare(share) => self.route_key_share(env, share, &mut out),
            other => {
                let frame = self.error_frame(
                    reply_to,
                    now,
                    ErrorCode::BadRequest,
                    &format!("{} is not accepted from a user", other.msg_type().as_str()),
                );
                out.push(Action::Send(origin, frame));
            }
        }
        out
    }

    /// Route a user's content frame to its recipient (SPEC.md §8).
    fn route_content(
        &mut self,
        env: &Envelope,
        content: DeliverContent,
        origin: &H,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let recipient = match env.to().id().map(UserId::parse) {
            Some(Ok(id)) => id,
            _ => {
                let frame = self.error_frame(
                    To::from(&env.from_user()),
                    now,
                    ErrorCode::BadRequest,
                    "`to` must be the recipient's user id",
                );
                out.push(Action::Send(origin.clone(), frame));
                return;
            }
        };
        let sender = env.from_user();
        self.deliver(
            recipient,
            sender,
            env.ts(),
            content,
            Some(origin),
            None,
            now,
            out,
        );
    }

    /// Deliver content to `recipient`: locally as USER_DELIVER, to its server
    /// as SERVER_DELIVER, or answer USER_NOT_FOUND to the origin.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        recipient: UserId,
        sender: UserId,
        orig_ts: i64,
        content: DeliverContent,
        origin_user: Option<&H>,
        origin_link: Option<&ServerId>,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(user) = self.local.get(&recipient) {
            let frame = self.sign(
                To::from(&recipient),
                now,
                Message::UserDeliver(UserDeliver {
                    sender,
                    orig_ts: Some(orig_ts),
                    content,
                }),
            );
            out.push(Action::Send(user.conn.tx.clone(), frame));
            return;
        }
        let link = self
            .remote
            .get(&recipient)
            .and_then(|u| self.servers.get(&u.server_id))
            .and_then(|s| {
                s.link
                    .as_ref()
                    .map(|l| (s.peer.server_id.clone(), l.conn.tx.clone()))
            });
        match link {
            Some((server_id, tx)) if Some(&server_id) != origin_link => {
                let frame = self.sign(
                    To::from(&server_id),
                    now,
                    Message::ServerDeliver(ServerDeliver {
                        user_id: recipient,
                        sender,
                        orig_ts: Some(orig_ts),
                        content,
                    }),
                );
                out.push(Action::Send(tx, frame));
            }
            _ => {
                let detail = format!("{recipient} is not online");
                if let Some(origin) = origin_user {
                    let frame =
                        self.error_frame(To::from(&sender), now, ErrorCode::UserNotFound, &detail);
                    out.push(Action::Send(origin.clone(), frame));
                } else if let Some(link) = origin_link.and_then(|id| self.servers.get(id)) {
                    if let Some(l) = &link.link {
                        let frame = self.error_frame(
                            To::from(&link.peer.server_id),
                            now,
                            ErrorCode::UserNotFound,
                            &detail,
                        );
                        out.push(Action::Send(l.conn.tx.clone(), frame));
                    }
                }
            }
        }
    }

    fn route_key_share(
        &mut self,
        env: &Envelope,
        share: PublicChannelKeyShare,
        out: &mut Vec<Action<H>>,
    ) {
        let members: Vec<UserId> = share.shares.iter().map(|s| s.member.clone()).collect();
        let sender = env.from_user();
        for member in members {
            let frame = self.signer.sign(Envelope::from_message(
                &sender,
                To::from(&member),
                env.ts(),
                &Message::PublicChannelKeyShare(share.clone()),
            ));
            if let Some(user) = self.local.get(&member) {
                out.push(Action::Send(user.conn.tx.clone(), frame));
            } else if let Some(tx) = self
                .remote
                .get(&member)
                .and_then(|u| self.servers.get(&u.server_id))
                .and_then(|s| s.link.as_ref())
                .map(|l| l.conn.tx.clone())
            {
                out.push(Action::Send(tx, frame));
            }
        }
    }

    // ----- servers ---------------------------------------------------------

    /// The pinned key of a server.
    pub fn server_key(&self, id: &ServerId) -> Option<&PublicKey> {
        if *id == self.config.me {
            return Some(&self.config.pubkey);
        }
        self.servers.get(id).map(|s| &s.peer.pubkey)
    }

    /// Whether `id` has a live link.
    pub fn is_linked(&self, id: &ServerId) -> bool {
        self.servers.get(id).is_some_and(|s| s.link.is_some())
    }

    /// Every known server other than us.
    pub fn peers(&self) -> Vec<Peer> {
        self.servers.values().map(|s| s.peer.clone()).collect()
    }

    /// Remember a server (from a WELCOME, ANNOUNCE or the database) without
    /// linking. A different key for a known id is refused: ids are pinned.
    pub fn learn_server(&mut self, peer: Peer) -> Result<Option<Action<H>>, Refusal> {
        if peer.server_id == self.config.me {
            return Err(Refusal::new(
                ErrorCode::NameInUse,
                "that is our own server id",
            ));
        }
        match self.servers.get_mut(&peer.server_id) {
            Some(e) if e.peer.pubkey != peer.pubkey => Err(Refusal::new(
                ErrorCode::NameInUse,
                format!("server id {} is pinned to another key", peer.server_id),
            )),
            Some(e) => {
                if e.peer.host != peer.host || e.peer.port != peer.port {
                    e.peer = peer.clone();
                    return Ok(Some(Action::Store(StoreOp::KnownServer(peer))));
                }
                Ok(None)
            }
            None => {
                self.servers.insert(
                    peer.server_id.clone(),
                    ServerEntry {
                        peer: peer.clone(),
                        link: None,
                    },
                );
                Ok(Some(Action::Store(StoreOp::KnownServer(peer))))
            }
        }
    }

    /// A link to `peer` is up (after its first frame verified, or our hello
    /// was sent). Of two links to the same server, the one opened by the lower
    /// server id is kept and the other closed. Over the kept link every local
    /// user is advertised again with a fresh `ts`: adverts sent over a link that
    /// was then closed as a duplicate, and users the other side dropped when its
    /// previous link went down, would otherwise be lost until they reconnect
    /// (a fresh `ts` gets past the seen-ids cache).
    pub fn link_up(
        &mut self,
        peer: Peer,
        conn: Conn<H>,
        opened_by_me: bool,
        now: i64,
    ) -> Result<Vec<Action<H>>, Refusal> {
        let mut out = Vec::new();
        if let Some(a) = self.learn_server(peer.clone())? {
            out.push(a);
        }
        let opened_by = if opened_by_me {
            self.config.me.clone()
        } else {
            peer.server_id.clone()
        };
        let Some(entry) = self.servers.get_mut(&peer.server_id) else {
            return Ok(out);
        };
        if let Some(existing) = &entry.link {
            let keep_new = opened_by < existing.opened_by
                || (opened_by == existing.opened_by && conn.id > existing.conn.id);
            if !keep_new {
                out.push(Action::Close(conn.tx, 1000, "duplicate link".into()));
                return Ok(out);
            }
            out.push(Action::Close(
                existing.conn.tx.clone(),
                1000,
                "duplicate link".into(),
            ));
        }
        let tx = conn.tx.clone();
        self.epoch += 1;
        let since = self.epoch;
        let Some(entry) = self.servers.get_mut(&peer.server_id) else {
            return Ok(out);
        };
        entry.link = Some(Link {
            conn,
            opened_by,
            since,
        });
        for (user_id, user) in &self.local {
            let advert = self.local_advert(user_id, &user.pubkey, user.name.as_deref(), now);
            out.push(Action::Send(tx.clone(), advert));
        }
        Ok(out)
    }

    /// A link closed or died. Its users become unreachable: they are removed
    /// and local users told. Idempotent per connection. Returns the actions and
    /// whether the link was current (the shell then schedules a reconnect).
    pub fn link_down(
        &mut self,
        server: &ServerId,
        conn_id: ConnId,
        now: i64,
    ) -> (Vec<Action<H>>, bool) {
        let mut out = Vec::new();
        let Some(entry) = self.servers.get_mut(server) else {
            return (out, false);
        };
        match &entry.link {
            Some(l) if l.conn.id == conn_id => entry.link = None,
            _ => return (out, false),
        }
        let gone: Vec<UserId> = self
            .remote
            .iter()
            .filter(|(_, u)| &u.server_id == server)
            .map(|(id, _)| id.clone())
            .collect();
        for user_id in gone {
            self.remote.remove(&user_id);
            let frame = self.sign(
                To::All,
                now,
                Message::UserRemove(UserRemove {
                    user_id,
                    server_id: server.clone(),
                }),
            );
            self.to_all_users(&frame, None, &mut out);
        }
        (out, true)
    }

    /// A server said goodbye: forget its address so we do not reconnect.
    pub fn forget_link_target(&mut self, server: &ServerId) {
        self.servers.remove(server);
    }

    /// The current link connection of a server.
    pub fn link_of(&self, server: &ServerId) -> Option<&Conn<H>> {
        self.servers
            .get(server)
            .and_then(|s| s.link.as_ref())
            .map(|l| &l.conn)
    }

    /// Answer SERVER_HELLO_JOIN (we are the introducer): the assigned id, every
    /// server (us included) and every online user.
    pub fn welcome(&mut self, requested: &ServerId, address: &ServerAddress) -> ServerWelcome {
        // The requested id is kept unless another server holds it.
        let taken = *requested == self.config.me
            || self
                .servers
                .get(requested)
                .is_some_and(|s| s.peer.pubkey != address.pubkey);
        let assigned = if taken {
            ServerId::random()
        } else {
            requested.clone()
        };
        let mut servers = vec![ServerInfo {
            server_id: self.config.me.clone(),
            host: self.config.host.clone(),
            port: self.config.port,
            pubkey: self.config.pubkey.clone(),
        }];
        servers.extend(
            self.servers
                .values()
                .filter(|s| s.peer.server_id != assigned)
                .map(|s| ServerInfo {
                    server_id: s.peer.server_id.clone(),
                    host: s.peer.host.clone(),
                    port: s.peer.port,
                    pubkey: s.peer.pubkey.clone(),
                }),
        );
        let mut clients: Vec<ClientInfo> = self
            .local
            .iter()
            .map(|(id, u)| ClientInfo {
                user_id: id.clone(),
                server_id: self.config.me.clone(),
                pubkey: u.pubkey.clone(),
                meta: u.name.as_ref().map(|n| serde_json::json!({ "name": n })),
            })
            .collect();
        clients.extend(self.remote.iter().map(|(id, u)| ClientInfo {
            user_id: id.clone(),
            server_id: u.server_id.clone(),
            pubkey: u.pubkey.clone(),
            meta: u.meta.clone(),
        }));
        ServerWelcome {
            assigned_id: assigned,
            servers,
            clients,
        }
    }

    /// Apply our SERVER_WELCOME (we joined): learn every server and user, and
    /// return the servers to link to.
    pub fn apply_welcome(&mut self, welcome: &ServerWelcome) -> (Vec<Peer>, Vec<Action<H>>) {
        let mut out = Vec::new();
        let mut to_link = Vec::new();
        for s in &welcome.servers {
            let peer = Peer {
                server_id: s.server_id.clone(),
                host: s.host.clone(),
                port: s.port,
                pubkey: s.pubkey.clone(),
            };
            match self.learn_server(peer.clone()) {
                Ok(a) => {
                    out.extend(a);
                    if !self.is_linked(&peer.server_id) {
                        to_link.push(peer);
                    }
                }
                Err(r) => log::warn!("welcome lists server {}: {}", s.server_id, r.detail),
            }
        }
        for c in &welcome.clients {
            if self.local.contains_key(&c.user_id) || c.server_id == self.config.me {
                continue;
            }
            self.remote.insert(
                c.user_id.clone(),
                RemoteUser {
                    server_id: c.server_id.clone(),
                    pubkey: c.pubkey.clone(),
                    name: meta_name(c.meta.as_ref()),
                    meta: c.meta.clone(),
                    advert: None,
                },
            );
        }
        (to_link, out)
    }

    /// Our SERVER_ANNOUNCE (one signature serves every link: same payload).
    pub fn announce_frame(&self, now: i64) -> SignedFrame {
        self.sign(
            To::All,
            now,
            Message::ServerAnnounce(ServerAnnounce(ServerAddress {
                host: self.config.host.clone(),
                port: self.config.port,
                pubkey: self.config.pubkey.clone(),
            })),
        )
    }

    /// Our SERVER_ANNOUNCE, for every server.
    pub fn announce(&self, now: i64) -> Vec<Action<H>> {
        let frame = self.announce_frame(now);
        let mut out = Vec::new();
        self.to_all_servers(&frame, &[], &mut out);
        out
    }

    /// HEARTBEAT to every linked server (one signature for all).
    pub fn heartbeat(&self, now: i64) -> Vec<Action<H>> {
        let frame = self.sign(To::All, now, Message::Heartbeat(Default::default()));
        self.linked_servers()
            .map(|(_, conn)| Action::SendNow(conn.tx.clone(), frame.clone()))
            .collect()
    }

    /// SERVER_GOODBYE and USER_REMOVE for every local user, to every server,
    /// then close every session and link (shutdown).
    pub fn shutdown(&mut self, now: i64) -> Vec<Action<H>> {
        // Membership changes still queued reach the store and the mesh first.
        let mut out = self.flush_membership(now);
        let users: Vec<UserId> = self.local.keys().cloned().collect();
        for user_id in users {
            let frame = self.sign(
                To::All,
                now,
                Message::UserRemove(UserRemove {
                    user_id,
                    server_id: self.config.me.clone(),
                }),
            );
            self.to_all_servers(&frame, &[], &mut out);
        }
        let bye = self.sign(To::All, now, Message::ServerGoodbye(Default::default()));
        self.to_all_servers(&bye, &[], &mut out);
        for (_, conn) in self.linked_servers() {
            out.push(Action::Close(
                conn.tx.clone(),
                1000,
                "server shutting down".into(),
            ));
        }
        for user in self.local.values() {
            out.push(Action::Close(
                user.conn.tx.clone(),
                1000,
                "server shutting down".into(),
            ));
        }
        out
    }

    /// Handle a verified frame from a server link. `env.from()` is a server
    /// whose pinned key verified the frame (the shell checked).
    /// `adv` (from a linked server) claims a user id attached here. SPEC.md
    /// §5.3 forbids taking over a live id; but an id can end up claimed on both
    /// sides of a partition (each side removed the other's users and let the id
    /// attach again), and after the heal both servers would refuse the other's
    /// advert forever, each side sending to its own holder's key. [ext] rule:
    /// - if `adv`'s server was linked to us, without a break, since before our
    ///   user attached, it saw our advert first: its claim is the late one;
    ///   refused (so a linked server cannot evict a user by claiming its id);
    /// - otherwise, the same key on both servers is one holder that
    ///   reattached: the lower server id keeps the session, the other closes
    ///   its own (ERROR NAME_IN_USE) and accepts the advert;
    /// - different keys: neither claim may take the id over silently, and
    ///   neither server can tell which holder came first, so both close their
    ///   own holder with ERROR NAME_IN_USE and remove it; the id is free again
    ///   for whoever attaches first, with the whole mesh agreeing.
    ///
    /// Returns whether the advert may now be accepted.
    fn claimed_on_both_sides(
        &mut self,
        adv: &UserAdvertise,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        let Some(mine) = self.local.get(&adv.user_id) else {
            return true;
        };
        let linked_since = self
            .servers
            .get(&adv.server_id)
            .and_then(|s| s.link.as_ref())
            .map(|l| l.since);
        let late = linked_since.is_none_or(|since| since < mine.attached);
        let same_key = mine.pubkey == adv.pubkey;
        if late || (same_key && self.config.me < adv.server_id) {
            log::warn!(
                "{} advertises {} who is attached here: refused",
                adv.server_id,
                adv.user_id
            );
            return false;
        }
        log::warn!(
            "{} was attached here and at {} while we could not see each other: {}",
            adv.user_id,
            adv.server_id,
            if same_key {
                "the same key, kept there"
            } else {
                "different keys, both holders closed"
            }
        );
        let detail = format!(
            "{} was also claimed at server {} while the two servers could not see each other; \
             connect again",
            adv.user_id, adv.server_id
        );
        self.evict(&adv.user_id, &detail, now, out);
        same_key
    }

    /// Close a local user's session with ERROR NAME_IN_USE and remove it.
    fn evict(&mut self, user_id: &UserId, detail: &str, now: i64, out: &mut Vec<Action<H>>) {
        let Some(conn) = self.local.get(user_id).map(|u| u.conn.clone()) else {
            return;
        };
        let error = self.error_frame(To::from(user_id), now, ErrorCode::NameInUse, detail);
        out.push(Action::Send(conn.tx.clone(), error));
        out.push(Action::Close(conn.tx.clone(), 1008, "name in use".into()));
        out.extend(self.detach(conn.id, user_id, now));
    }

    pub fn from_server(&mut self, frame: PeerFrame<'_>, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let env = frame.env;
        let origin = env.from_server();
        // Replays and gossip loops stop here (SPEC.md §5.5).
        let dedup = !matches!(frame.msg, Message::Heartbeat(_));
        if dedup && !self.seen.insert(env.seen_key(), env.ts(), now) {
            log::debug!("dropping repeat {}", env.summary());
            return out;
        }
        let relay = SignedFrame::ready(frame.raw.clone());
        match frame.msg {
            Message::Heartbeat(_) | Message::Ack(_) => {}
            Message::UserAdvertise(adv) => {
                if adv.server_id != origin {
                    log::warn!(
                        "USER_ADVERTISE from {origin} for server {}: refused",
                        adv.server_id
                    );
                    return out;
                }
                if self.local.contains_key(&adv.user_id)
                    && !self.claimed_on_both_sides(&adv, now, &mut out)
                {
                    return out;
                }
                if let Some(existing) = self.remote.get(&adv.user_id) {
                    // The same key on two servers is one holder: the lower
                    // server id keeps it, everywhere (see claimed_on_both_sides).
                    let same_holder =
                        existing.pubkey == adv.pubkey && adv.server_id < existing.server_id;
                    if existing.server_id != adv.server_id
                        && self.is_linked(&existing.server_id)
                        && !same_holder
                    {
                        log::warn!(
                            "{origin} advertises {} who is attached to {}: refused",
                            adv.user_id,
                            existing.server_id
                        );
                        return out;
                    }
                }
                // Local users hear of new users and of changes, not of every
                // repeat (a server re-advertises its users on each new link).
                let changed = self.remote.get(&adv.user_id).is_none_or(|u| {
                    u.server_id != adv.server_id || u.pubkey != adv.pubkey || u.meta != adv.meta
                });
                self.remote.insert(
                    adv.user_id.clone(),
                    RemoteUser {
                        server_id: adv.server_id.clone(),
                        pubkey: adv.pubkey.clone(),
                        name: meta_name(adv.meta.as_ref()),
                        meta: adv.meta.clone(),
                        advert: Some(relay.clone()),
                    },
                );
                self.to_all_servers(&relay, &[frame.link, &origin], &mut out);
                if changed {
                    self.to_all_users(&relay, None, &mut out);
                }
            }
            Message::UserRemove(rm) => {
                if rm.server_id != origin {
                    log::warn!(
                        "USER_REMOVE from {origin} for server {}: refused",
                        rm.server_id
                    );
                    return out;
                }
                match self.remote.get(&rm.user_id) {
                    Some(u) if u.server_id == rm.server_id => {
                        self.remote.remove(&rm.user_id);
                        self.to_all_servers(&relay, &[frame.link, &origin], &mut out);
                        self.to_all_users(&relay, None, &mut out);
                    }
                    _ => log::debug!(
                        "USER_REMOVE for {} not located at {origin}: ignored",
                        rm.user_id
                    ),
                }
            }
            Message::ServerAnnounce(ServerAnnounce(addr)) => {
                let peer = Peer {
                    server_id: origin.clone(),
                    host: addr.host,
                    port: addr.port,
                    pubkey: addr.pubkey,
                };
                match self.learn_server(peer.clone()) {
                    Ok(a) => out.extend(a),
                    Err(r) => {
                        log::warn!("SERVER_ANNOUNCE from {origin}: {}", r.detail);
                        return out;
                    }
                }
                self.to_all_servers(&relay, &[frame.link, &origin], &mut out);
                if !self.is_linked(&origin) {
                    out.push(Action::Connect(peer));
                }
            }
            Message::ServerGoodbye(_) => {
                log::info!("server {origin} said goodbye");
            }
            Message::ServerDeliver(d) => {
                if self.config.introducer_only {
                    return out;
                }
                let orig_ts = d.orig_ts.unwrap_or(env.ts());
                if self.local.contains_key(&d.user_id) {
                    self.deliver(
                        d.user_id,
                        d.sender,
                        orig_ts,
                        d.content,
                        None,
                        Some(frame.link),
                        now,
                        &mut out,
                    );
                } else {
                    // The user moved: forward unchanged, never back to the sender.
                    let target = self
                        .remote
                        .get(&d.user_id)
                        .and_then(|u| self.servers.get(&u.server_id))
                        .filter(|s| s.peer.server_id != *frame.link && s.peer.server_id != origin)
                        .and_then(|s| s.link.as_ref())
                        .map(|l| l.conn.tx.clone());
                    match target {
                        Some(tx) => out.push(Action::Send(tx, relay)),
                        // Nowhere to forward it but back (or nowhere at all):
                        // answer on the link it came from. Re-sending it as our
                        // own SERVER_DELIVER would put it back to its origin.
                        None => {
                            let detail = format!("{} is not online", d.user_id);
                            let error = self.error_frame(
                                To::from(frame.link),
                                now,
                                ErrorCode::UserNotFound,
                                &detail,
                            );
                            if let Some(link) = self.link_of(frame.link) {
                                out.push(Action::Send(link.tx.clone(), error));
                            }
                        }
                    }
                }
            }
            Message::PublicChannelAdd(_) => {
                self.to_all_servers(&relay, &[frame.link, &origin], &mut out);
                self.to_all_users(&relay, None, &mut out);
            }
            Message::PublicChannelUpdated(u) => {
                self.public_version = self.public_version.max(u.version);
                self.to_all_servers(&relay, &[frame.link, &origin], &mut out);
                self.to_all_users(&relay, None, &mut out);
            }
            Message::Error(e) => {
                log::info!("server {origin} reports {}: {}", e.code, e.detail);
            }
            other => {
                log::debug!(
                    "{} from server {origin}: not handled on a server link",
                    other.msg_type().as_str()
                );
            }
        }
        out
    }

    /// Handle a content frame that another implementation's server forwarded
    /// as-is (`from` = a user, `to` = one of our users): routed like a DM.
    pub fn from_server_user_frame(
        &mut self,
        link: &ServerId,
        env: &Envelope,
        msg: Message,
        now: i64,
    ) -> Vec<Action<H>> {
        let mut out = Vec::new();
        if !self.seen.insert(env.seen_key(), env.ts(), now) {
            return out;
        }
        let content = match msg {
            Message::MsgDirect(m) => DeliverContent::Dm(m),
            Message::MsgPublicChannel(m) => DeliverContent::Public(m),
            Message::FileStart(m) => DeliverContent::FileStart(m),
            Message::FileChunk(m) => DeliverContent::FileChunk(m),
            Message::FileEnd(m) => DeliverContent::FileEnd(m),
            _ => return out,
        };
        let Some(Ok(recipient)) = env.to().id().map(UserId::parse) else {
            return out;
        };
        if self.local.contains_key(&recipient) {
            self.deliver(
                recipient,
                env.from_user(),
                env.ts(),
                content,
                None,
                Some(link),
                now,
                &mut out,
            );
        }
        out
    }

    /// Check and record a seen-ids key; false for a repeat.
    pub fn first_sight_key(&mut self, key: [u8; 32], ts: i64, now: i64) -> bool {
        self.seen.insert(key, ts, now)
    }

    /// Counts for `/status` and logs.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.local.len(),
            self.remote.len(),
            self.servers.len(),
            self.servers.values().filter(|s| s.link.is_some()).count(),
        )
    }

    /// One log line: our id, every known server and its link, user counts.
    pub fn known_servers_line(&self) -> String {
        let mut servers: Vec<String> = self
            .servers
            .values()
            .map(|s| {
                let state = if s.link.is_some() { "up" } else { "down" };
                format!(
                    "{}@{}:{} {state}",
                    s.peer.server_id, s.peer.host, s.peer.port
                )
            })
            .collect();
        servers.sort();
        format!(
            "server {}: known servers [{}]; {} local, {} remote users",
            self.config.me,
            servers.join(", "),
            self.local.len(),
            self.remote.len()
        )
    }

    /// A JSON status snapshot.
    pub fn status(&self) -> Value {
        let servers: Vec<Value> = self
            .servers
            .values()
            .map(|s| {
                serde_json::json!({
                    "server_id": s.peer.server_id,
                    "host": s.peer.host,
                    "port": s.peer.port,
                    "link": if s.link.is_some() { "up" } else { "down" },
                })
            })
            .collect();
        let local: Vec<&UserId> = self.local.keys().collect();
        let remote: Vec<Value> = self
            .remote
            .iter()
            .map(|(id, u)| serde_json::json!({"user_id": id, "server_id": u.server_id}))
            .collect();
        serde_json::json!({
            "server_id": self.config.me,
            "host": self.config.host,
            "port": self.config.port,
            "introducer_only": self.config.introducer_only,
            "public_version": self.public_version,
            "servers": servers,
            "local_users": local,
            "remote_users": remote,
        })
    }
}
