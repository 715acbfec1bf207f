//! `/file`, `/transfers` and `/cancel`: files sent in the background, in the
//! standard mode (446-byte RSA-OAEP chunks) or, to a client that reads it,
//! fast mode [ext] (AES-256-GCM chunks under a per-file key wrapped for the
//! recipient); each chunk encrypted, signed and stamped just before it is
//! sent, paced with flow control ([`Flow`]).

use std::path::PathBuf;

use serde_json::json;
use socp_protocol::content;
use socp_protocol::crypto::file::{FileKey, FAST_CIPHER};
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::dialect::KeyEncoding;
use socp_protocol::message::{
    FastFile, FileChunk, FileEnd, FileId, FileMode, FileStart, FAST_FILE_BYTES_PER_SECOND,
    MAX_FAST_CHUNK,
};
use socp_protocol::{now_ms, Base64Url, Envelope, To};

use super::connection::Sink;
use super::flow::{Flow, FLOW_WINDOW};
use super::identity::Me;
use super::output::bar;
use super::sending::{parallel, resolve, signed};
use super::state::Contact;
use super::{blocking, fail, trust, Failure, Shared};

/// Largest file `/file` sends in the standard mode.
const MAX_SEND_FILE: u64 = 64 * 1024 * 1024;

/// Fast-mode chunks between two flow-control round trips.
const FAST_WINDOW: usize = 3;

/// Largest file `/file` sends in fast mode [ext] (what a socp client takes).
const MAX_SEND_FAST: u64 = super::state::MAX_INCOMING_FILE;

/// A file being sent in the background (`/transfers`, `/cancel`).
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    /// Its id.
    pub file_id: FileId,
    /// The file's name.
    pub name: String,
    /// Whom to, as shown.
    pub to: String,
    /// Chunks sent, of `total`.
    pub done: usize,
    /// Chunks in all.
    pub total: usize,
    /// `/cancel` asked to stop it.
    pub cancelled: bool,
}

/// `/file`: checked here (recipient, file), then sent in the background:
/// FILE_START, the file in chunks RSA-OAEP can carry, FILE_END. Chatting and
/// other commands go on meanwhile; `/transfers` shows it, `/cancel` stops it.
pub(crate) async fn send_file(
    shared: &Shared,
    tx: &Sink,
    who: &str,
    path: PathBuf,
) -> Result<(), Failure> {
    let contact = resolve(shared, who)?;
    trust::check_sendable(shared, &contact)?;
    // Fast mode [ext] to a client that reads it, through a socp server.
    let fast = contact.fast_files
        && !shared.borrow().config.standard_files
        && shared.borrow().key_encoding == KeyEncoding::Der;
    let (max, chunk_len) = if fast {
        (MAX_SEND_FAST, MAX_FAST_CHUNK as usize)
    } else {
        (MAX_SEND_FILE, MAX_OAEP_PLAINTEXT)
    };
    let meta =
        std::fs::metadata(&path).map_err(|e| fail("FILE", format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > max {
        return Err(fail(
            "FILE",
            format!("{}: not a file of at most {max} bytes", path.display()),
        ));
    }
    let read = path.clone();
    let data = blocking(move || std::fs::read(&read))
        .await?
        .map_err(|e| fail("FILE", format!("{}: {e}", path.display())))?;
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let file_id = FileId::random();
    let shown = shared.borrow().roster.show(&contact);
    shared.borrow_mut().transfers.push(Transfer {
        file_id: file_id.clone(),
        name: name.clone(),
        to: shown.clone(),
        done: 0,
        total: data.len().div_ceil(chunk_len),
        cancelled: false,
    });
    let (shared2, tx2) = (shared.clone(), tx.clone());
    actix_web::rt::spawn(async move {
        let result = transfer(&shared2, &tx2, &contact, (&file_id, &name, fast), data).await;
        let out = shared2.borrow().out.clone();
        shared2
            .borrow_mut()
            .transfers
            .retain(|t| t.file_id != file_id);
        if let Err(Failure { code, detail }) = result {
            out.error(&code, format!("sending {name} to {shown} failed: {detail}"));
        }
    });
    Ok(())
}

/// Send one file (see [`send_file`]).
async fn transfer(
    shared: &Shared,
    tx: &Sink,
    contact: &Contact,
    (file_id, name, fast): (&FileId, &str, bool),
    data: Vec<u8>,
) -> Result<(), Failure> {
    let (me, rate, out) = {
        let c = shared.borrow();
        (c.me.clone(), c.config.send_rate, c.out.clone())
    };
    let shown = shared.borrow().roster.show(contact);
    // Fast mode: a file key, wrapped for the recipient (RSA, off the loop).
    let (file_key, fast) = if fast {
        let key = FileKey::random();
        let (pk, raw) = (contact.pubkey.clone(), key.bytes().to_vec());
        let wrapped = blocking(move || pk.encrypt(&raw))
            .await?
            .map_err(|e| fail("BAD_KEY", e.to_string()))?;
        let fast = FastFile {
            cipher: FAST_CIPHER.to_owned(),
            key: Base64Url::from_bytes(&wrapped),
            chunk: MAX_FAST_CHUNK,
        };
        (Some(key), Some(fast))
    } else {
        (None, None)
    };
    let chunk_len = match &fast {
        Some(f) => f.chunk as usize,
        None => MAX_OAEP_PLAINTEXT,
    };
    // A fast chunk's frame: base64url of the sealed chunk, and the rest.
    let fast_chunk = fast
        .as_ref()
        .map(|f| (f.chunk as f64 + 16.0) * 4.0 / 3.0 + 2048.0);
    let start = Envelope::new(
        &me.id,
        To::from(&contact.user_id),
        now_ms(),
        &FileStart {
            file_id: file_id.clone(),
            name: name.to_owned(),
            size: data.len() as u64,
            sha256: Some(sha256_hex(&data)),
            mode: FileMode::Dm,
            fast,
        },
    );
    let start = signed(&me, start).await?;
    let total = data.len().div_ceil(chunk_len);
    out.event(
        "file_progress",
        format!(
            "sending {name} ({} bytes, {total} chunks{}) to {shown} in the background (/transfers)",
            data.len(),
            if file_key.is_some() { ", fast mode" } else { "" },
        ),
        json!({ "file_id": file_id.as_str(), "name": name, "direction": "send", "done": 0, "total": total, "mode": if file_key.is_some() { "fast" } else { "standard" } }),
    );
    // Not strict: an ERROR about something else (a DM to someone offline)
    // must not stop the file.
    // A recipient not known to run a socp client (its advert says nothing
    // of fast mode) may be of the PEM dialect even where its key reached
    // us as DER (its server a socp one).
    let socp_client = contact.fast_files && contact.pubkey.written() == KeyEncoding::Der;
    let (rate, window, burst) = pace(rate, fast_chunk, socp_client);
    let mut flow = Flow::new(rate, false).window(window);
    if let Some(burst) = burst {
        flow = flow.burst(burst);
    }
    flow.send(shared, tx, &start).await?;
    // Each chunk is encrypted, signed and stamped just before it is sent,
    // about a second's worth at a time on every core: its `ts` is fresh
    // however long the file takes (signed up front, the chunks of a large
    // file reached the server after the ±10 min window and were refused).
    let batch = (rate as usize).clamp(1, window * 2);
    let mut done = 0;
    let mut reported = 0;
    for window in data.chunks(chunk_len * batch) {
        if cancelled(shared, file_id) {
            return cancel(shared, tx, &mut flow, contact, file_id, name, done, total).await;
        }
        let first = done as u64;
        let chunks: Vec<(u64, Vec<u8>)> = window
            .chunks(chunk_len)
            .enumerate()
            .map(|(i, c)| (first + i as u64, c.to_vec()))
            .collect();
        let (me2, to2, fid) = (me.clone(), contact.clone(), file_id.clone());
        let keys = shared.borrow().key_encoding;
        let fk = file_key.clone();
        let frames = parallel(chunks, move |(index, plain): (u64, Vec<u8>)| {
            chunk_frame(&me2, &to2, (&fid, index, fk.as_ref()), &plain, keys)
        })
        .await?;
        for env in frames {
            if cancelled(shared, file_id) {
                return cancel(shared, tx, &mut flow, contact, file_id, name, done, total).await;
            }
            let env = env.map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
            flow.send(shared, tx, &env).await?;
            done += 1;
            if let Some(t) = shared
                .borrow_mut()
                .transfers
                .iter_mut()
                .find(|t| t.file_id == *file_id)
            {
                t.done = done;
            }
            let pct = done * 100 / total.max(1);
            if pct >= reported + 10 {
                reported = pct - pct % 10;
                out.progress(
                    file_id.as_str(),
                    format!("sending {name} to {shown}: {}", bar(pct)),
                    json!({ "file_id": file_id.as_str(), "name": name, "direction": "send", "done": done, "total": total }),
                );
            }
        }
    }
    file_end(shared, tx, &mut flow, contact, file_id, None).await?;
    // `file_sent` means the server took every frame.
    flow.confirm(shared, tx).await?;
    out.event(
        "file_sent",
        format!("sent {name} to {shown}"),
        json!({ "file_id": file_id.as_str(), "to": contact.user_id, "shown": shown, "name": name, "size": data.len() }),
    );
    Ok(())
}

/// FILE_END of a transfer (`status`: [ext], `Some("cancelled")` when stopped).
async fn file_end(
    shared: &Shared,
    tx: &Sink,
    flow: &mut Flow,
    contact: &Contact,
    file_id: &FileId,
    status: Option<String>,
) -> Result<(), Failure> {
    let me = shared.borrow().me.clone();
    let end = FileEnd {
        file_id: file_id.clone(),
        status,
    };
    let env = Envelope::new(&me.id, To::from(&contact.user_id), now_ms(), &end);
    let env = signed(&me, env).await?;
    flow.send(shared, tx, &env).await
}

fn cancelled(shared: &Shared, file_id: &FileId) -> bool {
    shared
        .borrow()
        .transfers
        .iter()
        .any(|t| t.file_id == *file_id && t.cancelled)
}

/// Stop a transfer: FILE_END saying so [ext], so the receiver drops it.
#[allow(clippy::too_many_arguments)]
async fn cancel(
    shared: &Shared,
    tx: &Sink,
    flow: &mut Flow,
    contact: &Contact,
    file_id: &FileId,
    name: &str,
    done: usize,
    total: usize,
) -> Result<(), Failure> {
    let cancelled = Some(FILE_CANCELLED.to_owned());
    file_end(shared, tx, flow, contact, file_id, cancelled).await?;
    let out = shared.borrow().out.clone();
    out.event(
        "file_cancelled",
        format!("cancelled {name} after {done} of {total} chunks"),
        json!({ "file_id": file_id.as_str(), "name": name, "direction": "send", "done": done, "total": total }),
    );
    Ok(())
}

/// `FILE_END.status` of a transfer the sender stopped [ext].
pub(crate) const FILE_CANCELLED: &str = "cancelled";

/// The rate (frames a second) and flow-control window of a file: four fifths
/// of the client's `rate`, the rest left for chatting. Fast chunks (of
/// `fast_chunk` bytes as frames) are large: at most 20 MiB a second, and a
/// round trip every few (a server holds 8 MiB of a user's frames at most by
/// default). A recipient not known to run a socp client may be a client of
/// the PEM dialect, which opens about four chunks a second and is dropped by
/// its server when it falls behind: at most three a second to it, paced from
/// the first chunk (no burst: a burst is what it falls behind on). Returns
/// the rate, the window and the burst when not the default.
fn pace(rate: f64, fast_chunk: Option<f64>, socp_client: bool) -> (f64, usize, Option<u32>) {
    match fast_chunk {
        Some(bytes) => (
            (rate * 0.8).min(FAST_FILE_BYTES_PER_SECOND / bytes),
            FAST_WINDOW,
            None,
        ),
        None if !socp_client => (
            (rate * 0.8).min(PEM_DIALECT_CHUNKS_PER_SECOND),
            FLOW_WINDOW,
            Some(1),
        ),
        None => (rate * 0.8, FLOW_WINDOW, None),
    }
}

/// Chunks a second of a file to a client of the PEM dialect (it re-reads its
/// private key for each chunk it opens: about four a second).
const PEM_DIALECT_CHUNKS_PER_SECOND: f64 = 3.0;

/// `/transfers`: the files being sent, with their progress.
pub(crate) fn transfers(shared: &Shared) -> Result<(), Failure> {
    let (out, list) = {
        let c = shared.borrow();
        (c.out.clone(), c.transfers.clone())
    };
    if list.is_empty() {
        out.info("no files being sent");
    }
    for (i, t) in list.iter().enumerate() {
        let pct = t.done * 100 / t.total.max(1);
        out.event(
            "transfer",
            format!("{}. {} to {}: {} ({} of {} chunks)", i + 1, t.name, t.to, bar(pct), t.done, t.total),
            json!({ "n": i + 1, "file_id": t.file_id.as_str(), "name": t.name, "to": t.to, "done": t.done, "total": t.total }),
        );
    }
    Ok(())
}

/// `/cancel <n>`: stop the `n`th transfer `/transfers` lists (or the one
/// whose file id starts with `which`).
pub(crate) fn cancel_transfer(shared: &Shared, which: &str) -> Result<(), Failure> {
    let mut c = shared.borrow_mut();
    let index = match which.parse::<usize>() {
        Ok(n) if (1..=c.transfers.len()).contains(&n) => Some(n - 1),
        _ => c
            .transfers
            .iter()
            .position(|t| t.file_id.as_str().starts_with(which)),
    };
    match index.and_then(|i| c.transfers.get_mut(i)) {
        Some(t) => {
            t.cancelled = true;
            Ok(())
        }
        None => Err(fail(
            "USAGE",
            format!("no transfer {which} (see /transfers)"),
        )),
    }
}

/// One FILE_CHUNK: `plain` encrypted to `to` (sealed with the file key in
/// fast mode), signed by `me`, stamped now.
fn chunk_frame(
    me: &Me,
    to: &Contact,
    (file_id, index, file_key): (&FileId, u64, Option<&FileKey>),
    plain: &[u8],
    keys: KeyEncoding,
) -> Result<Envelope, socp_protocol::Error> {
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&match file_key {
        Some(k) => k.seal(file_id.as_str(), index, plain)?,
        None => to.pubkey.encrypt(plain)?,
    });
    // A server of the PEM dialect passes chunks on with only the standard
    // fields (which would break our signature over the rest): the standard
    // chunk, covered by the transport signature and the file's SHA-256.
    let (sender_pub, content_sig) = if keys == KeyEncoding::Der {
        let sig = content::sign_dm(&me.key, &ct, me.id.as_str(), to.user_id.as_str(), ts)?;
        (Some(me.key.public_key().clone()), Some(sig))
    } else {
        (None, None)
    };
    let env = Envelope::new(
        &me.id,
        To::from(&to.user_id),
        ts,
        &FileChunk {
            file_id: file_id.clone(),
            index,
            ciphertext: ct,
            sender_pub,
            content_sig,
            total: None,
        },
    );
    me.sign_frame(env, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_to_clients_not_known_to_be_socp_go_at_three_chunks_a_second() {
        assert_eq!(pace(40.0, None, true), (32.0, FLOW_WINDOW, None));
        // Paced from the first chunk (a burst of 100 went out at once).
        assert_eq!(pace(40.0, None, false), (3.0, FLOW_WINDOW, Some(1)));
        // Never faster than the client's own rate allows.
        assert_eq!(pace(2.5, None, false), (2.0, FLOW_WINDOW, Some(1)));
        let fast = pace(40.0, Some(1024.0 * 1024.0), true);
        assert_eq!(fast, (20.0, FAST_WINDOW, None));
    }
}
