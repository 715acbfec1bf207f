//! The mesh-wide directory of registered users [ext] (SPEC.md §6.1, §7).
//!
//! Every registered user of the mesh is a `users` row: those registered here
//! (`home_server` NULL) and those whose DIRECTORY_RECORD another server
//! published (`home_server` = that server). Each row keeps the record frame as
//! its home server signed it, which this server serves to servers that join
//! later. Lookups ([`Db::get_user`], [`Db::find_user`]) and registration see
//! the whole mesh, so a registered id or name is enforced on every server.
//!
//! Two servers may accept the same name at once. Every server applies the same
//! rule, so they agree: the user registered earlier keeps the name, then the
//! lower user id; the other keeps its id and key without a name until its home
//! server publishes a new one.

use rusqlite::{params, OptionalExtension, Transaction};
use socp_protocol::message::DirectoryRecord;
use socp_protocol::{ServerId, UserId, Username};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::users::{exists, user_by_id, RawUser, UserRecord, SELECT_USER};

/// What storing a record from another server did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored (new, or a newer version of a record we held).
    Stored {
        /// Whether the record's user holds its username (or lost it to a user
        /// registered earlier).
        holds_name: bool,
        /// A user who held the name until now and lost it to this record's
        /// user, and that user's home server (`None`: registered here).
        displaced: Option<(UserId, Option<ServerId>)>,
    },
    /// We hold this version or a newer one: nothing changed.
    Stale,
    /// The user id is registered with another home server: refused.
    IdConflict,
    /// The home server already has `cap` records here: refused.
    OverCap,
}

/// A user's place in the directory: what a router needs to enforce it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryEntry {
    /// The user.
    pub user: UserRecord,
    /// The signed DIRECTORY_RECORD frame, if one was made.
    pub record: Option<String>,
}

/// Whether a user registered at `a` (ms) with id `a_id` keeps a name against
/// one registered at `b` with `b_id`: the earlier registration, then the lower id.
pub fn keeps_name(a: i64, a_id: &UserId, b: i64, b_id: &UserId) -> bool {
    (a, a_id.as_str()) < (b, b_id.as_str())
}

/// The holder of a username key: (user id, registered_at, home server).
fn holder(tx: &Transaction<'_>, key: &str) -> Result<Option<(String, i64, Option<String>)>> {
    Ok(tx
        .query_row(
            "SELECT u.user_id, u.registered_at, u.home_server
             FROM usernames n JOIN users u ON u.user_id = n.user_id
             WHERE n.username_key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

fn parse_id(s: &str) -> Result<UserId> {
    UserId::parse(s).map_err(|e| Error::corrupt_row("user", s, e))
}

fn parse_server(s: Option<String>) -> Result<Option<ServerId>> {
    s.map(|s| ServerId::parse(&s).map_err(|e| Error::corrupt_row("home server", &s, e)))
        .transpose()
}

impl Db {
    /// Store a DIRECTORY_RECORD from another server (`text` is the frame as
    /// its home server signed it, already verified). At most `cap` records per
    /// home server are kept.
    pub fn put_record(
        &self,
        record: &DirectoryRecord,
        text: &str,
        cap: usize,
    ) -> Result<RecordOutcome> {
        let id = record.user_id.as_str();
        let home = record.home_server.as_str();
        self.write(|tx| {
            let existing: Option<(Option<String>, i64)> = tx
                .query_row(
                    "SELECT home_server, version FROM users WHERE user_id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match &existing {
                Some((h, _)) if h.as_deref() != Some(home) => return Ok(RecordOutcome::IdConflict),
                Some((_, v)) if *v >= version_of(record) => return Ok(RecordOutcome::Stale),
                Some(_) => {}
                None => {
                    let held: i64 = tx.query_row(
                        "SELECT count(*) FROM users WHERE home_server = ?1",
                        [home],
                        |r| r.get(0),
                    )?;
                    if usize::try_from(held).unwrap_or(usize::MAX) >= cap {
                        return Ok(RecordOutcome::OverCap);
                    }
                    // An id that is another user's name would make lookups ambiguous.
                    if exists(
                        tx,
                        "SELECT 1 FROM usernames WHERE username_key = ?1",
                        &id.to_ascii_lowercase(),
                    )? {
                        return Ok(RecordOutcome::IdConflict);
                    }
                }
            }
            tx.execute(
                "INSERT INTO users (user_id, pubkey, privkey_store, pake_password, meta, version,
                                    home_server, registered_at, record)
                 VALUES (?1, ?2, ?3, NULL, NULL, ?4, ?5, ?6, ?7)
                 ON CONFLICT (user_id) DO UPDATE SET
                    pubkey = excluded.pubkey, privkey_store = excluded.privkey_store,
                    version = excluded.version, registered_at = excluded.registered_at,
                    record = excluded.record",
                params![
                    id,
                    record.pubkey.to_wire(),
                    record.privkey_store,
                    version_of(record),
                    home,
                    record.registered_at,
                    text
                ],
            )?;
            // The name: released by this user if it changed, then claimed by the rule.
            tx.execute("DELETE FROM usernames WHERE user_id = ?1", [id])?;
            claim_name(tx, &record.user_id, &record.username, record.registered_at)
        })
    }

    /// Keep the signed DIRECTORY_RECORD of a user registered here.
    pub fn set_own_record(&self, user_id: &UserId, version: i64, text: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET record = ?2, version = ?3
                 WHERE user_id = ?1 AND home_server IS NULL",
                params![user_id.as_str(), text, version],
            )?;
            if n == 0 {
                return Err(Error::Corrupt(format!(
                    "no user {user_id} registered here to keep a record for"
                )));
            }
            Ok(())
        })
    }

    /// A new username for a user registered here who lost theirs (or wants
    /// another): claimed only if no one holds it. Returns the new row version.
    pub fn rename_user(&self, user_id: &UserId, username: &Username) -> Result<i64> {
        let key = username.key();
        self.write(|tx| {
            let user = user_by_id(tx, user_id.as_str())?
                .filter(|u| u.home_server.is_none())
                .ok_or_else(|| Error::Corrupt(format!("no user {user_id} registered here")))?;
            if exists(tx, "SELECT 1 FROM usernames WHERE username_key = ?1", &key)?
                || exists(tx, "SELECT 1 FROM users WHERE lower(user_id) = ?1", &key)?
            {
                return Err(Error::NameInUse);
            }
            tx.execute(
                "DELETE FROM usernames WHERE user_id = ?1",
                [user_id.as_str()],
            )?;
            tx.execute(
                "INSERT INTO usernames (username_key, username, user_id) VALUES (?1, ?2, ?3)",
                params![key, username.as_str(), user_id.as_str()],
            )?;
            let version = user.version + 1;
            tx.execute(
                "UPDATE users SET version = ?2 WHERE user_id = ?1",
                params![user_id.as_str(), version],
            )?;
            Ok(version)
        })
    }

    /// Up to `limit` record frames, ordered by user id, after `after`.
    pub fn directory_page(&self, after: Option<&UserId>, limit: usize) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT record FROM users WHERE record IS NOT NULL AND user_id > ?1
                 ORDER BY user_id LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        after.map_or("", UserId::as_str),
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
    }

    /// Every registered user of the mesh, with its record frame.
    pub fn directory(&self) -> Result<Vec<DirectoryEntry>> {
        self.read(|conn| {
            let sql = SELECT_USER.replace("SELECT u.user_id,", "SELECT u.record, u.user_id,");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt
                .query_map([], |r| {
                    let record: Option<String> = r.get(0)?;
                    Ok((record, shifted(r)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(record, raw)| {
                    Ok(DirectoryEntry {
                        user: raw.parse()?,
                        record,
                    })
                })
                .collect()
        })
    }

    /// The next `n` values of counter `name`, never below `floor`, never
    /// handed out twice (across restarts): returns the first.
    pub fn take_counter(&self, name: &str, floor: u64, n: u64) -> Result<u64> {
        let floor = i64::try_from(floor).unwrap_or(i64::MAX);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.write(|tx| {
            let current: Option<i64> = tx
                .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            let first = current.unwrap_or(0).max(floor);
            let next = first.saturating_add(n);
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, next],
            )?;
            u64::try_from(first).map_err(|e| Error::Corrupt(format!("counter {name}: {e}")))
        })
    }

    /// Whether `who` (an id or a name, any case) is a registered user's id or
    /// username anywhere in the mesh: what an ephemeral user may not call itself.
    pub fn is_claimed(&self, who: &str) -> Result<bool> {
        let key = who.to_ascii_lowercase();
        self.read(|conn| {
            Ok(
                exists(conn, "SELECT 1 FROM users WHERE lower(user_id) = ?1", &key)?
                    || exists(
                        conn,
                        "SELECT 1 FROM usernames WHERE username_key = ?1",
                        &key,
                    )?,
            )
        })
    }
}

fn version_of(record: &DirectoryRecord) -> i64 {
    i64::try_from(record.version).unwrap_or(i64::MAX)
}

/// The user columns of a row that starts with one extra column.
fn shifted(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawUser> {
    RawUser::from_row_at(r, 1)
}

/// Give `user_id` the name `username` if it keeps it by the rule, taking it
/// from its current holder if need be.
fn claim_name(
    tx: &Transaction<'_>,
    user_id: &UserId,
    username: &Username,
    registered_at: i64,
) -> Result<RecordOutcome> {
    let key = username.key();
    // A name that is some user's id stays with that id.
    if exists(tx, "SELECT 1 FROM users WHERE lower(user_id) = ?1", &key)? {
        return Ok(RecordOutcome::Stored {
            holds_name: false,
            displaced: None,
        });
    }
    let mut displaced = None;
    if let Some((holder_id, at, home)) = holder(tx, &key)? {
        let holder_id = parse_id(&holder_id)?;
        if !keeps_name(registered_at, user_id, at, &holder_id) {
            return Ok(RecordOutcome::Stored {
                holds_name: false,
                displaced: None,
            });
        }
        tx.execute("DELETE FROM usernames WHERE username_key = ?1", [&key])?;
        displaced = Some((holder_id, parse_server(home)?));
    }
    tx.execute(
        "INSERT INTO usernames (username_key, username, user_id) VALUES (?1, ?2, ?3)",
        params![key, username.as_str(), user_id.as_str()],
    )?;
    Ok(RecordOutcome::Stored {
        holds_name: true,
        displaced,
    })
}
