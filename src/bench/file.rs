//! Part 4, file transfer: a file across two servers, end to end, against the
//! receiver's decryption and the servers' signing ceilings.

use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::MAX_OAEP_PLAINTEXT;

use super::files_common::{arrivals, file_frames};
use super::harness::{BenchUser, Servers};
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
    let rkey = receiver.key.public_key().clone();
    let frames = file_frames(
        &sender,
        &receiver,
        &data,
        (MAX_OAEP_PLAINTEXT, None),
        |_, _, plain| rkey.encrypt(plain).ok(),
    );
    let n = frames.chunks.len();
    let before = Beside::sample(cfg.crypto_secs / 2.0, false, true).await;
    let started = Instant::now();
    let _ = sender.tx.send(frames.start);
    for f in frames.chunks.into_iter().flatten() {
        let _ = sender.tx.send(f);
    }
    let _ = sender.tx.send(frames.end);
    // FILE_START and FILE_END arrive too.
    // Generous: two signatures per chunk on this machine, three times over.
    let budget = Duration::from_secs_f64(30.0 + n as f64 * 6.0 * crypto.sign_ms / 1000.0);
    let (got, last) = arrivals(&mut receiver, n + 2, budget, started).await;
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
