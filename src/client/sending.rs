//! What the client sends: `/list`, `/tell` and `/all` (files: `transfer`).
//! Frames are encrypted and signed on blocking threads (every core for
//! many), then sent paced at the server's frame-rate limit with flow control
//! ([`Flow`]).

use serde_json::json;
use socp_protocol::content;
use socp_protocol::message::{MsgDirect, MsgPublicChannel};
use socp_protocol::{now_ms, Base64Url, Envelope, Message, To};

use super::connection::{answer, expect, send, Sink};
use super::flow::{list_request, Flow};
use super::identity::Me;
use super::state::Contact;
use super::{blocking, fail, trust, Failure, Shared};

/// `/list`: who is online, as the server knows it.
pub(crate) async fn list(shared: &Shared, tx: &Sink) -> Result<(), Failure> {
    let (request, (_, answer_or_error)) = list_request(shared).await?;
    let rx = expect(shared, answer_or_error);
    send(tx, &request)?;
    let env = answer(rx, "/list").await?;
    let users = match env.message() {
        Ok(Message::ListResponse(l)) if l.users.is_empty() && !l.online_users.is_empty() => {
            listed_by_id(shared, tx, env.from(), l.online_users).await?
        }
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

/// Most keys one `/list` asks for (PUBKEY_REQUEST), a frame each.
const KEYS_ASKED: usize = 200;

/// A listing of ids only (`online_users`, as one implementation lists; its
/// server sends its users no adverts): the ids not in the roster have their
/// keys asked for (PUBKEY_REQUEST to our server, answers in any order);
/// those it has one for join the roster as adverts would, at `server` (the
/// listing's sender). The rest are listed as unknown there.
async fn listed_by_id(
    shared: &Shared,
    tx: &Sink,
    server: &str,
    ids: Vec<socp_protocol::UserId>,
) -> Result<Vec<socp_protocol::message::ListedUser>, Failure> {
    let server_id =
        socp_protocol::ServerId::parse(server).map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
    let (me, keys) = {
        let c = shared.borrow();
        (c.me.clone(), c.key_encoding)
    };
    let unknown: Vec<socp_protocol::UserId> = {
        let c = shared.borrow();
        ids.iter()
            .filter(|id| **id != me.id && c.roster.get(id).is_none())
            .take(KEYS_ASKED)
            .cloned()
            .collect()
    };
    let (me2, to) = (me.clone(), server.to_owned());
    let requests = blocking(move || {
        unknown
            .into_iter()
            .map(|user_id| {
                let env = Envelope::new(
                    &me2.id,
                    To::Id(to.clone()),
                    now_ms(),
                    &socp_protocol::message::PubkeyRequest { user_id },
                );
                me2.sign_frame(env, keys)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    let mut answers = Vec::with_capacity(requests.len());
    for request in &requests {
        answers.push(expect(shared, |e| {
            matches!(e.msg_type(), "PUBKEY_RESPONSE" | "ERROR")
        }));
        send(tx, request)?;
    }
    let out = shared.borrow().out.clone();
    for rx in answers {
        let Ok(env) = super::connection::answer(rx, "a key").await else {
            continue;
        };
        if let Ok(Message::PubkeyResponse(r)) = env.message() {
            match r.pubkey {
                Some(pubkey) => {
                    let contact = Contact::from_advert(r.user_id, server_id.clone(), pubkey, None);
                    super::receiving::advertised(shared, &out, contact);
                }
                None => {
                    let mut c = shared.borrow_mut();
                    if !c.keyless.contains(&r.user_id) {
                        if c.keyless.len() >= KEYS_ASKED {
                            c.keyless.remove(0);
                        }
                        c.keyless.push(r.user_id);
                    }
                }
            }
        }
    }
    let c = shared.borrow();
    Ok(ids
        .into_iter()
        .map(|id| socp_protocol::message::ListedUser {
            server_id: c
                .roster
                .get(&id)
                .map_or_else(|| server_id.clone(), |k| k.server_id.clone()),
            name: c
                .roster
                .get(&id)
                .and_then(|k| k.name.clone())
                .unwrap_or_default(),
            user_id: id,
        })
        .collect())
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

/// Whether `m` reads public messages under its server's channel key (of
/// `keys`) rather than as its own RSA copy: a member not known to run socp's
/// client on a server whose key we hold.
fn grouped(m: &Contact, keys: &[(String, socp_protocol::crypto::group::GroupKey)]) -> bool {
    !m.fast_files && keys.iter().any(|(s, _)| *s == m.server_id.as_str())
}

/// `/all`: a public message, encrypted and signed once per member.
pub(crate) async fn all(shared: &Shared, tx: &Sink, text: &str) -> Result<(), Failure> {
    let (me, members, rate, keys) = {
        let c = shared.borrow();
        // Members not known to run socp's client, on a server whose channel
        // key we hold, read the one ciphertext under it (below), not
        // per-member RSA; socp clients always get their own RSA copy.
        let keyed = |m: &Contact| grouped(m, &c.group_keys);
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
            // Only where a member reads it: a channel of socp clients only
            // has nobody to give it to.
            .filter(|(server, _)| {
                c.roster.all().any(|m| {
                    m.user_id != c.me.id
                        && m.server_id.as_str() == server
                        && grouped(m, &c.group_keys)
                })
            })
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
                let mut env = Envelope::new(
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
                // Only the standard fields: that implementation's servers
                // pass on only the fields they know, and our signature must
                // survive it (an absent `group_id` reads as "public").
                if let serde_json::Value::Object(p) = env.payload_mut() {
                    p.remove("group_id");
                }
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

/// `env` signed with our key, off the event loop (servers of other
/// implementations verify every frame a user sends, and pass a user's file
/// frames on as they came).
pub(super) async fn signed(me: &Me, env: Envelope) -> Result<Envelope, Failure> {
    let key = me.key.clone();
    blocking(move || env.signed(&key))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))
}

/// The contact `who` names (a registered user's name, or a user id; see
/// [`Roster::resolve`](super::state::Roster::resolve)).
pub(super) fn resolve(shared: &Shared, who: &str) -> Result<Contact, Failure> {
    let c = shared.borrow();
    c.roster.resolve(who).cloned().map_err(|e| {
        if c.keyless.iter().any(|k| k.as_str() == who) {
            let why = format!("{who} is online, but its server gives no key for it (see /list)");
            fail("USER_NOT_FOUND", why)
        } else {
            fail("USER_NOT_FOUND", e)
        }
    })
}

/// Encrypt-and-sign jobs on every core; results in input order.
pub(super) async fn parallel<T, R>(
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
