//! A fake router and a fake store: they stand in for the Router and Store
//! behind a session's or link's ports, record what they were asked, and
//! answer as scripted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use socp_actors::crypto::FrameText;
use socp_actors::error::Refusal;
use socp_actors::ports::{RouterPort, StorePort};
use socp_actors::router::{
    Attach, Detach, FirstSight, JoinRequest, Joined, LinkDown, LinkFrame, LinkUp, Publish,
    ServerKey, SyncedRecord, UserFrame, UserKey,
};
use socp_actors::store::{DirectoryPageQuery, FindUser, GetUser, Register, Rename};
use socp_db::UserRecord;
use socp_protocol::message::ServerWelcome;
use socp_protocol::{PublicKey, ServerId, UserId};

use super::lock;

/// What a fake router was asked, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Attach {
        user_id: UserId,
        pubkey: PublicKey,
        name: Option<String>,
        registered: bool,
    },
    Detach(UserId),
    UserFrame {
        user_id: UserId,
        msg_type: String,
    },
    FirstSight,
    ServerKey(ServerId),
    LinkUp {
        server_id: ServerId,
        opened_by_me: bool,
    },
    LinkDown(ServerId),
    LinkFrame {
        link: ServerId,
        msg_type: String,
        /// The frame's `from`.
        from: String,
        /// The frame as it arrived.
        raw: FrameText,
    },
    Join(ServerId),
    Joined(ServerId),
    Publish {
        user_id: UserId,
        username: String,
        version: u64,
    },
    SyncedRecord(UserId),
}

/// How a fake router answers.
#[derive(Default)]
pub struct Script {
    /// Keys advertised for users.
    pub user_keys: HashMap<UserId, PublicKey>,
    /// Attach refusals by user id.
    pub refuse_attach: HashMap<UserId, Refusal>,
    /// Pinned server keys.
    pub server_keys: HashMap<ServerId, PublicKey>,
    /// The welcome a join request gets.
    pub welcome: Option<ServerWelcome>,
}

/// A router that records calls and answers from its [`Script`].
pub struct FakeRouter {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Script,
    seen: HashSet<[u8; 32]>,
}

/// A started fake router.
pub struct Router {
    pub addr: Addr<FakeRouter>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Router {
    pub fn start(script: Script) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let addr = FakeRouter {
            calls: calls.clone(),
            script,
            seen: HashSet::new(),
        }
        .start();
        Router { addr, calls }
    }

    pub fn port(&self) -> RouterPort {
        RouterPort::of(&self.addr)
    }

    /// Every call so far, once the router handled what was sent before.
    pub async fn calls(&self) -> Vec<Call> {
        let flush = ServerId::parse("flush").expect("an id");
        self.addr
            .send(ServerKey(flush.clone()))
            .await
            .expect("fake router alive");
        let mut calls = lock(&self.calls).clone();
        // The flush itself (not necessarily the last call: others may have
        // been handled since).
        if let Some(at) = calls
            .iter()
            .rposition(|c| *c == Call::ServerKey(flush.clone()))
        {
            calls.remove(at);
        }
        calls
    }

    /// The calls so far, without waiting for anything in flight.
    pub fn calls_now(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }
}

impl Actor for FakeRouter {
    type Context = Context<Self>;
}

impl FakeRouter {
    fn log(&self, call: Call) {
        lock(&self.calls).push(call);
    }
}

impl Handler<Attach> for FakeRouter {
    type Result = Result<(), Refusal>;
    fn handle(&mut self, m: Attach, _: &mut Context<Self>) -> Self::Result {
        self.log(Call::Attach {
            user_id: m.user_id.clone(),
            pubkey: m.pubkey,
            name: m.name,
            registered: m.registered,
        });
        match self.script.refuse_attach.get(&m.user_id) {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }
}

impl Handler<Detach> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: Detach, _: &mut Context<Self>) {
        self.log(Call::Detach(m.user_id));
    }
}

impl Handler<UserFrame> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: UserFrame, _: &mut Context<Self>) {
        self.log(Call::UserFrame {
            user_id: m.user_id,
            msg_type: m.msg.msg_type().as_str().to_owned(),
        });
    }
}

impl Handler<FirstSight> for FakeRouter {
    type Result = bool;
    fn handle(&mut self, m: FirstSight, _: &mut Context<Self>) -> bool {
        self.log(Call::FirstSight);
        self.seen.insert(m.0)
    }
}

impl Handler<ServerKey> for FakeRouter {
    type Result = Option<PublicKey>;
    fn handle(&mut self, m: ServerKey, _: &mut Context<Self>) -> Option<PublicKey> {
        let key = self.script.server_keys.get(&m.0).cloned();
        self.log(Call::ServerKey(m.0));
        key
    }
}

impl Handler<UserKey> for FakeRouter {
    type Result = Option<PublicKey>;
    fn handle(&mut self, m: UserKey, _: &mut Context<Self>) -> Option<PublicKey> {
        self.script.user_keys.get(&m.0).cloned()
    }
}

impl Handler<LinkUp> for FakeRouter {
    type Result = Result<(), Refusal>;
    fn handle(&mut self, m: LinkUp, _: &mut Context<Self>) -> Self::Result {
        self.log(Call::LinkUp {
            server_id: m.peer.server_id,
            opened_by_me: m.opened_by_me,
        });
        Ok(())
    }
}

impl Handler<LinkDown> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: LinkDown, _: &mut Context<Self>) {
        self.log(Call::LinkDown(m.server_id));
    }
}

impl Handler<LinkFrame> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: LinkFrame, _: &mut Context<Self>) {
        self.log(Call::LinkFrame {
            link: m.link,
            msg_type: m.msg.msg_type().as_str().to_owned(),
            from: m.env.from().to_owned(),
            raw: m.raw,
        });
    }
}

impl Handler<JoinRequest> for FakeRouter {
    type Result = MessageResult<JoinRequest>;
    fn handle(&mut self, m: JoinRequest, _: &mut Context<Self>) -> Self::Result {
        self.log(Call::Join(m.requested.clone()));
        MessageResult(self.script.welcome.clone().unwrap_or(ServerWelcome {
            assigned_id: m.requested,
            servers: Vec::new(),
            clients: Vec::new(),
        }))
    }
}

impl Handler<Joined> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: Joined, _: &mut Context<Self>) {
        self.log(Call::Joined(m.0.assigned_id));
    }
}

impl Handler<Publish> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: Publish, _: &mut Context<Self>) {
        self.log(Call::Publish {
            user_id: m.0.user_id,
            username: m.0.username.to_string(),
            version: m.0.version,
        });
    }
}

impl Handler<SyncedRecord> for FakeRouter {
    type Result = ();
    fn handle(&mut self, m: SyncedRecord, _: &mut Context<Self>) {
        if let socp_protocol::Message::DirectoryRecord(r) = m.0.msg {
            self.log(Call::SyncedRecord(r.user_id));
        }
    }
}

/// What a fake keeps and a test reads.
type Shelf<T> = Arc<Mutex<Vec<T>>>;

/// A store over a map of registered users, and a scripted directory.
pub struct FakeStore {
    users: Arc<Mutex<Vec<UserRecord>>>,
    directory: Shelf<(UserId, String)>,
    pages: Shelf<(Option<UserId>, usize)>,
}

/// A started fake store.
pub struct Store {
    pub addr: Addr<FakeStore>,
    pub users: Arc<Mutex<Vec<UserRecord>>>,
    /// The directory record frames pages are served from: `(user id, frame
    /// text)`, kept in user id order.
    pub directory: Shelf<(UserId, String)>,
    /// The page queries asked so far, as `(after, limit)`.
    pub pages: Shelf<(Option<UserId>, usize)>,
}

impl Store {
    pub fn start(users: Vec<UserRecord>) -> Self {
        let users = Arc::new(Mutex::new(users));
        let directory = Arc::new(Mutex::new(Vec::new()));
        let pages = Arc::new(Mutex::new(Vec::new()));
        let addr = FakeStore {
            users: users.clone(),
            directory: directory.clone(),
            pages: pages.clone(),
        }
        .start();
        Store {
            addr,
            users,
            directory,
            pages,
        }
    }

    /// Serve directory pages from these record frames (any order).
    pub fn set_directory(&self, mut records: Vec<(UserId, String)>) {
        records.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        *lock(&self.directory) = records;
    }

    /// The page queries asked so far, as `(after, limit)`.
    pub fn page_queries(&self) -> Vec<(Option<UserId>, usize)> {
        lock(&self.pages).clone()
    }

    pub fn port(&self) -> StorePort {
        StorePort::of(&self.addr)
    }
}

impl Actor for FakeStore {
    type Context = Context<Self>;
}

impl Handler<GetUser> for FakeStore {
    type Result = Result<Option<UserRecord>, socp_db::Error>;
    fn handle(&mut self, m: GetUser, _: &mut Context<Self>) -> Self::Result {
        Ok(lock(&self.users).iter().find(|u| u.user_id == m.0).cloned())
    }
}

impl Handler<FindUser> for FakeStore {
    type Result = Result<Option<UserRecord>, socp_db::Error>;
    fn handle(&mut self, m: FindUser, _: &mut Context<Self>) -> Self::Result {
        Ok(lock(&self.users)
            .iter()
            .find(|u| {
                u.user_id.as_str() == m.0
                    || u.username
                        .as_ref()
                        .is_some_and(|n| n.as_str().eq_ignore_ascii_case(&m.0))
            })
            .cloned())
    }
}

impl Handler<Rename> for FakeStore {
    type Result = Result<i64, socp_db::Error>;
    fn handle(&mut self, m: Rename, _: &mut Context<Self>) -> Self::Result {
        let mut users = lock(&self.users);
        let taken = users.iter().any(|u| {
            u.user_id != m.0
                && u.username
                    .as_ref()
                    .is_some_and(|n| n.as_str().eq_ignore_ascii_case(m.1.as_str()))
        });
        if taken {
            return Err(socp_db::Error::NameInUse);
        }
        let user = users
            .iter_mut()
            .find(|u| u.user_id == m.0)
            .ok_or_else(|| socp_db::Error::Corrupt("no such user".into()))?;
        user.username = Some(m.1);
        user.version += 1;
        Ok(user.version)
    }
}

impl Handler<DirectoryPageQuery> for FakeStore {
    type Result = Result<Vec<String>, socp_db::Error>;
    fn handle(&mut self, m: DirectoryPageQuery, _: &mut Context<Self>) -> Self::Result {
        lock(&self.pages).push((m.after.clone(), m.limit));
        Ok(lock(&self.directory)
            .iter()
            .filter(|(id, _)| m.after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
            .take(m.limit)
            .map(|(_, text)| text.clone())
            .collect())
    }
}

impl Handler<Register> for FakeStore {
    type Result = Result<(), socp_db::Error>;
    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        let mut users = lock(&self.users);
        let new = m.0;
        if users.iter().any(|u| u.user_id == new.user_id) {
            return Err(socp_db::Error::IdInUse);
        }
        if users.iter().any(|u| {
            u.username
                .as_ref()
                .is_some_and(|n| n.as_str().eq_ignore_ascii_case(new.username.as_str()))
        }) {
            return Err(socp_db::Error::NameInUse);
        }
        users.push(UserRecord {
            user_id: new.user_id,
            username: Some(new.username),
            pubkey: new.pubkey,
            privkey_store: new.privkey_store,
            meta: new.meta,
            version: 1,
            home_server: None,
            registered_at: 1,
        });
        Ok(())
    }
}
