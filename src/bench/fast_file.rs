//! Part 4b, fast-mode file transfer [ext]: a file across two servers in
//! AES-256-GCM chunks of [`MAX_FAST_CHUNK`] bytes, each signed by the sender,
//! paced as socp clients pace them ([`FAST_FILE_BYTES_PER_SECOND`] of frames),
//! end to end.

use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::file::{FileKey, FAST_CIPHER};
use socp_protocol::message::{FastFile, FAST_FILE_BYTES_PER_SECOND, MAX_FAST_CHUNK};
use socp_protocol::Base64Url;

use super::files_common::{arrivals, file_frames};
use super::harness::{BenchUser, Servers};
use super::BenchConfig;

/// Fast-mode file transfer figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FastFileTransfer {
    /// File size.
    pub bytes: usize,
    /// Chunks it is sent in.
    pub chunks: usize,
    /// Chunks that arrived.
    pub delivered_chunks: usize,
    /// Seconds from FILE_START sent to FILE_END delivered.
    pub seconds: f64,
    /// File bytes per second, end to end.
    pub bytes_per_s: f64,
    /// File bytes per second the sender's pace allows (what a socp client sends).
    pub pace_bytes_per_s: f64,
    /// Bytes/s ÷ the pace.
    pub ratio_to_pace: f64,
}

pub(crate) async fn fast_file(cfg: &BenchConfig) -> Result<FastFileTransfer, String> {
    let servers = Servers::get(cfg, 2).await?;
    let base = servers.known(0).await?;
    let sender = BenchUser::join(servers.addrs[0], 10).await?;
    let mut receiver = BenchUser::join(servers.addrs[1], 11).await?;
    servers.converge(0, base + 2).await?;
    let data: Vec<u8> = (0..cfg.fast_file_bytes)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let file_key = FileKey::random();
    let wrapped = receiver
        .key
        .public_key()
        .encrypt(file_key.bytes())
        .map_err(|e| e.to_string())?;
    let chunk = MAX_FAST_CHUNK as usize;
    let fast = FastFile {
        cipher: FAST_CIPHER.into(),
        key: Base64Url::from_bytes(&wrapped),
        chunk: MAX_FAST_CHUNK,
    };
    let frames = file_frames(
        &sender,
        &receiver,
        &data,
        (chunk, Some(fast)),
        |id, i, plain| file_key.seal(id.as_str(), i, plain).ok(),
    );
    let n = frames.chunks.len();
    let (start, end) = (frames.start, frames.end);
    let frames: Vec<String> = frames.chunks.into_iter().flatten().collect();
    if frames.len() != n {
        servers.stop().await;
        return Err("a chunk could not be sealed or signed".into());
    }
    let frame_bytes = frames.first().map_or(1, String::len) as f64;
    // The pace socp clients keep: frames of this size at the byte rate.
    let gap = Duration::from_secs_f64(frame_bytes / FAST_FILE_BYTES_PER_SECOND);
    let pace = chunk as f64 * FAST_FILE_BYTES_PER_SECOND / frame_bytes;
    let started = Instant::now();
    let _ = sender.tx.send(start);
    for (i, f) in frames.into_iter().enumerate() {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        let _ = sender.tx.send(f);
    }
    let _ = sender.tx.send(end);
    let budget = Duration::from_secs_f64(60.0 + 4.0 * data.len() as f64 / pace);
    let (got, last) = arrivals(&mut receiver, n + 2, budget, started).await;
    servers.stop().await;
    if got < n + 2 {
        return Err(format!(
            "only {} of {n} chunks arrived within {budget:?}",
            got.saturating_sub(1)
        ));
    }
    let secs = last.duration_since(started).as_secs_f64();
    let bps = data.len() as f64 / secs.max(f64::MIN_POSITIVE);
    Ok(FastFileTransfer {
        bytes: data.len(),
        chunks: n,
        delivered_chunks: got.saturating_sub(2),
        seconds: secs,
        bytes_per_s: bps,
        pace_bytes_per_s: pace,
        ratio_to_pace: bps / pace,
    })
}
