//! The public channel key shared with the mesh's socp clients.
//!
//! A client of another implementation attached here encrypts its public
//! messages under our channel key (one AES key, wrapped for each member), and
//! reads only what is under it. Our own users get a wrap when they join
//! (`membership`); once such a client has attached here, socp clients
//! elsewhere in the mesh get one too, so that they read it and write to it.
//! Each is wrapped on a crypto thread and sent to its server in a
//! `PUBLIC_CHANNEL_UPDATED` addressed to that server [ext], at most
//! [`MAX_JOINS_PER_VERSION`] wraps a frame; that server hands each of its
//! users its own (docs/PROTOCOL.md §2, "Channels of one AES key").

use std::collections::{HashMap, HashSet};

use socp_protocol::message::PublicChannelUpdated;
use socp_protocol::{Envelope, PublicKey, ServerId, To, UserId};

use super::*;
use crate::crypto::SignedFrame;

/// Most servers whose key one local user is handed (its client keeps 16).
const MAX_KEYS_HANDED: usize = 16;

/// Who has our channel key, and who is to get it.
#[derive(Default)]
pub(super) struct Sharing {
    /// A local user not known to run socp's client has attached since we
    /// started: our key is in use, and shared.
    on: bool,
    /// Remote users given our key, with the key it was wrapped for.
    given: HashMap<UserId, PublicKey>,
    /// Remote users to give it to at the next flush.
    due: HashSet<UserId>,
    /// The servers whose key each local user was handed: once per server
    /// while its link lasts (one that restarts has a new key, and a new
    /// link), so that a server's frames cannot make us send our users more.
    handed: HashMap<UserId, Vec<ServerId>>,
}

impl<H: Clone> RouterState<H> {
    /// A local user attached: one not known to run socp's client (it says
    /// neither batched news nor fast files) turns sharing on, for every socp
    /// client the mesh has.
    pub(super) fn share_for_attach(&mut self, traits_socp: bool) {
        if traits_socp || self.sharing.on {
            return;
        }
        self.sharing.on = true;
        let ids: Vec<UserId> = self.remote.keys().cloned().collect();
        for id in ids {
            self.share_with(&id);
        }
    }

    /// A remote user was added or replaced: it gets our key if sharing is on,
    /// it runs socp's client, and it does not have this key wrapped for its
    /// key already.
    pub(super) fn share_with(&mut self, id: &UserId) {
        let Some(user) = self.remote.get(id) else {
            return;
        };
        let socp_client = user
            .meta
            .as_ref()
            .and_then(|m| m.get("files"))
            .is_some_and(serde_json::Value::is_array);
        if self.sharing.on && socp_client && self.sharing.given.get(id) != Some(&user.pubkey) {
            self.sharing.due.insert(id.clone());
        }
    }

    /// A local user left: a server's key is handed to it again if it comes
    /// back (a new client holds no keys).
    pub(super) fn forget_handed(&mut self, id: &UserId) {
        self.sharing.handed.remove(id);
    }

    /// The link of `server` went down: its key (new if it restarted) is
    /// handed to our users again over its next link.
    pub(super) fn forget_handed_by(&mut self, server: &ServerId) {
        for from in self.sharing.handed.values_mut() {
            from.retain(|s| s != server);
        }
        self.sharing.handed.retain(|_, from| !from.is_empty());
    }

    /// A remote user left: given again if it comes back (its client holds
    /// keys only while it runs).
    pub(super) fn unshare(&mut self, id: &UserId) {
        self.sharing.given.remove(id);
        self.sharing.due.remove(id);
    }

    /// Whether wraps wait to be sent.
    pub(super) fn shares_due(&self) -> bool {
        !self.sharing.due.is_empty()
    }

    /// Send the wraps due, per server: to a linked socp server only (its
    /// users are socp clients; another implementation's server would not
    /// know what to do with it). Users of other servers are left out.
    pub(super) fn flush_shares(&mut self, now: i64, out: &mut Vec<Action<H>>) {
        let due = std::mem::take(&mut self.sharing.due);
        let mut per_server: HashMap<ServerId, Vec<(UserId, PublicKey)>> = HashMap::new();
        for id in due {
            let Some(user) = self.remote.get(&id) else {
                continue;
            };
            per_server
                .entry(user.server_id.clone())
                .or_default()
                .push((id, user.pubkey.clone()));
        }
        for (server, users) in per_server {
            let Some(tx) = self
                .servers
                .get(&server)
                .filter(|s| s.socp)
                .and_then(|s| s.link.as_ref())
                .map(|l| l.conn.tx.clone())
            else {
                continue;
            };
            for chunk in users.chunks(MAX_JOINS_PER_VERSION) {
                for (id, key) in chunk {
                    self.sharing.given.insert(id.clone(), key.clone());
                }
                let frame = self.share_frame(&server, chunk.to_vec(), now);
                out.push(Action::Send(tx.clone(), frame));
            }
        }
    }

    /// One `PUBLIC_CHANNEL_UPDATED` to `server` with our key wrapped for
    /// each of `members` (made and signed on a crypto thread).
    fn share_frame(
        &self,
        server: &ServerId,
        members: Vec<(UserId, PublicKey)>,
        now: i64,
    ) -> SignedFrame {
        let (me, to, key) = (
            self.config.me.clone(),
            server.clone(),
            self.group_key.clone(),
        );
        let version = self.public_version;
        self.signer.sign_built(Box::new(move || {
            let wraps = super::membership::wraps_of(members, &key);
            Some(socp_protocol::dialect::with_capability(Envelope::new(
                &me,
                To::from(&to),
                now,
                &PublicChannelUpdated { version, wraps },
            )))
        }))
    }

    /// A `PUBLIC_CHANNEL_UPDATED` addressed to us by server `origin`: its
    /// key for our users. Each listed local user gets its own wrap, from
    /// `origin` (its client keeps keys per server), unsigned over its own
    /// connection, once per link of that server; the frame goes no further.
    pub(super) fn shared_to_us(
        &mut self,
        origin: &ServerId,
        update: PublicChannelUpdated,
        ts: i64,
        out: &mut Vec<Action<H>>,
    ) {
        for wrap in update.wraps {
            let Some(user) = self.local.get(&wrap.member_id) else {
                continue;
            };
            let from = self
                .sharing
                .handed
                .entry(wrap.member_id.clone())
                .or_default();
            if from.contains(origin) || from.len() >= MAX_KEYS_HANDED {
                continue;
            }
            from.push(origin.clone());
            let to = To::from(&wrap.member_id);
            let own = PublicChannelUpdated {
                version: update.version,
                wraps: vec![wrap],
            };
            let env = Envelope::new(origin, to, ts, &own);
            let frame = SignedFrame::ready(crate::crypto::FrameText::from(env.to_json()));
            out.push(Action::Send(user.conn.tx.clone(), frame));
        }
    }
}
