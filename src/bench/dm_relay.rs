//! Part 2, DM relay across a 2-server mesh: K sender/receiver pairs, closed
//! loop (W in flight per pair) for T seconds: DMs/s, latency, lost,
//! duplicated; then one DM at a time for the latency without queueing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::sha256;
use socp_protocol::message::MsgDirect;
use socp_protocol::{content, now_ms, Base64Url, Envelope, To, UserId};

use super::harness::{join_many, parallel_map, BenchUser, Servers};
use super::{BenchConfig, Beside, Crypto};

/// DM relay figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DmRelay {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Seconds of the loaded phase.
    pub seconds: f64,
    /// DMs sent (both phases).
    pub sent: usize,
    /// Distinct DMs delivered (both phases).
    pub delivered: usize,
    /// DMs sent and never delivered.
    pub lost: usize,
    /// Deliveries beyond the first of a DM.
    pub duplicated: usize,
    /// DMs delivered per second in the loaded phase.
    pub dms_per_s: f64,
    /// Median latency under load, ms.
    pub latency_ms_p50: f64,
    /// 95th percentile latency under load, ms.
    pub latency_ms_p95: f64,
    /// 99th percentile latency under load, ms.
    pub latency_ms_p99: f64,
    /// Signatures the mesh makes per DM (SERVER_DELIVER + USER_DELIVER).
    pub signatures_per_dm: f64,
    /// All-core signatures/s ÷ signatures per DM.
    pub ceiling_dms_per_s: f64,
    /// DMs/s ÷ the ceiling.
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

pub(crate) async fn dm_relay(cfg: &BenchConfig, crypto: &Crypto) -> Result<DmRelay, String> {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
