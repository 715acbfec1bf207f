//! Registered users and their usernames (tables `users` and `usernames`,
//! SPEC.md §7 and §9).
//!
//! A username is unique case-insensitively (`usernames.username_key` is its
//! lower-case form) and kept as claimed. [`Db::find_user`] looks a user up by
//! username or by id; so that it can never find two users, registration also
//! refuses a username equal (in any case) to another user's id, and a user id
//! equal to another user's username.

use rusqlite::{params, Connection, OptionalExtension, Row};
use socp_protocol::{now_ms, PublicKey, ServerId, UserId, Username};

use crate::db::Db;
use crate::error::{is_unique_violation, Error, Result};

/// A user to register (from a `USER_REGISTER` frame, already validated).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The id the user chose (a UUID for our clients).
    pub user_id: UserId,
    /// The display name claimed.
    pub username: Username,
    /// The user's public key; later hellos must be signed with it.
    pub pubkey: PublicKey,
    /// The user's password-encrypted private key, returned on `/login` from
    /// another machine. Opaque to the server.
    pub privkey_store: String,
    /// Free-form profile data from the client, if any.
    pub meta: Option<serde_json::Value>,
}

/// A registered user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// The user's id.
    pub user_id: UserId,
    /// The name claimed at registration, as typed. `None` only for users
    /// written without one by some other tool; [`Db::register_user`] always sets it.
    pub username: Option<Username>,
    /// The registered public key.
    pub pubkey: PublicKey,
    /// The password-encrypted private key (see [`NewUser::privkey_store`]).
    pub privkey_store: String,
    /// Free-form profile data.
    pub meta: Option<serde_json::Value>,
    /// Row version (SPEC.md §9); 1 at registration.
    pub version: i64,
    /// The server that registered the user: `None` for this server.
    pub home_server: Option<ServerId>,
    /// When its home server registered it (ms since the epoch).
    pub registered_at: i64,
}

/// The columns of a [`UserRecord`] before parsing, so a bad value becomes
/// [`Error::Corrupt`] instead of a SQLite conversion error.
pub(crate) struct RawUser {
    user_id: String,
    username: Option<String>,
    pubkey: String,
    privkey_store: String,
    meta: Option<String>,
    version: i64,
    home_server: Option<String>,
    registered_at: i64,
}

pub(crate) const SELECT_USER: &str = "
    SELECT u.user_id, n.username, u.pubkey, u.privkey_store, u.meta, u.version,
           u.home_server, u.registered_at
    FROM users u LEFT JOIN usernames n ON n.user_id = u.user_id";

impl RawUser {
    pub(crate) fn from_row(row: &Row<'_>) -> rusqlite::Result<RawUser> {
        RawUser::from_row_at(row, 0)
    }

    /// The columns of [`SELECT_USER`] starting at column `at`.
    pub(crate) fn from_row_at(row: &Row<'_>, at: usize) -> rusqlite::Result<RawUser> {
        Ok(RawUser {
            user_id: row.get(at)?,
            username: row.get(at + 1)?,
            pubkey: row.get(at + 2)?,
            privkey_store: row.get(at + 3)?,
            meta: row.get(at + 4)?,
            version: row.get(at + 5)?,
            home_server: row.get(at + 6)?,
            registered_at: row.get(at + 7)?,
        })
    }

    pub(crate) fn parse(self) -> Result<UserRecord> {
        let id = &self.user_id;
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            Error::corrupt_row("user", id, format!("{field}: {e}"))
        };
        Ok(UserRecord {
            user_id: UserId::parse(id).map_err(|e| bad("user_id", &e))?,
            username: self
                .username
                .as_deref()
                .map(Username::parse)
                .transpose()
                .map_err(|e| bad("username", &e))?,
            pubkey: PublicKey::parse(&self.pubkey).map_err(|e| bad("pubkey", &e))?,
            meta: self
                .meta
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| bad("meta", &e))?,
            home_server: self
                .home_server
                .as_deref()
                .map(ServerId::parse)
                .transpose()
                .map_err(|e| bad("home_server", &e))?,
            privkey_store: self.privkey_store,
            version: self.version,
            registered_at: self.registered_at,
        })
    }
}

pub(crate) fn exists(conn: &Connection, sql: &str, key: &str) -> rusqlite::Result<bool> {
    Ok(conn.query_row(sql, [key], |_| Ok(())).optional()?.is_some())
}

pub(crate) fn user_by_id(conn: &Connection, user_id: &str) -> Result<Option<UserRecord>> {
    let sql = format!("{SELECT_USER} WHERE u.user_id = ?1");
    let raw = conn
        .query_row(&sql, [user_id], RawUser::from_row)
        .optional()?;
    raw.map(RawUser::parse).transpose()
}

pub(crate) fn user_by_name_key(conn: &Connection, key: &str) -> Result<Option<UserRecord>> {
    let sql = format!("{SELECT_USER} WHERE n.username_key = ?1");
    let raw = conn.query_row(&sql, [key], RawUser::from_row).optional()?;
    raw.map(RawUser::parse).transpose()
}

impl Db {
    /// Register a user: its `users` row and its `usernames` row, in one
    /// transaction, so a failure leaves nothing behind.
    ///
    /// Fails with [`Error::IdInUse`] if the id is registered (or is another
    /// user's username, in any case), then with [`Error::NameInUse`] if the
    /// username is taken in any case (or is another user's id, in any case).
    pub fn register_user(&self, user: &NewUser) -> Result<()> {
        let id = user.user_id.as_str();
        let id_key = id.to_ascii_lowercase();
        let name_key = user.username.key();
        let meta = user.meta.as_ref().map(|m| m.to_string());
        self.write(|tx| {
            if exists(tx, "SELECT 1 FROM users WHERE user_id = ?1", id)?
                || exists(
                    tx,
                    "SELECT 1 FROM usernames WHERE username_key = ?1",
                    &id_key,
                )?
            {
                return Err(Error::IdInUse);
            }
            if exists(
                tx,
                "SELECT 1 FROM usernames WHERE username_key = ?1",
                &name_key,
            )? || exists(
                tx,
                "SELECT 1 FROM users WHERE lower(user_id) = ?1",
                &name_key,
            )? {
                return Err(Error::NameInUse);
            }
            // The checks above ran inside this write transaction, so the inserts
            // cannot meet a conflict; the mapping is a second line of defence.
            tx.execute(
                "INSERT INTO users (user_id, pubkey, privkey_store, pake_password, meta, version,
                                    registered_at)
                 VALUES (?1, ?2, ?3, NULL, ?4, 1, ?5)",
                params![
                    id,
                    user.pubkey.to_wire(),
                    user.privkey_store,
                    meta,
                    now_ms()
                ],
            )
            .map_err(|e| conflict(e, Error::IdInUse))?;
            tx.execute(
                "INSERT INTO usernames (username_key, username, user_id) VALUES (?1, ?2, ?3)",
                params![name_key, user.username.as_str(), id],
            )
            .map_err(|e| conflict(e, Error::NameInUse))?;
            Ok(())
        })?;
        log::info!("registered user {id} as {:?}", user.username.as_str());
        Ok(())
    }

    /// The registered user with this id.
    pub fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        self.read(|conn| user_by_id(conn, user_id.as_str()))
    }

    /// The registered user that `who` names (`/login <username|uuid>`): the user
    /// with that username, in any case, or else the user with that id.
    pub fn find_user(&self, who: &str) -> Result<Option<UserRecord>> {
        self.read(|conn| {
            if let Ok(name) = Username::parse(who) {
                if let Some(user) = user_by_name_key(conn, &name.key())? {
                    return Ok(Some(user));
                }
            }
            match UserId::parse(who) {
                Ok(id) => user_by_id(conn, id.as_str()),
                Err(_) => Ok(None),
            }
        })
    }

    /// The username of a registered user (`None` if the id is not registered).
    pub fn username_of(&self, user_id: &UserId) -> Result<Option<Username>> {
        let name: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT username FROM usernames WHERE user_id = ?1",
                    [user_id.as_str()],
                    |row| row.get(0),
                )
                .optional()?)
        })?;
        name.map(|n| {
            Username::parse(&n).map_err(|e| Error::corrupt_row("username of", user_id.as_str(), e))
        })
        .transpose()
    }

    /// Whether this id is registered (its hello must then be signed, SPEC.md §6.1).
    pub fn is_registered(&self, user_id: &UserId) -> Result<bool> {
        self.read(|conn| {
            Ok(exists(
                conn,
                "SELECT 1 FROM users WHERE user_id = ?1",
                user_id.as_str(),
            )?)
        })
    }

    /// How many users are registered.
    pub fn user_count(&self) -> Result<u64> {
        let n: i64 =
            self.read(|conn| Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))?;
        u64::try_from(n).map_err(|e| Error::Corrupt(format!("user count {n}: {e}")))
    }
}

/// `err` as `taken` if it is a uniqueness conflict, else as itself.
pub(crate) fn conflict(err: rusqlite::Error, taken: Error) -> Error {
    if is_unique_violation(&err) {
        taken
    } else {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::pubkey;
    use serde_json::json;

    fn new_user(id: &str, name: &str, key: usize) -> NewUser {
        NewUser {
            user_id: UserId::parse(id).unwrap(),
            username: Username::parse(name).unwrap(),
            pubkey: pubkey(key),
            privkey_store: format!("encrypted key of {id}"),
            meta: Some(json!({"display": name})),
        }
    }

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn row_counts(db: &Db) -> Result<(i64, i64)> {
        db.read(|c| {
            Ok((
                c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?,
                c.query_row("SELECT count(*) FROM usernames", [], |r| r.get(0))?,
            ))
        })
    }

    #[test]
    fn registered_user_reads_back() -> Result<()> {
        let db = Db::open_in_memory()?;
        let alice = new_user("id-alice", "Alice", 0);
        db.register_user(&alice)?;
        let before = socp_protocol::now_ms();
        let record = db.get_user(&alice.user_id)?.unwrap();
        assert!(
            record.registered_at <= socp_protocol::now_ms()
                && record.registered_at > before - 60_000
        );
        assert_eq!(
            record,
            UserRecord {
                user_id: alice.user_id.clone(),
                username: Some(alice.username.clone()),
                pubkey: alice.pubkey.clone(),
                privkey_store: alice.privkey_store.clone(),
                meta: alice.meta.clone(),
                version: 1,
                home_server: None,
                registered_at: record.registered_at,
            }
        );
        assert_eq!(db.get_user(&uid("id-nobody"))?, None);
        Ok(())
    }

    #[test]
    fn meta_is_optional() -> Result<()> {
        let db = Db::open_in_memory()?;
        let mut bob = new_user("id-bob", "bob", 1);
        bob.meta = None;
        db.register_user(&bob)?;
        assert_eq!(db.get_user(&bob.user_id)?.unwrap().meta, None);
        Ok(())
    }

    #[test]
    fn find_user_by_name_in_any_case_or_by_id() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.register_user(&new_user("id-alice", "Alice", 0))?;
        db.register_user(&new_user("id-bob", "bob", 1))?;
        for who in ["Alice", "alice", "ALICE", "id-alice"] {
            let found = db.find_user(who)?.map(|u| u.user_id);
            assert_eq!(found, Some(uid("id-alice")), "{who}");
        }
        assert_eq!(db.find_user("BOB")?.map(|u| u.user_id), Some(uid("id-bob")));
        assert_eq!(db.find_user("carol")?, None);
        assert_eq!(db.find_user("ID-ALICE")?, None, "ids are case-sensitive");
        assert_eq!(db.find_user("")?, None);
        assert_eq!(db.find_user("not valid anything!")?, None);
        Ok(())
    }

    #[test]
    fn find_user_by_uuid() -> Result<()> {
        let db = Db::open_in_memory()?;
        let id = UserId::random();
        db.register_user(&new_user(id.as_str(), "dave", 2))?;
        assert_eq!(db.find_user(id.as_str())?.map(|u| u.user_id), Some(id));
        Ok(())
    }

    #[test]
    fn username_of_and_is_registered() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.register_user(&new_user("id-alice", "Alice", 0))?;
        assert_eq!(
            db.username_of(&uid("id-alice"))?,
            Some(Username::parse("Alice").unwrap())
        );
        assert_eq!(db.username_of(&uid("id-bob"))?, None);
        assert!(db.is_registered(&uid("id-alice"))?);
        assert!(!db.is_registered(&uid("id-bob"))?);
        assert!(!db.is_registered(&uid("ID-ALICE"))?);
        Ok(())
    }

    #[test]
    fn user_count_counts() -> Result<()> {
        let db = Db::open_in_memory()?;
        assert_eq!(db.user_count()?, 0);
        db.register_user(&new_user("id-alice", "alice", 0))?;
        db.register_user(&new_user("id-bob", "bob", 1))?;
        assert_eq!(db.user_count()?, 2);
        Ok(())
    }

    #[test]
    fn taken_name_in_another_case_is_refused_and_nothing_written() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.register_user(&new_user("id-alice", "Alice", 0))?;
        let err = db.register_user(&new_user("id-other", "aLiCe", 1));
        assert!(matches!(err, Err(Error::NameInUse)), "{err:?}");
        assert_eq!(row_counts(&db)?, (1, 1));
        assert_eq!(db.get_user(&uid("id-other"))?, None);
        assert!(!db.is_registered(&uid("id-other"))?);
        Ok(())
    }

    #[test]
    fn taken_id_is_refused_and_nothing_written() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.register_user(&new_user("id-alice", "alice", 0))?;
        let err = db.register_user(&new_user("id-alice", "someone", 1));
        assert!(matches!(err, Err(Error::IdInUse)), "{err:?}");
        assert_eq!(row_counts(&db)?, (1, 1));
        assert_eq!(db.find_user("someone")?, None);
        let alice = db.get_user(&uid("id-alice"))?.unwrap();
        assert_eq!(alice.pubkey, pubkey(0), "the first registration is kept");
        Ok(())
    }

    #[test]
    fn names_and_ids_cannot_shadow_each_other() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.register_user(&new_user("Carol", "alice", 0))?;
        // A username equal to another user's id, in any case.
        let err = db.register_user(&new_user("id-x", "carol", 1));
        assert!(matches!(err, Err(Error::NameInUse)), "{err:?}");
        // A user id equal to another user's username, in any case.
        let err = db.register_user(&new_user("ALICE", "x", 1));
        assert!(matches!(err, Err(Error::IdInUse)), "{err:?}");
        assert_eq!(row_counts(&db)?, (1, 1));
        // A user may take its own id as its name.
        db.register_user(&new_user("bob", "Bob", 1))?;
        assert_eq!(db.find_user("bob")?.map(|u| u.user_id), Some(uid("bob")));
        assert_eq!(
            db.find_user("Carol")?.map(|u| u.user_id),
            Some(uid("Carol"))
        );
        Ok(())
    }

    #[test]
    fn a_bad_stored_pubkey_is_corrupt_not_a_panic() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.write(|tx| {
            tx.execute_batch(
                "INSERT INTO users (user_id, pubkey, privkey_store) VALUES ('id-x', 'garbage', 's');
                 INSERT INTO usernames VALUES ('x', 'x', 'id-x');",
            )?;
            Ok(())
        })?;
        for result in [db.get_user(&uid("id-x")), db.find_user("x")] {
            assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
        }
        // Other calls that do not parse the key still work.
        assert!(db.is_registered(&uid("id-x"))?);
        Ok(())
    }

    #[test]
    fn a_bad_stored_username_is_corrupt() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.write(|tx| {
            tx.execute(
                "INSERT INTO users (user_id, pubkey, privkey_store) VALUES ('id-x', ?1, 's')",
                [pubkey(0).to_wire()],
            )?;
            tx.execute(
                "INSERT INTO usernames VALUES ('bad name', 'bad name', 'id-x')",
                [],
            )?;
            Ok(())
        })?;
        let result = db.get_user(&uid("id-x"));
        assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
        let result = db.username_of(&uid("id-x"));
        assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
        Ok(())
    }

    #[test]
    fn the_schema_refuses_invalid_meta_json() -> Result<()> {
        let db = Db::open_in_memory()?;
        let result = db.write(|tx| {
            tx.execute(
                "INSERT INTO users (user_id, pubkey, privkey_store, meta) VALUES ('id-x', ?1, 's', '[1')",
                [pubkey(0).to_wire()],
            )?;
            Ok(())
        });
        assert!(matches!(result, Err(Error::Sqlite(_))), "{result:?}");
        assert_eq!(db.user_count()?, 0);
        Ok(())
    }
}
