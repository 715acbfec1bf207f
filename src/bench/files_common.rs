//! What the two file parts share: a file's frames from one bench user to
//! another (FILE_START, signed FILE_CHUNKs whose ciphertext `seal` makes,
//! FILE_END), and waiting for them to arrive.

use std::time::{Duration, Instant};

use socp_protocol::message::{FastFile, FileChunk, FileEnd, FileId, FileMode, FileStart};
use socp_protocol::{content, now_ms, Base64Url, Envelope, To};

use super::harness::{parallel_map, BenchUser};

/// A file's frames, ready to send.
pub(crate) struct FileFrames {
    pub(crate) start: String,
    /// One per chunk, in order (`None`: sealing or signing failed).
    pub(crate) chunks: Vec<Option<String>>,
    pub(crate) end: String,
}

/// The frames of `data` in `chunk`-byte pieces from `sender` to `receiver`,
/// each piece sealed by `seal(file_id, index, plain)` and signed by the sender.
pub(crate) fn file_frames(
    sender: &BenchUser,
    receiver: &BenchUser,
    data: &[u8],
    (chunk, fast): (usize, Option<FastFile>),
    seal: impl Fn(&FileId, u64, &[u8]) -> Option<Vec<u8>> + Sync,
) -> FileFrames {
    let file_id = FileId::random();
    let pieces: Vec<(u64, &[u8])> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    let chunks = parallel_map(&pieces, |(index, plain)| {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&seal(&file_id, *index, plain)?);
        let sig = content::sign_dm(
            &sender.key,
            &ct,
            sender.id.as_str(),
            receiver.id.as_str(),
            ts,
        )
        .ok()?;
        let frame = FileChunk {
            file_id: file_id.clone(),
            index: *index,
            ciphertext: ct,
            sender_pub: Some(sender.key.public_key().clone()),
            content_sig: Some(sig),
            total: None,
        };
        Some(Envelope::new(&sender.id, To::from(&receiver.id), ts, &frame).to_json())
    });
    let start = FileStart {
        file_id: file_id.clone(),
        name: "bench.bin".into(),
        size: data.len() as u64,
        sha256: Some(socp_protocol::crypto::sha256_hex(data)),
        mode: FileMode::Dm,
        fast,
    };
    let end = FileEnd {
        file_id,
        status: None,
    };
    FileFrames {
        start: Envelope::new(&sender.id, To::from(&receiver.id), now_ms(), &start).to_json(),
        chunks,
        end: Envelope::new(&sender.id, To::from(&receiver.id), now_ms(), &end).to_json(),
    }
}

/// Wait up to `budget` for `n` frames at `receiver`: how many arrived, and
/// when the last did (`started` if none).
pub(crate) async fn arrivals(
    receiver: &mut BenchUser,
    n: usize,
    budget: Duration,
    started: Instant,
) -> (usize, Instant) {
    let mut got = 0;
    let mut last = started;
    let deadline = Instant::now() + budget;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver.seen.recv()).await {
            Ok(Some(seen)) => {
                got += 1;
                last = seen.at;
            }
            _ => break,
        }
    }
    (got, last)
}
