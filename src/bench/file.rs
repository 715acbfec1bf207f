//! Part 4, file transfer: a file across two servers, end to end, against the
//! receiver's decryption and the servers' signing ceilings.

use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::MAX_OAEP_PLAINTEXT;
use socp_protocol::message::{FileChunk, FileEnd, FileId, FileMode, FileStart};
use socp_protocol::{content, now_ms, Base64Url, Envelope, To};

use super::harness::{parallel_map, BenchUser, Servers};
use super::{BenchConfig, Beside, Crypto};

/// File transfer figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileTransfer {
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
    /// Bytes/s if the receiver's decryption on all cores were the only cost.
    pub decrypt_ceiling_bytes_per_s: f64,
    /// Bytes/s ÷ the decryption ceiling.
    pub ratio_to_decrypt_ceiling: f64,
    /// Chunks per second, end to end.
    pub chunks_per_s: f64,
    /// Chunks/s if the servers' two signatures per chunk on all cores were
    /// the only cost.
    pub sign_ceiling_chunks_per_s: f64,
    /// Chunks/s ÷ the signing ceiling.
    pub ratio_to_sign_ceiling: f64,
    /// The speed these ratios use, sampled before and after.
    pub beside: Beside,
}

pub(crate) async fn file(cfg: &BenchConfig, crypto: &Crypto) -> Result<FileTransfer, String> {
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
            fast: None,
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
