//! What every part runs on: servers (a mesh started in process, or linked
//! servers given with `--target`), their HTTP endpoints, protocol-level bench
//! users, and signing on every core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use socp_actors::Settings;
use socp_protocol::crypto::sha256;
use socp_protocol::message::UserHello;
use socp_protocol::{fixtures, now_ms, Envelope, PrivateKey, To, UserId};
use tokio::sync::mpsc;

use super::BenchConfig;
use crate::server::{start, RunningServer, ServerConfig};

/// The servers a part runs against: started in process, or given with
/// `--target` (then left running).
pub(crate) struct Servers {
    pub(crate) addrs: Vec<SocketAddr>,
    owned: Vec<RunningServer>,
}

impl Servers {
    /// `n` linked servers.
    pub(crate) async fn get(cfg: &BenchConfig, n: usize) -> Result<Servers, String> {
        if cfg.targets.is_empty() {
            let owned = mesh(n).await?;
            return Ok(Servers {
                addrs: owned.iter().map(|s| s.addr).collect(),
                owned,
            });
        }
        let Some(addrs) = cfg.targets.get(..n) else {
            return Err(format!(
                "this part needs {n} linked servers; {} given with --target",
                cfg.targets.len()
            ));
        };
        for addr in addrs {
            let links = links_up(&http_status(*addr).await?);
            if links + 1 < n {
                return Err(format!(
                    "target {addr} has {links} live links; this part needs {n} linked servers"
                ));
            }
        }
        Ok(Servers {
            addrs: addrs.to_vec(),
            owned: Vec::new(),
        })
    }

    /// Users server `i` knows (attached to it or elsewhere).
    pub(crate) async fn known(&self, i: usize) -> Result<usize, String> {
        match self.owned.get(i) {
            Some(s) => Ok(users_known(&s.status().await)),
            None => Ok(users_known(&http_status(self.addrs[i]).await?)),
        }
    }

    /// Wait until server `i` knows at least `want` users.
    pub(crate) async fn converge(&self, i: usize, want: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.known(i).await? < want {
            if Instant::now() > deadline {
                return Err("presence did not converge within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stop the servers this bench started.
    pub(crate) async fn stop(self) {
        for s in self.owned {
            s.kill().await;
        }
    }
}

pub(crate) async fn mesh(n: usize) -> Result<Vec<RunningServer>, String> {
    let first = start(server_config(0, &[]))
        .await
        .map_err(|e| e.to_string())?;
    let intro = first.addr;
    let mut servers = vec![first];
    for i in 1..n {
        servers.push(
            start(server_config(i, &[intro]))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in &servers {
        while links_up(&s.status().await) < n - 1 {
            if Instant::now() > deadline {
                return Err("the mesh did not form within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(servers)
}

fn server_config(key: usize, bootstrap: &[SocketAddr]) -> ServerConfig {
    ServerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        db_path: None,
        first_key_pem: Some(fixtures::key_pem(key).to_owned()),
        bootstrap: bootstrap
            .iter()
            .map(|a| socp_actors::introducer::Bootstrap {
                host: a.ip().to_string(),
                port: a.port(),
                pubkey: None,
            })
            .collect(),
        settings: bench_settings(),
        ..ServerConfig::default()
    }
}

/// Servers for the bench: fast heartbeats, and the per-user frame, byte and
/// memory limits raised so that servers, not the limiters, set the pace (the
/// file part hands the server a whole file's chunks at once).
fn bench_settings() -> Settings {
    Settings {
        user_rate: 100_000.0,
        user_burst: 100_000.0,
        user_bytes_per_second: 1e12,
        conn_memory_budget: 1 << 30,
        max_backlog: 100_000,
        heartbeat_interval: Duration::from_secs(2),
        peer_timeout: Duration::from_secs(10),
        ..Settings::default()
    }
}

/// Fixture key `n`, parsed once per process (parsing a 4096-bit private key
/// costs milliseconds: with thousands of users it was the bench's own
/// largest cost).
pub(crate) fn fixture_key(n: usize) -> Arc<PrivateKey> {
    static KEYS: std::sync::OnceLock<std::sync::Mutex<HashMap<usize, Arc<PrivateKey>>>> =
        std::sync::OnceLock::new();
    let n = n % fixtures::KEY_COUNT;
    let keys = KEYS.get_or_init(Default::default);
    let mut keys = keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(keys.entry(n).or_insert_with(|| Arc::new(fixtures::key(n))))
}

/// A protocol-level bench user: a writer channel and a stream of deliveries.
pub(crate) struct BenchUser {
    pub(crate) id: UserId,
    pub(crate) key: Arc<PrivateKey>,
    pub(crate) tx: mpsc::UnboundedSender<String>,
    pub(crate) seen: mpsc::UnboundedReceiver<Seen>,
    /// Text frames received so far.
    pub(crate) frames: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of text frames received so far.
    pub(crate) bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl BenchUser {
    /// Connect, say hello, wait for the server's ACK.
    pub(crate) async fn join(addr: SocketAddr, key: usize) -> Result<BenchUser, String> {
        let key = fixture_key(key);
        let id = UserId::random();
        let (_, framed) = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .ws(format!("ws://{addr}/ws"))
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // The server pings its users and closes one that does not answer.
        let (pong_tx, mut pongs) = mpsc::unbounded_channel::<bytes::Bytes>();
        actix_web::rt::spawn(async move {
            loop {
                let message = tokio::select! {
                    text = rx.recv() => match text {
                        Some(text) => awc::ws::Message::Text(text.into()),
                        None => break,
                    },
                    Some(p) = pongs.recv() => awc::ws::Message::Pong(p),
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel::<()>();
        let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&frames);
        let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let byte_counter = Arc::clone(&bytes_in);
        actix_web::rt::spawn(async move {
            let mut ack = Some(ack_tx);
            while let Some(Ok(frame)) = stream.next().await {
                let bytes = match frame {
                    awc::ws::Frame::Text(bytes) => bytes,
                    awc::ws::Frame::Ping(p) => {
                        let _ = pong_tx.send(p);
                        continue;
                    }
                    _ => continue,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                byte_counter.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                // Only the answer to the hello and deliveries matter:
                // presence news (every join is news to every user) is
                // counted, not parsed. Our server writes `type` first.
                let head = &bytes[..bytes.len().min(64)];
                let wanted = contains(head, b"\"USER_DELIVER\"")
                    || (ack.is_some()
                        && (contains(head, b"\"ACK\"") || contains(head, b"\"ERROR\"")));
                if !wanted {
                    continue;
                }
                // Only the fields the bench needs; no RSA on the client side.
                let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("ACK") => {
                        if let Some(a) = ack.take() {
                            let _ = a.send(());
                        }
                    }
                    Some("USER_DELIVER") => {
                        let ct = v["payload"]["ciphertext"].as_str().unwrap_or("");
                        let _ = seen_tx.send(Seen {
                            id: sha256(ct.as_bytes()),
                            at: Instant::now(),
                        });
                    }
                    _ => {}
                }
            }
        });
        let hello = socp_protocol::dialect::with_client_capability(Envelope::new(
            &id,
            To::Id("server".into()),
            now_ms(),
            &UserHello {
                client: "socp-bench".into(),
                pubkey: key.public_key().clone(),
                enc_pubkey: None,
                meta: None,
                nonce: None,
            },
        ));
        tx.send(hello.to_json()).map_err(|_| "closed")?;
        tokio::time::timeout(Duration::from_secs(60), ack_rx)
            .await
            .map_err(|_| "no ACK within 60 s".to_owned())?
            .map_err(|_| "closed before ACK".to_owned())?;
        Ok(BenchUser {
            id,
            key,
            tx,
            seen,
            frames,
            bytes: bytes_in,
        })
    }
}

/// A delivery a bench user saw: which message (hash of its ciphertext) and when.
pub(crate) struct Seen {
    pub(crate) id: [u8; 32],
    pub(crate) at: Instant,
}

/// `n` users joining, 50 at any moment (each join waits for its ACK): user
/// `i` joins the server and with the fixture key `at(i)` gives.
pub(crate) async fn join_many(
    n: usize,
    at: impl Fn(usize) -> (SocketAddr, usize),
) -> Result<Vec<BenchUser>, String> {
    let joins = (0..n).map(|i| {
        let (addr, key) = at(i);
        async move { (i, BenchUser::join(addr, key).await) }
    });
    // 50 at a time: the next starts as soon as any one is attached.
    let mut joined: Vec<(usize, Result<BenchUser, String>)> = futures_util::stream::iter(joins)
        .buffer_unordered(JOINING_AT_ONCE)
        .collect()
        .await;
    joined.sort_by_key(|(i, _)| *i);
    joined.into_iter().map(|(_, user)| user).collect()
}

/// How many users join at once.
const JOINING_AT_ONCE: usize = 50;

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sign many frames on every core.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let out: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                if let Ok(mut slot) = out[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    out.into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect()
}

/// GET `path` of a server's HTTP endpoint.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<Bytes, String> {
    let mut response = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    response
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| format!("{addr}{path}: {e}"))
}

/// A server's `/status`.
pub(crate) async fn http_status(addr: SocketAddr) -> Result<Value, String> {
    let body = http_get(addr, "/status").await?;
    serde_json::from_slice(&body).map_err(|e| format!("{addr}/status: {e}"))
}

pub(crate) fn links_up(status: &Value) -> usize {
    status["servers"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["link"] == "up").count())
}

pub(crate) fn users_known(status: &Value) -> usize {
    status["local_users"].as_array().map_or(0, Vec::len)
        + status["remote_users"].as_array().map_or(0, Vec::len)
}
