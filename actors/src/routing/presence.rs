//! Users: attach, detach, adverts, listings, and ids claimed on both sides of a partition.

use serde_json::Value;
use socp_protocol::message::{ListedUser, UserAdvertise, UserRemove};
use socp_protocol::{ErrorCode, Message, PublicKey, ServerId, To, UserId};

use super::inbound::Relayed;
use super::*;
use crate::crypto::SignedFrame;

/// A user attached to this server.
pub(super) struct LocalUser<H> {
    pub(super) conn: Conn<H>,
    pub(super) pubkey: PublicKey,
    /// Username if registered; the listing shows it.
    pub(super) name: Option<String>,
    /// Registered users stay public channel members when they leave.
    pub(super) registered: bool,
    /// Its client reads fast-mode file chunks [ext].
    pub(super) fast_files: bool,
    /// Its client reads batched presence news [ext].
    pub(super) batched: bool,
    /// Where its news starts in the next batch (news already pending when it
    /// attached was in its roster).
    pub(super) news_from: usize,
    /// Our latest signed USER_ADVERTISE for this user (made at attach, a
    /// rename, a link coming up), reused for every later roster.
    pub(super) advert: SignedFrame,
    /// When it attached ([`RouterState::epoch`]).
    pub(super) attached: u64,
}

/// What a user's hello said besides its id and key.
#[derive(Debug, Clone, Default)]
pub struct Traits {
    /// Username if registered; the listing shows it.
    pub name: Option<String>,
    /// Whether the user logged in as a registered user.
    pub registered: bool,
    /// Its client reads fast-mode file chunks [ext] (said in its advert).
    pub fast_files: bool,
    /// Its client reads batched presence news [ext].
    pub batched: bool,
}

/// A user attached elsewhere in the mesh.
pub(super) struct RemoteUser {
    pub(super) server_id: ServerId,
    pub(super) pubkey: PublicKey,
    pub(super) name: Option<String>,
    pub(super) meta: Option<Value>,
    /// The origin server's USER_ADVERTISE as received (forwarded unchanged to
    /// our users), or our own re-signed one when we learnt the user otherwise.
    pub(super) advert: Option<SignedFrame>,
    /// When we learnt it (ms): a user of a server we have no link to is
    /// forgotten once it has waited `Budgets::unlinked_grace_ms` for that link.
    pub(super) learnt: i64,
}

impl<H> LocalUser<H> {
    /// What its advert says besides its id and key: `(name, registered,
    /// fast_files)`.
    pub(super) fn traits(&self) -> (Option<&str>, bool, bool) {
        (self.name.as_deref(), self.registered, self.fast_files)
    }
}

impl RemoteUser {
    /// An advert for this user as we know it (no `seq`: not its origin's).
    pub(super) fn advert_message(&self, id: &UserId) -> Message {
        Message::UserAdvertise(UserAdvertise {
            user_id: id.clone(),
            server_id: self.server_id.clone(),
            pubkey: self.pubkey.clone(),
            meta: self.meta.clone(),
            seq: None,
        })
    }
}

/// One row of a listing.
pub(super) fn listed(user_id: &UserId, server_id: &ServerId, name: Option<&str>) -> ListedUser {
    ListedUser {
        user_id: user_id.clone(),
        server_id: server_id.clone(),
        name: name.map_or_else(|| user_id.to_string(), str::to_owned),
    }
}

/// The display name carried in an advert's `meta` (ours write `name`; other
/// implementations use `username` or `display_name`).
pub(super) fn meta_name(meta: Option<&Value>) -> Option<String> {
    let meta = meta?;
    ["name", "username", "display_name"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_owned)
}

impl<H: Clone> RouterState<H> {
    /// Whether `user` is attached here or anywhere in the mesh.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.local.contains_key(user) || self.remote.contains_key(user)
    }

    /// Attach a user after a successful USER_HELLO. Sends the user the roster,
    /// gossips the new user, tells local users, and queues the user's public
    /// channel join: [`flush_membership`](Self::flush_membership) announces it
    /// (a new version), together with any other change queued by then.
    pub fn attach(
        &mut self,
        conn: Conn<H>,
        user_id: UserId,
        pubkey: PublicKey,
        name: Option<String>,
        registered: bool,
        now: i64,
    ) -> Result<Vec<Action<H>>, Refusal> {
        let traits = Traits {
            name,
            registered,
            ..Traits::default()
        };
        self.attach_with(conn, user_id, pubkey, traits, now)
    }

    /// [`attach`](Self::attach) with what the client said in its hello.
    pub fn attach_with(
        &mut self,
        conn: Conn<H>,
        user_id: UserId,
        pubkey: PublicKey,
        traits: Traits,
        now: i64,
    ) -> Result<Vec<Action<H>>, Refusal> {
        let Traits {
            name,
            registered,
            fast_files,
            batched,
        } = traits;
        if self.config.introducer_only {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "this is a directory-only introducer; it hosts no users",
            ));
        }
        if self.local.contains_key(&user_id) {
            return Err(Refusal::new(
                ErrorCode::NameInUse,
                format!("{user_id} is already attached to this server"),
            ));
        }
        if !registered && self.directory.claims(user_id.as_str()) {
            return Err(Refusal::new(
                ErrorCode::NameInUse,
                format!("{user_id} is a registered user's id or name: log in, or pick another id"),
            ));
        }
        if let Some(r) = self.remote.get(&user_id) {
            if self.is_linked(&r.server_id) {
                return Err(Refusal::new(
                    ErrorCode::NameInUse,
                    format!("{user_id} is attached to server {}", r.server_id),
                ));
            }
            // Learnt from a welcome or gossip, at a server we have no link
            // to: not reachable, so not in use (as for USER_ADVERTISE).
            self.remove_remote(&user_id);
        }
        let mut out = Vec::new();
        let seq = Some(self.next_seq());
        let traits = (name.as_deref(), registered, fast_files);
        let msg = self.advert_message(&user_id, &pubkey, traits, seq);
        let advert = self.sign(To::All, now, msg.clone());
        // The roster first, so the client has every pubkey; its own advert
        // last: the client sees itself online.
        let roster = self.roster(&advert, batched, now);
        out.extend(roster.into_iter().map(|f| Action::Send(conn.tx.clone(), f)));
        self.to_all_servers(&advert, &[], &mut out);
        self.news_ours(&advert, &msg, &mut out);

        let attached = self.tick();
        self.local.insert(
            user_id.clone(),
            LocalUser {
                conn: conn.clone(),
                pubkey: pubkey.clone(),
                name,
                registered,
                fast_files,
                batched,
                news_from: self.news_mark(),
                advert,
                attached,
            },
        );
        // DMs kept while the user was offline [ext], after the roster.
        self.flush_mail(&user_id, now, &mut out);
        // A leave still queued for the same id stays: the store takes leaves
        // first, then joins.
        self.membership.joins.push((user_id, pubkey));
        self.share_for_attach(batched || fast_files);
        Ok(out)
    }

    /// Our USER_ADVERTISE for a local user. A registered user's `meta` says
    /// so [ext]: `{name, registered: true, home}` (`home`: the server that
    /// registered it; `name` absent while it holds none). A guest's has none.
    pub(super) fn local_advert(
        &self,
        user_id: &UserId,
        pubkey: &PublicKey,
        traits: (Option<&str>, bool, bool),
        now: i64,
    ) -> SignedFrame {
        let seq = Some(self.next_seq());
        self.sign(
            To::All,
            now,
            self.advert_message(user_id, pubkey, traits, seq),
        )
    }

    /// The message of [`local_advert`](Self::local_advert), with `seq`.
    pub(super) fn advert_message(
        &self,
        user_id: &UserId,
        pubkey: &PublicKey,
        (name, registered, fast_files): (Option<&str>, bool, bool),
        seq: Option<u64>,
    ) -> Message {
        let mut meta = if registered {
            let home = self
                .directory
                .home_of(user_id)
                .unwrap_or_else(|| self.config.me.clone());
            let mut meta = serde_json::json!({ "registered": true, "home": home });
            if let Some(n) = name {
                meta["name"] = n.into();
            }
            Some(meta)
        } else {
            name.map(|n| serde_json::json!({ "name": n }))
        };
        if fast_files {
            let m = meta.get_or_insert_with(|| serde_json::json!({}));
            m["files"] = serde_json::json!([socp_protocol::crypto::file::FAST_CIPHER]);
        }
        Message::UserAdvertise(UserAdvertise {
            user_id: user_id.clone(),
            server_id: self.config.me.clone(),
            pubkey: pubkey.clone(),
            meta,
            seq,
        })
    }

    /// Our own signed advert for a remote user we learnt without one (from a
    /// SERVER_WELCOME), made once and kept.
    pub(super) fn resign_remote_advert(&mut self, id: &UserId, now: i64) -> Option<SignedFrame> {
        let user = self.remote.get(id)?;
        let frame = self.sign(To::All, now, user.advert_message(id));
        if let Some(user) = self.remote.get_mut(id) {
            user.advert = Some(frame.clone());
        }
        Some(frame)
    }

    /// Detach a user (session closed, or re-identified): gossips the removal
    /// and queues the user's leave of the public channel (announced by
    /// [`flush_membership`](Self::flush_membership)). Idempotent: only the
    /// connection that attached the user can detach it.
    pub fn detach(&mut self, conn_id: ConnId, user_id: &UserId, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        match self.local.get(user_id) {
            Some(u) if u.conn.id == conn_id => {}
            _ => return out,
        }
        self.remove_local(user_id, now, &mut out);
        out
    }

    /// Remove a local user (its session checked or closed by the caller):
    /// every server and user is told. Returns the signed USER_REMOVE.
    pub(super) fn remove_local(
        &mut self,
        user_id: &UserId,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) -> SignedFrame {
        let registered = self.local.remove(user_id).is_some_and(|u| u.registered);
        self.forget_handed(user_id);
        let msg = Message::UserRemove(UserRemove {
            user_id: user_id.clone(),
            server_id: self.config.me.clone(),
            seq: Some(self.next_seq()),
        });
        let remove = self.sign(To::All, now, msg.clone());
        self.to_all_servers(&remove, &[], out);
        self.news_ours(&remove, &msg, out);
        match self
            .membership
            .joins
            .iter()
            .position(|(id, _)| id == user_id)
        {
            // Gone before its join was announced: there is nothing to take back.
            Some(i) => {
                self.membership.joins.remove(i);
            }
            None => self.membership.leaves.push((user_id.clone(), registered)),
        }
        remove
    }

    /// The local session of a user, if attached here.
    pub fn session(&self, user_id: &UserId) -> Option<&Conn<H>> {
        self.local.get(user_id).map(|u| &u.conn)
    }

    /// The pubkey the network advertised for a user.
    pub fn pubkey_of(&self, user_id: &UserId) -> Option<&PublicKey> {
        self.local
            .get(user_id)
            .map(|u| &u.pubkey)
            .or_else(|| self.remote.get(user_id).map(|u| &u.pubkey))
    }

    /// Every online user, sorted by name, then id (SPEC.md §6.2).
    pub fn listing(&self) -> Vec<ListedUser> {
        let mut users: Vec<ListedUser> = self
            .local
            .iter()
            .map(|(id, u)| listed(id, &self.config.me, u.name.as_deref()))
            .chain(
                self.remote
                    .iter()
                    .filter(|(_, u)| self.is_linked(&u.server_id))
                    .map(|(id, u)| listed(id, &u.server_id, u.name.as_deref())),
            )
            .collect();
        users.sort_by(|a, b| (&a.name, &a.user_id).cmp(&(&b.name, &b.user_id)));
        users
    }

    /// Handle a verified frame from a server link. `env.from()` is a server
    /// whose pinned key verified the frame (the shell checked).
    /// A USER_ADVERTISE from a server link: a user attached at its origin.
    pub(super) fn remote_advert(
        &mut self,
        adv: UserAdvertise,
        from: &Relayed<'_>,
        keyless: bool,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        if adv.server_id != *from.origin {
            log::warn!(
                "USER_ADVERTISE from {} for server {}: refused",
                from.origin,
                adv.server_id
            );
            return;
        }
        if adv
            .seq
            .is_some_and(|seq| !self.presence_seen.advance(from.origin, &adv.user_id, seq))
        {
            self.refuse(super::refused::PRESENCE_REPLAY);
            log::debug!(
                "USER_ADVERTISE for {} from {}: not newer",
                adv.user_id,
                from.origin
            );
            return;
        }
        if self.advert_contradicts_directory(&adv) {
            log::warn!(
                "{} advertises {} with a key or name the directory gives another user: refused",
                from.origin,
                adv.user_id
            );
            return;
        }
        if self.local.contains_key(&adv.user_id) && !self.claimed_on_both_sides(&adv, now, out) {
            return;
        }
        if let Some(existing) = self.remote.get(&adv.user_id) {
            // The same key on two servers is one holder: the lower server id
            // keeps it, everywhere (see claimed_on_both_sides).
            let same_holder = existing.pubkey == adv.pubkey && adv.server_id < existing.server_id;
            if existing.server_id != adv.server_id
                && self.is_linked(&existing.server_id)
                && !same_holder
            {
                log::warn!(
                    "{} advertises {} who is attached to {}: refused",
                    from.origin,
                    adv.user_id,
                    existing.server_id
                );
                return;
            }
        }
        if !self.room_for_user_of(&adv.server_id, &adv.user_id) {
            log::debug!(
                "{} advertises more users than {} may have: {} refused",
                from.origin,
                adv.server_id,
                adv.user_id
            );
            return;
        }
        // Local users hear of new users and of changes, not of every repeat
        // (a server re-advertises its users on each new link).
        let changed = self.remote.get(&adv.user_id).is_none_or(|u| {
            u.server_id != adv.server_id || u.pubkey != adv.pubkey || u.meta != adv.meta
        });
        self.insert_remote(
            adv.user_id.clone(),
            RemoteUser {
                server_id: adv.server_id.clone(),
                pubkey: adv.pubkey.clone(),
                name: meta_name(adv.meta.as_ref()),
                meta: adv.meta.clone(),
                advert: (!keyless).then(|| from.frame.clone()),
                learnt: now,
            },
        );
        // A keyless advert (another dialect's) is not passed on: other servers
        // cannot read it (nor ask a server they are not linked to for the key).
        if !keyless {
            self.relay_onward(from, out);
        }
        if changed {
            // Our registered user attached there: its kept DMs follow it.
            self.flush_mail(&adv.user_id, now, out);
        }
        let for_users = if keyless {
            self.resign_remote_advert(&adv.user_id, now)
        } else {
            Some(from.frame.clone())
        };
        if let (true, Some(frame)) = (changed, for_users) {
            self.news(&frame, (&adv.user_id, true), out);
        }
    }

    /// A USER_REMOVE from a server link: a user of its origin left.
    pub(super) fn remote_remove(
        &mut self,
        rm: UserRemove,
        from: &Relayed<'_>,
        out: &mut Vec<Action<H>>,
    ) {
        if rm.server_id != *from.origin {
            log::warn!(
                "USER_REMOVE from {} for server {}: refused",
                from.origin,
                rm.server_id
            );
            return;
        }
        if rm
            .seq
            .is_some_and(|seq| !self.presence_seen.advance(from.origin, &rm.user_id, seq))
        {
            self.refuse(super::refused::PRESENCE_REPLAY);
            log::debug!(
                "USER_REMOVE for {} from {}: not newer",
                rm.user_id,
                from.origin
            );
            return;
        }
        match self.remote.get(&rm.user_id) {
            Some(u) if u.server_id == rm.server_id => {
                self.remove_remote(&rm.user_id);
                self.relay_onward(from, out);
                self.news(&from.frame, (&rm.user_id, false), out);
            }
            _ => log::debug!(
                "USER_REMOVE for {} not located at {}: ignored",
                rm.user_id,
                from.origin
            ),
        }
    }

    /// Add or replace a remote user, keeping the count per server.
    pub(super) fn insert_remote(&mut self, id: UserId, user: RemoteUser) {
        let server = user.server_id.clone();
        if let Some(old) = self.remote.insert(id.clone(), user) {
            self.uncount_remote(&old.server_id);
        }
        *self.remote_per_server.entry(server).or_default() += 1;
        self.share_with(&id);
    }

    /// Remove a remote user, keeping the count per server.
    pub(super) fn remove_remote(&mut self, id: &UserId) -> Option<RemoteUser> {
        let old = self.remote.remove(id)?;
        self.uncount_remote(&old.server_id);
        self.unshare(id);
        Some(old)
    }

    fn uncount_remote(&mut self, server: &ServerId) {
        if let Some(n) = self.remote_per_server.get_mut(server) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.remote_per_server.remove(server);
            }
        }
    }

    /// Whether `server` may have `user` as one more user (a user it already
    /// has always may): at most `max_users_per_server` (counted when refused).
    pub(super) fn room_for_user_of(&mut self, server: &ServerId, user: &UserId) -> bool {
        if self
            .remote
            .get(user)
            .is_some_and(|u| &u.server_id == server)
        {
            return true;
        }
        let held = self.remote_per_server.get(server).copied().unwrap_or(0);
        if held >= self.config.budgets.max_users_per_server {
            self.refuse(super::refused::USERS_OVER_CAP);
            return false;
        }
        true
    }

    /// Forget users of servers we have had no link to for
    /// `Budgets::unlinked_grace_ms` (ghosts of a server that left, or that
    /// only another server could reach). Run every heartbeat.
    pub(crate) fn forget_unreachable(&mut self, now: i64) {
        let grace = self.config.budgets.unlinked_grace_ms;
        let gone: Vec<UserId> = self
            .remote
            .iter()
            .filter(|(_, u)| !self.is_linked(&u.server_id) && now.saturating_sub(u.learnt) > grace)
            .map(|(id, _)| id.clone())
            .collect();
        if !gone.is_empty() {
            log::info!("forgetting {} users of servers not linked", gone.len());
        }
        for id in gone {
            self.remove_remote(&id);
        }
    }
}
