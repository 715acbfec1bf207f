//! `socp-bench`: measures how close a socp mesh runs to the crypto limit of
//! the machine, with every figure and ratio measured side by side in one run.
//!
//! 1. Crypto ceiling: PSS sign/verify and OAEP encrypt/decrypt per second, one
//!    core and all cores, with the same code the server uses.
//! 2. DM relay across a 2-server mesh: K sender/receiver pairs, closed loop
//!    (W in flight per pair) for T seconds: DMs/s, latency, lost, duplicated.
//! 3. Public channel fan-out: one message to N members on 3 servers.
//! 4. File transfer: a file across servers, end to end.
//! 5. Idle capacity: C attached users on one server process: RSS per connection.
//! 6. Mesh formation: S servers joining one introducer, U users.
//!
//! Servers run in-process (1-4, 6) or as a child `socp-server` process (5, so
//! its memory is its own). Keys come from the fixture pool: key generation is
//! never measured. Client-side signing is done before each timed phase. The
//! ratios of parts 2-4 use the machine's speed sampled just before and just
//! after the part ([`Beside`]): this VM's speed drifts within a run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use socp_actors::Settings;
use socp_protocol::crypto::{sha256, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{
    FileChunk, FileEnd, FileId, FileMode, FileStart, MsgDirect, MsgPublicChannel, UserHello,
};
use socp_protocol::{content, fixtures, now_ms, Base64Url, Envelope, PrivateKey, To, UserId};
use tokio::sync::mpsc;

use crate::server::{start, RunningServer, ServerConfig};

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Seconds per crypto measurement.
    pub crypto_secs: f64,
    /// Sender/receiver pairs for the DM relay.
    pub pairs: usize,
    /// Seconds of DM relay.
    pub dm_secs: f64,
    /// DMs in flight per pair.
    pub window: usize,
    /// Public channel members.
    pub members: usize,
    /// File size in bytes.
    pub file_bytes: usize,
    /// Idle users on one server.
    pub idle_users: usize,
    /// Servers in the mesh-formation test.
    pub mesh_servers: usize,
    /// Users in the mesh-formation test.
    pub mesh_users: usize,
    /// Which parts to run (empty: all).
    pub only: Vec<String>,
    /// The `socp-server` binary for the idle test (default: next to this one).
    pub server_bin: Option<PathBuf>,
    /// Linked servers to run against instead of starting some.
    pub targets: Vec<SocketAddr>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            crypto_secs: 1.0,
            pairs: 4,
            dm_secs: 10.0,
            window: 8,
            members: 100,
            file_bytes: 1024 * 1024,
            idle_users: 500,
            mesh_servers: 4,
            mesh_users: 40,
            only: Vec::new(),
            server_bin: None,
            targets: Vec::new(),
        }
    }
}

/// Operations per second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Crypto {
    pub cores: usize,
    pub sign_per_s_1: f64,
    pub verify_per_s_1: f64,
    pub encrypt_per_s_1: f64,
    pub decrypt_per_s_1: f64,
    pub sign_per_s_all: f64,
    pub verify_per_s_all: f64,
    pub encrypt_per_s_all: f64,
    pub decrypt_per_s_all: f64,
    /// One signature, milliseconds (1 / sign_per_s_1).
    pub sign_ms: f64,
}

/// Run `op` on `threads` threads for `secs`; operations per second in all.
fn rate(threads: usize, secs: f64, op: impl Fn() + Sync) -> f64 {
    let count = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    op();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The RSA operations the ceiling counts, with the server's own code.
struct Ops {
    key: PrivateKey,
    public: socp_protocol::PublicKey,
    msg: Vec<u8>,
    sig: socp_protocol::Signature,
    plain: Vec<u8>,
    ct: Vec<u8>,
}

impl Ops {
    /// Made once per run (parsing the key and precomputing its CRT values).
    fn get() -> &'static Ops {
        static OPS: std::sync::OnceLock<Ops> = std::sync::OnceLock::new();
        OPS.get_or_init(|| {
            let key = fixtures::key(20);
            let public = key.public_key().clone();
            let msg = b"{\"user_id\":\"bench\",\"server_id\":\"bench\"}".to_vec();
            let sig = key
                .sign(&msg)
                .unwrap_or_else(|_| socp_protocol::Signature::from_bytes(&[0; 512]));
            let plain = vec![7u8; 32];
            let ct = public.encrypt(&plain).unwrap_or_default();
            Ops {
                key,
                public,
                msg,
                sig,
                plain,
                ct,
            }
        })
    }

    fn sign(&self) {
        let _ = self.key.sign(&self.msg);
    }

    fn verify(&self) {
        let _ = self.public.verify(&self.msg, &self.sig);
    }

    fn encrypt(&self) {
        let _ = self.public.encrypt(&self.plain);
    }

    fn decrypt(&self) {
        let _ = self.key.decrypt(&self.ct);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The crypto ceiling of this machine, with the server's own code.
pub fn crypto(secs: f64) -> Crypto {
    let ops = Ops::get();
    let cores = cores();
    // Public-key operations are ~15x faster: half the time still counts
    // hundreds of them.
    let fast = secs / 2.0;
    let mut c = Crypto {
        cores,
        sign_per_s_1: rate(1, secs, || ops.sign()),
        verify_per_s_1: rate(1, fast, || ops.verify()),
        encrypt_per_s_1: rate(1, fast, || ops.encrypt()),
        decrypt_per_s_1: rate(1, secs, || ops.decrypt()),
        sign_per_s_all: rate(cores, secs, || ops.sign()),
        verify_per_s_all: rate(cores, fast, || ops.verify()),
        encrypt_per_s_all: rate(cores, fast, || ops.encrypt()),
        decrypt_per_s_all: rate(cores, secs, || ops.decrypt()),
        sign_ms: 0.0,
    };
    c.sign_ms = 1000.0 / c.sign_per_s_1.max(f64::MIN_POSITIVE);
    c
}

/// The machine's speed beside one timed part: signatures per second on one
/// core and on all, and decryptions on all, sampled just before the part and
/// just after it, averaged. This VM's speed drifts within a run (one
/// signature took 12 to 24 ms across runs, and the second core's share
/// varies), so a part's ratios use the speed of its own moment, not the
/// ceiling measured a minute earlier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Beside {
    pub sign_per_s_1: f64,
    pub sign_per_s_all: f64,
    pub decrypt_per_s_all: f64,
    /// One signature, milliseconds (1 / sign_per_s_1).
    pub sign_ms: f64,
}

impl Beside {
    /// Sample signatures/s on all cores, and on one core and decryptions/s on
    /// all cores if asked (0 if not), `secs` each, off the event loop.
    async fn sample(secs: f64, one_core: bool, decrypt: bool) -> Beside {
        actix_web::rt::task::spawn_blocking(move || {
            let ops = Ops::get();
            let mut b = Beside {
                sign_per_s_all: rate(cores(), secs, || ops.sign()),
                ..Beside::default()
            };
            if one_core {
                b.sign_per_s_1 = rate(1, secs, || ops.sign());
                b.sign_ms = 1000.0 / b.sign_per_s_1.max(f64::MIN_POSITIVE);
            }
            if decrypt {
                b.decrypt_per_s_all = rate(cores(), secs, || ops.decrypt());
            }
            b
        })
        .await
        .unwrap_or_default()
    }

    /// The mean of a sample before and one after (of what each measured).
    fn mean(before: &Beside, after: &Beside) -> Beside {
        let avg = |a: f64, b: f64| {
            if a > 0.0 && b > 0.0 {
                (a + b) / 2.0
            } else {
                a.max(b)
            }
        };
        let sign_per_s_1 = avg(before.sign_per_s_1, after.sign_per_s_1);
        Beside {
            sign_per_s_1,
            sign_per_s_all: avg(before.sign_per_s_all, after.sign_per_s_all),
            decrypt_per_s_all: avg(before.decrypt_per_s_all, after.decrypt_per_s_all),
            sign_ms: if sign_per_s_1 > 0.0 {
                1000.0 / sign_per_s_1
            } else {
                0.0
            },
        }
    }
}

/// Servers for the bench: fast heartbeats, and the per-user frame limit
/// raised so that servers, not the limiter, set the pace.
fn bench_settings() -> Settings {
    Settings {
        user_rate: 100_000.0,
        user_burst: 100_000.0,
        max_backlog: 100_000,
        heartbeat_interval: Duration::from_secs(2),
        peer_timeout: Duration::from_secs(10),
        ..Settings::default()
    }
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

async fn mesh(n: usize) -> Result<Vec<RunningServer>, String> {
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

/// The servers a part runs against: started in process, or given with
/// `--target` (then left running).
struct Servers {
    addrs: Vec<SocketAddr>,
    owned: Vec<RunningServer>,
}

impl Servers {
    /// `n` linked servers.
    async fn get(cfg: &BenchConfig, n: usize) -> Result<Servers, String> {
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
    async fn known(&self, i: usize) -> Result<usize, String> {
        match self.owned.get(i) {
            Some(s) => Ok(users_known(&s.status().await)),
            None => Ok(users_known(&http_status(self.addrs[i]).await?)),
        }
    }

    /// Wait until server `i` knows at least `want` users.
    async fn converge(&self, i: usize, want: usize) -> Result<(), String> {
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
    async fn stop(self) {
        for s in self.owned {
            s.kill().await;
        }
    }
}

/// GET `path` of a server's HTTP endpoint.
async fn http_get(addr: SocketAddr, path: &str) -> Result<Bytes, String> {
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
async fn http_status(addr: SocketAddr) -> Result<Value, String> {
    let body = http_get(addr, "/status").await?;
    serde_json::from_slice(&body).map_err(|e| format!("{addr}/status: {e}"))
}

fn links_up(status: &Value) -> usize {
    status["servers"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["link"] == "up").count())
}

fn users_known(status: &Value) -> usize {
    status["local_users"].as_array().map_or(0, Vec::len)
        + status["remote_users"].as_array().map_or(0, Vec::len)
}

/// A delivery a bench user saw: which message (hash of its ciphertext) and when.
struct Seen {
    id: [u8; 32],
    at: Instant,
}

/// A protocol-level bench user: a writer channel and a stream of deliveries.
struct BenchUser {
    id: UserId,
    key: Arc<PrivateKey>,
    tx: mpsc::UnboundedSender<String>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Text frames received so far.
    frames: Arc<std::sync::atomic::AtomicU64>,
}

impl BenchUser {
    /// Connect, say hello, wait for the server's ACK.
    async fn join(addr: SocketAddr, key: usize) -> Result<BenchUser, String> {
        let key = Arc::new(fixtures::key(key));
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
        actix_web::rt::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink
                    .send(awc::ws::Message::Text(text.into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel::<()>();
        let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&frames);
        actix_web::rt::spawn(async move {
            let mut ack = Some(ack_tx);
            while let Some(Ok(frame)) = stream.next().await {
                let awc::ws::Frame::Text(bytes) = frame else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Once attached, only deliveries matter: presence news (every
                // join is news to every user) is counted, not parsed. Our
                // server writes `type` first.
                let head = &bytes[..bytes.len().min(64)];
                if ack.is_none() && !contains(head, b"\"USER_DELIVER\"") {
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
        let hello = Envelope::new(
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
        );
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
        })
    }
}

/// Whether `needle` occurs in `haystack`.
/// `n` users joining 50 at a time, concurrently (each join waits for its
/// ACK): user `i` joins the server and with the fixture key `at(i)` gives.
async fn join_many(
    n: usize,
    at: impl Fn(usize) -> (SocketAddr, usize),
) -> Result<Vec<BenchUser>, String> {
    let mut users = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        let joins = batch.iter().map(|i| {
            let (addr, key) = at(*i);
            BenchUser::join(addr, key)
        });
        for r in futures_util::future::join_all(joins).await {
            users.push(r?);
        }
    }
    Ok(users)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A signed DM from `from` to `to` and the id its delivery will carry.
fn dm(
    from: &BenchUser,
    to: &UserId,
    to_key: &socp_protocol::PublicKey,
    n: usize,
) -> Option<(String, [u8; 32])> {
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&to_key.encrypt(format!("bench {n}").as_bytes()).ok()?);
    let sig = content::sign_dm(&from.key, &ct, from.id.as_str(), to.as_str(), ts).ok()?;
    let id = sha256(ct.as_str().as_bytes());
    let env = Envelope::new(
        &from.id,
        To::from(to),
        ts,
        &MsgDirect {
            ciphertext: ct,
            sender_pub: from.key.public_key().clone(),
            content_sig: sig,
        },
    );
    Some((env.to_json(), id))
}

/// Sign many frames on every core.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// DM relay figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DmRelay {
    pub pairs: usize,
    pub seconds: f64,
    pub sent: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub dms_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    /// Signatures the mesh makes per DM (SERVER_DELIVER + USER_DELIVER).
    pub signatures_per_dm: f64,
    /// All-core signatures/s ÷ signatures per DM.
    pub ceiling_dms_per_s: f64,
    pub ratio_to_ceiling: f64,
    /// p50 latency in signature times.
    pub p50_in_signatures: f64,
    /// One DM at a time (no queueing): p50 latency, ms.
    pub light_latency_ms_p50: f64,
    /// The light-load p50 in signature times (the goal is ≤ 3).
    pub light_p50_in_signatures: f64,
    /// The speed these ratios use: all cores sampled before and after the
    /// loaded phase, one core after it.
    pub beside: Beside,
}

async fn dm_relay(cfg: &BenchConfig, crypto: &Crypto) -> Result<DmRelay, String> {
    let servers = Servers::get(cfg, 2).await?;
    let (a, b) = (servers.addrs[0], servers.addrs[1]);
    let base = servers.known(0).await?;
    let senders = join_many(cfg.pairs, |i| (a, 10 + (2 * i) % 20)).await?;
    let mut receivers = join_many(cfg.pairs, |i| (b, 11 + (2 * i) % 20)).await?;
    // Wait until server a knows every receiver.
    servers.converge(0, base + 2 * cfg.pairs).await?;
    // Pre-sign enough DMs for the run at up to 1.25x the ceiling (signing
    // them is the client's work, not measured, but it is time in the run).
    let per_pair = ((crypto.sign_per_s_all / 2.0 * 1.25 * cfg.dm_secs) as usize / cfg.pairs.max(1))
        .max(cfg.window * 2)
        + cfg.window;
    let mut queues: Vec<Vec<(String, [u8; 32])>> = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let r = &receivers[i];
        let rkey = r.key.public_key().clone();
        let items: Vec<usize> = (0..per_pair).collect();
        let frames = parallel_map(&items, |n| dm(s, &r.id, &rkey, *n));
        queues.push(frames.into_iter().flatten().collect());
    }
    let before = Beside::sample(cfg.crypto_secs / 2.0, false, false).await;
    // Closed loop: each pair keeps `window` DMs in flight.
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(cfg.dm_secs);
    let mut sent_at: HashMap<[u8; 32], Instant> = HashMap::new();
    let mut counts: HashMap<[u8; 32], usize> = HashMap::new();
    let mut latencies = Vec::new();
    let mut next = vec![0usize; cfg.pairs];
    let mut in_flight = vec![0usize; cfg.pairs];
    let mut sent = 0;
    let send = |p: usize,
                next: &mut Vec<usize>,
                in_flight: &mut Vec<usize>,
                sent_at: &mut HashMap<[u8; 32], Instant>,
                sent: &mut usize| {
        if let Some((text, id)) = queues[p].get(next[p]) {
            next[p] += 1;
            in_flight[p] += 1;
            sent_at.insert(*id, Instant::now());
            *sent += 1;
            let _ = senders[p].tx.send(text.clone());
        }
    };
    for p in 0..cfg.pairs {
        for _ in 0..cfg.window {
            send(p, &mut next, &mut in_flight, &mut sent_at, &mut sent);
        }
    }
    let mut delivered = 0;
    let mut measured_end = end;
    loop {
        let now = Instant::now();
        let draining = now >= end;
        let wait = if draining {
            Duration::from_secs(5)
        } else {
            end - now
        };
        let mut progressed = false;
        for (p, r) in receivers.iter_mut().enumerate() {
            while let Ok(seen) = r.seen.try_recv() {
                progressed = true;
                let c = counts.entry(seen.id).or_default();
                *c += 1;
                if *c == 1 {
                    if let Some(t) = sent_at.get(&seen.id) {
                        if *t < end {
                            latencies.push(seen.at.duration_since(*t).as_secs_f64() * 1000.0);
                            if seen.at <= end {
                                delivered += 1;
                            }
                        }
                    }
                    in_flight[p] = in_flight[p].saturating_sub(1);
                    if Instant::now() < end {
                        send(p, &mut next, &mut in_flight, &mut sent_at, &mut sent);
                    }
                }
            }
        }
        if draining && in_flight.iter().all(|n| *n == 0) {
            break;
        }
        if !progressed {
            let sleep = wait.min(Duration::from_millis(2));
            if draining && Instant::now() > end + Duration::from_secs(15) {
                break;
            }
            tokio::time::sleep(sleep).await;
        }
        if !draining {
            measured_end = end;
        }
    }
    let after = Beside::sample(cfg.crypto_secs / 2.0, true, false).await;
    let beside = Beside::mean(&before, &after);
    // Light load: one DM at a time from the first pair.
    const LIGHT: usize = 20;
    let rkey = receivers[0].key.public_key().clone();
    let items: Vec<usize> = (0..LIGHT).map(|i| 1_000_000 + i).collect();
    let light_frames: Vec<(String, [u8; 32])> =
        parallel_map(&items, |n| dm(&senders[0], &receivers[0].id, &rkey, *n))
            .into_iter()
            .flatten()
            .collect();
    let mut light = Vec::new();
    for (text, id) in light_frames {
        let t = Instant::now();
        let _ = senders[0].tx.send(text);
        sent += 1;
        let deadline = t + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, receivers[0].seen.recv()).await {
                Ok(Some(seen)) => {
                    *counts.entry(seen.id).or_default() += 1;
                    if seen.id == id {
                        light.push(seen.at.duration_since(t).as_secs_f64() * 1000.0);
                        break;
                    }
                }
                _ => break,
            }
        }
    }
    light.sort_by(|a, b| a.total_cmp(b));
    let total_seen: usize = counts.values().filter(|c| **c >= 1).count();
    let duplicated: usize = counts.values().map(|c| c.saturating_sub(1)).sum();
    let lost = sent.saturating_sub(total_seen);
    latencies.sort_by(|a, b| a.total_cmp(b));
    let secs = measured_end.duration_since(started).as_secs_f64();
    let dms_per_s = delivered as f64 / secs;
    let ceiling = beside.sign_per_s_all / 2.0;
    servers.stop().await;
    Ok(DmRelay {
        pairs: cfg.pairs,
        seconds: secs,
        sent,
        delivered: total_seen,
        lost,
        duplicated,
        dms_per_s,
        latency_ms_p50: percentile(&latencies, 0.50),
        latency_ms_p95: percentile(&latencies, 0.95),
        latency_ms_p99: percentile(&latencies, 0.99),
        signatures_per_dm: 2.0,
        ceiling_dms_per_s: ceiling,
        ratio_to_ceiling: dms_per_s / ceiling,
        p50_in_signatures: percentile(&latencies, 0.50) / beside.sign_ms,
        light_latency_ms_p50: percentile(&light, 0.50),
        light_p50_in_signatures: percentile(&light, 0.50) / beside.sign_ms,
        beside,
    })
}

/// Fan-out figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fanout {
    pub members: usize,
    pub servers: usize,
    pub delivered: usize,
    pub duplicated: usize,
    pub seconds_to_last: f64,
    /// members × one signature ÷ cores (the goal is ≤ 2× this).
    pub bound_seconds: f64,
    pub ratio_to_bound: f64,
    /// members ÷ signatures per second measured on all cores at once (one
    /// signature takes longer when every core signs).
    pub all_cores_bound_seconds: f64,
    pub ratio_to_all_cores_bound: f64,
    /// The speed these ratios use, sampled before and after.
    pub beside: Beside,
}

async fn fanout(cfg: &BenchConfig) -> Result<Fanout, String> {
    let servers = Servers::get(cfg, 3).await?;
    let base = servers.known(0).await?;
    let sender = BenchUser::join(servers.addrs[0], 10).await?;
    let mut members = join_many(cfg.members, |i| (servers.addrs[i % 3], 11 + i % 20)).await?;
    servers.converge(0, base + cfg.members + 1).await?;
    let targets: Vec<(UserId, socp_protocol::PublicKey)> = members
        .iter()
        .map(|m| (m.id.clone(), m.key.public_key().clone()))
        .collect();
    let frames: Vec<Option<String>> = parallel_map(&targets, |(id, key)| {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&key.encrypt(b"to everyone").ok()?);
        let sig = content::sign_public(&sender.key, &ct, sender.id.as_str(), ts).ok()?;
        Some(
            Envelope::new(
                &sender.id,
                To::from(id),
                ts,
                &MsgPublicChannel {
                    ciphertext: ct,
                    sender_pub: sender.key.public_key().clone(),
                    content_sig: sig,
                    group_id: "public".into(),
                    public_version: None,
                },
            )
            .to_json(),
        )
    });
    let before = Beside::sample(cfg.crypto_secs / 2.0, true, false).await;
    let started = Instant::now();
    for f in frames.into_iter().flatten() {
        let _ = sender.tx.send(f);
    }
    let mut delivered = 0;
    let mut duplicated = 0;
    let mut last = started;
    let deadline = Instant::now() + Duration::from_secs(300);
    for m in members.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(seen)) = tokio::time::timeout(left, m.seen.recv()).await {
            delivered += 1;
            last = last.max(seen.at);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in members.iter_mut() {
        while m.seen.try_recv().is_ok() {
            duplicated += 1;
        }
    }
    let secs = last.duration_since(started).as_secs_f64();
    let after = Beside::sample(cfg.crypto_secs / 2.0, true, false).await;
    let beside = Beside::mean(&before, &after);
    let bound = cfg.members as f64 * (beside.sign_ms / 1000.0) / cores() as f64;
    let all_cores = cfg.members as f64 / beside.sign_per_s_all.max(f64::MIN_POSITIVE);
    servers.stop().await;
    Ok(Fanout {
        members: cfg.members,
        servers: 3,
        delivered,
        duplicated,
        seconds_to_last: secs,
        bound_seconds: bound,
        ratio_to_bound: secs / bound.max(f64::MIN_POSITIVE),
        all_cores_bound_seconds: all_cores,
        ratio_to_all_cores_bound: secs / all_cores.max(f64::MIN_POSITIVE),
        beside,
    })
}

/// File transfer figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileTransfer {
    pub bytes: usize,
    pub chunks: usize,
    pub delivered_chunks: usize,
    pub seconds: f64,
    pub bytes_per_s: f64,
    /// Bytes/s if the receiver's decryption on all cores were the only cost.
    pub decrypt_ceiling_bytes_per_s: f64,
    pub ratio_to_decrypt_ceiling: f64,
    pub chunks_per_s: f64,
    /// Chunks/s if the servers' two signatures per chunk on all cores were
    /// the only cost.
    pub sign_ceiling_chunks_per_s: f64,
    pub ratio_to_sign_ceiling: f64,
    /// The speed these ratios use, sampled before and after.
    pub beside: Beside,
}

async fn file(cfg: &BenchConfig, crypto: &Crypto) -> Result<FileTransfer, String> {
    let servers = Servers::get(cfg, 2).await?;
    let base = servers.known(0).await?;
    let sender = BenchUser::join(servers.addrs[0], 10).await?;
    let mut receiver = BenchUser::join(servers.addrs[1], 11).await?;
    servers.converge(0, base + 2).await?;
    let data: Vec<u8> = (0..cfg.file_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let file_id = FileId::random();
    let rkey = receiver.key.public_key().clone();
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(MAX_OAEP_PLAINTEXT)
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    let frames: Vec<Option<String>> = parallel_map(&chunks, |(index, plain)| {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&rkey.encrypt(plain).ok()?);
        let sig = content::sign_dm(
            &sender.key,
            &ct,
            sender.id.as_str(),
            receiver.id.as_str(),
            ts,
        )
        .ok()?;
        Some(
            Envelope::new(
                &sender.id,
                To::from(&receiver.id),
                ts,
                &FileChunk {
                    file_id: file_id.clone(),
                    index: *index,
                    ciphertext: ct,
                    sender_pub: Some(sender.key.public_key().clone()),
                    content_sig: Some(sig),
                },
            )
            .to_json(),
        )
    });
    let start_frame = Envelope::new(
        &sender.id,
        To::from(&receiver.id),
        now_ms(),
        &FileStart {
            file_id: file_id.clone(),
            name: "bench.bin".into(),
            size: data.len() as u64,
            sha256: socp_protocol::crypto::sha256_hex(&data),
            mode: FileMode::Dm,
        },
    )
    .to_json();
    let end_frame = Envelope::new(
        &sender.id,
        To::from(&receiver.id),
        now_ms(),
        &FileEnd { file_id },
    )
    .to_json();
    let n = chunks.len();
    let before = Beside::sample(cfg.crypto_secs / 2.0, false, true).await;
    let started = Instant::now();
    let _ = sender.tx.send(start_frame);
    for f in frames.into_iter().flatten() {
        let _ = sender.tx.send(f);
    }
    let _ = sender.tx.send(end_frame);
    // FILE_START and FILE_END arrive too (with an empty ciphertext id).
    let mut got = 0;
    let mut last = started;
    // Generous: two signatures per chunk on this machine, three times over.
    let budget = Duration::from_secs_f64(30.0 + n as f64 * 6.0 * crypto.sign_ms / 1000.0);
    let deadline = Instant::now() + budget;
    while got < n + 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver.seen.recv()).await {
            Ok(Some(seen)) => {
                got += 1;
                last = seen.at;
            }
            _ => break,
        }
    }
    if got < n + 2 {
        servers.stop().await;
        return Err(format!(
            "only {} of {n} chunks arrived within {budget:?}",
            got.saturating_sub(1)
        ));
    }
    let secs = last.duration_since(started).as_secs_f64();
    let after = Beside::sample(cfg.crypto_secs / 2.0, false, true).await;
    let beside = Beside::mean(&before, &after);
    // The receiver would decrypt every chunk: what that alone allows.
    let decrypt_ceiling = beside.decrypt_per_s_all * MAX_OAEP_PLAINTEXT as f64;
    let bps = data.len() as f64 / secs.max(f64::MIN_POSITIVE);
    // The servers sign every chunk twice (SERVER_DELIVER, USER_DELIVER).
    let chunks_per_s = n as f64 / secs.max(f64::MIN_POSITIVE);
    let sign_ceiling = beside.sign_per_s_all / 2.0;
    servers.stop().await;
    Ok(FileTransfer {
        bytes: data.len(),
        chunks: n,
        delivered_chunks: got.saturating_sub(2),
        seconds: secs,
        bytes_per_s: bps,
        decrypt_ceiling_bytes_per_s: decrypt_ceiling,
        ratio_to_decrypt_ceiling: bps / decrypt_ceiling,
        chunks_per_s,
        sign_ceiling_chunks_per_s: sign_ceiling,
        ratio_to_sign_ceiling: chunks_per_s / sign_ceiling.max(f64::MIN_POSITIVE),
        beside,
    })
}

/// Idle capacity figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    pub users: usize,
    pub attached: usize,
    pub seconds_to_attach: f64,
    /// Seconds from the last attach until no user received anything more.
    pub seconds_to_settle: f64,
    /// Frames the users received in all (presence news is quadratic).
    pub frames_received: u64,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub kib_per_connection: f64,
    /// RSS for 10,000 users at this rate, MiB (the goal is ≤ 200).
    pub projected_mib_for_10000: f64,
}

async fn idle(cfg: &BenchConfig) -> Result<Idle, String> {
    if let Some(addr) = cfg.targets.first() {
        return idle_on(cfg, *addr).await;
    }
    let bin = cfg
        .server_bin
        .clone()
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("socp-server")))
        })
        .ok_or("cannot find socp-server")?;
    let dir = std::env::temp_dir().join(format!("socp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let key_path = dir.join("server.pem");
    std::fs::write(&key_path, fixtures::key_pem(0)).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut child = std::process::Command::new(&bin)
        .args(["--port", &port.to_string(), "--db"])
        .arg(dir.join("idle.db"))
        .arg("--first-key")
        .arg(&key_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("the server did not start".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        idle_on(cfg, addr).await
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One figure of a server's `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> Result<f64, String> {
    let body = http_get(addr, "/metrics").await?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{addr}/metrics has no {name}"))
}

/// A server's resident memory, KiB, from its `/metrics`.
async fn rss_kib(addr: SocketAddr) -> Result<u64, String> {
    Ok((metric(addr, "process_resident_memory_bytes").await? / 1024.0) as u64)
}

/// What an idle server keeps, KiB: RSS just after the server next hands
/// freed heap pages back (`socp_heap_trims_total`), or, from a server that
/// does not, the lowest RSS once it has not fallen by more than 1% for 6 s
/// (at most 20 s).
async fn idle_rss_kib(addr: SocketAddr) -> Result<u64, String> {
    if let Ok(trims) = metric(addr, "socp_heap_trims_total").await {
        // The server trims every 5 s.
        let deadline = Instant::now() + Duration::from_secs(7);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if metric(addr, "socp_heap_trims_total").await? > trims {
                return rss_kib(addr).await;
            }
        }
    }
    let mut after = rss_kib(addr).await?;
    let mut steady = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(addr).await?;
        steady = if now + after / 100 < after {
            0
        } else {
            steady + 1
        };
        after = after.min(now);
        if steady == 6 {
            break;
        }
    }
    Ok(after)
}

/// Attach `cfg.idle_users` users to the server at `addr`; its RSS before
/// and once idle.
async fn idle_on(cfg: &BenchConfig, addr: SocketAddr) -> Result<Idle, String> {
    let before = rss_kib(addr).await?;
    let started = Instant::now();
    let users = join_many(cfg.idle_users, |i| (addr, 10 + i % 20)).await?;
    let secs = started.elapsed().as_secs_f64();
    // Idle means the server has sent everything the joins caused (each join
    // is news to every user): wait until no user has received a frame for a
    // second.
    let received = || {
        users
            .iter()
            .map(|u| u.frames.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    let settling = Instant::now();
    let mut last = received();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = received();
        if now == last {
            break;
        }
        last = now;
    }
    let settle = settling.elapsed().as_secs_f64() - 1.0;
    let after = idle_rss_kib(addr).await?;
    let per = (after.saturating_sub(before)) as f64 / cfg.idle_users.max(1) as f64;
    Ok(Idle {
        users: cfg.idle_users,
        attached: users.len(),
        seconds_to_attach: secs,
        seconds_to_settle: settle.max(0.0),
        frames_received: last,
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        kib_per_connection: per,
        projected_mib_for_10000: (before as f64 + per * 10_000.0) / 1024.0,
    })
}

/// Mesh formation figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshFormation {
    pub servers: usize,
    pub users: usize,
    pub seconds_to_mesh: f64,
    pub seconds_to_presence: f64,
}

async fn mesh_formation(cfg: &BenchConfig) -> Result<MeshFormation, String> {
    let started = Instant::now();
    let servers = mesh(cfg.mesh_servers).await?;
    let meshed = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut users = Vec::new();
    for i in 0..cfg.mesh_users {
        users.push(BenchUser::join(servers[i % servers.len()].addr, 10 + i % 20).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for s in &servers {
        while users_known(&s.status().await) < cfg.mesh_users {
            if Instant::now() > deadline {
                return Err("presence did not converge within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let presence = t.elapsed().as_secs_f64();
    drop(users);
    for s in servers {
        s.kill().await;
    }
    Ok(MeshFormation {
        servers: cfg.mesh_servers,
        users: cfg.mesh_users,
        seconds_to_mesh: meshed,
        seconds_to_presence: presence,
    })
}

/// Everything measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub machine: Value,
    pub crypto: Crypto,
    pub dm_relay: Option<DmRelay>,
    pub fanout: Option<Fanout>,
    pub file: Option<FileTransfer>,
    pub idle: Option<Idle>,
    pub mesh: Option<MeshFormation>,
    /// Wall-clock seconds of each part (set-up and the bench's own signing
    /// included), in run order.
    pub part_seconds: Vec<(String, f64)>,
    pub errors: Vec<String>,
}

fn wanted(cfg: &BenchConfig, part: &str) -> bool {
    cfg.only.is_empty() || cfg.only.iter().any(|p| p == part)
}

/// Run the benchmark (inside an actix System).
pub async fn run(cfg: BenchConfig) -> Report {
    let mut report = Report {
        machine: json!({
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        }),
        ..Report::default()
    };
    let secs = cfg.crypto_secs;
    let t = Instant::now();
    report.crypto = actix_web::rt::task::spawn_blocking(move || crypto(secs))
        .await
        .unwrap_or_default();
    report
        .part_seconds
        .push(("crypto".into(), t.elapsed().as_secs_f64()));
    let c = report.crypto.clone();
    macro_rules! part {
        ($name:literal, $field:ident, $fut:expr) => {
            if wanted(&cfg, $name) {
                let t = Instant::now();
                match $fut.await {
                    Ok(v) => report.$field = Some(v),
                    Err(e) => report.errors.push(format!("{}: {e}", $name)),
                }
                report
                    .part_seconds
                    .push(($name.into(), t.elapsed().as_secs_f64()));
            }
        };
    }
    part!("dm", dm_relay, dm_relay(&cfg, &c));
    part!("fanout", fanout, fanout(&cfg));
    part!("file", file, file(&cfg, &c));
    part!("idle", idle, idle(&cfg));
    part!("mesh", mesh, mesh_formation(&cfg));
    report
}

/// The speed a part's ratios use.
fn beside_line(b: &Beside) -> String {
    let mut parts = vec![format!("{:.1} signatures/s on all cores", b.sign_per_s_all)];
    if b.sign_per_s_1 > 0.0 {
        parts.push(format!("one signature {:.2} ms", b.sign_ms));
    }
    if b.decrypt_per_s_all > 0.0 {
        parts.push(format!(
            "{:.1} decryptions/s on all cores",
            b.decrypt_per_s_all
        ));
    }
    format!("  speed beside this part: {}\n\n", parts.join(", "))
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.crypto;
    s += &format!("machine: {}\n\n", r.machine);
    s += "crypto ceiling (same code as the server)      1 core     all cores\n";
    s += &format!(
        "  PSS-SHA256 sign/s                      {:>10.1}  {:>12.1}\n",
        c.sign_per_s_1, c.sign_per_s_all
    );
    s += &format!(
        "  PSS-SHA256 verify/s                    {:>10.1}  {:>12.1}\n",
        c.verify_per_s_1, c.verify_per_s_all
    );
    s += &format!(
        "  OAEP-SHA256 encrypt/s                  {:>10.1}  {:>12.1}\n",
        c.encrypt_per_s_1, c.encrypt_per_s_all
    );
    s += &format!(
        "  OAEP-SHA256 decrypt/s                  {:>10.1}  {:>12.1}\n",
        c.decrypt_per_s_1, c.decrypt_per_s_all
    );
    s += &format!("  one signature: {:.2} ms\n\n", c.sign_ms);
    if let Some(d) = &r.dm_relay {
        s += &format!(
            "DM relay, 2 servers, {} pairs, {:.1} s\n",
            d.pairs, d.seconds
        );
        s += &format!(
            "  delivered {} of {} sent; lost {}, duplicated {}\n",
            d.delivered, d.sent, d.lost, d.duplicated
        );
        s += &format!(
            "  {:.1} DMs/s; ceiling {:.1} DMs/s ({} signatures per DM); ratio {:.2}\n",
            d.dms_per_s, d.ceiling_dms_per_s, d.signatures_per_dm, d.ratio_to_ceiling
        );
        s += &format!(
            "  latency under load: p50 {:.1} ms ({:.2} signature times), p95 {:.1} ms, p99 {:.1} ms\n",
            d.latency_ms_p50, d.p50_in_signatures, d.latency_ms_p95, d.latency_ms_p99
        );
        s += &format!(
            "  latency one DM at a time: p50 {:.1} ms ({:.2} signature times; goal <= 3)\n",
            d.light_latency_ms_p50, d.light_p50_in_signatures
        );
        s += &beside_line(&d.beside);
    }
    if let Some(f) = &r.fanout {
        s += &format!(
            "public fan-out: {} members on {} servers\n",
            f.members, f.servers
        );
        s += &format!("  delivered {} (duplicated {}); last after {:.2} s; bound {:.2} s; ratio {:.2} (goal <= 2); {:.2} x the time all cores take for {} signatures ({:.2} s)\n", f.delivered, f.duplicated, f.seconds_to_last, f.bound_seconds, f.ratio_to_bound, f.ratio_to_all_cores_bound, f.members, f.all_cores_bound_seconds);
        s += &beside_line(&f.beside);
    }
    if let Some(f) = &r.file {
        s += &format!(
            "file transfer across servers: {} bytes in {} chunks\n",
            f.bytes, f.chunks
        );
        s += &format!(
            "  {} chunks delivered in {:.2} s: {:.0} B/s; decrypt ceiling {:.0} B/s; ratio {:.2}\n",
            f.delivered_chunks,
            f.seconds,
            f.bytes_per_s,
            f.decrypt_ceiling_bytes_per_s,
            f.ratio_to_decrypt_ceiling
        );
        s += &format!("  {:.1} chunks/s; servers' signing ceiling {:.1} chunks/s (2 signatures per chunk); ratio {:.2}\n", f.chunks_per_s, f.sign_ceiling_chunks_per_s, f.ratio_to_sign_ceiling);
        s += &beside_line(&f.beside);
    }
    if let Some(i) = &r.idle {
        s += &format!("idle capacity: {} users on one server process\n", i.users);
        s += &format!("  attached {} in {:.2} s (settled {:.2} s later, {} frames received); RSS {} -> {} KiB: {:.1} KiB per connection; 10,000 users ≈ {:.0} MiB by linear projection, an upper bound: bounded caches count per connection here (goal <= 200; measure with -c 10000)\n\n", i.attached, i.seconds_to_attach, i.seconds_to_settle, i.frames_received, i.server_rss_before_kib, i.server_rss_after_kib, i.kib_per_connection, i.projected_mib_for_10000);
    }
    if let Some(m) = &r.mesh {
        s += &format!("mesh formation: {} servers, {} users\n", m.servers, m.users);
        s += &format!("  mesh formed in {:.2} s; every server knew every user {:.2} s after the users joined\n\n", m.seconds_to_mesh, m.seconds_to_presence);
    }
    let parts: Vec<String> = r
        .part_seconds
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.0} s"))
        .collect();
    let total: f64 = r.part_seconds.iter().map(|(_, secs)| secs).sum();
    s += &format!("wall clock: {total:.0} s ({})\n", parts.join(", "));
    for e in &r.errors {
        s += &format!("error: {e}\n");
    }
    s
}
