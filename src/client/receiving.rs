//! What the server sends the client: answers to waiting requests, presence
//! (USER_ADVERTISE, USER_REMOVE), errors, and deliveries: DMs and public
//! messages checked against the advertised key and opened, files reassembled
//! chunk by chunk and saved.

use serde_json::json;
use socp_protocol::content;
use socp_protocol::crypto::file::FileKey;
use socp_protocol::message::{DeliverContent, UserAdvertise, UserDeliver, UserRemove};
use socp_protocol::{Envelope, Message};

use super::channel::group_key;
use super::connection::{Sink, MAX_FRAME_BYTES};
use super::output::{bar, Output};
use super::state::{self, Contact, IncomingFile};
use super::texts::{show_text, unverified_mark, TextKind};
use super::Shared;
use super::{blocking, trust};

/// One frame from the server.
pub(crate) async fn handle_frame(shared: &Shared, tx: &Sink, bytes: &[u8]) {
    let out = shared.borrow().out.clone();
    let env = match Envelope::parse_with(
        bytes,
        &socp_protocol::Limits {
            max_frame_bytes: MAX_FRAME_BYTES,
            ..Default::default()
        },
    ) {
        Ok(env) => env,
        Err(e) => {
            out.warning(format!("unreadable frame from the server: {e}"));
            return;
        }
    };
    // Presence news in one frame [ext]: each frame inside as if it came alone
    // (only adverts and removals travel this way).
    if env.msg_type() == socp_protocol::MessageType::NewsBatch.as_str() {
        news_batch(shared, tx, &env).await;
        return;
    }
    // A listing in parts: the parts before the last are kept; the last one
    // (no `more`) answers the request.
    if env.msg_type() == "LIST_RESPONSE" {
        if let Ok(Message::ListResponse(l)) = env.message() {
            if l.more {
                shared.borrow_mut().list_parts.extend(l.users);
                return;
            }
        }
        let mut c = shared.borrow_mut();
        c.last_list = std::mem::take(&mut c.list_parts);
    }
    // Requests waiting for this answer.
    {
        let mut c = shared.borrow_mut();
        // Requests given up on (timed out, or their command failed).
        c.waiters.retain(|w| !w.tx.is_closed());
        if let Some(i) = c.waiters.iter().position(|w| (w.want)(&env)) {
            let w = c.waiters.remove(i);
            let _ = w.tx.send(env.clone());
            if env.msg_type() != "USER_ADVERTISE" {
                return;
            }
        }
    }
    let msg = match env.message() {
        Ok(m) => m,
        Err(e) => {
            if first_unread(shared, env.msg_type()) {
                out.warning(format!(
                    "malformed {} from the server: {e} (said once per connection)",
                    env.msg_type()
                ));
            }
            return;
        }
    };
    match msg {
        Message::UserAdvertise(UserAdvertise {
            user_id,
            server_id,
            pubkey,
            meta,
            ..
        }) => {
            let contact = Contact::from_advert(user_id, server_id, pubkey, meta.as_ref());
            advertised(shared, &out, contact);
        }
        Message::UserRemove(UserRemove {
            user_id, server_id, ..
        }) => {
            let shown = shared.borrow().roster.display(&user_id);
            let removed = shared.borrow_mut().roster.remove(&user_id, &server_id);
            if let Some(gone) = removed {
                let fields = json!({ "user_id": user_id, "online": false });
                if gone.registered || out.is_json() {
                    out.event("presence", format!("* {shown} left"), fields);
                } else {
                    guest_news(shared, &out, false);
                }
            }
        }
        Message::UserDeliver(d) => deliver(shared, tx, &env, d).await,
        Message::MailReceipt(r) => super::mail::receipt(shared, r),
        // Other implementations' servers pass a user's frame on as it came
        // (`from` the sender): the same checks as a delivery.
        Message::MsgDirect(m) => plain(shared, tx, &env, DeliverContent::Dm(m)).await,
        Message::MsgPublicChannel(m) => plain(shared, tx, &env, DeliverContent::Public(m)).await,
        Message::FileStart(m) => plain(shared, tx, &env, DeliverContent::FileStart(m)).await,
        Message::FileChunk(m) => plain(shared, tx, &env, DeliverContent::FileChunk(m)).await,
        Message::FileEnd(m) => plain(shared, tx, &env, DeliverContent::FileEnd(m)).await,
        Message::PublicChannelUpdated(u) => {
            let wraps = u.wraps.into_iter().map(|w| (w.member_id, w.wrapped_key));
            group_key(shared, &env, wraps.collect()).await;
        }
        Message::PublicChannelKeyShare(s) => {
            let shares = s.shares.into_iter();
            let wraps = shares.map(|w| (w.member, w.wrapped_public_channel_key));
            group_key(shared, &env, wraps.collect()).await;
        }
        Message::Error(e) => {
            let words = e.code.describe().to_owned();
            out.error(
                e.code.as_str(),
                if e.detail.is_empty() {
                    words
                } else {
                    format!("{words} ({})", e.detail)
                },
            );
        }
        _ => {}
    }
}

/// The frames of a `NEWS_BATCH` [ext], in order; anything but an advert or
/// a removal inside one is ignored (said once per batch). A frame of the
/// batch's own server inside a batch it signed is `{type, payload}`: the
/// batch's `from`, `to` and `ts` stand for its own.
async fn news_batch(shared: &Shared, tx: &Sink, env: &Envelope) {
    let frames = env.payload()["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut odd = 0;
    for mut frame in frames {
        if let Some(obj) = frame.as_object_mut() {
            obj.entry("from").or_insert_with(|| env.from().into());
            obj.entry("to").or_insert_with(|| "*".into());
            obj.entry("ts").or_insert_with(|| env.ts().into());
        }
        let presence = matches!(
            frame["type"].as_str(),
            Some("USER_ADVERTISE" | "USER_REMOVE")
        );
        match serde_json::to_vec(&frame) {
            Ok(bytes) if presence => Box::pin(handle_frame(shared, tx, &bytes)).await,
            _ => odd += 1,
        }
    }
    if odd > 0 {
        let out = shared.borrow().out.clone();
        out.warning(format!(
            "{odd} frames of a news batch were not presence news: ignored"
        ));
    }
}

/// A user advertised: in the roster, its key pinned (or a change warned
/// about), and its arrival or new name shown.
pub(super) fn advertised(shared: &Shared, out: &Output, contact: Contact) {
    let is_me = {
        let c = shared.borrow();
        c.me.id == contact.user_id || c.joining.as_ref().map(|j| &j.id) == Some(&contact.user_id)
    };
    let before = shared.borrow().roster.get(&contact.user_id).cloned();
    let was = before.as_ref().map(|b| shared.borrow().roster.show(b));
    shared.borrow_mut().roster.upsert(contact.clone());
    if is_me {
        // Our own name, as the network now gives it (a rename, a name lost).
        let mut c = shared.borrow_mut();
        if c.me.id == contact.user_id && contact.registered {
            c.me.name = contact.name.clone();
        }
        return;
    }
    trust::observe(shared, &contact);
    let (shown, key_status) = {
        let c = shared.borrow();
        (
            c.roster.show(&contact),
            c.pins.trust(&contact.user_id, &contact.pubkey).word(),
        )
    };
    let fields = json!({
        "user_id": contact.user_id,
        "server_id": contact.server_id,
        "name": contact.name,
        "registered": contact.registered,
        "home": contact.home,
        "shown": shown,
        "key_status": key_status,
        "online": true,
    });
    match (before, was) {
        // Guests come and go by the dozen: in text, summed up in one line.
        (None, _) if !contact.registered && !out.is_json() => guest_news(shared, out, true),
        (None, _) => out.event("presence", format!("* {shown} is online"), fields),
        (Some(b), Some(was)) if b.name != contact.name || b.registered != contact.registered => {
            let mut fields = fields;
            fields["was"] = json!(was);
            out.event("presence", format!("* {was} is now {shown}"), fields);
        }
        _ => {}
    }
}

/// How long guests' comings and goings are summed up before one line says so.
const GUEST_NEWS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// A guest came (`came`) or left: counted, and said in one line a few
/// seconds after the first (`/list` shows who).
fn guest_news(shared: &Shared, out: &Output, came: bool) {
    let first = {
        let mut c = shared.borrow_mut();
        let news = &mut c.guest_news;
        if came {
            news.0 += 1;
        } else {
            news.1 += 1;
        }
        news.0 + news.1 == 1
    };
    if !first {
        return;
    }
    let (shared, out) = (shared.clone(), out.clone());
    actix_web::rt::spawn(async move {
        tokio::time::sleep(GUEST_NEWS_EVERY).await;
        let (came, left) = std::mem::take(&mut shared.borrow_mut().guest_news);
        let plural = |n: usize| if n == 1 { "guest" } else { "guests" };
        let line = match (came, left) {
            (0, l) => format!("* {l} {} left", plural(l)),
            (c, 0) => format!("* {c} {} came online (/list shows who)", plural(c)),
            (c, l) => format!(
                "* {c} {} came online, {l} left (/list shows who)",
                plural(c)
            ),
        };
        out.info(line);
    });
}

/// Whether a frame of type `t` we cannot read is the first of its type on
/// this connection (another implementation's frames repeat: said once).
fn first_unread(shared: &Shared, t: &str) -> bool {
    let mut c = shared.borrow_mut();
    let connection = c.connection;
    if c.unread.0 != connection {
        c.unread = (connection, Vec::new());
    }
    let seen = &mut c.unread.1;
    if seen.len() >= 32 || seen.iter().any(|x| x == t) {
        return false;
    }
    seen.push(t.chars().take(64).collect());
    true
}

/// A user's frame another implementation's server passed on unchanged.
async fn plain(shared: &Shared, tx: &Sink, env: &Envelope, content: DeliverContent) {
    let Ok(sender) = socp_protocol::UserId::parse(env.from()) else {
        return;
    };
    let delivery = UserDeliver {
        sender,
        orig_ts: None,
        content,
        mail: None,
    };
    deliver(shared, tx, env, delivery).await;
}

/// Another implementation's server delivers a public message to each member
/// as it delivers a DM (no `kind`): a "DM" whose content signature is the
/// public form (no `to`) by the sender's advertised key, and not the DM form,
/// is read as the public message it is (a DM cannot be passed off as one:
/// its signature covers `to`).
fn public_as_dm(
    content: DeliverContent,
    sender_key: &socp_protocol::PublicKey,
    sender: &socp_protocol::UserId,
    me: &socp_protocol::UserId,
    ts: i64,
) -> DeliverContent {
    let DeliverContent::Dm(m) = content else {
        return content;
    };
    let (ct, sig) = (&m.ciphertext, &m.content_sig);
    let dm = content::verify_dm(sender_key, sig, ct, sender.as_str(), me.as_str(), ts).is_ok();
    if dm || content::verify_public(sender_key, sig, ct, sender.as_str(), ts).is_err() {
        return DeliverContent::Dm(m);
    }
    DeliverContent::Public(socp_protocol::message::MsgPublicChannel {
        ciphertext: m.ciphertext,
        sender_pub: m.sender_pub,
        content_sig: m.content_sig,
        group_id: "public".to_owned(),
        public_version: None,
    })
}

/// A delivery: verify that `sender_pub` is the key the network advertised for
/// the sender and that the content signature verifies, then decrypt.
async fn deliver(shared: &Shared, tx: &Sink, env: &Envelope, d: UserDeliver) {
    // A DM that waited for us [ext]: shown once, then acknowledged.
    let mail = match (&d.mail, &d.content) {
        (Some(tag), DeliverContent::Dm(m)) => Some((tag.clone(), m.sender_pub.clone())),
        _ => None,
    };
    let (out, me, contact, download_dir) = {
        let c = shared.borrow();
        (
            c.out.clone(),
            // For the account a login is switching to, while it switches.
            c.joining
                .clone()
                .filter(|j| j.id.as_str() == env.to().as_str())
                .unwrap_or_else(|| c.me.clone()),
            c.roster.get(&d.sender).cloned(),
            c.config.download_dir.clone(),
        )
    };
    if let Some((tag, _)) = &mail {
        if shared.borrow_mut().mail.was_seen(&tag.id) {
            return super::mail::acknowledge(tx, &me, &tag.id).await;
        }
    }
    let ts = d.orig_ts.unwrap_or(env.ts());
    let sender = d.sender.clone();
    // The sender of a kept DM may be offline now.
    let contact = match (contact, &mail) {
        (None, Some((tag, key))) => Some(super::mail::offline_sender(
            shared,
            env.from_server(),
            &sender,
            tag,
            key,
        )),
        (contact, _) => contact,
    };
    let shown = match (&contact, shared.borrow().roster.get(&sender)) {
        (Some(c), None) => shared.borrow().roster.show(c),
        _ => shared.borrow().roster.display(&sender),
    };
    // Refusals name the claimed sender in full: an impersonation shows.
    let claimed = if shown.contains(sender.as_str()) {
        shown.clone()
    } else {
        format!("{shown} [{sender}]")
    };
    let mut mark = unverified_mark(shared, &sender, contact.as_ref());
    if mail.is_some() {
        mark.text.push_str(&super::mail::sent_while_away(ts));
    }
    let Some(contact) = contact else {
        out.warning(format!(
            "a message claiming to be from {sender}, who is not advertised online, was refused"
        ));
        return;
    };
    let forged = |what: &str| {
        format!(
            "FORGED {what} claiming to be from {claimed}: {}; not shown",
            "the sender key does not match the key the network advertised"
        )
    };
    // RSA: off the event loop.
    let (key, from, to) = (contact.pubkey.clone(), sender.clone(), me.id.clone());
    let content = d.content;
    let Ok(content) = blocking(move || public_as_dm(content, &key, &from, &to, ts)).await else {
        return;
    };
    match content {
        DeliverContent::Dm(m) => {
            let (me_id, s) = (me.id.clone(), sender.clone());
            let verify = move |pk: &socp_protocol::PublicKey| {
                content::verify_dm(
                    pk,
                    &m.content_sig,
                    &m.ciphertext,
                    s.as_str(),
                    me_id.as_str(),
                    ts,
                )
                .is_ok()
                .then_some(m.ciphertext)
            };
            let (sender_pub, what) = (m.sender_pub, TextKind::Dm);
            show_text(
                shared,
                &contact,
                &sender_pub,
                me.key.clone(),
                verify,
                what,
                &shown,
                &claimed,
                &mark,
                ts,
            )
            .await;
            if let Some((tag, _)) = mail {
                let kept = shared.borrow_mut().mail.remember(&tag.id);
                if let Err(e) = kept {
                    out.error("FILE", format!("cannot note a received message: {e}"));
                }
                super::mail::acknowledge(tx, &me, &tag.id).await;
            }
        }
        // Our own public message passed back to us by a server that sends
        // the channel's messages to every member: shown when sent.
        DeliverContent::Public(_) if sender == me.id => {}
        DeliverContent::Public(m) => {
            let s = sender.clone();
            let verify = move |pk: &socp_protocol::PublicKey| {
                content::verify_public(pk, &m.content_sig, &m.ciphertext, s.as_str(), ts)
                    .is_ok()
                    .then_some(m.ciphertext)
            };
            let (sender_pub, what) = (m.sender_pub, TextKind::Public);
            show_text(
                shared,
                &contact,
                &sender_pub,
                me.key.clone(),
                verify,
                what,
                &shown,
                &claimed,
                &mark,
                ts,
            )
            .await;
        }
        DeliverContent::FileStart(start) => {
            let key = (sender.clone(), start.file_id.as_str().to_owned());
            let (name, size) = (start.name.clone(), start.size);
            // Fast mode [ext]: the file key, unwrapped with ours (RSA, off the loop).
            let wrapped = start.fast.as_ref().map(|f| f.key.clone());
            let opened = match IncomingFile::new(sender.clone(), start).and_then(|mut file| {
                // A large file goes to disk as it arrives.
                file.spill_into(&download_dir)
                    .map_err(|e| state::Discarded(format!("it cannot be written: {e}")))?;
                Ok(file)
            }) {
                Ok(mut file) => match wrapped {
                    Some(wrapped) => {
                        let k = me.key.clone();
                        let unwrapped = blocking(move || {
                            k.decrypt(wrapped.bytes())
                                .ok()
                                .and_then(|b| FileKey::from_bytes(&b).ok())
                        })
                        .await;
                        match unwrapped {
                            Ok(Some(key)) => {
                                file.key = Some(key);
                                Ok(file)
                            }
                            _ => Err(state::Discarded(
                                "its file key cannot be opened with your key".into(),
                            )),
                        }
                    }
                    None => Ok(file),
                },
                Err(why) => Err(why),
            };
            match opened {
                Ok(file) => {
                    shared.borrow_mut().files.insert(key.clone(), file);
                    out.event(
                        "file_progress",
                        format!("receiving {} ({size} bytes) from {shown}{}", state::safe_name(&name), mark.text),
                        json!({ "file_id": key.1, "direction": "receive", "from": sender, "shown": shown, "unverified": mark.unverified, "name": name, "size": size, "done": 0 }),
                    );
                }
                Err(why) => out.warning(format!("file {name} from {claimed} refused: {}", why.0)),
            }
        }
        DeliverContent::FileChunk(chunk) => {
            let file_key = (sender.clone(), chunk.file_id.as_str().to_owned());
            if !shared.borrow().files.contains_key(&file_key) {
                return;
            }
            if chunk
                .sender_pub
                .as_ref()
                .is_some_and(|p| *p != contact.pubkey)
            {
                shared.borrow_mut().files.remove(&file_key);
                return out.warning(forged("file chunk"));
            }
            let (key, pk, me_id, s) = (
                me.key.clone(),
                contact.pubkey.clone(),
                me.id.clone(),
                sender.clone(),
            );
            let index = chunk.index;
            let (sealing, max_chunk) = match shared.borrow().files.get(&file_key) {
                Some(f) => (f.key.clone(), f.max_chunk()),
                None => return,
            };
            let opened = blocking(move || -> Result<Vec<u8>, &'static str> {
                if let Some(sig) = &chunk.content_sig {
                    content::verify_chunk(
                        &pk,
                        sig,
                        &chunk.ciphertext,
                        (s.as_str(), me_id.as_str(), ts),
                        (chunk.file_id.as_str(), chunk.index, chunk.total),
                    )
                    .map_err(|_| "a chunk's signature does not verify")?;
                }
                match &sealing {
                    Some(fk) => fk.open(
                        chunk.file_id.as_str(),
                        chunk.index,
                        chunk.ciphertext.bytes(),
                    ),
                    None => key.decrypt(chunk.ciphertext.bytes()),
                }
                .map_err(|_| "a chunk cannot be decrypted")
            })
            .await;
            let mut c = shared.borrow_mut();
            let result = match opened {
                Ok(Ok(plain)) => match c.files.get_mut(&file_key) {
                    Some(f) => f
                        .add(index, plain)
                        .map_err(|d| d.0)
                        .map(|_| (f.received(), f.start.size, state::safe_name(&f.start.name))),
                    None => return,
                },
                Ok(Err(why)) => Err(why.to_owned()),
                Err(_) => return,
            };
            drop(c);
            match result {
                Ok((got, size, name)) => {
                    let before = got.saturating_sub(max_chunk as u64) * 10 / size.max(1);
                    let now = got * 10 / size.max(1);
                    if now != before {
                        out.progress(
                            &file_key.1,
                            format!("receiving {name} from {shown}: {}", bar((got * 100 / size.max(1)) as usize)),
                            json!({ "file_id": file_key.1, "name": name, "direction": "receive", "done_bytes": got, "size": size }),
                        );
                    }
                }
                Err(why) => {
                    let gone = shared.borrow_mut().files.remove(&file_key);
                    let name = gone
                        .map(|f| state::safe_name(&f.start.name))
                        .unwrap_or_default();
                    out.warning(format!("file {name} from {claimed} discarded: {why}"));
                }
            }
        }
        DeliverContent::FileEnd(end) => {
            let Some(file) = shared
                .borrow_mut()
                .files
                .remove(&(sender.clone(), end.file_id.as_str().to_owned()))
            else {
                return;
            };
            let name = file.start.name.clone();
            if end.status.as_deref() == Some(super::transfer::FILE_CANCELLED) {
                out.event(
                    "file_cancelled",
                    format!(
                        "{shown} cancelled sending {}; what arrived is dropped",
                        state::safe_name(&name)
                    ),
                    json!({ "from": sender, "shown": shown, "name": name, "direction": "receive" }),
                );
                return;
            }
            match file.save(&download_dir, &name) {
                Ok(saved) => out.event(
                    "file_received",
                    format!("received {} from {shown}{}: saved {}", state::safe_name(&name), mark.text, saved.path.display()),
                    json!({ "from": sender, "shown": shown, "registered": contact.registered, "unverified": mark.unverified, "key_status": mark.status, "name": name, "path": saved.path, "size": saved.size, "sha256": saved.sha256 }),
                ),
                Err(state::NotSaved::Io(e)) => out.error("FILE", format!("cannot save {name}: {e}")),
                Err(state::NotSaved::Discarded(why)) => {
                    out.warning(format!("file {name} from {claimed} discarded: {}", why.0))
                }
            }
        }
    }
}
