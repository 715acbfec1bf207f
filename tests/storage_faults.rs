//! Storage faults of a real `socp-server` process: a database file that is
//! corrupt, read-only or in a read-only directory at start, and a database
//! that cannot grow (a full disk) while a user registers.
//!
//! Each test runs the built binary as a child process, so what is checked is
//! what an operator sees: the exit code, stderr, the files left behind.
//!
//! Permissions do not bind root (CAP_DAC_OVERRIDE): a root server writes a
//! 0444 file. When the tests run as root they therefore start the server as
//! `nobody` (uid/gid 65534), for whom the permissions hold; a test that cannot
//! do that (the binary out of `nobody`'s reach) says why on stderr and skips.
//!
//! The full disk is the process's file-size limit (RLIMIT_FSIZE) lowered on the
//! running server with prlimit(2) to the current size of its WAL file: every
//! write that would grow a database file fails, while reads and overwrites go
//! on, as on a full disk. The server ignores SIGXFSZ, so such a write fails
//! with EFBIG instead of killing the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use socp_db::Db;
use socp_protocol::message::UserHello;
use socp_protocol::{fixtures, now_ms, Envelope, ServerId, UserId, Username};

/// Bound on every wait for the server (to exit, to listen, to answer).
const WAIT: Duration = Duration::from_secs(30);

/// `nobody`: the unprivileged user the server runs as when the tests run as root.
const NOBODY: u32 = 65534;

fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_socp-server")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory that `nobody` can enter, holding the server's key file.
struct Workdir {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::tempdir().expect("tempdir");
        set_mode(dir.path(), 0o755);
        let key = dir.path().join("server.pem");
        std::fs::write(&key, fixtures::key_pem(0)).expect("writes the key");
        set_mode(&key, 0o644);
        Workdir { dir, key }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server command on a free port with its database at `db`.
    fn server(&self, db: &Path) -> Command {
        let mut cmd = Command::new(server_bin());
        cmd.arg("--bind")
            .arg("ws://127.0.0.1:0")
            .arg("--db")
            .arg(db)
            .arg("--first-key")
            .arg(&self.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A socp database at `path` holding a server identity and `users` registered
/// users, closed (everything in the main file), owner-only.
fn socp_database(path: &Path, users: usize) -> Vec<u8> {
    let db = Db::open(path).expect("creates the database");
    db.save_identity(
        &ServerId::parse("storage-faults").expect("valid"),
        fixtures::key_pem(0),
    )
    .expect("saves the identity");
    for i in 0..users {
        db.register_user(&socp_db::NewUser {
            user_id: UserId::parse(&format!("id-{i}")).expect("valid"),
            username: Username::parse(&format!("user{i}")).expect("valid"),
            pubkey: fixtures::key(i % 4).public_key().clone(),
            privkey_store: "k".repeat(3000),
            meta: None,
        })
        .expect("registers");
    }
    // A dropped `Db` may close its last connection a moment later (on an
    // r2d2 thread); SQLite then checkpoints the WAL into the file and deletes
    // `-wal` and `-shm`. Wait for that, so the file is whole and alone.
    drop(db);
    let deadline = Instant::now() + WAIT;
    while side_file(path, "-wal").exists() || side_file(path, "-shm").exists() {
        assert!(Instant::now() < deadline, "{} stays open", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::read(path).expect("reads the database")
}

/// `path` with `suffix` appended (SQLite's `-wal` and `-shm` files).
fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Deterministic pseudo-random bytes (xorshift64*), never an SQLite header.
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

/// Wait up to [`WAIT`] for `child` to exit; a server still running then is
/// killed and the test fails (a server must not retry a database it cannot use).
fn exit_within(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: the server was still running after {WAIT:?}");
            }
            Err(e) => panic!("{what}: waiting for the server: {e}"),
        }
    }
}

/// Run a server that must refuse to start: its exit status and stderr.
fn refused_start(mut cmd: Command, what: &str) -> (ExitStatus, String) {
    // With logging off, whatever is on stderr is the startup error itself.
    let mut child = cmd
        .env("RUST_LOG", "off")
        .spawn()
        .expect("spawns the server");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = exit_within(&mut child, what);
    (status, reader.join().expect("reader thread"))
}

/// The server refused to start with one clear line on stderr naming `db` and
/// containing `problem`, and no panic.
fn assert_clear_refusal(status: ExitStatus, stderr: &str, db: &Path, problem: &str, what: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{what}: the server panicked: {stderr}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: exit status; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr: {stderr:?}");
    let line = lines[0];
    assert!(
        line.starts_with("socp-server: cannot start: "),
        "{what}: {line}"
    );
    assert!(
        line.contains(&db.display().to_string()),
        "{what}: the line names the file: {line}"
    );
    assert!(
        line.contains(problem),
        "{what}: the line says {problem:?}: {line}"
    );
}

/// A running server process whose stderr (its log) is collected.
struct ServerProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Start `cmd` and wait until it listens.
    fn start(mut cmd: Command) -> ServerProcess {
        let mut child = cmd.env("RUST_LOG", "info").spawn().expect("spawns");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lock").push(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            if let Some(addr) = log
                .lock()
                .expect("log lock")
                .iter()
                .find_map(|l| listening(l))
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the server exited ({status}): {:?}",
                    log.lock().expect("log")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server did not listen within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ServerProcess { child, log, addr }
    }

    /// Log lines containing `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// The exit status, if the process has exited (killed by a signal, say).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("a pid")
    }

    /// SIGTERM (a graceful shutdown), then wait for the exit.
    fn stop(mut self) -> ExitStatus {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // child, not yet reaped, so it cannot name another process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        exit_within(&mut self.child, "graceful shutdown")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the server's "listening on ws://HOST:PORT..." log line.
fn listening(line: &str) -> Option<SocketAddr> {
    let url = line.split("listening on ").nth(1)?;
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let hostport = rest.split(['/', ' ']).next()?;
    hostport.parse().ok()
}

/// Who the server must run as for file permissions to bind it: the test's own
/// user, or `nobody` when the tests run as root. `None` (after saying why)
/// when that cannot be done here.
fn unprivileged(dir: &Path) -> Option<Option<u32>> {
    if !is_root() {
        return Some(None);
    }
    let reachable = Command::new(server_bin())
        .arg("--version")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let enterable = dir
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable && enterable {
        Some(Some(NOBODY))
    } else {
        eprintln!(
            "skipped: running as root, where file permissions do not apply, and the \
             server cannot be run as `nobody` here (binary reachable: {reachable}, \
             {} enterable: {enterable})",
            dir.display()
        );
        None
    }
}

fn run_as(cmd: &mut Command, uid: Option<u32>) {
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
}

/// Whether the user `uid` can write the file or directory `path`: for this
/// process (`None`) by trying, for `nobody` by the permission bits.
fn writable_by(path: &Path, uid: Option<u32>) -> bool {
    match uid {
        None if path.is_dir() => {
            let probe = path.join("probe");
            let created = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            created
        }
        None => std::fs::OpenOptions::new().write(true).open(path).is_ok(),
        Some(uid) => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).expect("metadata");
            let mode = meta.mode();
            if meta.uid() == uid {
                mode & 0o200 != 0
            } else {
                mode & 0o002 != 0
            }
        }
    }
}

#[test]
fn a_corrupt_database_is_refused_with_one_clear_line_and_left_untouched() {
    let work = Workdir::new();
    let good_path = work.path("good.db");
    let good = socp_database(&good_path, 60);
    let pages = good.len() / 4096;
    assert!(pages > 20, "{} bytes", good.len());
    let mut damaged = good.clone();
    damaged[(pages / 2) * 4096..(pages / 2 + 1) * 4096].copy_from_slice(&garbage(4096, 9));
    let text: Vec<u8> = b"{\"bootstrap_servers\": [{\"host\": \"127.0.0.1\", \"port\": 8765}]}\n"
        .repeat(40)
        .to_vec();
    let cases: [(&str, Vec<u8>); 6] = [
        ("garbage bytes", garbage(64 * 1024, 1)),
        ("a short file", garbage(100, 2)),
        ("a text file", text),
        ("the first page of a database", good[..4096].to_vec()),
        ("a database cut in half", good[..pages / 2 * 4096].to_vec()),
        ("a database with a damaged page", damaged),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let db = work.path(&format!("case-{i}.db"));
        std::fs::write(&db, bytes).expect("writes the case");
        let (status, stderr) = refused_start(work.server(&db), what);
        assert_clear_refusal(status, &stderr, &db, "corrupt", what);
        assert_eq!(
            &std::fs::read(&db).expect("reads"),
            bytes,
            "{what}: the file was modified"
        );
        assert!(
            !side_file(&db, "-wal").exists(),
            "{what}: a WAL file was left behind"
        );
    }
    // The good database the damaged cases were made from starts.
    let server = ServerProcess::start(work.server(&good_path));
    assert!(server.stop().success());
}

#[test]
fn a_read_only_database_file_is_refused_and_starts_once_writable() {
    let work = Workdir::new();
    let Some(uid) = unprivileged(work.dir.path()) else {
        return;
    };
    // The directory is the server user's: only the file is read-only.
    let dir = work.path("data");
    std::fs::create_dir(&dir).expect("mkdir");
    let db = dir.join("server.db");
    let bytes = socp_database(&db, 3);
    if let Some(uid) = uid {
        for path in [&dir, &db] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
        }
    }
    set_mode(&db, 0o444);
    if writable_by(&db, uid) {
        eprintln!(
            "skipped: this process writes a 0444 file (it has CAP_DAC_OVERRIDE without \
             being root), so a read-only file cannot be made here"
        );
        return;
    }
    let mut cmd = work.server(&db);
    run_as(&mut cmd, uid);
    let (status, stderr) = refused_start(cmd, "read-only file");
    assert_clear_refusal(status, &stderr, &db, "read-only", "read-only file");
    assert_eq!(std::fs::read(&db).expect("reads"), bytes, "modified");

    // Made writable again, the same file starts: nothing was damaged.
    set_mode(&db, 0o600);
    let mut cmd = work.server(&db);
    run_as(&mut cmd, uid);
    let server = ServerProcess::start(cmd);
    assert!(server.stop().success());
}

#[test]
fn a_database_in_a_read_only_directory_is_refused() {
    let work = Workdir::new();
    let Some(uid) = unprivileged(work.dir.path()) else {
        return;
    };
    let dir = work.path("data");
    std::fs::create_dir(&dir).expect("mkdir");
    let db = dir.join("server.db");
    let bytes = socp_database(&db, 3);
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&db, Some(uid), Some(uid)).expect("chown");
    }
    set_mode(&dir, 0o555);
    if writable_by(&dir, uid) {
        set_mode(&dir, 0o755);
        eprintln!(
            "skipped: this process writes into a 0555 directory (it has CAP_DAC_OVERRIDE \
             without being root), so a read-only directory cannot be made here"
        );
        return;
    }

    // An existing database: SQLite needs its -wal and -shm files beside it.
    let mut cmd = work.server(&db);
    run_as(&mut cmd, uid);
    let (status, stderr) = refused_start(cmd, "existing database");
    assert_clear_refusal(
        status,
        &stderr,
        &db,
        "directory is not writable",
        "existing database",
    );
    assert_eq!(std::fs::read(&db).expect("reads"), bytes, "modified");

    // A new database cannot be created at all.
    let new = dir.join("new.db");
    let mut cmd = work.server(&new);
    run_as(&mut cmd, uid);
    let (status, stderr) = refused_start(cmd, "new database");
    assert_clear_refusal(status, &stderr, &new, "Permission denied", "new database");
    assert!(!new.exists());
    set_mode(&dir, 0o755);
}

// ---------------------------------------------------------------------------
// A full disk while a user registers.

/// USER_REGISTER from `from` for `user_id` / `username` with `REG_KEY`.
fn register(from: &UserId, user_id: &UserId, username: &str) -> Envelope {
    register_frame(from, user_id, username, REG_KEY, REG_KEY, key_store())
}

fn login(from: &UserId, who: &str) -> Envelope {
    login_frame(from, who)
}

/// Log `id` in over a new connection with the challenge (SPEC.md §7).
async fn logged_in(addr: SocketAddr, id: &UserId, who: &str) -> User {
    let mut user = User::join(addr, 13).await;
    user.key = fixtures::key(REG_KEY);
    user.peer.send(&login(&user.id, who)).await;
    let challenge = user
        .peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    assert_eq!(challenge.payload()["user_id"], id.as_str());
    let nonce = challenge.payload()["nonce"].as_str().expect("nonce");
    let hello = Envelope::new(
        id,
        server_to(),
        now_ms(),
        &UserHello {
            client: "socp-tests".into(),
            pubkey: fixtures::key(REG_KEY).public_key().clone(),
            enc_pubkey: None,
            meta: None,
            nonce: Some(nonce.to_owned()),
        },
    )
    .signed(&fixtures::key(REG_KEY))
    .expect("signs");
    user.peer.send(&hello).await;
    user.peer.expect(WAIT, "login ACK", is("ACK")).await;
    user.id = id.clone();
    user
}

/// Set the soft RLIMIT_FSIZE of process `pid` (the hard limit is kept, so this
/// needs no privilege); the previous limits.
fn set_file_size_limit(pid: libc::pid_t, soft: libc::rlim_t) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the current limits into `old`, a valid rlimit.
    let got = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; the old value is not asked for.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

#[actix_rt::test]
async fn a_full_disk_during_registration_is_an_error_and_writes_no_half_user() {
    let work = Workdir::new();
    let db = work.path("server.db");
    let mut server = ServerProcess::start(work.server(&db));
    let addr = server.addr;

    // Before the disk fills: bob registers, alice and carol are online.
    let bob = UserId::random();
    let mut registrar = User::join(addr, 10).await;
    registrar
        .peer
        .send(&register(&registrar.id, &bob, "bob"))
        .await;
    registrar
        .peer
        .expect(WAIT, "bob's REGISTER_OK", is("REGISTER_OK"))
        .await;
    drop(registrar);
    let mut alice = User::join(addr, 11).await;
    let mut carol = User::join(addr, 12).await;

    // The disk fills: no database file may grow past the WAL's current end.
    let wal = side_file(&db, "-wal");
    let wal_len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let before = set_file_size_limit(server.pid(), wal_len);

    // Carol registers: a clear ERROR, and she stays connected.
    let carol_id = UserId::random();
    carol
        .peer
        .send(&register(&carol.id, &carol_id, "carol"))
        .await;
    let answered = |e: &Envelope| matches!(e.msg_type(), "ERROR" | "REGISTER_OK");
    if !carol.peer.sees(WAIT, answered).await {
        panic!(
            "no answer to the registration (server exited: {:?}; closed: {:?})",
            server.exited(),
            carol.peer.closed
        );
    }
    let answer = carol.peer.expect(WAIT, "the answer", answered).await;
    assert_eq!(answer.msg_type(), "ERROR", "{answer:?}");
    let detail = answer.payload()["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("could not store"), "{answer:?}");
    assert!(carol.peer.closed.is_none(), "carol keeps her connection");
    // The operator is told why, naming the file.
    let db_name = db.display().to_string();
    eventually(WAIT, "the registration failure logged", || {
        let logged = server
            .log_lines("registration failed")
            .iter()
            .any(|l| l.contains("disk is full") && l.contains(&db_name));
        async move { logged }
    })
    .await;

    // Nothing of carol was written: she cannot be found...
    carol.peer.send(&login(&carol.id, "carol")).await;
    carol
        .peer
        .expect(
            WAIT,
            "USER_NOT_FOUND for carol",
            error_code("USER_NOT_FOUND"),
        )
        .await;
    // ...while the server goes on serving: bob logs in, alice's DM reaches him.
    let mut bob_user = logged_in(addr, &bob, "bob").await;
    let bob_key = fixtures::key(REG_KEY).public_key().clone();
    alice
        .peer
        .send(&alice.dm(&bob, &bob_key, "still here"))
        .await;
    let dm = bob_user
        .peer
        .expect(WAIT, "alice's DM", is("USER_DELIVER"))
        .await;
    assert_eq!(bob_user.open(&dm), "still here");

    // The disk has room again: carol registers, same id and name.
    set_file_size_limit(server.pid(), before.rlim_cur);
    carol
        .peer
        .send(&register(&carol.id, &carol_id, "carol"))
        .await;
    carol
        .peer
        .expect(WAIT, "carol's REGISTER_OK", is("REGISTER_OK"))
        .await;
    assert!(server.stop().success(), "a graceful exit");

    // Exactly bob and carol, each whole (user row and username row).
    let stored = Db::open(&db).expect("the database opens");
    assert_eq!(stored.user_count().expect("counts"), 2);
    for (id, name) in [(&bob, "bob"), (&carol_id, "carol")] {
        let user = stored.get_user(id).expect("reads").expect("registered");
        assert_eq!(user.username.as_ref().map(|n| n.as_str()), Some(name));
        assert_eq!(&user.pubkey, fixtures::key(REG_KEY).public_key());
        assert_eq!(user.privkey_store, key_store());
    }
}
