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
                let wrapped = pubkey
                    .encrypt(group_key)
                    .map(|w| Base64Url::from_bytes(&w).as_str().to_owned())
                    .unwrap_or_default();
                self.db
                    .add_public_member(user_id, &wrapped)
                    .and_then(|_| self.db.raise_public_version(*version))
                    .map(drop)
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
