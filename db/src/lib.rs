//! # socp-db
//!
//! The storage of a socp server (SPEC.md §9): SQLite through an r2d2 pool of
//! rusqlite connections. The server's `Store` actors own a [`Db`] and call its
//! synchronous methods from SyncArbiter threads; nothing else opens SQLite.
//!
//! - [`Db`] (`db.rs`): opening a file (WAL, `foreign_keys`, busy timeout,
//!   `synchronous=NORMAL`, created owner-only since it holds the server key) or
//!   a private in-memory database; the pool; read and write-transaction helpers.
//! - `migrations.rs`: the schema as ordered steps tracked by `PRAGMA
//!   user_version`; refuses newer schemas and other programs' databases.
//! - `identity.rs`: this server's id and private key ([`Identity`]).
//! - `users.rs`: registered users and their case-insensitively unique
//!   usernames ([`NewUser`], [`UserRecord`]).
//! - `public_channel.rs`: public-channel membership and its version
//!   ([`Member`], [`MembershipChange`]).
//! - `directory.rs`: the mesh-wide directory of registered users: records
//!   from other servers, the name-conflict rule, counters ([`RecordOutcome`]).
//! - `mailbox.rs`: DMs kept for offline registered users ([`StoredMail`]).
//! - `peers.rs`: servers met in the mesh ([`KnownServer`]).
//! - [`error`]: one error enum; full disk (file-size limit and quota
//!   included), I/O failure, read-only, corrupt and busy databases have their
//!   own variants.
//!
//! Values cross the API as `socp_protocol` types (`UserId`, `Username`,
//! `ServerId`, `PublicKey`), so nothing invalid is stored; values read back are
//! parsed again, and a row that does not parse is [`Error::Corrupt`], never a panic.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod db;
mod directory;
pub mod error;
mod identity;
mod mailbox;
mod migrations;
mod peers;
mod public_channel;
mod users;

pub use db::{Db, Options};
pub use directory::{keeps_name, DirectoryEntry, RecordOutcome};
pub use error::{Error, Result};
pub use identity::Identity;
pub use mailbox::StoredMail;
pub use migrations::{APPLICATION_ID, SCHEMA_VERSION};
pub use peers::KnownServer;
pub use public_channel::{Member, MembershipChange, PUBLIC_GROUP};
pub use users::{NewUser, UserRecord};

/// Fixture public keys, parsed once per test binary.
#[cfg(test)]
mod test_keys {
    use std::sync::OnceLock;

    use socp_protocol::{fixtures, PublicKey};

    /// The public half of fixture key `n` (0..8).
    pub fn pubkey(n: usize) -> PublicKey {
        static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
        KEYS.get_or_init(|| {
            (0..8)
                .map(|i| fixtures::key(i).public_key().clone())
                .collect()
        })[n]
            .clone()
    }
}
