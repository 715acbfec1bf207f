//! Part 3, public channel fan-out: one message to N members on 3 servers,
//! against the time the servers' signatures alone take.

use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::message::MsgPublicChannel;
use socp_protocol::{content, now_ms, Base64Url, Envelope, To, UserId};

use super::ceiling::cores;
use super::harness::{join_many, parallel_map, BenchUser, Servers};
use super::{BenchConfig, Beside};

/// Fan-out figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fanout {
    /// Channel members (the sender not counted).
    pub members: usize,
    /// Servers the members are spread over.
    pub servers: usize,
    /// Members the message reached.
    pub delivered: usize,
    /// Deliveries beyond the first to a member.
    pub duplicated: usize,
    /// Seconds from the first frame sent to the last delivery.
    pub seconds_to_last: f64,
    /// members × one signature ÷ cores (the goal is ≤ 2× this).
    pub bound_seconds: f64,
    /// Seconds to the last delivery ÷ the bound.
    pub ratio_to_bound: f64,
    /// members ÷ signatures per second measured on all cores at once (one
    /// signature takes longer when every core signs).
    pub all_cores_bound_seconds: f64,
    /// Seconds to the last delivery ÷ the all-cores bound.
    pub ratio_to_all_cores_bound: f64,
    /// The speed these ratios use, sampled before and after.
    pub beside: Beside,
}

pub(crate) async fn fanout(cfg: &BenchConfig) -> Result<Fanout, String> {
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
