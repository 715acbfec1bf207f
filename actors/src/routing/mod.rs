//! `RouterState`: presence, server table, seen-ids and routing (SPEC.md §5, §6, §8)
//! as a plain struct whose methods return what to send.
//!
//! The [`Router`](crate::router::Router) actor is a thin shell over it: it feeds
//! in what sessions and links report and carries out the returned [`Action`]s.
//! Handles (`H`) are whatever the shell uses to reach a session or link
//! (`Recipient<Outbound>` in the server, plain values in tests).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use socp_protocol::crypto::random_bytes;
use socp_protocol::message::{DirectoryRecord, ErrorPayload};
use socp_protocol::{Envelope, ErrorCode, Message, PublicKey, ServerId, To, UserId};

use crate::crypto::{FrameText, SignedFrame};

mod allowlist;
mod contest;
mod delivery;
mod directory;
mod inbound;
mod mailbox;
mod membership;
mod news;
mod presence;
mod seen;
mod sequence;
mod servers;
mod sharing;
mod status;

pub use crate::error::Refusal;
pub use allowlist::Allowlist;
pub use delivery::LIST_PART;
use directory::Directory;
pub use directory::{own_record, refused};
pub use mailbox::MailBounds;
use mailbox::Mailboxes;
use membership::Membership;
pub use membership::MAX_JOINS_PER_VERSION;
use news::News;
pub use news::MAX_BATCH_BYTES;
pub use presence::Traits;
use presence::{LocalUser, RemoteUser};
pub use seen::SeenCache;
pub(crate) use sequence::PresenceSeq;
use servers::ServerEntry;
pub use servers::{DUPLICATE_LINK, WELCOME_CLIENTS};
pub use status::{LinkState, RemoteUserStatus, ServerStatus, Status};

/// Identifies one connection (a user session or a server link).
pub(crate) type ConnId = u64;

/// A session or link: its connection id and the handle to reach it.
#[derive(Debug, Clone)]
pub struct Conn<H> {
    /// The connection id.
    pub id: ConnId,
    /// The handle that reaches it.
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
    /// Its server id.
    pub server_id: ServerId,
    /// The host other servers dial.
    pub host: String,
    /// Its WebSocket port.
    pub port: u16,
    /// Its pinned public key.
    pub pubkey: PublicKey,
}

/// Changes for the database.
#[derive(Debug, Clone, PartialEq, actix::Message)]
#[rtype(result = "()")]
pub enum StoreOp {
    /// A user joined the public channel: the store wraps the group key for
    /// them (RSA-OAEP, off the event loop), keeps the row, and the version.
    PublicJoin {
        /// The new member.
        user_id: UserId,
        /// Its key (the group key is wrapped for it).
        pubkey: PublicKey,
        /// The channel's group key.
        group_key: Arc<Vec<u8>>,
        /// The channel version this join made.
        version: u64,
    },
    /// A user left the public channel (ephemeral users only: registered users
    /// stay members); the new version.
    PublicLeave {
        /// The member who left.
        user_id: UserId,
        /// Whether its row goes (ephemeral users) or stays (registered users).
        remove_row: bool,
        /// The channel version this leave made.
        version: u64,
    },
    /// Remember a server for reconnecting after a restart.
    KnownServer(Peer),
    /// Keep a directory record from another server, as its home server
    /// signed it (ready), within `cap` records per home server.
    Record {
        /// The record.
        record: DirectoryRecord,
        /// The record frame as its home server signed it.
        frame: SignedFrame,
        /// Most records kept per home server.
        cap: usize,
    },
    /// Keep the signed record of a user registered here (the shell sends it
    /// once signed).
    OwnRecord {
        /// The user.
        user_id: UserId,
        /// The record's version (the user's row version).
        version: u64,
        /// The record frame we signed.
        frame: SignedFrame,
    },
    /// Keep a DM for an offline registered user of ours [ext].
    MailPut(socp_db::StoredMail),
    /// Forget kept DMs (acknowledged or expired).
    MailDelete(Vec<String>),
}

impl StoreOp {
    /// The frame this change carries, which must be signed before it is stored.
    pub fn frame(&self) -> Option<&SignedFrame> {
        match self {
            StoreOp::Record { frame, .. } | StoreOp::OwnRecord { frame, .. } => Some(frame),
            _ => None,
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
    /// Our WebSocket port.
    pub port: u16,
    /// Our public key (what SERVER_WELCOME lists for us).
    pub pubkey: PublicKey,
    /// Directory-only introducer: hosts no users, relays no chat.
    pub introducer_only: bool,
    /// Most entries in the seen-ids cache.
    pub seen_capacity: usize,
    /// Public channel version at start (persisted).
    pub public_version: u64,
    /// The first presence sequence number this run may use (SPEC.md §5.3
    /// [ext]): the store hands out a block no earlier run used.
    pub presence_seq: u64,
    /// Most directory records kept per home server.
    pub directory_cap: usize,
    /// What linked servers may make this server hold or do.
    pub budgets: Budgets,
    /// A closed federation's servers (`None`: the mesh is open).
    pub allowlist: Option<Arc<Allowlist>>,
}

/// What one linked server may make this server hold or do (SPEC.md §5 [ext]).
/// Past a budget the frame is refused (counted by reason in `/status` and
/// `/metrics`), never kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    /// Users one server may have here (its own users, advertised).
    pub max_users_per_server: usize,
    /// Servers this server will know in all.
    pub max_servers: usize,
    /// Servers not yet linked that one link's announcements may teach.
    pub max_announced_per_link: usize,
    /// Dials per second to servers only announced to us (each is dialled
    /// once; a link it opens to us vouches for it).
    pub dial_rate: f64,
    /// Dials to announced servers at once.
    pub dial_burst: f64,
    /// How long users of a server we have no link to are kept (ms): the
    /// link may be on its way; past this they are forgotten.
    pub unlinked_grace_ms: i64,
    /// The mailboxes of offline registered users [ext].
    pub mail: MailBounds,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            max_users_per_server: 5_000,
            max_servers: 256,
            max_announced_per_link: 16,
            dial_rate: 0.5,
            dial_burst: 8.0,
            unlinked_grace_ms: 60_000,
            mail: MailBounds::default(),
        }
    }
}

/// A frame received from a server link, verified.
pub struct PeerFrame<'a> {
    /// The link's server.
    pub link: &'a ServerId,
    /// The frame, verified.
    pub env: &'a Envelope,
    /// Its parsed payload.
    pub msg: Message,
    /// The frame text as received, for forwarding unchanged.
    pub raw: &'a FrameText,
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
    sharing: sharing::Sharing,
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
    /// Registered users of the mesh [ext].
    directory: Directory,
    /// The next presence sequence number we stamp.
    next_seq: Cell<u64>,
    /// The last presence sequence number seen per origin and user.
    presence_seen: PresenceSeq,
    /// Frames refused, by reason (`/metrics`).
    refusals: BTreeMap<&'static str, u64>,
    /// Remote users per server (budgeted).
    remote_per_server: HashMap<ServerId, usize>,
    /// Dial tokens left, and when they were counted (ms).
    dial_tokens: (f64, i64),
    /// DMs kept for offline registered users of ours [ext].
    mail: Mailboxes,
    /// Presence news for the next batch [ext].
    news: News,
    /// Claims we gave up in a partition's heal, owed to the other server.
    contested: contest::Contested,
}

impl<H: Clone> RouterState<H> {
    /// A router with no users and no servers.
    pub fn new(config: RouterConfig, signer: Arc<dyn Signer>) -> Self {
        let (config_seq, seen_capacity) = (config.presence_seq, config.seen_capacity);
        let dial_burst = config.budgets.dial_burst;
        RouterState {
            seen: SeenCache::new(config.seen_capacity),
            public_version: config.public_version,
            membership: Membership::default(),
            sharing: sharing::Sharing::default(),
            announced: None,
            config,
            signer,
            local: HashMap::new(),
            remote: HashMap::new(),
            servers: HashMap::new(),
            group_key: Arc::new(random_bytes(32)),
            epoch: 0,
            directory: Directory::default(),
            next_seq: Cell::new(config_seq),
            presence_seen: PresenceSeq::new(seen_capacity),
            refusals: BTreeMap::new(),
            remote_per_server: HashMap::new(),
            dial_tokens: (dial_burst, 0),
            mail: Mailboxes::default(),
            news: News::default(),
            contested: contest::Contested::default(),
        }
    }

    /// Load the directory of registered users (from the store, at start).
    pub fn load_directory(&mut self, entries: &[socp_db::DirectoryEntry]) {
        self.directory = Directory::load(entries);
    }

    /// The next presence sequence number.
    fn next_seq(&self) -> u64 {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.saturating_add(1));
        seq
    }

    fn tick(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// Our server id.
    pub fn me(&self) -> &ServerId {
        &self.config.me
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
}
