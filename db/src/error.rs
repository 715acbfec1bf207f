//! The crate's error type.
//!
//! SQLite failures that a server must answer differently are given their own
//! variants (a full disk, a read-only or corrupt file, a lock held too long),
//! so callers match on a variant instead of digging through SQLite codes.

use std::path::PathBuf;

use rusqlite::ErrorCode as Code;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SQLite failure with no more specific variant below.
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// No pooled connection became free (or could be made) in time.
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// The username is already claimed (usernames are unique case-insensitively),
    /// or it equals another user's id, which would make look-ups ambiguous.
    #[error("username is already taken")]
    NameInUse,
    /// The user id is already registered (or equals another user's username).
    #[error("user id is already registered")]
    IdInUse,
    /// [`crate::Db::save_identity`] found an identity already stored; replacing one
    /// is only done by [`crate::Db::replace_identity`].
    #[error("this database already holds a server identity")]
    IdentityExists,
    /// The file is not a (socp) SQLite database, SQLite found it damaged, or a
    /// row holds a value that does not parse (a key, an id, JSON).
    #[error("database is corrupt or not a socp database: {0}")]
    Corrupt(String),
    /// The database was written by a newer socp with a schema this build does not know.
    #[error(
        "database schema version {found} is newer than this build supports ({known}); upgrade socp"
    )]
    NewerSchema {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest schema version this build can migrate to.
        known: i64,
    },
    /// The disk (or the database's size limit, or the process's file-size
    /// limit, or a quota) is full; nothing was written.
    #[error("database or disk is full: {0}")]
    DiskFull(String),
    /// The operating system failed a read or write of the database files (a
    /// failing disk, a file removed underneath); the transaction was rolled back.
    #[error("database I/O error: {0}")]
    Io(String),
    /// The database file (or its directory) cannot be written.
    #[error("database is read-only: {0}")]
    ReadOnly(String),
    /// Another connection held a lock for longer than the busy timeout.
    #[error("database is busy: {0}")]
    Busy(String),
    /// The database file could not be created or opened at all.
    #[error("cannot open database {}: {detail}", path.display())]
    CannotOpen {
        /// The path given to [`crate::Db::open`].
        path: PathBuf,
        /// What the operating system or SQLite said.
        detail: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classify a SQLite error, prefixing `context` (e.g. the file path) to the
    /// message of the classified variants.
    pub(crate) fn with_context(err: rusqlite::Error, context: &str) -> Error {
        let message = || {
            if context.is_empty() {
                err.to_string()
            } else {
                format!("{context}: {err}")
            }
        };
        match err.sqlite_error_code() {
            Some(Code::DiskFull) => Error::DiskFull(message()),
            // SQLite says only "attempt to write a readonly database" when the
            // file is writable but its directory is not.
            Some(Code::ReadOnly)
                if err.sqlite_extended_error_code()
                    == Some(rusqlite::ffi::SQLITE_READONLY_DIRECTORY) =>
            {
                Error::ReadOnly(format!(
                    "{}: its directory is not writable (SQLite keeps the -wal and -shm \
                     files next to the database)",
                    message()
                ))
            }
            Some(Code::ReadOnly) => Error::ReadOnly(message()),
            Some(Code::SystemIoFailure) => Error::Io(message()),
            Some(Code::NotADatabase | Code::DatabaseCorrupt) => Error::Corrupt(message()),
            Some(Code::DatabaseBusy | Code::DatabaseLocked) => Error::Busy(message()),
            _ => match err {
                // A value of the wrong type or range in a column: the row is damaged.
                rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::Utf8Error(..) => Error::Corrupt(message()),
                other => Error::Sqlite(other),
            },
        }
    }

    /// Name the file in the message of an error found while opening it.
    pub(crate) fn in_file(self, context: &str) -> Error {
        match self {
            Error::Corrupt(m) => Error::Corrupt(format!("{context}: {m}")),
            Error::DiskFull(m) => Error::DiskFull(format!("{context}: {m}")),
            Error::Io(m) => Error::Io(format!("{context}: {m}")),
            Error::ReadOnly(m) => Error::ReadOnly(format!("{context}: {m}")),
            Error::Busy(m) => Error::Busy(format!("{context}: {m}")),
            other => other,
        }
    }

    /// Complete an [`Error::Io`] with the operating system's error `errno`
    /// (what SQLite's "disk I/O error" was): a file that may not grow (`EFBIG`,
    /// the process's file-size limit), a full disk (`ENOSPC`) or a full quota
    /// (`EDQUOT`) is [`Error::DiskFull`]. Other variants are returned as they are.
    pub(crate) fn with_os_error(self, errno: i32) -> Error {
        let Error::Io(message) = self else {
            return self;
        };
        if errno == 0 {
            return Error::Io(message);
        }
        let os = std::io::Error::from_raw_os_error(errno);
        let message = format!("{message} ({os})");
        match os.kind() {
            std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::FileTooLarge
            | std::io::ErrorKind::QuotaExceeded => Error::DiskFull(message),
            _ => Error::Io(message),
        }
    }

    /// A row whose stored value does not parse.
    pub(crate) fn corrupt_row(what: &str, key: &str, detail: impl std::fmt::Display) -> Error {
        Error::Corrupt(format!("{what} {key:?}: {detail}"))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Error {
        Error::with_context(err, "")
    }
}

/// Whether `err` is a UNIQUE / PRIMARY KEY constraint failure.
pub(crate) fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error(),
        Some(e) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn failure(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn classifies_sqlite_codes() {
        use rusqlite::ffi;
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_FULL)),
            Error::DiskFull(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_READONLY)),
            Error::ReadOnly(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_NOTADB)),
            Error::Corrupt(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_CORRUPT)),
            Error::Corrupt(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_BUSY)),
            Error::Busy(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_CONSTRAINT)),
            Error::Sqlite(_)
        ));
        assert!(matches!(
            Error::from(failure(ffi::SQLITE_IOERR_WRITE)),
            Error::Io(_)
        ));
        let directory = Error::from(failure(ffi::SQLITE_READONLY_DIRECTORY));
        assert!(
            matches!(&directory, Error::ReadOnly(m) if m.contains("directory is not writable")),
            "{directory}"
        );
    }

    #[test]
    #[cfg(target_os = "linux")] // errno values
    fn an_os_error_completes_an_io_error() {
        use rusqlite::ffi;
        let io = || Error::with_context(failure(ffi::SQLITE_IOERR_WRITE), "/x/y.db");
        // The file-size limit and a full disk or quota: the database cannot grow.
        for errno in [27, 28, 122] {
            let err = io().with_os_error(errno);
            let os = std::io::Error::from_raw_os_error(errno).to_string();
            assert!(
                matches!(&err, Error::DiskFull(m) if m.contains("/x/y.db") && m.contains(&os)),
                "{errno}: {err}"
            );
        }
        // EIO stays an I/O error, with its reason; no errno leaves it as it was.
        let eio = io().with_os_error(5);
        assert!(
            matches!(&eio, Error::Io(m) if m.contains("os error 5")),
            "{eio}"
        );
        assert!(matches!(io().with_os_error(0), Error::Io(m) if !m.contains("os error")));
        // Other variants are left alone.
        assert!(matches!(
            Error::NameInUse.with_os_error(28),
            Error::NameInUse
        ));
    }

    #[test]
    fn context_is_in_the_message() {
        let err = Error::with_context(failure(rusqlite::ffi::SQLITE_NOTADB), "/x/y.db");
        assert!(err.to_string().contains("/x/y.db"), "{err}");
    }

    #[test]
    fn wrong_column_type_is_corrupt() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        let err = conn
            .query_row("SELECT NULL", [], |row| row.get::<_, String>(0))
            .map_err(Error::from);
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        Ok(())
    }

    #[test]
    fn unique_violations_are_recognised() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT UNIQUE NOT NULL)")?;
        conn.execute("INSERT INTO t VALUES (1, 'x')", [])?;
        let pk = conn.execute("INSERT INTO t VALUES (1, 'y')", []);
        let unique = conn.execute("INSERT INTO t VALUES (2, 'x')", []);
        let not_null = conn.execute("INSERT INTO t VALUES (3, NULL)", []);
        assert!(pk.as_ref().is_err_and(is_unique_violation), "{pk:?}");
        assert!(
            unique.as_ref().is_err_and(is_unique_violation),
            "{unique:?}"
        );
        assert!(
            not_null.as_ref().is_err_and(|e| !is_unique_violation(e)),
            "{not_null:?}"
        );
        Ok(())
    }
}
