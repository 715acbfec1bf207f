//! [`Db`]: the connection pool, how connections are set up, and how a file is
//! opened and checked before the server relies on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::migrations;

/// How a [`Db`] is opened. `Options::default()` suits a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most connections kept open at once (file databases; an in-memory one has
    /// one). Should be at least the number of threads using the [`Db`].
    pub pool_size: u32,
    /// How long a statement waits for another connection's lock before it fails
    /// with [`Error::Busy`].
    pub busy_timeout: Duration,
    /// How long a caller waits for a free pooled connection before it fails with
    /// [`Error::Pool`].
    pub pool_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 8,
            busy_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(10),
        }
    }
}

/// The server's database: a pool of SQLite connections with the schema applied.
///
/// Cheap to clone (clones share the pool). Every method is synchronous and takes
/// one connection from the pool for its duration, so call it off the event loop.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool<SqliteConnectionManager>,
    /// Where the database lives (`None` in memory), for log and error messages.
    path: Option<PathBuf>,
}

impl Db {
    /// Open (creating it if missing) the database file at `path`, with default [`Options`].
    ///
    /// The file is put in WAL mode and migrated to the current schema. A file
    /// that is not a socp database, or that `PRAGMA quick_check` finds damaged,
    /// gives [`Error::Corrupt`], one that cannot be written (or whose directory
    /// cannot be) [`Error::ReadOnly`], one from a newer socp
    /// [`Error::NewerSchema`]; such files are refused before anything is written
    /// to them. The check reads the whole file once.
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(path, &Options::default())
    }

    /// [`Db::open`] with explicit [`Options`].
    pub fn open_with(path: impl AsRef<Path>, options: &Options) -> Result<Db> {
        let path = path.as_ref();
        let context = path.display().to_string();
        let at = |e: rusqlite::Error| Error::with_context(e, &context);
        create_private(path)?;
        check_size(path)?;

        // Check and migrate on one connection of our own first: the pool would
        // retry a failing connection until its timeout instead of saying why.
        let mut conn =
            Connection::open_with_flags(path, open_flags()).map_err(|e| Error::CannotOpen {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        // SQLite silently opens a write-protected file read-only; say so now,
        // not at the first registration.
        if conn.is_readonly("main").map_err(at)? {
            return Err(Error::ReadOnly(format!(
                "{context}: the file is write-protected"
            )));
        }
        configure(&conn, options.busy_timeout).map_err(at)?;
        // Look before writing anything: another program's database, a newer
        // schema or a damaged file is refused as it is, never "repaired".
        migrations::check(&conn).map_err(|e| e.in_file(&context))?;
        quick_check(&conn).map_err(|e| e.in_file(&context))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(at)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("database {context}: journal mode is {mode}, not WAL");
        }
        migrations::migrate(&mut conn).map_err(|e| e.in_file(&context))?;
        drop(conn);

        let busy_timeout = options.busy_timeout;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(open_flags())
            .with_init(move |c| configure(c, busy_timeout));
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.pool_timeout)
            .test_on_check_out(false)
            .build(manager)?;
        log::info!(
            "database {context}: open, schema version {}",
            migrations::SCHEMA_VERSION
        );
        Ok(Db {
            pool,
            path: Some(path.to_owned()),
        })
    }

    /// A fresh, empty, private in-memory database (for tests and throwaway servers).
    ///
    /// Its pool holds a single connection: SQLite's shared-cache in-memory
    /// databases fail concurrent writers with `SQLITE_LOCKED` instead of
    /// waiting, so callers take turns for the one connection instead.
    pub fn open_in_memory() -> Result<Db> {
        // `SqliteConnectionManager::memory` names each database uniquely and
        // holds one extra connection so the database outlives pooled ones.
        let options = Options::default();
        let busy_timeout = options.busy_timeout;
        let manager =
            SqliteConnectionManager::memory().with_init(move |c| configure(c, busy_timeout));
        let pool = Pool::builder()
            .max_size(1)
            .connection_timeout(options.pool_timeout)
            .test_on_check_out(false)
            .build(manager)?;
        let db = Db { pool, path: None };
        migrations::migrate(&mut *db.conn()?)?;
        Ok(db)
    }

    /// Where the database file is (`None` for an in-memory database).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A connection from the pool.
    pub(crate) fn conn(&self) -> Result<PooledConnection<SqliteConnectionManager>> {
        Ok(self.pool.get()?)
    }

    /// Run `f` on a connection; for reads.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn).map_err(|e| self.explain(e, &conn))
    }

    /// Run `f` in an `IMMEDIATE` transaction (the write lock is taken up front, so
    /// a concurrent writer waits instead of failing on a lock upgrade), committed
    /// when `f` returns `Ok` and rolled back otherwise.
    ///
    /// A write that fails because the database cannot grow (a full disk, the
    /// process's file-size limit) is [`Error::DiskFull`] and leaves nothing
    /// behind: SQLite rolls the whole transaction back.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn()?;
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        result.map_err(|e| self.explain(e, &conn))
    }

    /// Complete an error from `conn` for the log: the operating system's
    /// reason behind an I/O error, and the file.
    fn explain(&self, err: Error, conn: &Connection) -> Error {
        let err = err.with_os_error(os_errno(conn));
        match &self.path {
            Some(path) => err.in_file(&path.display().to_string()),
            None => err,
        }
    }
}

/// The `errno` of the operating-system call behind the connection's last
/// SQLite I/O error (0 if none). SQLite records it when the error happens and
/// reports "disk I/O error" without it.
fn os_errno(conn: &Connection) -> i32 {
    // SAFETY: `handle` is the live connection's own pointer (`conn` is borrowed
    // for the call); `sqlite3_system_errno` only reads an int from it and the
    // pointer is neither stored nor used after this call.
    unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) }
}

/// `PRAGMA quick_check`: SQLite reads every page of the database and checks
/// its structure (everything but index contents), so a damaged file is refused
/// at start rather than failing at the first unlucky read or write.
fn quick_check(conn: &Connection) -> Result<()> {
    /// At most this many problems are listed.
    const LISTED: i64 = 5;
    let mut stmt = conn.prepare(&format!("PRAGMA quick_check({LISTED})"))?;
    let problems = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(Error::Corrupt(format!(
        "integrity check failed: {}",
        problems.join("; ")
    )))
}

fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Per-connection settings (every pooled connection runs this once).
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // With WAL, NORMAL loses at most the last transactions on power loss, never
    // consistency; FULL would fsync on every commit.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Refuse a file too short to be an SQLite database but not empty. (SQLite
/// itself takes a 1-byte file for an empty database and would overwrite it.)
fn check_size(path: &Path) -> Result<()> {
    /// The smallest SQLite page, so the smallest non-empty database file.
    const MIN_DB_FILE: u64 = 512;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::CannotOpen {
            path: path.to_owned(),
            detail: e.to_string(),
        })?
        .len();
    if len > 0 && len < MIN_DB_FILE {
        return Err(Error::Corrupt(format!(
            "{}: {len} bytes is too short for an SQLite database",
            path.display()
        )));
    }
    Ok(())
}

/// Create the file if it is missing, readable by its owner only: it holds the
/// server's private key. (SQLite gives its -wal and -shm files the same mode.)
fn create_private(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::CannotOpen {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::pubkey;
    use crate::NewUser;
    use socp_protocol::{UserId, Username};

    fn user(id: &str, name: &str, meta_len: usize) -> NewUser {
        NewUser {
            user_id: UserId::parse(id).unwrap(),
            username: Username::parse(name).unwrap(),
            pubkey: pubkey(0),
            privkey_store: "store".into(),
            meta: Some(serde_json::Value::String("x".repeat(meta_len))),
        }
    }

    #[test]
    fn pooled_connections_are_configured() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            busy_timeout: Duration::from_millis(1234),
            ..Options::default()
        };
        let db = Db::open_with(dir.path().join("s.db"), &options)?;
        let (fk, sync, busy, mode): (i64, i64, i64, String) = db.read(|c| {
            Ok((
                c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?,
                c.pragma_query_value(None, "synchronous", |r| r.get(0))?,
                c.pragma_query_value(None, "busy_timeout", |r| r.get(0))?,
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
            ))
        })?;
        // synchronous: 1 is NORMAL.
        assert_eq!((fk, sync, busy, mode.as_str()), (1, 1, 1234, "wal"));
        assert_eq!(db.path(), Some(dir.path().join("s.db").as_path()));
        Ok(())
    }

    #[test]
    fn in_memory_databases_are_separate_and_configured() -> Result<()> {
        let a = Db::open_in_memory()?;
        let b = Db::open_in_memory()?;
        a.register_user(&user("id-a", "a", 1))?;
        assert_eq!((a.user_count()?, b.user_count()?), (1, 0));
        let fk: i64 = a.read(|c| Ok(c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?))?;
        assert_eq!(fk, 1);
        assert_eq!(a.path(), None);
        Ok(())
    }

    #[test]
    fn in_memory_database_is_shared_by_clones_across_threads() -> Result<()> {
        let db = Db::open_in_memory()?;
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let db = db.clone();
                std::thread::spawn(move || {
                    db.register_user(&user(&format!("id-{i}"), &format!("u{i}"), 1))
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap()?;
        }
        assert_eq!(db.user_count()?, 4);
        Ok(())
    }

    #[test]
    fn a_full_database_is_disk_full_and_writes_nothing() -> Result<()> {
        let db = Db::open_in_memory()?;
        // Cap the (single) pooled connection's database at its current size.
        db.read(|c| {
            let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
            c.pragma_update(None, "max_page_count", pages)?;
            Ok(())
        })?;
        let err = db.register_user(&user("id-big", "big", 1 << 20));
        assert!(matches!(err, Err(Error::DiskFull(_))), "{err:?}");
        assert_eq!(db.user_count()?, 0);
        assert_eq!(db.username_of(&UserId::parse("id-big").unwrap())?, None);
        Ok(())
    }

    #[test]
    fn a_write_to_a_read_only_connection_is_read_only() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Db::open(&path)?);
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let err = conn.execute("DELETE FROM users", []).map_err(Error::from);
        assert!(matches!(err, Err(Error::ReadOnly(_))), "{err:?}");
        Ok(())
    }

    #[test]
    fn a_lock_held_too_long_is_busy_not_a_hang() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let options = Options {
            busy_timeout: Duration::from_millis(100),
            ..Options::default()
        };
        let db = Db::open_with(&path, &options)?;
        let other = Connection::open(&path)?;
        other.execute_batch("BEGIN IMMEDIATE")?;
        let err = db.register_user(&user("id-a", "a", 1));
        assert!(matches!(err, Err(Error::Busy(_))), "{err:?}");
        other.execute_batch("COMMIT")?;
        db.register_user(&user("id-a", "a", 1))?;
        Ok(())
    }

    #[test]
    fn a_missing_directory_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("s.db");
        match Db::open(&path) {
            Err(Error::CannotOpen { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected CannotOpen, got {other:?}"),
        }
    }
}
