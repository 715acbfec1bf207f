//! The mesh-wide directory of registered users [ext], as the router enforces
//! it: which ids are registered with which key, which names they hold, and
//! the DIRECTORY_RECORDs that publish them. The store keeps the same records
//! (and the record frames) by the same rule; this index is what the router
//! decides with, synchronously.

use std::collections::HashMap;

use socp_db::{keeps_name, DirectoryEntry, UserRecord};
use socp_protocol::message::{DirectoryRecord, UserAdvertise};
use socp_protocol::{ErrorCode, Message, PublicKey, ServerId, To, UserId};

use super::inbound::Relayed;
use super::{Action, RouterState, StoreOp};

/// Refusal counters of the directory and of presence, by reason (`/metrics`).
pub mod refused {
    /// A record from a server for a user id registered with another home server.
    pub(crate) const ID_CONFLICT: &str = "directory_id_conflict";
    /// A record over its home server's budget.
    pub(crate) const OVER_CAP: &str = "directory_over_cap";
    /// A record whose `home_server` is not the server that signed it.
    pub(crate) const NOT_HOME: &str = "directory_not_home";
    /// An advert for a registered id with another key, or for a registered name.
    pub(crate) const ADVERT_CLAIMS_REGISTERED: &str = "advert_claims_registered";
    /// A presence frame whose sequence number is not newer (a replay).
    pub(crate) const PRESENCE_REPLAY: &str = "presence_replay";
    /// An advert past the users one server may have (`max_users_per_server`).
    pub(crate) const USERS_OVER_CAP: &str = "users_over_cap";
    /// A server past the servers this one will know (`max_servers`).
    pub(crate) const SERVERS_OVER_CAP: &str = "servers_over_cap";
    /// A server announced past what one link may teach (`max_announced_per_link`).
    pub(crate) const ANNOUNCES_OVER_CAP: &str = "announces_over_cap";
    /// An announced server not dialled: over the dial rate.
    pub(crate) const DIAL_RATE: &str = "dial_rate";
    /// A server not on a closed federation's allowlist (or with another key).
    pub(crate) const NOT_ALLOWED: &str = "server_not_allowed";
}

/// The directory record of a user registered on server `me` (`None` for a
/// user without a name, which has nothing to publish yet).
pub fn own_record(user: &UserRecord, me: &ServerId) -> Option<DirectoryRecord> {
    Some(DirectoryRecord {
        user_id: user.user_id.clone(),
        username: user.username.clone()?,
        pubkey: user.pubkey.clone(),
        home_server: me.clone(),
        privkey_store: user.privkey_store.clone(),
        registered_at: user.registered_at,
        version: u64::try_from(user.version).unwrap_or(1),
    })
}

/// One registered user, as the router needs it.
#[derive(Debug, Clone)]
struct Entry {
    /// `None`: registered here.
    home: Option<ServerId>,
    /// SHA-256 of the registered key's wire form.
    key: [u8; 32],
    version: u64,
    registered_at: i64,
    /// The name's lower-case key, if the user holds a name.
    name: Option<String>,
    /// The name as registered, if the user holds it.
    shown: Option<String>,
}

/// The directory index.
#[derive(Debug, Default)]
pub(super) struct Directory {
    users: HashMap<UserId, Entry>,
    /// Registered ids in lower case: ids and names are compared in any case,
    /// and this keeps those checks a lookup on the router's loop, not a scan.
    ids_lower: std::collections::HashSet<String>,
    /// Name key → the user holding it.
    names: HashMap<String, UserId>,
    /// Records held per home server (budgeted).
    per_home: HashMap<ServerId, usize>,
}

/// What applying a record did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// New or newer: stored. `displaced` lost its name to this record's user.
    Stored { displaced: Option<UserId> },
    /// Held already (this version or newer).
    Stale,
    /// Refused, counted under this reason.
    Refused(&'static str),
}

fn digest(key: &PublicKey) -> [u8; 32] {
    socp_protocol::crypto::sha256(key.to_wire().as_bytes())
}

impl Directory {
    /// The index of `entries` (read from the store at start).
    pub(super) fn load(entries: &[DirectoryEntry]) -> Directory {
        let mut d = Directory::default();
        for e in entries {
            let u = &e.user;
            if let Some(home) = &u.home_server {
                *d.per_home.entry(home.clone()).or_default() += 1;
            }
            let name = u.username.as_ref().map(|n| n.key());
            if let Some(key) = &name {
                d.names.insert(key.clone(), u.user_id.clone());
            }
            d.ids_lower.insert(u.user_id.as_str().to_ascii_lowercase());
            d.users.insert(
                u.user_id.clone(),
                Entry {
                    home: u.home_server.clone(),
                    key: digest(&u.pubkey),
                    version: u64::try_from(u.version).unwrap_or(0),
                    registered_at: u.registered_at,
                    shown: name
                        .as_ref()
                        .and(u.username.as_ref())
                        .map(|n| n.as_str().to_owned()),
                    name,
                },
            );
        }
        d
    }

    /// Whether `id` holds the name `name`.
    pub(super) fn holds(&self, id: &UserId, name: &socp_protocol::Username) -> bool {
        self.names.get(&name.key()) == Some(id)
    }

    /// The server that registered `id`, if it is registered elsewhere
    /// (`None` for a user registered here, or not registered).
    pub(super) fn home_of(&self, id: &UserId) -> Option<ServerId> {
        self.users.get(id).and_then(|e| e.home.clone())
    }

    /// Whether `id` is a registered user (here or elsewhere).
    pub(super) fn is_registered(&self, id: &UserId) -> bool {
        self.users.contains_key(id)
    }

    /// If `id` is registered with `key`: the name it holds (`Some(None)`
    /// while it holds none). `None`: not registered, or with another key.
    pub(super) fn registered_as(&self, id: &UserId, key: &PublicKey) -> Option<Option<String>> {
        self.users
            .get(id)
            .filter(|e| e.key == digest(key))
            .map(|e| e.shown.clone())
    }

    /// Whether `who` is, in any case, a registered user's id or held name.
    pub(super) fn claims(&self, who: &str) -> bool {
        let key = who.to_ascii_lowercase();
        self.names.contains_key(&key) || self.ids_lower.contains(&key)
    }

    /// Whether an advert contradicts the directory: a registered id with
    /// another key, or claiming (`meta.registered`) a name the user does not
    /// hold; an unregistered id that is a registered user's name, or that
    /// claims to be registered. (Adverts from other implementations, without
    /// `registered`, are held to the id and key only.)
    pub(super) fn contradicts(&self, adv: &UserAdvertise) -> bool {
        let meta = adv.meta.as_ref();
        let claims_registered = meta
            .and_then(|m| m.get("registered"))
            .and_then(|r| r.as_bool())
            == Some(true);
        match self.users.get(&adv.user_id) {
            Some(e) => {
                let claimed = super::presence::meta_name(meta).map(|n| n.to_lowercase());
                e.key != digest(&adv.pubkey) || (claims_registered && claimed != e.name)
            }
            None => {
                claims_registered
                    || self
                        .names
                        .contains_key(&adv.user_id.as_str().to_ascii_lowercase())
            }
        }
    }

    /// Apply a record: `home` is `None` for a user registered here. Records
    /// from other servers are budgeted at `cap` per home server.
    pub(super) fn apply(
        &mut self,
        record: &DirectoryRecord,
        home: Option<&ServerId>,
        cap: usize,
    ) -> Applied {
        let id = &record.user_id;
        if let Some(e) = self.users.get(id) {
            if e.home.as_ref() != home {
                return Applied::Refused(refused::ID_CONFLICT);
            }
            if e.version >= record.version && home.is_some() {
                return Applied::Stale;
            }
        } else if let Some(h) = home {
            if self.per_home.get(h).copied().unwrap_or(0) >= cap {
                return Applied::Refused(refused::OVER_CAP);
            }
            if self.names.contains_key(&id.as_str().to_ascii_lowercase()) {
                return Applied::Refused(refused::ID_CONFLICT);
            }
            *self.per_home.entry(h.clone()).or_default() += 1;
        }
        // Release the user's old name, then claim the new one by the rule.
        if let Some(old) = self.users.get(id).and_then(|e| e.name.clone()) {
            self.names.remove(&old);
        }
        let key = record.username.key();
        let mut displaced = None;
        let name_is_an_id =
            self.ids_lower.contains(&key) && id.as_str().to_ascii_lowercase() != key;
        let holds = if name_is_an_id {
            false
        } else {
            match self.names.get(&key).cloned() {
                Some(holder) if holder != *id => {
                    let at = self
                        .users
                        .get(&holder)
                        .map_or(i64::MAX, |e| e.registered_at);
                    if keeps_name(record.registered_at, id, at, &holder) {
                        if let Some(h) = self.users.get_mut(&holder) {
                            h.name = None;
                            h.shown = None;
                        }
                        displaced = Some(holder);
                        true
                    } else {
                        false
                    }
                }
                _ => true,
            }
        };
        if holds {
            self.names.insert(key.clone(), id.clone());
        }
        self.ids_lower.insert(id.as_str().to_ascii_lowercase());
        self.users.insert(
            id.clone(),
            Entry {
                home: home.cloned(),
                key: digest(&record.pubkey),
                version: record.version,
                registered_at: record.registered_at,
                name: holds.then_some(key),
                shown: holds.then(|| record.username.as_str().to_owned()),
            },
        );
        Applied::Stored { displaced }
    }
}

impl<H: Clone> RouterState<H> {
    /// A user registered here (or renamed, or registered before records
    /// existed): publish its record, signed by us, to every server, and keep it.
    pub(crate) fn publish_record(&mut self, record: DirectoryRecord, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        if let Applied::Stored { displaced } = self.directory.apply(&record, None, usize::MAX) {
            self.name_lost(displaced, now, &mut out);
        }
        let frame = self.sign(To::All, now, Message::DirectoryRecord(record.clone()));
        // The record goes first: over each link, it reaches a server before
        // the advert that carries the new name.
        self.to_all_servers(&frame, &[], &mut out);
        let held = self.directory.holds(&record.user_id, &record.username);
        if let Some(user) = self.local.get_mut(&record.user_id).filter(|u| u.registered) {
            let name = held.then(|| record.username.to_string());
            if user.name != name {
                user.name = name;
                self.readvertise(&record.user_id, now, &mut out);
            }
        }
        out.push(Action::Store(StoreOp::OwnRecord {
            user_id: record.user_id,
            version: record.version,
            frame,
        }));
        out
    }

    /// A DIRECTORY_RECORD from a server link, verified with its home server's
    /// key: kept if new, and passed on when `from.relay` (gossip, not a page).
    pub(super) fn directory_record(
        &mut self,
        record: DirectoryRecord,
        from: &Relayed<'_>,
        relay: bool,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        if record.home_server != *from.origin || record.home_server == self.config.me {
            self.refuse(refused::NOT_HOME);
            log::warn!(
                "DIRECTORY_RECORD for {} from {} names home {}: refused",
                record.user_id,
                from.origin,
                record.home_server
            );
            return;
        }
        let home = record.home_server.clone();
        match self
            .directory
            .apply(&record, Some(&home), self.config.directory_cap)
        {
            Applied::Stale => {}
            Applied::Refused(reason) => {
                self.refuse(reason);
                log::warn!(
                    "DIRECTORY_RECORD for {} from {home}: refused ({reason})",
                    record.user_id
                );
            }
            Applied::Stored { displaced } => {
                self.name_lost(displaced, now, out);
                // A user of that server attached here under its registered key
                // takes the record's name (a rename at its home server).
                let held = self
                    .directory
                    .holds(&record.user_id, &record.username)
                    .then(|| record.username.to_string());
                let renamed = self.local.get_mut(&record.user_id).is_some_and(|u| {
                    let same_key = digest(&u.pubkey) == digest(&record.pubkey);
                    let changed = u.registered && same_key && u.name != held;
                    if changed {
                        u.name = held.clone();
                    }
                    changed
                });
                if renamed {
                    self.readvertise(&record.user_id, now, out);
                }
                if let Some(user) = self.local.get_mut(&record.user_id) {
                    // A user of another server attached here under an id that
                    // is now registered: the directory is authoritative.
                    if digest(&user.pubkey) != digest(&record.pubkey) {
                        let conn = user.conn.clone();
                        let detail = format!(
                            "{} is a registered user of server {home}; connect with another id",
                            record.user_id
                        );
                        let error = self.error_frame(
                            To::from(&record.user_id),
                            now,
                            ErrorCode::NameInUse,
                            &detail,
                        );
                        out.push(Action::Send(conn.tx.clone(), error));
                        out.push(Action::Close(conn.tx.clone(), 1008, "name in use".into()));
                        out.extend(self.detach(conn.id, &record.user_id, now));
                    }
                }
                out.push(Action::Store(StoreOp::Record {
                    record,
                    frame: from.frame.clone(),
                    cap: self.config.directory_cap,
                }));
                if relay {
                    self.relay_onward(from, out);
                }
            }
        }
    }

    /// `displaced` lost its name to a user registered earlier elsewhere: if it
    /// is attached here, tell it, and list it without the name.
    fn name_lost(&mut self, displaced: Option<UserId>, now: i64, out: &mut Vec<Action<H>>) {
        let Some(id) = displaced else { return };
        let Some(user) = self.local.get_mut(&id) else {
            return;
        };
        let lost = user.name.take().unwrap_or_default();
        let tx = user.conn.tx.clone();
        log::info!("{id} lost the name {lost:?} to a user registered earlier elsewhere");
        let detail = format!(
            "the name {lost:?} was registered earlier on another server; you keep your \
             account and key: pick a new name with /rename NAME"
        );
        let error = self.error_frame(To::from(&id), now, ErrorCode::NameInUse, &detail);
        out.push(Action::Send(tx, error));
        self.readvertise(&id, now, out);
    }

    /// A local user's name changed: a new advert (new sequence number) to
    /// every server and user, kept for later rosters.
    fn readvertise(&mut self, id: &UserId, now: i64, out: &mut Vec<Action<H>>) {
        let Some(user) = self.local.get(id) else {
            return;
        };
        let advert = self.local_advert(id, &user.pubkey, user.traits(), now);
        if let Some(user) = self.local.get_mut(id) {
            user.advert = advert.clone();
        }
        self.to_all_servers(&advert, &[], out);
        self.news(&advert, (id, true), out);
    }

    /// Whether an advert contradicts the directory (counted when it does).
    pub(super) fn advert_contradicts_directory(&mut self, adv: &UserAdvertise) -> bool {
        if self.directory.contradicts(adv) {
            self.refuse(refused::ADVERT_CLAIMS_REGISTERED);
            return true;
        }
        false
    }

    /// Count a refusal.
    pub(super) fn refuse(&mut self, reason: &'static str) {
        *self.refusals.entry(reason).or_default() += 1;
    }
}
