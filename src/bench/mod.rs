//! `socp-bench`: measures how close a socp mesh runs to the crypto limit of
//! the machine, with every figure and ratio measured side by side in one run.
//!
//! 1. Crypto ceiling: PSS sign/verify and OAEP encrypt/decrypt per second, one
//!    core and all cores, with the same code the server uses.
//! 2. DM relay across a 2-server mesh: K sender/receiver pairs, closed loop
//!    (W in flight per pair) for T seconds: DMs/s, latency, lost, duplicated.
//! 3. Public channel fan-out: one message to N members on 3 servers.
//! 4. File transfer: a file across servers, end to end; 4b. the same in fast
//!    mode [ext] (AES-GCM chunks, paced as socp clients send them).
//! 5. Idle capacity: C attached users on one server process: RSS per connection.
//! 6. Mesh formation: S servers joining one introducer, U users.
//!
//! Servers run in-process (1-4, 6) or as a child `socp-server` process (5, so
//! its memory is its own). Keys come from the fixture pool: key generation is
//! never measured. Client-side signing is done before each timed phase. The
//! ratios of parts 2-4 use the machine's speed sampled just before and just
//! after the part ([`Beside`]): this VM's speed drifts within a run.
//!
//! - `ceiling`: part 1, and the speed sampled beside each later part;
//! - `harness`: servers (started or given), protocol-level bench users,
//!   signing on every core;
//! - `dm_relay`, `fanout`, `file`, `fast_file`, `idle`, `mesh`: parts 2 to 6;
//! - `report`: the table for people (the JSON is the [`Report`] itself).

mod ceiling;
mod dm_relay;
mod fanout;
mod fast_file;
mod file;
mod files_common;
mod harness;
mod idle;
mod mesh;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

pub use ceiling::{Beside, Crypto};
pub use dm_relay::DmRelay;
pub use fanout::Fanout;
pub use fast_file::FastFileTransfer;
pub use file::FileTransfer;
pub use idle::Idle;
pub use mesh::MeshFormation;
pub(crate) use report::table;

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
    /// Fast-mode file size in bytes.
    pub fast_file_bytes: usize,
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
            fast_file_bytes: 100 * 1024 * 1024,
            idle_users: 500,
            mesh_servers: 4,
            mesh_users: 40,
            only: Vec::new(),
            server_bin: None,
            targets: Vec::new(),
        }
    }
}

/// Everything measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Cores, OS, architecture and build profile.
    pub machine: Value,
    /// Part 1: the crypto ceiling of the backend in use (the servers').
    pub crypto: Crypto,
    /// Part 1 for every backend built in, the fastest first (side by side;
    /// the one in use is among them).
    pub crypto_backends: Vec<Crypto>,
    /// Signatures/s on all cores of the backend in use ÷ of the fastest:
    /// every ratio below, times this, is against the fastest backend.
    pub in_use_vs_fastest: f64,
    /// Part 2: DM relay (`None`: not run, or failed).
    pub dm_relay: Option<DmRelay>,
    /// Part 3: public channel fan-out.
    pub fanout: Option<Fanout>,
    /// Part 4: file transfer.
    pub file: Option<FileTransfer>,
    /// Part 4b: fast-mode file transfer [ext].
    pub fast_file: Option<FastFileTransfer>,
    /// Part 5: idle capacity.
    pub idle: Option<Idle>,
    /// Part 6: mesh formation.
    pub mesh: Option<MeshFormation>,
    /// Wall-clock seconds of each part (set-up and the bench's own signing
    /// included), in run order.
    pub part_seconds: Vec<(String, f64)>,
    /// Why parts failed, one line each (`part: reason`).
    pub errors: Vec<String>,
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
    report.crypto_backends = actix_web::rt::task::spawn_blocking(move || {
        socp_protocol::crypto::Backend::all()
            .iter()
            .map(|b| ceiling::crypto(*b, secs))
            .collect()
    })
    .await
    .unwrap_or_default();
    let in_use = socp_protocol::crypto::Backend::current().name();
    report.crypto = report
        .crypto_backends
        .iter()
        .find(|c| c.backend == in_use)
        .cloned()
        .unwrap_or_default();
    let fastest = report
        .crypto_backends
        .iter()
        .map(|c| c.sign_per_s_all)
        .fold(0.0, f64::max);
    report.in_use_vs_fastest = if fastest > 0.0 {
        report.crypto.sign_per_s_all / fastest
    } else {
        0.0
    };
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
    part!("dm", dm_relay, dm_relay::dm_relay(&cfg, &c));
    part!("fanout", fanout, fanout::fanout(&cfg));
    part!("file", file, file::file(&cfg, &c));
    part!("fast_file", fast_file, fast_file::fast_file(&cfg));
    part!("idle", idle, idle::idle(&cfg));
    part!("mesh", mesh, mesh::mesh_formation(&cfg));
    report
}

fn wanted(cfg: &BenchConfig, part: &str) -> bool {
    cfg.only.is_empty() || cfg.only.iter().any(|p| p == part)
}
