//! Offline delivery [ext], the client's part: a DM to a registered user who
//! is offline goes to its key from the directory (USER_LOOKUP); the server
//! keeps it and says so (MAIL_RECEIPT), shown once per message; a DM that
//! waited for us is shown once (its mail id is remembered on disk) and
//! acknowledged (MAIL_ACK), so its home server forgets it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use socp_protocol::message::{MailAck, MailReceipt, MailStatus, MailTag, UserLookup};
use socp_protocol::{now_ms, Envelope, Message, PublicKey, ServerId, To, UserId};

use super::connection::{answer, expect, send, Sink};
use super::history::{open_private, Local};
use super::state::{clean_name, Contact};
use super::{fail, Failure, Shared};

/// Mail ids remembered (the newest); the file is rewritten past twice that.
const SEEN_KEPT: usize = 4_096;
/// DM parts remembered for their receipts.
const SENT_KEPT: usize = 4_096;

/// One part of a DM we sent.
#[derive(Debug, Clone)]
struct Sent {
    /// Which message (numbered by this client).
    message: u64,
    part: usize,
    parts: usize,
    /// The recipient as shown when it was sent.
    shown: String,
    /// The start of the text.
    preview: String,
}

/// What the client keeps about kept DMs.
#[derive(Debug, Default)]
pub(crate) struct MailState {
    sent: HashMap<(UserId, i64), Sent>,
    sent_order: VecDeque<(UserId, i64)>,
    next_message: u64,
    /// Receipts already shown: (message, status).
    said: HashSet<(u64, &'static str)>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    seen_file: Option<PathBuf>,
    loaded: bool,
}

impl MailState {
    /// Kept at `home/history/mail-seen`.
    pub(crate) fn new(home: &std::path::Path) -> MailState {
        MailState {
            seen_file: Some(home.join("history").join("mail-seen")),
            ..Default::default()
        }
    }

    /// Number a new message of `parts` parts to `shown`.
    pub(crate) fn message(&mut self) -> u64 {
        self.next_message += 1;
        self.next_message
    }

    /// Part `part` of `message` went to `to` with this `ts`.
    pub(crate) fn sent(
        &mut self,
        to: &UserId,
        ts: i64,
        (message, part, parts): (u64, usize, usize),
        shown: &str,
        text: &str,
    ) {
        let key = (to.clone(), ts);
        self.sent.insert(
            key.clone(),
            Sent {
                message,
                part,
                parts,
                shown: shown.to_owned(),
                preview: preview(text),
            },
        );
        self.sent_order.push_back(key);
        while self.sent_order.len() > SENT_KEPT {
            if let Some(old) = self.sent_order.pop_front() {
                self.sent.remove(&old);
            }
        }
    }

    fn load(&mut self) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let Some(text) = self
            .seen_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return;
        };
        for id in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if self.seen.insert(id.to_owned()) {
                self.seen_order.push_back(id.to_owned());
            }
        }
    }

    /// Whether mail `id` was received before.
    pub(crate) fn was_seen(&mut self, id: &str) -> bool {
        self.load();
        self.seen.contains(id)
    }

    /// Remember mail `id` (on disk, owner-only).
    pub(crate) fn remember(&mut self, id: &str) -> std::io::Result<()> {
        self.load();
        if !self.seen.insert(id.to_owned()) {
            return Ok(());
        }
        self.seen_order.push_back(id.to_owned());
        let Some(path) = self.seen_file.clone() else {
            return Ok(());
        };
        if self.seen_order.len() > 2 * SEEN_KEPT {
            while self.seen_order.len() > SEEN_KEPT {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
                }
            }
            let tmp = path.with_extension("tmp");
            let mut f = open_private(&tmp, false)?;
            for id in &self.seen_order {
                writeln!(f, "{id}")?;
            }
            f.sync_all()?;
            return std::fs::rename(&tmp, &path);
        }
        let mut f = open_private(&path, true)?;
        writeln!(f, "{id}")
    }
}

fn preview(text: &str) -> String {
    let mut p: String = text.chars().take(40).collect();
    if p.len() < text.len() {
        p.push('…');
    }
    p
}

/// `who`, a registered user who is not online, as the directory has it
/// (`None` if the server names no registered user so, or is not socp).
pub(crate) async fn lookup(
    shared: &Shared,
    tx: &Sink,
    who: &str,
) -> Result<Option<Contact>, Failure> {
    let me = {
        let c = shared.borrow();
        if c.own_server.is_none() {
            return Ok(None);
        }
        c.me.id.clone()
    };
    let env = Envelope::new(
        &me,
        To::Id("server".into()),
        now_ms(),
        &UserLookup {
            user: who.to_owned(),
        },
    );
    let rx = expect(shared, |e| {
        matches!(e.msg_type(), "USER_LOOKUP_RESULT")
            || (e.msg_type() == "ERROR" && e.payload()["code"] == "USER_NOT_FOUND")
    });
    send(tx, &env)?;
    let env = match answer(rx, "looking the user up").await {
        Ok(env) => env,
        Err(f) if f.code == "USER_NOT_FOUND" => return Ok(None),
        Err(f) => return Err(f),
    };
    match env.message() {
        Ok(Message::UserLookupResult(r)) => Ok(Some(Contact {
            user_id: r.user_id,
            server_id: r.home_server.clone(),
            pubkey: r.pubkey,
            name: r.username.as_deref().map(clean_name),
            registered: true,
            home: Some(r.home_server.to_string()),
            fast_files: false,
        })),
        _ => Err(fail(
            "BAD_REQUEST",
            "the server's lookup answer was malformed",
        )),
    }
}

/// The sender of a DM that waited for us, when it is not online: its pinned
/// key if it has one (the DM must match it), else the key in the DM, with
/// the name the home server's directory gives that key.
pub(crate) fn offline_sender(
    shared: &Shared,
    server: ServerId,
    sender: &UserId,
    tag: &MailTag,
    sender_pub: &PublicKey,
) -> Contact {
    let c = shared.borrow();
    let name = tag.sender_name.as_deref().map(clean_name);
    match c.pins.get(sender) {
        Some(pin) => Contact {
            user_id: sender.clone(),
            server_id: server,
            pubkey: pin.key.clone(),
            name: pin.name.clone().or(name),
            registered: pin.registered || tag.sender_registered,
            home: None,
            fast_files: false,
        },
        None => Contact {
            user_id: sender.clone(),
            server_id: server,
            pubkey: sender_pub.clone(),
            name,
            registered: tag.sender_registered,
            home: None,
            fast_files: false,
        },
    }
}

/// " (sent 10:02 while you were offline)", as shown after the sender's name.
pub(crate) fn sent_while_away(ts: i64) -> String {
    let at = Local::at(ts);
    let today = Local::at(now_ms());
    if at.date() == today.date() {
        format!(" (sent {} while you were offline)", at.hm())
    } else {
        format!(" (sent {} {} while you were offline)", at.date(), at.hm())
    }
}

/// Tell the server we (`me`) have mail `id`, signed (our home server then
/// forgets it, on our signature only).
pub(crate) async fn acknowledge(tx: &Sink, me: &super::identity::Me, id: &str) {
    let env = Envelope::new(
        &me.id,
        To::Id("server".into()),
        now_ms(),
        &MailAck {
            mail_ids: vec![id.to_owned()],
            user_id: None,
            user_frame: None,
        },
    );
    let key = me.key.clone();
    if let Ok(Ok(env)) = super::blocking(move || env.signed(&key)).await {
        let _ = send(tx, &env);
    }
}

/// A MAIL_RECEIPT: what became of a DM we sent, once per message.
pub(crate) fn receipt(shared: &Shared, r: MailReceipt) {
    let (out, sent, shown) = {
        let c = shared.borrow();
        (
            c.out.clone(),
            c.mail.sent.get(&(r.user_id.clone(), r.orig_ts)).cloned(),
            c.roster.display(&r.user_id),
        )
    };
    let (who, preview) = match &sent {
        Some(s) => (s.shown.clone(), format!(": {}", s.preview)),
        None => (shown, String::new()),
    };
    let (word, show_on) = match r.status {
        MailStatus::Queued => ("queued", sent.as_ref().map(|s| s.part == 0)),
        MailStatus::Refused => ("refused", None),
        MailStatus::Delivered => ("delivered", sent.as_ref().map(|s| s.part + 1 == s.parts)),
        MailStatus::Expired => ("expired", None),
    };
    if let Some(s) = &sent {
        if show_on == Some(false) && r.status != MailStatus::Refused {
            return;
        }
        if !shared.borrow_mut().mail.said.insert((s.message, word)) {
            return;
        }
    }
    let fields = json!({
        "status": word,
        "to": r.user_id,
        "shown": who,
        "mail_id": r.mail_id,
        "orig_ts": r.orig_ts,
        "detail": r.detail,
    });
    match r.status {
        MailStatus::Queued => out.event(
            "mail",
            format!("queued for {who} (offline){preview}"),
            fields,
        ),
        MailStatus::Delivered => out.event(
            "mail",
            format!(
                "{who} has your message from {}{preview}",
                Local::at(r.orig_ts).hm()
            ),
            fields,
        ),
        MailStatus::Refused => out.event(
            "mail",
            format!(
                "not delivered to {who}: {}{preview}",
                r.detail.as_deref().unwrap_or("refused")
            ),
            fields,
        ),
        MailStatus::Expired => out.event(
            "mail",
            format!("your message to {who} expired unread{preview}"),
            fields,
        ),
    }
}
