//! What the client sends: `/list`, `/tell`, `/all` and `/file`. Frames are
//! encrypted and signed on blocking threads (every core for many), then sent
//! paced at the server's frame-rate limit with flow control ([`Flow`]).

use std::path::PathBuf;

use serde_json::json;
use socp_protocol::content;
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{
    FileChunk, FileEnd, FileId, FileMode, FileStart, MsgDirect, MsgPublicChannel,
};
use socp_protocol::{now_ms, Base64Url, Envelope, Message, To};

use super::connection::{answer, expect, send, Sink};
use super::flow::{list_request, Flow, FLOW_WINDOW};
use super::identity::Me;
use super::output::bar;
use super::state::Contact;
use super::{blocking, fail, trust, Failure, Shared};

/// `/list`: who is online, as the server knows it.
pub(crate) async fn list(shared: &Shared, tx: &Sink) -> Result<(), Failure> {
    let (request, (_, answer_or_error)) = list_request(shared).await?;
    let rx = expect(shared, answer_or_error);
    send(tx, &request)?;
    let env = answer(rx, "/list").await?;
    let users = match env.message() {
        Ok(Message::ListResponse(l)) => {
            let mut users = std::mem::take(&mut shared.borrow_mut().last_list);
            users.extend(l.users);
            users
        }
        // Ids only, as that dialect answers: the servers we know them at.
        Ok(Message::CommandResponse(r)) if r.users.is_empty() => {
            let ids: Vec<String> = r
                .response
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| serde_json::from_value(v["users"].clone()).ok())
                .unwrap_or_default();
            let c = shared.borrow();
            ids.iter()
                .filter_map(|id| c.roster.get(&socp_protocol::UserId::parse(id).ok()?))
                .map(|k| socp_protocol::message::ListedUser {
                    user_id: k.user_id.clone(),
                    server_id: k.server_id.clone(),
                    name: k.name.clone().unwrap_or_default(),
                })
                .collect()
        }
        Ok(Message::CommandResponse(r)) => r.users,
        _ => return Err(fail("BAD_REQUEST", "the server's list was malformed")),
    };
    let (names, entries) = {
        let c = shared.borrow();
        let names: Vec<String> = c.roster.listing(&users).into_iter().map(|e| e.0).collect();
        let entries: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                let known = c.roster.get(&u.user_id);
                json!({
                    "user_id": u.user_id,
                    "server_id": u.server_id,
                    "name": u.name,
                    "registered": known.map(|k| k.registered),
                    "shown": known.map(|k| c.roster.show(k)),
                })
            })
            .collect();
        (names, entries)
    };
    let out = shared.borrow().out.clone();
    out.event(
        "list",
        format!("Online users: {}", names.join(", ")),
        json!({ "users": entries }),
    );
    Ok(())
}

/// `/tell`: a DM, split into pieces RSA-OAEP can carry, each encrypted to
/// the recipient and signed.
pub(crate) async fn tell(shared: &Shared, tx: &Sink, who: &str, text: &str) -> Result<(), Failure> {
    // Not online: a registered user's key from the directory, and the DM
    // waits for it at its home server [ext].
    let contact = match resolve(shared, who) {
        Ok(contact) => contact,
        Err(offline) => super::mail::lookup(shared, tx, who).await?.ok_or(offline)?,
    };
    trust::check_sendable(shared, &contact)?;
    let shown = shared.borrow().roster.show(&contact);
    let message = shared.borrow_mut().mail.message();
    let (me, rate, keys) = {
        let c = shared.borrow();
        (c.me.clone(), c.config.send_rate, c.key_encoding)
    };
    // A long message in numbered parts ([ext]): shown whole by socp clients.
    let pieces = super::parts::split(text);
    let parts = pieces.len();
    let mut flow = Flow::new(rate, true);
    // Each part's `ts` is its own: receipts name a part by it.
    let mut last_ts = 0;
    for (part, piece) in pieces.into_iter().enumerate() {
        let (me2, to) = (me.clone(), contact.clone());
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        shared
            .borrow_mut()
            .mail
            .sent(&contact.user_id, ts, (message, part, parts), &shown, text);
        let env = blocking(move || -> Result<Envelope, socp_protocol::Error> {
            let ct = Base64Url::from_bytes(&to.pubkey.encrypt(piece.as_bytes())?);
            let sig = content::sign_dm(&me2.key, &ct, me2.id.as_str(), to.user_id.as_str(), ts)?;
            let env = Envelope::new(
                &me2.id,
                To::from(&to.user_id),
                ts,
                &MsgDirect {
                    ciphertext: ct,
                    sender_pub: me2.key.public_key().clone(),
                    content_sig: sig,
                },
            );
            me2.sign_frame(env, keys)
        })
        .await?
        .map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
        flow.send(shared, tx, &env).await?;
    }
    flow.settle().await?;
    let out = shared.borrow().out.clone();
    let name = shown;
    super::remember(
        shared,
        contact.user_id.as_str(),
        super::history::Entry {
            ts: now_ms(),
            dir: "out".into(),
            from: me.id.to_string(),
            shown: name.clone(),
            kind: "dm".into(),
            text: text.to_owned(),
        },
    );
    out.event(
        "sent",
        format!("DM to {name}: {text}"),
        json!({ "kind": "dm", "to": contact.user_id, "shown": name, "text": text }),
    );
    Ok(())
}

/// `/all`: a public message, encrypted and signed once per member.
pub(crate) async fn all(shared: &Shared, tx: &Sink, text: &str) -> Result<(), Failure> {
    let (me, members, rate, keys) = {
        let c = shared.borrow();
        // Members on a server whose channel key we hold read the one
        // ciphertext under it (below), not per-member RSA.
        let keyed = |m: &Contact| c.group_keys.iter().any(|(s, _)| *s == m.server_id.as_str());
        let members: Vec<Contact> = c
            .roster
            .all()
            .filter(|m| m.user_id != c.me.id && !keyed(m))
            .cloned()
            .collect();
        (c.me.clone(), members, c.config.send_rate, c.key_encoding)
    };
    let pieces = super::parts::split(text);
    let mut jobs = Vec::new();
    for piece in &pieces {
        for m in &members {
            jobs.push((piece.clone(), m.clone()));
        }
    }
    let me2 = me.clone();
    let frames = parallel(
        jobs,
        move |(piece, m): (String, Contact)| -> Result<Envelope, socp_protocol::Error> {
            let ts = now_ms();
            let ct = Base64Url::from_bytes(&m.pubkey.encrypt(piece.as_bytes())?);
            let sig = content::sign_public(&me2.key, &ct, me2.id.as_str(), ts)?;
            let env = Envelope::new(
                &me2.id,
                To::from(&m.user_id),
                ts,
                &MsgPublicChannel {
                    ciphertext: ct,
                    sender_pub: me2.key.public_key().clone(),
                    content_sig: sig,
                    group_id: "public".into(),
                    public_version: None,
                },
            );
            me2.sign_frame(env, keys)
        },
    )
    .await?;
    // The members of channels of another implementation (one AES-GCM key
    // per server, wrapped for us): one ciphertext each, to the channel.
    // Each written with our key in the encoding that channel's members read
    // (their server's users' keys say which).
    let groups: Vec<_> = {
        let c = shared.borrow();
        c.group_keys
            .iter()
            .map(|(server, k)| {
                let written = c
                    .roster
                    .all()
                    .find(|u| u.server_id.as_str() == server)
                    .map_or(keys, |u| u.pubkey.written());
                (k.clone(), written)
            })
            .collect()
    };
    let (me3, whole) = (me.clone(), text.to_owned());
    let grouped = blocking(move || -> Result<Vec<Envelope>, socp_protocol::Error> {
        groups
            .iter()
            .map(|(group, written)| {
                let ts = now_ms();
                let ct = Base64Url::from_bytes(&group.seal(whole.as_bytes())?);
                let sig = content::sign_public(&me3.key, &ct, me3.id.as_str(), ts)?;
                let env = Envelope::new(
                    &me3.id,
                    To::Public,
                    ts,
                    &MsgPublicChannel {
                        ciphertext: ct,
                        sender_pub: me3.key.public_key().clone(),
                        content_sig: sig,
                        group_id: "public".into(),
                        public_version: None,
                    },
                );
                me3.sign_frame(env, *written)
            })
            .collect()
    })
    .await?
    .map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
    // One member gone must not stop the message to the others.
    let mut flow = Flow::new(rate, false);
    for env in frames.into_iter().chain(grouped.into_iter().map(Ok)) {
        let env = env.map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
        flow.send(shared, tx, &env).await?;
    }
    flow.settle().await?;
    let out = shared.borrow().out.clone();
    super::remember(
        shared,
        super::history::PUBLIC,
        super::history::Entry {
            ts: now_ms(),
            dir: "out".into(),
            from: me.id.to_string(),
            shown: "public".into(),
            kind: "public".into(),
            text: text.to_owned(),
        },
    );
    out.event(
        "sent",
        format!(
            "[public] {}: {text}",
            me.name.clone().unwrap_or_else(|| me.id.to_string())
        ),
        json!({ "kind": "public", "members": members.len(), "text": text }),
    );
    Ok(())
}

/// Largest file `/file` sends.
const MAX_SEND_FILE: u64 = 64 * 1024 * 1024;

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
    let meta =
        std::fs::metadata(&path).map_err(|e| fail("FILE", format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > MAX_SEND_FILE {
        return Err(fail(
            "FILE",
            format!(
                "{}: not a file of at most {MAX_SEND_FILE} bytes",
                path.display()
            ),
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
        total: data.len().div_ceil(MAX_OAEP_PLAINTEXT),
        cancelled: false,
    });
    let (shared2, tx2) = (shared.clone(), tx.clone());
    actix_web::rt::spawn(async move {
        let result = transfer(&shared2, &tx2, &contact, &file_id, &name, data).await;
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
    file_id: &FileId,
    name: &str,
    data: Vec<u8>,
) -> Result<(), Failure> {
    let (me, rate, out) = {
        let c = shared.borrow();
        (c.me.clone(), c.config.send_rate, c.out.clone())
    };
    let shown = shared.borrow().roster.show(contact);
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
            fast: None,
        },
    );
    let start = signed(&me, start).await?;
    let total = data.len().div_ceil(MAX_OAEP_PLAINTEXT);
    out.event(
        "file_progress",
        format!(
            "sending {name} ({} bytes, {total} chunks) to {shown} in the background (/transfers)",
            data.len(),
        ),
        json!({ "file_id": file_id.as_str(), "name": name, "direction": "send", "done": 0, "total": total }),
    );
    // Four fifths of the rate: the rest is left for chatting meanwhile. Not
    // strict: an ERROR about something else (a DM to someone offline) must
    // not stop the file.
    let mut flow = Flow::new(rate * 0.8, false);
    flow.send(shared, tx, &start).await?;
    // Each chunk is encrypted, signed and stamped just before it is sent,
    // about a second's worth at a time on every core: its `ts` is fresh
    // however long the file takes (signed up front, the chunks of a large
    // file reached the server after the ±10 min window and were refused).
    let batch = ((rate * 0.8) as usize).clamp(1, FLOW_WINDOW);
    let mut done = 0;
    let mut reported = 0;
    for window in data.chunks(MAX_OAEP_PLAINTEXT * batch) {
        if cancelled(shared, file_id) {
            return cancel(shared, tx, &mut flow, contact, file_id, name, done, total).await;
        }
        let first = done as u64;
        let chunks: Vec<(u64, Vec<u8>)> = window
            .chunks(MAX_OAEP_PLAINTEXT)
            .enumerate()
            .map(|(i, c)| (first + i as u64, c.to_vec()))
            .collect();
        let (me2, to2, fid) = (me.clone(), contact.clone(), file_id.clone());
        let keys = shared.borrow().key_encoding;
        let frames = parallel(chunks, move |(index, plain): (u64, Vec<u8>)| {
            chunk_frame(&me2, &to2, &fid, index, &plain, keys)
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

/// One FILE_CHUNK: `plain` encrypted to `to`, signed by `me`, stamped now.
fn chunk_frame(
    me: &Me,
    to: &Contact,
    file_id: &FileId,
    index: u64,
    plain: &[u8],
    keys: socp_protocol::dialect::KeyEncoding,
) -> Result<Envelope, socp_protocol::Error> {
    let ts = now_ms();
    let ct = Base64Url::from_bytes(&to.pubkey.encrypt(plain)?);
    // A server of the PEM dialect passes chunks on with only the standard
    // fields (which would break our signature over the rest): the standard
    // chunk, covered by the transport signature and the file's SHA-256.
    let (sender_pub, content_sig) = if keys == socp_protocol::dialect::KeyEncoding::Der {
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

/// `env` signed with our key, off the event loop (servers of other
/// implementations verify every frame a user sends, and pass a user's file
/// frames on as they came).
async fn signed(me: &Me, env: Envelope) -> Result<Envelope, Failure> {
    let key = me.key.clone();
    blocking(move || env.signed(&key))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))
}

/// The contact `who` names (a registered user's name, or a user id; see
/// [`Roster::resolve`](super::state::Roster::resolve)).
fn resolve(shared: &Shared, who: &str) -> Result<Contact, Failure> {
    shared
        .borrow()
        .roster
        .resolve(who)
        .cloned()
        .map_err(|e| fail("USER_NOT_FOUND", e))
}

/// Encrypt-and-sign jobs on every core; results in input order.
async fn parallel<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Result<Vec<R>, Failure>
where
    T: Send + 'static,
    R: Send + 'static,
{
    blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = items.len();
        let slots: Vec<std::sync::Mutex<Option<T>>> = items
            .into_iter()
            .map(|t| std::sync::Mutex::new(Some(t)))
            .collect();
        let results: Vec<std::sync::Mutex<Option<R>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.min(n.max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let item = slots[i].lock().ok().and_then(|mut g| g.take());
                    if let Some(item) = item {
                        let r = f(item);
                        if let Ok(mut g) = results[i].lock() {
                            *g = Some(r);
                        }
                    }
                });
            }
        });
        results
            .into_iter()
            .filter_map(|m| m.into_inner().ok().flatten())
            .collect()
    })
    .await
}
