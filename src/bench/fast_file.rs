//! Part 4b, fast-mode file transfer [ext]: a file across two servers in
//! AES-256-GCM chunks of [`MAX_FAST_CHUNK`] bytes, each signed by the sender,
//! paced as socp clients pace them ([`FAST_FILE_BYTES_PER_SECOND`] of frames),
//! end to end.

use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::file::{FileKey, FAST_CIPHER};
use socp_protocol::message::{
    FastFile, FileChunk, FileEnd, FileId, FileMode, FileStart, FAST_FILE_BYTES_PER_SECOND,
    MAX_FAST_CHUNK,
};
use socp_protocol::{content, now_ms, Base64Url, Envelope, To};

use super::harness::{parallel_map, BenchUser, Servers};
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
    let file_id = FileId::random();
    let file_key = FileKey::random();
    let wrapped = receiver
        .key
        .public_key()
        .encrypt(file_key.bytes())
        .map_err(|e| e.to_string())?;
    let chunk = MAX_FAST_CHUNK as usize;
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    let frames: Vec<Option<String>> = parallel_map(&chunks, |(index, plain)| {
        let ts = now_ms();
        let sealed = file_key.seal(file_id.as_str(), *index, plain).ok()?;
        let ct = Base64Url::from_bytes(&sealed);
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
                    total: None,
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
            sha256: Some(socp_protocol::crypto::sha256_hex(&data)),
            mode: FileMode::Dm,
            fast: Some(FastFile {
                cipher: FAST_CIPHER.into(),
                key: Base64Url::from_bytes(&wrapped),
                chunk: MAX_FAST_CHUNK,
            }),
        },
    )
    .to_json();
    let end_frame = Envelope::new(
        &sender.id,
        To::from(&receiver.id),
        now_ms(),
        &FileEnd {
            file_id,
            status: None,
        },
    )
    .to_json();
    let frames: Vec<String> = frames.into_iter().flatten().collect();
    let n = chunks.len();
    if frames.len() != n {
        servers.stop().await;
        return Err("a chunk could not be sealed or signed".into());
    }
    let frame_bytes = frames.first().map_or(1, String::len) as f64;
    // The pace socp clients keep: frames of this size at the byte rate.
    let gap = Duration::from_secs_f64(frame_bytes / FAST_FILE_BYTES_PER_SECOND);
    let pace = chunk as f64 * FAST_FILE_BYTES_PER_SECOND / frame_bytes;
    let started = Instant::now();
    let _ = sender.tx.send(start_frame);
    for (i, f) in frames.into_iter().enumerate() {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        let _ = sender.tx.send(f);
    }
    let _ = sender.tx.send(end_frame);
    let mut got = 0;
    let mut last = started;
    let budget = Duration::from_secs_f64(60.0 + 4.0 * data.len() as f64 / pace);
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
