//! Part 5, idle capacity: C users attached to one server process (a child
//! `socp-server`, so its memory is its own, or the first `--target`), its
//! resident memory per connection read from `/metrics`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::fixtures;

use super::harness::{http_get, join_many};
use super::BenchConfig;

/// Idle capacity figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// Users asked for.
    pub users: usize,
    /// Users attached (each acknowledged by the server).
    pub attached: usize,
    /// Seconds until every user was attached.
    pub seconds_to_attach: f64,
    /// Seconds from the last attach until no user received anything more.
    pub seconds_to_settle: f64,
    /// Frames the users received in all (presence news is quadratic;
    /// batched [ext] for clients that read batches, as the bench's do).
    pub frames_received: u64,
    /// Bytes of those frames, MB (quadratic either way: every user learns
    /// every other user's signed advert).
    pub mb_received: f64,
    /// The server's resident memory before the users, KiB.
    pub server_rss_before_kib: u64,
    /// The server's resident memory once idle with them, KiB.
    pub server_rss_after_kib: u64,
    /// Resident memory each attached user adds, KiB.
    pub kib_per_connection: f64,
    /// RSS for 10,000 users at this rate, MiB (the goal is ≤ 200).
    pub projected_mib_for_10000: f64,
}

pub(crate) async fn idle(cfg: &BenchConfig) -> Result<Idle, String> {
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
    let bytes: u64 = users
        .iter()
        .map(|u| u.bytes.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let after = idle_rss_kib(addr).await?;
    let per = (after.saturating_sub(before)) as f64 / cfg.idle_users.max(1) as f64;
    Ok(Idle {
        users: cfg.idle_users,
        attached: users.len(),
        seconds_to_attach: secs,
        seconds_to_settle: settle.max(0.0),
        frames_received: last,
        mb_received: bytes as f64 / 1e6,
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        kib_per_connection: per,
        projected_mib_for_10000: (before as f64 + per * 10_000.0) / 1024.0,
    })
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

/// A server's resident memory, KiB, from its `/metrics`.
async fn rss_kib(addr: SocketAddr) -> Result<u64, String> {
    Ok((metric(addr, "process_resident_memory_bytes").await? / 1024.0) as u64)
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
