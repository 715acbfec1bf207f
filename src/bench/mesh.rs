//! Part 6, mesh formation: S servers joining one introducer, then U users
//! until every server knows every user.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::harness::{mesh, users_known, BenchUser};
use super::BenchConfig;

/// Mesh formation figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshFormation {
    /// Servers, the introducer included.
    pub servers: usize,
    /// Users spread over them.
    pub users: usize,
    /// Seconds until every server had a live link to every other.
    pub seconds_to_mesh: f64,
    /// Seconds from the first user joining until every server knew every
    /// user.
    pub seconds_to_presence: f64,
}

pub(crate) async fn mesh_formation(cfg: &BenchConfig) -> Result<MeshFormation, String> {
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
