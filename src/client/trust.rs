//! Whom the client trusts with which key: `/whois`, `/verify`, `/accept`,
//! the warning when a pinned key changes, and writing the pinned keys (see
//! [`pins`](super::pins)).

use std::time::Duration;

use serde_json::json;
use socp_protocol::{now_ms, PublicKey, UserId};

use super::pins::{fingerprint, utc, Pin, Seen, Trust};
use super::state::Contact;
use super::{fail, Failure, Shared};

/// A user a trust command names: online (with the advertised key), or known
/// only by its pin.
enum Target {
    Online(Contact),
    Pinned(UserId, Pin),
}

/// The user `who` names: online ([`Roster::resolve`](super::state::Roster::resolve)),
/// else a pinned user with that username or id.
fn target(shared: &Shared, who: &str) -> Result<Target, Failure> {
    let c = shared.borrow();
    match c.roster.resolve(who) {
        Ok(contact) => Ok(Target::Online(contact.clone())),
        Err(why) => match c.pins.find(who) {
            Some((id, pin)) => Ok(Target::Pinned(id.clone(), pin.clone())),
            None => Err(fail("USER_NOT_FOUND", why)),
        },
    }
}

/// A key change seen for `contact` (first time for this key): the warning.
pub(crate) fn warn_changed(shared: &Shared, contact: &Contact, pinned: &PublicKey) {
    let (out, shown, handle) = {
        let c = shared.borrow();
        (
            c.out.clone(),
            c.roster.show(contact),
            c.roster.handle(contact),
        )
    };
    let (old, new) = (fingerprint(pinned), fingerprint(&contact.pubkey));
    out.event(
        "key_changed",
        format!(
            "!! the key of {shown} changed: pinned {old}, now {new}. It may be a new \
             device, or someone else: compare fingerprints with {shown} out of band \
             (/whois {handle}). Messages from {shown} are unverified until you /accept {handle}"
        ),
        json!({
            "user_id": contact.user_id,
            "name": contact.name,
            "shown": shown,
            "registered": contact.registered,
            "pinned_fingerprint": old,
            "fingerprint": new,
        }),
    );
}

/// A key the network shows for `contact` (an advert): pin it if new, warn
/// if it differs from the pin, and schedule writing the pins.
pub(crate) fn observe(shared: &Shared, contact: &Contact) {
    let seen = shared.borrow_mut().pins.observe(contact, now_ms());
    if let Seen::Changed {
        pinned,
        fresh: true,
    } = seen
    {
        warn_changed(shared, contact, &pinned);
    }
    schedule_save(shared);
}

/// Write the pins soon (adverts come in bursts: one write for a burst).
fn schedule_save(shared: &Shared) {
    {
        let mut c = shared.borrow_mut();
        if !c.pins.dirty() || c.pins_flush {
            return;
        }
        c.pins_flush = true;
    }
    let shared = shared.clone();
    actix_web::rt::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shared.borrow_mut().pins_flush = false;
        save_pins(&shared);
    });
}

/// Write the pins now, if changed; a failure is reported (once until it
/// changes). Whether they are saved.
pub(crate) fn save_pins(shared: &Shared) -> bool {
    let mut c = shared.borrow_mut();
    match c.pins.save() {
        Ok(()) => {
            if c.pins_error.take().is_some() {
                let path = c.pins.path().display().to_string();
                c.out
                    .info(format!("the pinned keys are saved in {path} again"));
            }
            true
        }
        Err(e) => {
            let why = format!(
                "cannot save the pinned keys in {}: {e}; they are kept for this session only",
                c.pins.path().display()
            );
            if c.pins_error.as_deref() != Some(why.as_str()) {
                c.out.error("FILE", why.clone());
                c.pins_error = Some(why);
            }
            false
        }
    }
}

/// `/whois`: who a user is, and how far its key is trusted.
pub(crate) fn whois(shared: &Shared, who: &str) -> Result<(), Failure> {
    let target = target(shared, who)?;
    let c = shared.borrow();
    let out = c.out.clone();
    let (id, name, registered, home, server, key, shown, handle) = match &target {
        Target::Online(ct) => (
            ct.user_id.clone(),
            ct.name.clone(),
            ct.registered,
            ct.home.clone(),
            Some(ct.server_id.to_string()),
            ct.pubkey.clone(),
            c.roster.show(ct),
            c.roster.handle(ct),
        ),
        Target::Pinned(id, pin) => (
            id.clone(),
            pin.name.clone(),
            pin.registered,
            None,
            None,
            pin.key.clone(),
            pin.name.clone().unwrap_or_else(|| id.to_string()),
            if pin.registered {
                pin.name.clone().unwrap_or_else(|| id.to_string())
            } else {
                id.to_string()
            },
        ),
    };
    let trust = c.pins.trust(&id, &key);
    let pin = c.pins.get(&id).cloned();
    drop(c);
    let fp = fingerprint(&key);
    let mut text = format!(
        "{shown}\n  user id:     {id}\n  username:    {}\n  kind:        {}\n",
        name.as_deref().unwrap_or("(none)"),
        if registered {
            match &home {
                Some(h) => format!("registered (home server {h})"),
                None => "registered".to_owned(),
            }
        } else {
            "guest (unregistered: anyone may use any name, and the id is its only identity)"
                .to_owned()
        },
    );
    text.push_str(&match &server {
        Some(s) => format!("  online at:   server {s}\n"),
        None => "  online:      no (known from its pinned key)\n".to_owned(),
    });
    text.push_str(&format!("  fingerprint: {fp}\n"));
    let pinned_at = pin.as_ref().map(|p| p.pinned_at);
    text.push_str(&match &trust {
        Trust::Verified(at) => format!("  verified:    yes, on {} (/verify)", utc(*at)),
        Trust::Changed(old) => format!(
            "  !! KEY CHANGED: the pinned key is {}; messages are unverified until you \
             /accept {handle}",
            fingerprint(old)
        ),
        Trust::Pinned => format!(
            "  verified:    no; pinned on first use{}. Compare the fingerprint with \
             {shown} in person or by phone, then /verify {handle}",
            pinned_at
                .map(|at| format!(" on {}", utc(at)))
                .unwrap_or_default()
        ),
        Trust::Unknown => "  verified:    no (not pinned)".to_owned(),
    });
    let verified_at = match trust {
        Trust::Verified(at) => Some(at),
        _ => None,
    };
    out.event(
        "whois",
        text,
        json!({
            "user_id": id,
            "name": name,
            "shown": shown,
            "registered": registered,
            "home": home,
            "server_id": server,
            "online": server.is_some(),
            "fingerprint": fp,
            "key_status": trust.word(),
            "verified": verified_at.is_some(),
            "verified_at": verified_at,
            "pinned_at": pinned_at,
            "pinned_fingerprint": pin.map(|p| fingerprint(&p.key)),
        }),
    );
    Ok(())
}

/// `/verify`: the user compared the pinned key's fingerprint out of band.
pub(crate) fn verify(shared: &Shared, who: &str) -> Result<(), Failure> {
    let (id, key, shown, handle) = match target(shared, who)? {
        Target::Online(ct) => {
            let c = shared.borrow();
            (
                ct.user_id.clone(),
                ct.pubkey.clone(),
                c.roster.show(&ct),
                c.roster.handle(&ct),
            )
        }
        Target::Pinned(id, pin) => {
            let shown = pin.name.clone().unwrap_or_else(|| id.to_string());
            (id, pin.key, shown, who.to_owned())
        }
    };
    let trust = shared.borrow().pins.trust(&id, &key);
    match trust {
        Trust::Changed(_) => {
            return Err(fail(
                "KEY_CHANGED",
                format!(
                    "the key of {shown} changed and is not accepted: compare the new \
                     fingerprint (/whois {handle}), /accept {handle}, then /verify {handle}"
                ),
            ))
        }
        Trust::Unknown => {
            return Err(fail(
                "USER_NOT_FOUND",
                format!("no key of {shown} is pinned"),
            ))
        }
        Trust::Pinned | Trust::Verified(_) => {}
    }
    let at = now_ms();
    shared.borrow_mut().pins.verify(&id, at);
    let saved = save_pins(shared);
    let out = shared.borrow().out.clone();
    let fp = fingerprint(&key);
    out.event(
        "verified",
        format!(
            "the key of {shown} is marked verified (fingerprint {fp}){}",
            if saved {
                ""
            } else {
                "; not saved: for this session only"
            }
        ),
        json!({
            "user_id": id,
            "shown": shown,
            "fingerprint": fp,
            "verified_at": at,
            "saved": saved,
        }),
    );
    Ok(())
}

/// `/accept`: pin a user's new key (unverified) after a key change.
pub(crate) fn accept(shared: &Shared, who: &str) -> Result<(), Failure> {
    let contact = match target(shared, who)? {
        Target::Online(ct) => ct,
        Target::Pinned(id, pin) => {
            return Err(fail(
                "USER_NOT_FOUND",
                format!(
                    "{} is not online: there is no new key to accept",
                    pin.name.unwrap_or_else(|| id.to_string())
                ),
            ))
        }
    };
    let (shown, handle) = {
        let c = shared.borrow();
        (c.roster.show(&contact), c.roster.handle(&contact))
    };
    let old = shared.borrow_mut().pins.accept(&contact, now_ms());
    let Some(old) = old else {
        return Err(fail(
            "BAD_REQUEST",
            format!("the key of {shown} has not changed: nothing to accept"),
        ));
    };
    let saved = save_pins(shared);
    let out = shared.borrow().out.clone();
    let fp = fingerprint(&contact.pubkey);
    out.event(
        "key_accepted",
        format!(
            "the new key of {shown} is pinned (fingerprint {fp}; was {}). It is not verified: \
             compare it with {shown} out of band, then /verify {handle}{}",
            fingerprint(&old),
            if saved {
                ""
            } else {
                "; not saved: for this session only"
            }
        ),
        json!({
            "user_id": contact.user_id,
            "shown": shown,
            "fingerprint": fp,
            "previous_fingerprint": fingerprint(&old),
            "saved": saved,
        }),
    );
    Ok(())
}

/// Refuse to encrypt to `contact` while its key differs from the pinned one.
pub(crate) fn check_sendable(shared: &Shared, contact: &Contact) -> Result<(), Failure> {
    let c = shared.borrow();
    match c.pins.trust(&contact.user_id, &contact.pubkey) {
        Trust::Changed(old) => {
            let (shown, handle) = (c.roster.show(contact), c.roster.handle(contact));
            Err(fail(
                "KEY_CHANGED",
                format!(
                    "nothing sent: the key of {shown} changed (pinned {}, now {}), so it may \
                     not be {shown}'s; compare fingerprints (/whois {handle}) out of band, then \
                     /accept {handle}",
                    fingerprint(&old),
                    fingerprint(&contact.pubkey)
                ),
            ))
        }
        _ => Ok(()),
    }
}
