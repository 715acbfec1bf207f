//! Text deliveries (DMs and public messages): the sender's key checked,
//! the content signature verified, the text opened, joined from its parts,
//! kept in the history and shown with how far the sender's key is trusted.

use std::sync::Arc;

use serde_json::json;
use socp_protocol::crypto::group::GroupKey;
use socp_protocol::{Base64Url, PrivateKey};

use super::blocking;
use super::channel::seen_public;
use super::pins::Trust;
use super::state::Contact;
use super::Shared;

/// How far a sender's key is trusted, as shown beside its messages.
pub(super) struct Mark {
    /// The advertised key is not the pinned one (not yet accepted).
    pub(super) unverified: bool,
    /// `key_status` for scripts (see [`Trust::word`]).
    pub(super) status: &'static str,
    /// Shown after the sender's name: empty, `[verified]` or the warning.
    pub(super) text: String,
}

/// The mark for messages from `sender`, by the trust in its advertised key.
pub(super) fn unverified_mark(
    shared: &Shared,
    sender: &socp_protocol::UserId,
    contact: Option<&Contact>,
) -> Mark {
    let c = shared.borrow();
    let Some(contact) = contact else {
        return Mark {
            unverified: false,
            status: Trust::Unknown.word(),
            text: String::new(),
        };
    };
    let t = c.pins.trust(sender, &contact.pubkey);
    let text = match &t {
        Trust::Changed(_) => format!(
            " [UNVERIFIED: key changed; /whois, then /accept {}]",
            c.roster.handle(contact)
        ),
        Trust::Verified(_) => " [verified]".to_owned(),
        Trust::Pinned | Trust::Unknown => String::new(),
    };
    Mark {
        unverified: matches!(t, Trust::Changed(_)),
        status: t.word(),
        text,
    }
}

/// A text delivery's kind: how it is shown.
#[derive(Clone, Copy)]
pub(super) enum TextKind {
    Dm,
    Public,
}

/// Check, open and show a text delivery, or warn why it was refused.
#[allow(clippy::too_many_arguments)]
pub(super) async fn show_text(
    shared: &Shared,
    contact: &Contact,
    sender_pub: &socp_protocol::PublicKey,
    key: Arc<PrivateKey>,
    verify: impl FnOnce(&socp_protocol::PublicKey) -> Option<Base64Url> + Send + 'static,
    kind: TextKind,
    shown: &str,
    claimed: &str,
    mark: &Mark,
    ts: i64,
) {
    let (event, what, line) = match kind {
        TextKind::Dm => ("dm", "a DM", format!("DM from {shown}{}: ", mark.text)),
        TextKind::Public => (
            "public",
            "a public message",
            format!("[public] {shown}{}: ", mark.text),
        ),
    };
    let out = shared.borrow().out.clone();
    let group: Vec<GroupKey> = match kind {
        TextKind::Public => shared
            .borrow()
            .group_keys
            .iter()
            .map(|(_, k)| k.clone())
            .collect(),
        TextKind::Dm => Vec::new(),
    };
    let opened = match open_text(contact, sender_pub, key, verify, group).await {
        Ok((text, grouped)) => {
            if matches!(kind, TextKind::Public)
                && seen_public(shared, &contact.user_id, &text, grouped)
            {
                return;
            }
            Ok(text)
        }
        // The copy, under a channel key we do not hold, of a public message
        // whose RSA copy was shown: nothing to say.
        Err(why)
            if matches!(kind, TextKind::Public)
                && why.contains("cannot be decrypted")
                && shared
                    .borrow()
                    .recent_public
                    .iter()
                    .any(|(f, _, _)| *f == contact.user_id) =>
        {
            return;
        }
        Err(why) => Err(why),
    };
    // A part of a long message waits for the rest ([ext]).
    let now = std::time::Instant::now();
    let public = matches!(kind, TextKind::Public);
    let (opened, late) = {
        let mut c = shared.borrow_mut();
        let late = c.parts.expired(now);
        let opened = match opened {
            Ok(text) => match c.parts.take(&contact.user_id, public, text, now) {
                super::parts::Taken::Whole(text) => Ok(Some(text)),
                super::parts::Taken::Waiting => Ok(None),
            },
            Err(why) => Err(why),
        };
        (opened, late)
    };
    for (from, _, text, got, count) in late {
        out.warning(format!(
            "only {got} of {count} parts of a message from {from} arrived: {text}"
        ));
    }
    if let Ok(Some(text)) = &opened {
        let with = match kind {
            TextKind::Dm => contact.user_id.to_string(),
            TextKind::Public => super::history::PUBLIC.to_owned(),
        };
        super::remember(
            shared,
            &with,
            super::history::Entry {
                ts,
                dir: "in".into(),
                from: contact.user_id.to_string(),
                shown: shown.to_owned(),
                kind: event.to_owned(),
                text: text.clone(),
            },
        );
    }
    match opened {
        Ok(None) => {}
        Ok(Some(text)) => out.event(
            event,
            format!("{line}{text}"),
            json!({
                "from": contact.user_id,
                "name": contact.name,
                "shown": shown,
                "registered": contact.registered,
                "unverified": mark.unverified,
                "key_status": mark.status,
                "text": text,
                "ts": ts,
            }),
        ),
        // Signed by its sender, for a channel key this client does not hold
        // (another implementation's channel): said, not alarmed about.
        Err(why) if public && why.contains("cannot be decrypted") => out.event(
            "unreadable",
            format!("[public] {shown}: a message under a channel key you do not hold"),
            json!({ "from": contact.user_id, "shown": shown, "ts": ts }),
        ),
        Err(why) => out.warning(format!(
            "{what} claiming to be from {claimed} was refused: {why}"
        )),
    }
}

/// Check a text delivery: `sender_pub` must be the key the network advertised
/// for the sender, `verify` (the content signature, with that key) must pass;
/// then decrypt. All RSA on a blocking thread. The text, or why it was refused.
/// A public message that RSA does not open is tried with the channel
/// `group` keys (one AES-GCM ciphertext for everyone, another
/// implementation's channel); the flag says it was opened so.
async fn open_text(
    contact: &Contact,
    sender_pub: &socp_protocol::PublicKey,
    key: Arc<PrivateKey>,
    verify: impl FnOnce(&socp_protocol::PublicKey) -> Option<Base64Url> + Send + 'static,
    group: Vec<GroupKey>,
) -> Result<(String, bool), String> {
    if *sender_pub != contact.pubkey {
        return Err("FORGED: the sender key does not match the key the network advertised".into());
    }
    let pk = contact.pubkey.clone();
    let opened = blocking(move || -> Result<(String, bool), &'static str> {
        let ct = verify(&pk).ok_or("the content signature does not verify")?;
        let (plain, grouped) = match key.decrypt(ct.bytes()) {
            Ok(plain) => (plain, false),
            Err(_) => group
                .iter()
                .find_map(|g| g.open(ct.bytes()).ok())
                .map(|plain| (plain, true))
                .ok_or("it cannot be decrypted with your key")?,
        };
        String::from_utf8(plain)
            .map(|text| (text, grouped))
            .map_err(|_| "it is not text")
    })
    .await
    .map_err(|e| e.detail)?;
    opened.map_err(str::to_owned)
}
