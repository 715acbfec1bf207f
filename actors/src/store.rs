//! Store: SyncArbiter actors that own database access. No other actor touches
//! SQLite; each request runs on a store thread, off every event loop.

use actix::prelude::*;
use socp_db::{Db, NewUser, UserRecord};
use socp_protocol::{Base64Url, UserId};

use crate::routing::StoreOp;

/// A store thread.
pub struct Store {
    db: Db,
}

impl Store {
    /// Start `threads` store threads over `db` (its pool is shared).
    pub fn start(db: Db, threads: usize) -> Addr<Store> {
        SyncArbiter::start(threads.max(1), move || Store { db: db.clone() })
    }
}

impl Actor for Store {
    type Context = SyncContext<Self>;
}

impl Handler<StoreOp> for Store {
    type Result = ();

    fn handle(&mut self, op: StoreOp, _: &mut Self::Context) {
        let result = match &op {
            StoreOp::PublicJoin {
                user_id,
                pubkey,
                group_key,
                version,
            } => {
                // The wrap is an RSA-OAEP encryption: done here, off the loop.
                match pubkey.encrypt(group_key) {
                    Ok(w) => self
                        .db
                        .add_public_member(user_id, Base64Url::from_bytes(&w).as_str())
                        .and_then(|_| self.db.raise_public_version(*version))
                        .map(drop),
                    // Never stored as an empty wrap: the member row waits for
                    // the next join, and the failure is reported.
                    Err(e) => {
                        log::error!("cannot wrap the public channel key for {user_id}: {e}");
                        self.db.raise_public_version(*version).map(drop)
                    }
                }
            }
            StoreOp::PublicLeave {
                user_id,
                remove_row,
                version,
            } => {
                let removed = if *remove_row {
                    self.db.remove_public_member(user_id).map(drop)
                } else {
                    Ok(())
                };
                removed.and_then(|_| self.db.raise_public_version(*version).map(drop))
            }
            StoreOp::Record { record, frame, cap } => match frame.peek() {
                Some(text) => self.db.put_record(record, &text, *cap).map(|outcome| {
                    log::debug!("directory record for {}: {outcome:?}", record.user_id)
                }),
                None => Err(socp_db::Error::Corrupt("record frame not signed".into())),
            },
            StoreOp::OwnRecord {
                user_id,
                version,
                frame,
            } => match frame.peek() {
                Some(text) => self.db.set_own_record(
                    user_id,
                    i64::try_from(*version).unwrap_or(i64::MAX),
                    &text,
                ),
                None => Err(socp_db::Error::Corrupt("record frame not signed".into())),
            },
            StoreOp::MailPut(mail) => self.db.put_mail(mail),
            StoreOp::MailDelete(ids) => self.db.delete_mail(ids).map(drop),
            StoreOp::KnownServer(peer) => self.db.upsert_known_server(
                &peer.server_id,
                &peer.host,
                peer.port,
                &peer.pubkey,
                socp_protocol::now_ms(),
            ),
        };
        if let Err(e) = result {
            log::error!("database write failed ({op:?}): {e}");
        }
    }
}

/// Up to `limit` directory record frames, ordered by user id, after `after`.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, socp_db::Error>")]
pub struct DirectoryPageQuery {
    /// Start after this user id (absent: from the first).
    pub after: Option<UserId>,
    /// At most this many records.
    pub limit: usize,
}

impl Handler<DirectoryPageQuery> for Store {
    type Result = Result<Vec<String>, socp_db::Error>;

    fn handle(&mut self, msg: DirectoryPageQuery, _: &mut Self::Context) -> Self::Result {
        self.db.directory_page(msg.after.as_ref(), msg.limit)
    }
}

/// Rename a user registered here; the new row version.
#[derive(Message)]
#[rtype(result = "Result<i64, socp_db::Error>")]
pub struct Rename(pub UserId, pub socp_protocol::Username);

impl Handler<Rename> for Store {
    type Result = Result<i64, socp_db::Error>;

    fn handle(&mut self, msg: Rename, _: &mut Self::Context) -> Self::Result {
        self.db.rename_user(&msg.0, &msg.1)
    }
}

/// Look a registered user up by id.
#[derive(Message)]
#[rtype(result = "Result<Option<UserRecord>, socp_db::Error>")]
pub struct GetUser(pub UserId);

impl Handler<GetUser> for Store {
    type Result = Result<Option<UserRecord>, socp_db::Error>;

    fn handle(&mut self, msg: GetUser, _: &mut Self::Context) -> Self::Result {
        self.db.get_user(&msg.0)
    }
}

/// Look a registered user up by username (any case) or id.
#[derive(Message)]
#[rtype(result = "Result<Option<UserRecord>, socp_db::Error>")]
pub struct FindUser(pub String);

impl Handler<FindUser> for Store {
    type Result = Result<Option<UserRecord>, socp_db::Error>;

    fn handle(&mut self, msg: FindUser, _: &mut Self::Context) -> Self::Result {
        self.db.find_user(&msg.0)
    }
}

/// Register a user (users and usernames rows in one transaction).
#[derive(Message)]
#[rtype(result = "Result<(), socp_db::Error>")]
pub struct Register(pub NewUser);

impl Handler<Register> for Store {
    type Result = Result<(), socp_db::Error>;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        self.db.register_user(&msg.0)
    }
}
