//! The schema, as an ordered list of migration steps.
//!
//! `PRAGMA user_version` holds the number of steps applied; `PRAGMA
//! application_id` marks the file as a socp database. Opening a database applies
//! the missing steps in one `IMMEDIATE` transaction (so two processes opening the
//! same fresh file cannot both migrate it), refuses a file whose version is newer
//! than [`SCHEMA_VERSION`], and refuses an SQLite file that belongs to some other
//! program. Steps are append-only: a released step is never edited, a change is
//! a new step.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// `PRAGMA application_id` of a socp database: "SOCP" in ASCII.
pub const APPLICATION_ID: i32 = 0x534F_4350;

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Step `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// Version 1: SPEC.md §9 plus the [ext] tables.
const V1: &str = "
-- Registered users (SPEC.md §7, §9). `pubkey` is the wire form (base64url DER SPKI);
-- `privkey_store` the client's password-encrypted PKCS#8, opaque to the server;
-- `pake_password` is in the class schema but unused: the password never leaves the client.
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    pubkey        TEXT NOT NULL,
    privkey_store TEXT NOT NULL,
    pake_password TEXT,
    meta          TEXT CHECK (meta IS NULL OR json_valid(meta)),
    version       INTEGER NOT NULL DEFAULT 1
);
-- A username must not equal another user's id in any case (see users.rs), which
-- is checked through this index.
CREATE INDEX users_user_id_lower ON users (lower(user_id));

-- Usernames [ext]: unique case-insensitively through the lower-case key; the
-- name is kept as the user typed it.
CREATE TABLE usernames (
    username_key TEXT PRIMARY KEY NOT NULL CHECK (username_key = lower(username)),
    username     TEXT NOT NULL,
    user_id      TEXT NOT NULL UNIQUE REFERENCES users (user_id) ON DELETE CASCADE
);

-- Groups (SPEC.md §9); `version` counts membership changes.
CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY NOT NULL,
    creator_id TEXT,
    created_at INTEGER,
    meta       TEXT CHECK (meta IS NULL OR json_valid(meta)),
    version    INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0)
);
INSERT INTO groups (group_id, creator_id, created_at, meta, version)
VALUES ('public', 'system', CAST(strftime('%s', 'now') AS INTEGER) * 1000, NULL, 0);

-- Group members (SPEC.md §9). `member_id` does not reference users: members of
-- the public channel include unregistered (ephemeral) users.
CREATE TABLE group_members (
    group_id    TEXT NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    member_id   TEXT NOT NULL,
    role        TEXT NOT NULL DEFAULT 'member',
    wrapped_key TEXT NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;

-- This server's own identity [ext]: at most one row.
CREATE TABLE server_identity (
    singleton       INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    server_id       TEXT NOT NULL,
    private_key_pem TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

-- Servers met in the mesh [ext], to reconnect to after a restart.
CREATE TABLE known_servers (
    server_id    TEXT PRIMARY KEY NOT NULL,
    host         TEXT NOT NULL,
    port         INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    pubkey       TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
";

/// Version 2: the mesh-wide directory of registered users [ext] and counters.
const V2: &str = "
-- A user registered on another server of the mesh is a `users` row too, with the
-- server that registered it (`home_server`, NULL for users registered here), and
-- the DIRECTORY_RECORD frame that published it as signed by that server
-- (`record`), which this server serves to others. `registered_at` (ms) decides
-- which of two users registered with the same name keeps it: the earlier, then
-- the lower user id; the other keeps its row without a `usernames` row.
ALTER TABLE users ADD COLUMN home_server TEXT;
ALTER TABLE users ADD COLUMN registered_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN record TEXT;
CREATE INDEX users_home_server ON users (home_server);

-- Values that only grow, across restarts (the presence sequence).
CREATE TABLE counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
";

/// Version 3: mailboxes [ext].
const V3: &str = "
-- DMs kept for registered users of this server while they are offline, in the
-- order of deposit (`seq`), until acknowledged or expired. `body` is the
-- delivery as the router wrote it (JSON; the DM is still end-to-end encrypted).
CREATE TABLE mail (
    seq       INTEGER PRIMARY KEY,
    mail_id   TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    body      TEXT NOT NULL CHECK (json_valid(body))
);
CREATE INDEX mail_recipient ON mail (recipient);
";

/// Bring the database on `conn` up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    apply(conn, MIGRATIONS)
}

/// Refuse, without writing anything, a file this build must not touch: one
/// with a newer schema, or another program's SQLite database. Returns the
/// schema version found (0 for a fresh file).
pub(crate) fn check(conn: &Connection) -> Result<i64> {
    check_against(conn, SCHEMA_VERSION)
}

fn check_against(conn: &Connection, known: i64) -> Result<i64> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    if found > known {
        return Err(Error::NewerSchema { found, known });
    }
    if found < 0 {
        return Err(Error::Corrupt(format!("negative schema version {found}")));
    }
    if found == 0 {
        // A fresh file has no schema at all; anything else is another program's database.
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
        if objects > 0 || app_id != 0 {
            return Err(Error::Corrupt(format!(
                "an SQLite database of another program \
                 ({objects} schema objects, application_id {app_id:#x})"
            )));
        }
    } else if app_id != APPLICATION_ID {
        return Err(Error::Corrupt(format!(
            "an SQLite database of another program (application_id {app_id:#x})"
        )));
    }
    Ok(found)
}

/// Apply the steps of `steps` that the database lacks, all in one transaction.
fn apply(conn: &mut Connection, steps: &[&str]) -> Result<()> {
    let known = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Checked again inside the write lock: another process may have migrated
    // the file since [`check`].
    let found = check_against(&tx, known)?;
    if found == known {
        return Ok(());
    }
    // `found` is in 0..known here, so the conversion cannot fail.
    let start = usize::try_from(found).unwrap_or(steps.len());
    for (i, step) in steps.iter().enumerate().skip(start) {
        log::info!("database: migrating schema to version {}", i + 1);
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> Result<i64> {
        Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn tables(conn: &Connection) -> Result<Vec<String>> {
        let mut stmt =
            conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
        let names = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    #[test]
    fn fresh_database_gets_the_whole_schema() -> Result<()> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        assert_eq!(version(&conn)?, SCHEMA_VERSION);
        let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        assert_eq!(app_id, APPLICATION_ID);
        assert_eq!(
            tables(&conn)?,
            [
                "counters",
                "group_members",
                "groups",
                "known_servers",
                "mail",
                "server_identity",
                "usernames",
                "users"
            ]
        );
        let public: (String, i64) = conn.query_row(
            "SELECT creator_id, version FROM groups WHERE group_id = 'public'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        assert_eq!(public, ("system".to_owned(), 0));
        Ok(())
    }

    #[test]
    fn migrating_twice_changes_nothing() -> Result<()> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        conn.execute(
            "UPDATE groups SET version = 7 WHERE group_id = 'public'",
            [],
        )?;
        migrate(&mut conn)?;
        assert_eq!(version(&conn)?, SCHEMA_VERSION);
        let count: i64 = conn.query_row("SELECT count(*) FROM groups", [], |r| r.get(0))?;
        let v: i64 = conn.query_row("SELECT version FROM groups", [], |r| r.get(0))?;
        assert_eq!((count, v), (1, 7));
        Ok(())
    }

    #[test]
    fn newer_schema_is_refused() -> Result<()> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
        match migrate(&mut conn) {
            Err(Error::NewerSchema { found, known }) => {
                assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn another_programs_database_is_refused() -> Result<()> {
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch("CREATE TABLE users (name TEXT)")?;
        let err = migrate(&mut conn);
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");

        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "user_version", 1)?;
        conn.pragma_update(None, "application_id", 0x1234)?;
        let err = migrate(&mut conn);
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        Ok(())
    }

    #[test]
    fn steps_apply_in_order_and_only_once() -> Result<()> {
        let steps = [
            "CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1);",
            "INSERT INTO a VALUES (2);",
        ];
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn, &steps[..1])?;
        assert_eq!(version(&conn)?, 1);
        apply(&mut conn, &steps)?;
        apply(&mut conn, &steps)?;
        assert_eq!(version(&conn)?, 2);
        let rows: i64 = conn.query_row("SELECT sum(x) FROM a", [], |r| r.get(0))?;
        assert_eq!(rows, 3);
        Ok(())
    }

    #[test]
    fn a_failing_step_rolls_every_step_back() -> Result<()> {
        let steps = ["CREATE TABLE a (x INTEGER);", "THIS IS NOT SQL;"];
        let mut conn = Connection::open_in_memory()?;
        assert!(apply(&mut conn, &steps).is_err());
        assert_eq!(version(&conn)?, 0);
        assert!(tables(&conn)?.is_empty());
        Ok(())
    }
}
