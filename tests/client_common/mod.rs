//! Test harness for the terminal client: runs the built `socp-client` binary in
//! its scripting mode (`--json`, commands on stdin) and reads its events, one
//! JSON object per line, with bounded waits.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Write fixture key `n` as an unencrypted PEM file in `dir`; its path.
pub fn key_file(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("fixture-key-{n:02}.pem"));
    std::fs::write(&path, socp_protocol::fixtures::key_pem(n)).expect("writes the key file");
    path
}

/// How to start a client.
pub struct Options {
    /// Fixture key for the session (ephemeral) identity.
    pub key: usize,
    /// Fixture key `/register` uses.
    pub register_key: Option<usize>,
    /// Password for `/register` and `/login`.
    pub password: Option<String>,
    /// `--home`.
    pub home: PathBuf,
    /// `--download-dir` (default: HOME/downloads).
    pub download_dir: Option<PathBuf>,
    /// `--rate` (frames per second; default: the client's).
    pub rate: Option<f64>,
    /// `--standard-files`: files in 446-byte RSA chunks even to socp clients.
    pub standard_files: bool,
    /// More `--server`s after the first, tried in turn when one is lost.
    pub more_servers: Vec<SocketAddr>,
}

impl Options {
    /// A client with session key `key` and its home at `home`.
    pub fn new(key: usize, home: &Path) -> Self {
        Options {
            key,
            register_key: None,
            password: None,
            home: home.to_owned(),
            download_dir: None,
            rate: None,
            standard_files: false,
            more_servers: Vec::new(),
        }
    }
}

/// One `socp-client` process.
pub struct Client {
    /// For messages.
    pub label: String,
    /// The user id from the `connected` event.
    pub id: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: UnboundedReceiver<Value>,
    /// Events received and not yet taken by [`Client::expect`].
    pending: VecDeque<Value>,
    /// Every event received, in order.
    pub log: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Whether stdout has ended (the process is exiting).
    ended: bool,
}

/// How long ordinary answers may take (RSA-4096 on a shared machine).
pub const WAIT: Duration = Duration::from_secs(30);

impl Client {
    /// Start a client connected to `server` and wait for its `connected` event.
    pub async fn start(label: &str, server: SocketAddr, opts: Options) -> Client {
        std::fs::create_dir_all(&opts.home).expect("creates the home directory");
        let keys = opts.home.join("fixture-keys");
        std::fs::create_dir_all(&keys).expect("creates the key directory");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_socp-client"));
        cmd.arg("--json")
            .arg("--server")
            .arg(format!("ws://{server}"))
            .arg("--home")
            .arg(&opts.home)
            .arg("--key")
            .arg(key_file(&keys, opts.key));
        if let Some(n) = opts.register_key {
            cmd.arg("--register-key").arg(key_file(&keys, n));
        }
        if let Some(password) = &opts.password {
            let path = keys.join("password");
            std::fs::write(&path, format!("{password}\n")).expect("writes the password file");
            cmd.arg("--password-file").arg(path);
        }
        if let Some(dir) = &opts.download_dir {
            cmd.arg("--download-dir").arg(dir);
        }
        if let Some(rate) = opts.rate {
            cmd.arg("--rate").arg(rate.to_string());
        }
        if opts.standard_files {
            cmd.arg("--standard-files");
        }
        for more in &opts.more_servers {
            cmd.arg("--server").arg(format!("ws://{more}"));
        }
        cmd.env_remove("SOCP_PASSWORD")
            .env_remove("SOCP_HOME")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starts socp-client");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, events) = unbounded_channel();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut event = serde_json::from_str::<Value>(&line)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({ "event": "not-json", "line": line }));
                // When it was read, for failure reports.
                event["_read_at_ms"] = json!(started.elapsed().as_millis() as u64);
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errors2 = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut e) = errors2.lock() {
                    e.push(line);
                }
            }
        });
        let mut client = Client {
            label: label.to_owned(),
            id: String::new(),
            stdin: child.stdin.take(),
            child,
            events,
            pending: VecDeque::new(),
            log: Vec::new(),
            stderr: errors,
            ended: false,
        };
        let connected = client.expect("connected", is_event("connected")).await;
        client.id = connected["user_id"]
            .as_str()
            .expect("connected has a user_id")
            .to_owned();
        client
    }

    /// Write one command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: writing {line:?} to the client: {e}", self.label));
    }

    /// Why a wait failed, with everything the client said.
    fn report(&self, what: &str, wait: Duration) -> String {
        let stderr = self.stderr.lock().map(|e| e.join("\n")).unwrap_or_default();
        format!(
            "{}: no {what} within {wait:?} (exited: {}); events: {:#?}\nstderr:\n{stderr}",
            self.label,
            self.ended,
            self.log.iter().map(Value::to_string).collect::<Vec<_>>(),
        )
    }

    /// Read events for up to `wait`; false once stdout ended.
    async fn pump(&mut self, wait: Duration) -> bool {
        if self.ended {
            return false;
        }
        match tokio::time::timeout(wait, self.events.recv()).await {
            Err(_) => true,
            Ok(Some(event)) => {
                self.log.push(event.clone());
                self.pending.push_back(event);
                // Take whatever else is already there.
                while let Ok(event) = self.events.try_recv() {
                    self.log.push(event.clone());
                    self.pending.push_back(event);
                }
                true
            }
            Ok(None) => {
                self.ended = true;
                false
            }
        }
    }

    /// Wait up to `wait` for an event matching `pred` (taken from the pending
    /// events; earlier events stay).
    pub async fn expect_within(
        &mut self,
        wait: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.pending.iter().position(&pred) {
                return self.pending.remove(i).expect("index is valid");
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.pump(left).await {
                if let Some(i) = self.pending.iter().position(&pred) {
                    return self.pending.remove(i).expect("index is valid");
                }
                panic!("{}", self.report(what, wait));
            }
        }
    }

    /// [`Client::expect_within`] with the ordinary [`WAIT`].
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_within(WAIT, what, pred).await
    }

    /// Events logged so far that match `pred`.
    pub fn logged(&self, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
        self.log.iter().filter(|e| pred(e)).collect()
    }

    /// Read whatever arrives within `wait` (into the log).
    pub async fn settle(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.pump(left).await {
                return;
            }
        }
    }

    /// Wait until `other` is announced online.
    pub async fn sees_online(&mut self, other: &str) -> Value {
        let id = other.to_owned();
        self.expect(&format!("presence of {other}"), move |e| {
            e["event"] == "presence" && e["user_id"] == id.as_str() && e["online"] == true
        })
        .await
    }

    /// Wait for the process to exit (bounded); its status.
    pub async fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("polls the client") {
                // Collect the last events.
                while self.pump(Duration::from_millis(200)).await {}
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{}", self.report("exit", wait));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/quit`, then wait for the process to exit; its status.
    pub async fn quit(mut self) -> (ExitStatus, Vec<Value>) {
        self.send("/quit");
        self.stdin = None;
        let status = self.wait_exit(WAIT).await;
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An event of this kind.
pub fn is_event(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["event"] == kind
}

/// An event of this kind whose `field` is `value`.
pub fn event_where(
    kind: &'static str,
    field: &'static str,
    value: impl Into<Value>,
) -> impl Fn(&Value) -> bool {
    let value = value.into();
    move |e: &Value| e["event"] == kind && e[field] == value
}

/// Every file under `root`, recursively.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                _ => out.push(path),
            }
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
