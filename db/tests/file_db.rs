//! File databases through the public API: persistence across reopen, damaged,
//! foreign, newer and read-only files, and concurrent writers.
//!
//! Every test works in its own temporary directory, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use socp_db::{Db, Error, MembershipChange, NewUser, Result, SCHEMA_VERSION};
use socp_protocol::{fixtures, PublicKey, ServerId, UserId, Username};
use tempfile::TempDir;

/// The public half of fixture key `n` (0..4), parsed once.
fn pubkey(n: usize) -> PublicKey {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..4)
            .map(|i| fixtures::key(i).public_key().clone())
            .collect()
    })[n]
        .clone()
}

fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    (dir, path)
}

fn new_user(id: &str, name: &str, key: usize) -> NewUser {
    NewUser {
        user_id: UserId::parse(id).unwrap(),
        username: Username::parse(name).unwrap(),
        pubkey: pubkey(key),
        privkey_store: format!("store of {id}"),
        meta: Some(json!({"n": key})),
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// Drop `db` and wait (bounded) until its last connection has closed: SQLite
/// then checkpoints the WAL into the file and deletes `-wal` and `-shm`. A
/// dropped `Db` can close its last connection a moment later, on an r2d2
/// thread that still held the pool; a test that reads the file, or needs the
/// side files gone, waits for this first.
fn close(db: Db, path: &Path) {
    drop(db);
    let side = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while side("-wal").exists() || side("-shm").exists() {
        assert!(
            Instant::now() < deadline,
            "{} still open after 10 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), never starting with the
/// SQLite file header.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    if bytes.starts_with(b"SQLite") {
        bytes[0] = b'x';
    }
    bytes
}

fn expect_corrupt(path: &Path) {
    match Db::open(path) {
        Err(Error::Corrupt(message)) => {
            assert!(
                message.contains(&path.display().to_string()),
                "the error names the file: {message}"
            );
        }
        other => panic!("expected Corrupt for {}, got {other:?}", path.display()),
    }
}

#[test]
fn everything_survives_a_reopen() -> Result<()> {
    let (_dir, path) = temp_db();
    let server = ServerId::parse("server-1").unwrap();
    let pem = fixtures::key_pem(3);
    {
        let db = Db::open(&path)?;
        db.save_identity(&server, pem)?;
        db.register_user(&new_user("id-alice", "Alice", 0))?;
        db.register_user(&new_user("id-bob", "bob", 1))?;
        db.add_public_member(&uid("id-alice"), "wrap-a")?;
        db.add_public_member(&uid("id-bob"), "wrap-b")?;
        db.remove_public_member(&uid("id-bob"))?;
        db.upsert_known_server(&ServerId::parse("peer").unwrap(), "h", 7, &pubkey(2), 42)?;
        assert_eq!(db.public_version()?, 3);
    }
    let db = Db::open(&path)?;
    let identity = db.load_identity()?.unwrap();
    assert_eq!(identity.server_id, server);
    assert_eq!(identity.private_key_pem, pem);
    assert_eq!(db.user_count()?, 2);
    let alice = db.find_user("ALICE")?.unwrap();
    assert_eq!(alice.user_id, uid("id-alice"));
    assert_eq!(alice.pubkey, pubkey(0));
    assert_eq!(alice.meta, Some(json!({"n": 0})));
    assert_eq!(
        db.username_of(&uid("id-bob"))?,
        Some(Username::parse("bob").unwrap())
    );
    // Usernames stay unique after the reopen.
    let err = db.register_user(&new_user("id-other", "BOB", 2));
    assert!(matches!(err, Err(Error::NameInUse)), "{err:?}");
    // The public channel keeps its members and its version, and counts on.
    assert_eq!(db.public_version()?, 3);
    let members: Vec<_> = db
        .public_members()?
        .into_iter()
        .map(|m| m.member_id)
        .collect();
    assert_eq!(members, [uid("id-alice")]);
    assert_eq!(
        db.add_public_member(&uid("id-bob"), "wrap-b")?,
        MembershipChange {
            version: 4,
            changed: true
        }
    );
    let peers = db.known_servers()?;
    assert_eq!(peers.len(), 1);
    assert_eq!((peers[0].port, peers[0].last_seen_ms), (7, 42));
    Ok(())
}

#[test]
fn a_new_file_is_created_owner_only_in_wal_mode() -> Result<()> {
    let (_dir, path) = temp_db();
    let db = Db::open(&path)?;
    db.register_user(&new_user("id-alice", "alice", 0))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    let version: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!((mode.as_str(), version), ("wal", SCHEMA_VERSION));
    Ok(())
}

#[test]
fn an_empty_file_is_a_new_database() -> Result<()> {
    let (_dir, path) = temp_db();
    std::fs::write(&path, b"").unwrap();
    let db = Db::open(&path)?;
    assert_eq!((db.user_count()?, db.public_version()?), (0, 0));
    Ok(())
}

#[test]
fn a_garbage_file_is_corrupt_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (i, len) in [1usize, 99, 100, 511, 512, 4096, 65536]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("garbage-{len}.db"));
        let bytes = garbage(len, 0x5EED + i as u64);
        std::fs::write(&path, &bytes).unwrap();
        expect_corrupt(&path);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "file was modified");
    }
}

#[test]
fn a_damaged_database_is_corrupt() -> Result<()> {
    let (_dir, path) = temp_db();
    let db = Db::open(&path)?;
    db.register_user(&new_user("id-alice", "alice", 0))?;
    close(db, &path);
    // Keep the 100-byte header, overwrite the rest of page 1 (the schema table).
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096, "the WAL was checkpointed on close");
    bytes[100..4096].copy_from_slice(&garbage(3996, 7));
    std::fs::write(&path, &bytes).unwrap();
    expect_corrupt(&path);
    Ok(())
}

#[test]
fn another_programs_database_is_refused_untouched() {
    let (_dir, path) = temp_db();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('hi');")
        .unwrap();
    drop(raw);
    let before = std::fs::read(&path).unwrap();
    expect_corrupt(&path);
    // Not even switched to WAL mode (bytes 18 and 19 of the header).
    assert_eq!(std::fs::read(&path).unwrap(), before, "file was modified");
}

/// A socp database with an identity and `users` users (each row spills onto
/// its own pages), closed so that everything is in the main file.
fn populated(path: &Path, users: usize) -> Vec<u8> {
    let db = Db::open(path).unwrap();
    db.save_identity(&ServerId::parse("server-1").unwrap(), fixtures::key_pem(3))
        .unwrap();
    for i in 0..users {
        let mut user = new_user(&format!("id-{i}"), &format!("user{i}"), i % 4);
        user.privkey_store = "k".repeat(3000);
        db.register_user(&user).unwrap();
    }
    close(db, path);
    std::fs::read(path).unwrap()
}

#[test]
fn a_truncated_database_is_corrupt_and_left_untouched() {
    let (dir, path) = temp_db();
    let bytes = populated(&path, 100);
    assert!(bytes.len() > 40 * 4096, "{} bytes", bytes.len());
    for pages in [1, 2, 5, bytes.len() / 4096 / 2, bytes.len() / 4096 - 1] {
        let cut = dir.path().join(format!("cut-{pages}.db"));
        let kept = &bytes[..pages * 4096];
        std::fs::write(&cut, kept).unwrap();
        expect_corrupt(&cut);
        assert_eq!(
            std::fs::read(&cut).unwrap(),
            kept,
            "{pages} pages: modified"
        );
    }
}

#[test]
fn a_damaged_page_deep_in_the_file_is_found_at_open() {
    // Pages that starting a server never reads (users' rows) are damaged: the
    // open's integrity check finds them, so the server refuses to start
    // instead of failing at some user's login later.
    let (dir, path) = temp_db();
    let bytes = populated(&path, 100);
    let pages = bytes.len() / 4096;
    for page in [pages / 2, pages - 2] {
        let damaged_path = dir.path().join(format!("damaged-{page}.db"));
        let mut damaged = bytes.clone();
        damaged[page * 4096..(page + 1) * 4096].copy_from_slice(&garbage(4096, page as u64));
        std::fs::write(&damaged_path, &damaged).unwrap();
        expect_corrupt(&damaged_path);
        assert_eq!(
            std::fs::read(&damaged_path).unwrap(),
            damaged,
            "page {page}: modified"
        );
    }
    // The undamaged file opens (the check does not refuse good files).
    assert_eq!(Db::open(&path).unwrap().user_count().unwrap(), 100);
}

#[test]
fn a_newer_schema_is_refused() -> Result<()> {
    let (_dir, path) = temp_db();
    drop(Db::open(&path)?);
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
        .unwrap();
    drop(raw);
    match Db::open(&path) {
        Err(Error::NewerSchema { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 5, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_read_only_file_is_read_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let (_dir, path) = temp_db();
    close(Db::open(&path)?, &path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    // Permissions do not stop root (CAP_DAC_OVERRIDE): check before asserting.
    if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        println!(
            "note: this process can write a 0444 file (running as root?); \
             the read-only open is not tested here"
        );
        return Ok(());
    }
    let result = Db::open(&path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    match result {
        Err(Error::ReadOnly(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    Ok(())
}

#[test]
fn concurrent_registration_of_one_name_has_one_winner() -> Result<()> {
    const THREADS: usize = 8;
    let (_dir, path) = temp_db();
    let db = Db::open(&path)?;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (db, barrier) = (db.clone(), barrier.clone());
            // The same name in different cases, from different ids.
            let name = if i % 2 == 0 { "Carol" } else { "cAROL" };
            let user = new_user(&format!("id-{i}"), name, i % 4);
            std::thread::spawn(move || {
                barrier.wait();
                db.register_user(&user)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    let name_in_use = results
        .iter()
        .filter(|r| matches!(r, Err(Error::NameInUse)))
        .count();
    assert_eq!((wins, name_in_use), (1, THREADS - 1), "{results:?}");
    assert_eq!(db.user_count()?, 1);
    assert!(db.find_user("carol")?.is_some());
    Ok(())
}

#[test]
fn concurrent_registration_from_two_handles_on_one_file() -> Result<()> {
    // Two `Db`s on one file stand for two processes.
    let (_dir, path) = temp_db();
    let first = Db::open(&path)?;
    let second = Db::open(&path)?;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [first.clone(), second]
        .into_iter()
        .enumerate()
        .map(|(i, db)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                db.register_user(&new_user("id-same", &format!("name{i}"), i))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().any(|r| matches!(r, Err(Error::IdInUse))));
    assert_eq!(first.user_count()?, 1);
    Ok(())
}

#[test]
fn concurrent_public_channel_changes_bump_once_each() -> Result<()> {
    const THREADS: usize = 8;
    let (_dir, path) = temp_db();
    let db = Db::open(&path)?;
    let barrier = Arc::new(Barrier::new(THREADS));
    // Each thread adds its own member twice and a shared member once.
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<usize> {
                barrier.wait();
                let own = uid(&format!("member-{i}"));
                let changes = [
                    db.add_public_member(&own, "w")?,
                    db.add_public_member(&uid("shared"), "w")?,
                    db.add_public_member(&own, "w")?,
                ];
                Ok(changes.iter().filter(|c| c.changed).count())
            })
        })
        .collect();
    let mut changed = 0;
    for h in handles {
        changed += h.join().unwrap()?;
    }
    assert_eq!(changed, THREADS + 1);
    assert_eq!(db.public_version()?, THREADS as u64 + 1);
    assert_eq!(db.public_members()?.len(), THREADS + 1);
    drop(db);
    assert_eq!(Db::open(&path)?.public_version()?, THREADS as u64 + 1);
    Ok(())
}

#[test]
fn a_database_in_a_read_only_directory_is_read_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let (dir, path) = temp_db();
    // Closed: with no -wal and -shm files yet, SQLite must create them.
    close(Db::open(&path)?, &path);
    // WAL needs to create the -wal and -shm files next to the database.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(dir.path().join("probe"), b"").is_ok() {
        println!(
            "note: this process can write a 0555 directory (running as root?); \
             the read-only open is not tested here"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        return Ok(());
    }
    let existing = Db::open(&path);
    let new = Db::open(dir.path().join("new.db"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(existing, Err(Error::ReadOnly(_))), "{existing:?}");
    assert!(matches!(new, Err(Error::CannotOpen { .. })), "{new:?}");
    Ok(())
}
