//! The server table and links: learning servers, links up and down, welcome, announce, heartbeat, shutdown.

use socp_protocol::message::{
    ClientInfo, ServerAddress, ServerAnnounce, ServerInfo, ServerWelcome, UserRemove,
};
use socp_protocol::{ErrorCode, Message, PublicKey, ServerId, To, UserId};

use super::inbound::Relayed;
use super::presence::meta_name;
use super::*;
use crate::crypto::SignedFrame;

/// The close reason of a link that another link to the same server
/// replaced (a join connection kept by another implementation is retired
/// instead, see `PeerLink`).
pub const DUPLICATE_LINK: &str = "duplicate link";

/// Most users a SERVER_WELCOME lists (~850 bytes each, with their key).
pub const WELCOME_CLIENTS: usize = 500;

/// A server in the mesh.
pub(super) struct ServerEntry<H> {
    pub(super) peer: Peer,
    /// The live link, if any.
    pub(super) link: Option<Link<H>>,
    /// Vouched for: linked at least once, remembered from the database, or
    /// listed in our own join's welcome. A server only announced to us is not,
    /// until a link to it comes up: it is dialled once, never remembered.
    pub(super) earned: bool,
    /// Kept in the database at this address (written when a link comes up).
    pub(super) persisted: Option<(String, u16)>,
    /// The link whose announcement taught us this server, while not earned.
    pub(super) via: Option<ServerId>,
    /// Known to speak socp (a frame of its own carried the capability).
    pub(super) socp: bool,
    /// It closed a link we opened with SERVER_HELLO_LINK without a word:
    /// links to it open with SERVER_HELLO_JOIN (one implementation takes no
    /// other first frame from a server), until it is known to speak socp.
    pub(super) joins_only: bool,
}

pub(super) struct Link<H> {
    pub(super) conn: Conn<H>,
    /// Who opened the connection: of two simultaneous links, both sides keep
    /// the one opened by the lower server id.
    pub(super) opened_by: ServerId,
    /// When it came up ([`RouterState::epoch`]).
    pub(super) since: u64,
}

impl<H: Clone> RouterState<H> {
    /// The pinned key of a server.
    pub fn server_key(&self, id: &ServerId) -> Option<&PublicKey> {
        if *id == self.config.me {
            return Some(&self.config.pubkey);
        }
        self.servers.get(id).map(|s| &s.peer.pubkey)
    }

    /// Whether links to `id` open with SERVER_HELLO_JOIN.
    pub fn joins_only(&self, id: &ServerId) -> bool {
        self.servers.get(id).is_some_and(|s| s.joins_only)
    }

    /// A link we opened to `id` with SERVER_HELLO_LINK was closed before it
    /// sent anything: unless it speaks socp, the next opens with a join.
    pub fn unanswered(&mut self, id: &ServerId) {
        if let Some(s) = self
            .servers
            .get_mut(id)
            .filter(|s| !s.socp && !s.joins_only)
        {
            log::info!("server {id} closed our link unanswered: links to it open with a join");
            s.joins_only = true;
        }
    }

    /// A frame of `id`'s own carried socp's capability.
    pub(super) fn speaks_socp(&mut self, id: &ServerId) {
        if let Some(s) = self.servers.get_mut(id) {
            s.socp = true;
            s.joins_only = false;
        }
    }

    /// Whether `id` has a live link.
    pub fn is_linked(&self, id: &ServerId) -> bool {
        self.servers.get(id).is_some_and(|s| s.link.is_some())
    }

    /// Every known server other than us.
    pub fn peers(&self) -> Vec<Peer> {
        self.servers.values().map(|s| s.peer.clone()).collect()
    }

    /// Remember a server vouched for (our welcome, the database, a link that
    /// came up) without linking. A different key for a known id is refused:
    /// ids are pinned. Nothing is written: a server is stored once a link to
    /// it comes up.
    pub fn learn_server(&mut self, peer: Peer) -> Result<Option<Action<H>>, Refusal> {
        self.learn(peer, None).map(|_| None)
    }

    /// Learn `peer`; `via` is the link whose announcement names it (`None`:
    /// vouched for). Budgets: at most `max_servers` servers, and at most
    /// `max_announced_per_link` unvouched servers taught by one link.
    fn learn(&mut self, peer: Peer, via: Option<&ServerId>) -> Result<(), Refusal> {
        if peer.server_id == self.config.me {
            return Err(Refusal::new(
                ErrorCode::NameInUse,
                "that is our own server id",
            ));
        }
        if let Some(list) = &self.config.allowlist {
            if let Err(why) = list.admits(&peer.server_id, &peer.pubkey) {
                self.refuse(refused::NOT_ALLOWED);
                return Err(Refusal::new(ErrorCode::AuthFailed, why));
            }
        }
        match self.servers.get_mut(&peer.server_id) {
            Some(e) if e.peer.pubkey != peer.pubkey => Err(Refusal::new(
                ErrorCode::NameInUse,
                format!("server id {} is pinned to another key", peer.server_id),
            )),
            Some(e) => {
                e.peer.host = peer.host;
                e.peer.port = peer.port;
                if via.is_none() {
                    e.earned = true;
                    e.via = None;
                }
                Ok(())
            }
            None => {
                if self.servers.len() >= self.config.budgets.max_servers {
                    self.refuse(refused::SERVERS_OVER_CAP);
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "this server knows as many servers as it will",
                    ));
                }
                if let Some(link) = via {
                    let taught = self
                        .servers
                        .values()
                        .filter(|e| e.via.as_ref() == Some(link))
                        .count();
                    if taught >= self.config.budgets.max_announced_per_link {
                        self.refuse(refused::ANNOUNCES_OVER_CAP);
                        return Err(Refusal::new(
                            ErrorCode::BadRequest,
                            format!("{link} announced as many servers as it may"),
                        ));
                    }
                }
                self.servers.insert(
                    peer.server_id.clone(),
                    ServerEntry {
                        peer,
                        link: None,
                        earned: via.is_none(),
                        persisted: None,
                        via: via.cloned(),
                        socp: false,
                        joins_only: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// A server remembered from the database: vouched for, and stored already.
    pub(crate) fn remember_server(&mut self, peer: Peer) -> Result<(), Refusal> {
        let addr = (peer.host.clone(), peer.port);
        let id = peer.server_id.clone();
        self.learn(peer, None)?;
        if let Some(e) = self.servers.get_mut(&id) {
            e.persisted = Some(addr);
        }
        Ok(())
    }

    /// Whether `id` is a server vouched for (see [`learn_server`](Self::learn_server)).
    pub(crate) fn is_earned(&self, id: &ServerId) -> bool {
        self.servers.get(id).is_some_and(|e| e.earned)
    }

    /// Forget a server that was only announced and could not be reached, and
    /// the users it was said to host. Vouched-for servers are kept.
    pub(crate) fn forget_unearned(&mut self, id: &ServerId) -> bool {
        if self.is_earned(id) || self.is_linked(id) {
            return false;
        }
        self.servers.remove(id);
        let gone: Vec<UserId> = self
            .remote
            .iter()
            .filter(|(_, u)| &u.server_id == id)
            .map(|(u, _)| u.clone())
            .collect();
        for u in gone {
            self.remove_remote(&u);
        }
        true
    }

    /// A link to `peer` is up (after its first frame verified, or our hello
    /// was sent). Of two links to the same server, the one opened by the lower
    /// server id is kept and the other closed. Over the kept link every local
    /// user is advertised again with a fresh `ts`: adverts sent over a link that
    /// was then closed as a duplicate, and users the other side dropped when its
    /// previous link went down, would otherwise be lost until they reconnect
    /// (a fresh `ts` gets past the seen-ids cache).
    pub fn link_up(
        &mut self,
        peer: Peer,
        conn: Conn<H>,
        opened_by_me: bool,
        now: i64,
    ) -> Result<Vec<Action<H>>, Refusal> {
        let mut out = Vec::new();
        self.learn(peer.clone(), None)?;
        let opened_by = if opened_by_me {
            self.config.me.clone()
        } else {
            peer.server_id.clone()
        };
        let Some(entry) = self.servers.get_mut(&peer.server_id) else {
            return Ok(out);
        };
        if let Some(existing) = &entry.link {
            let keep_new = opened_by < existing.opened_by
                || (opened_by == existing.opened_by && conn.id > existing.conn.id);
            if !keep_new {
                out.push(Action::Close(conn.tx, 1000, DUPLICATE_LINK.into()));
                return Ok(out);
            }
            out.push(Action::Close(
                existing.conn.tx.clone(),
                1000,
                DUPLICATE_LINK.into(),
            ));
        }
        let tx = conn.tx.clone();
        self.epoch += 1;
        let since = self.epoch;
        let Some(entry) = self.servers.get_mut(&peer.server_id) else {
            return Ok(out);
        };
        entry.link = Some(Link {
            conn,
            opened_by,
            since,
        });
        // Stored once a link came up: only servers that answered are
        // remembered and dialled after a restart.
        let addr = (entry.peer.host.clone(), entry.peer.port);
        if entry.persisted.as_ref() != Some(&addr) {
            entry.persisted = Some(addr);
            out.push(Action::Store(StoreOp::KnownServer(entry.peer.clone())));
        }
        let adverts: Vec<(UserId, SignedFrame)> = self
            .local
            .iter()
            .map(|(id, u)| {
                (
                    id.clone(),
                    self.local_advert(id, &u.pubkey, u.traits(), now),
                )
            })
            .collect();
        for (user_id, advert) in adverts {
            out.push(Action::Send(tx.clone(), advert.clone()));
            if let Some(user) = self.local.get_mut(&user_id) {
                user.advert = advert;
            }
        }
        for frame in self.contested.owed_to(&peer.server_id, now) {
            out.push(Action::Send(tx.clone(), frame));
        }
        Ok(out)
    }

    /// A link closed or died. Its users become unreachable: they are removed
    /// and local users told. Idempotent per connection. Returns the actions and
    /// whether the link was current (the shell then schedules a reconnect).
    pub fn link_down(
        &mut self,
        server: &ServerId,
        conn_id: ConnId,
        now: i64,
    ) -> (Vec<Action<H>>, bool) {
        let mut out = Vec::new();
        let Some(entry) = self.servers.get_mut(server) else {
            return (out, false);
        };
        match &entry.link {
            Some(l) if l.conn.id == conn_id => entry.link = None,
            _ => return (out, false),
        }
        self.forget_handed_by(server);
        let gone: Vec<UserId> = self
            .remote
            .iter()
            .filter(|(_, u)| &u.server_id == server)
            .map(|(id, _)| id.clone())
            .collect();
        for user_id in gone {
            self.remove_remote(&user_id);
            let msg = Message::UserRemove(UserRemove {
                user_id,
                server_id: server.clone(),
                seq: None,
            });
            let frame = self.sign(To::All, now, msg.clone());
            self.news_ours(&frame, &msg, &mut out);
        }
        (out, true)
    }

    /// The current link connection of a server.
    pub fn link_of(&self, server: &ServerId) -> Option<&Conn<H>> {
        self.servers
            .get(server)
            .and_then(|s| s.link.as_ref())
            .map(|l| &l.conn)
    }

    /// Answer SERVER_HELLO_JOIN (we are the introducer): the assigned id, every
    /// server (us included) and every online user.
    pub fn welcome(&mut self, requested: &ServerId, address: &ServerAddress) -> ServerWelcome {
        // The requested id is kept unless another server holds it, or it is
        // "auto": one implementation's joiner asks so for an id.
        let taken = *requested == self.config.me
            || requested.as_str().eq_ignore_ascii_case("auto")
            || self
                .servers
                .get(requested)
                .is_some_and(|s| s.peer.pubkey != address.pubkey);
        let assigned = if taken {
            ServerId::random()
        } else {
            requested.clone()
        };
        let mut servers = vec![ServerInfo {
            server_id: self.config.me.clone(),
            host: self.config.host.clone(),
            port: self.config.port,
            pubkey: self.config.pubkey.clone(),
        }];
        servers.extend(
            self.servers
                .values()
                .filter(|s| s.peer.server_id != assigned)
                .map(|s| ServerInfo {
                    server_id: s.peer.server_id.clone(),
                    host: s.peer.host.clone(),
                    port: s.peer.port,
                    pubkey: s.peer.pubkey.clone(),
                }),
        );
        let mut clients: Vec<ClientInfo> = self
            .local
            .iter()
            .map(|(id, u)| ClientInfo {
                user_id: id.clone(),
                server_id: self.config.me.clone(),
                pubkey: u.pubkey.clone(),
                meta: u.name.as_ref().map(|n| serde_json::json!({ "name": n })),
                host: Some(self.config.host.clone()),
                port: Some(self.config.port),
            })
            .collect();
        clients.extend(
            self.remote
                .iter()
                .filter(|(_, u)| self.is_linked(&u.server_id))
                .map(|(id, u)| {
                    let at = self.servers.get(&u.server_id).map(|s| &s.peer);
                    ClientInfo {
                        user_id: id.clone(),
                        server_id: u.server_id.clone(),
                        pubkey: u.pubkey.clone(),
                        meta: u.meta.clone(),
                        host: at.map(|p| p.host.clone()),
                        port: at.map(|p| p.port),
                    }
                }),
        );
        // A head start only (each server advertises its users again over the
        // link the joiner opens to it): bounded, so that the welcome stays far
        // inside the frame limit (~850 bytes an entry).
        clients.truncate(WELCOME_CLIENTS);
        ServerWelcome {
            assigned_id: assigned,
            servers,
            clients,
        }
    }

    /// Apply our SERVER_WELCOME (we joined): learn every server and user, and
    /// return the servers to link to.
    pub fn apply_welcome(
        &mut self,
        welcome: &ServerWelcome,
        now: i64,
    ) -> (Vec<Peer>, Vec<Action<H>>) {
        let mut out = Vec::new();
        let mut to_link = Vec::new();
        for s in &welcome.servers {
            let peer = Peer {
                server_id: s.server_id.clone(),
                host: s.host.clone(),
                port: s.port,
                pubkey: s.pubkey.clone(),
            };
            match self.learn_server(peer.clone()) {
                Ok(a) => {
                    out.extend(a);
                    if !self.is_linked(&peer.server_id) {
                        to_link.push(peer);
                    }
                }
                Err(r) => log::warn!("welcome lists server {}: {}", s.server_id, r.detail),
            }
        }
        for c in &welcome.clients {
            if self.local.contains_key(&c.user_id) || c.server_id == self.config.me {
                continue;
            }
            if !self.servers.contains_key(&c.server_id) && self.config.allowlist.is_some() {
                // A closed mesh hears of no user of a server it did not admit.
                continue;
            }
            if !self.room_for_user_of(&c.server_id, &c.user_id) {
                continue;
            }
            self.insert_remote(
                c.user_id.clone(),
                RemoteUser {
                    server_id: c.server_id.clone(),
                    pubkey: c.pubkey.clone(),
                    name: meta_name(c.meta.as_ref()),
                    meta: c.meta.clone(),
                    advert: None,
                    learnt: now,
                },
            );
        }
        (to_link, out)
    }

    /// Our SERVER_ANNOUNCE (one signature serves every link: same payload).
    pub(crate) fn announce_frame(&self, now: i64) -> SignedFrame {
        let announce = Message::ServerAnnounce(ServerAnnounce(ServerAddress {
            host: self.config.host.clone(),
            port: self.config.port,
            pubkey: self.config.pubkey.clone(),
        }));
        let env = Envelope::from_message(&self.config.me, To::All, now, &announce);
        self.signer
            .sign(socp_protocol::dialect::with_capability(env))
    }

    /// Our SERVER_ANNOUNCE, for every server.
    pub fn announce(&self, now: i64) -> Vec<Action<H>> {
        let frame = self.announce_frame(now);
        let mut out = Vec::new();
        self.to_all_servers(&frame, &[], &mut out);
        out
    }

    /// Take a token for dialling an unvouched server (`dial_rate` per
    /// second, up to `dial_burst`); false when none is left.
    fn take_dial(&mut self, now: i64) -> bool {
        let b = &self.config.budgets;
        let (tokens, last) = self.dial_tokens;
        let elapsed = (now.saturating_sub(last)).max(0) as f64 / 1000.0;
        let tokens = (tokens + elapsed * b.dial_rate).min(b.dial_burst);
        if tokens >= 1.0 {
            self.dial_tokens = (tokens - 1.0, now);
            true
        } else {
            self.dial_tokens = (tokens, now);
            false
        }
    }

    /// HEARTBEAT to every linked server (one signature for all).
    pub fn heartbeat(&self, now: i64) -> Vec<Action<H>> {
        let frame = self.sign(To::All, now, Message::Heartbeat(Default::default()));
        self.linked_servers()
            .map(|(_, conn)| Action::SendNow(conn.tx.clone(), frame.clone()))
            .collect()
    }

    /// SERVER_GOODBYE and USER_REMOVE for every local user, to every server,
    /// then close every session and link (shutdown).
    pub fn shutdown(&mut self, now: i64) -> Vec<Action<H>> {
        // Membership changes still queued reach the store and the mesh first.
        let mut out = self.flush_membership(now);
        let users: Vec<UserId> = self.local.keys().cloned().collect();
        for user_id in users {
            let frame = self.sign(
                To::All,
                now,
                Message::UserRemove(UserRemove {
                    user_id,
                    server_id: self.config.me.clone(),
                    seq: Some(self.next_seq()),
                }),
            );
            self.to_all_servers(&frame, &[], &mut out);
        }
        let bye = self.sign(To::All, now, Message::ServerGoodbye(Default::default()));
        self.to_all_servers(&bye, &[], &mut out);
        for (_, conn) in self.linked_servers() {
            out.push(Action::Close(
                conn.tx.clone(),
                1000,
                "server shutting down".into(),
            ));
        }
        for user in self.local.values() {
            out.push(Action::Close(
                user.conn.tx.clone(),
                1000,
                "server shutting down".into(),
            ));
        }
        out
    }

    /// A SERVER_ANNOUNCE from a server link: learn its origin, pass the
    /// announcement on, and link to the origin if we have no link yet.
    pub(super) fn server_announce(
        &mut self,
        addr: ServerAddress,
        from: &Relayed<'_>,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let peer = Peer {
            server_id: from.origin.clone(),
            host: addr.host,
            port: addr.port,
            pubkey: addr.pubkey,
        };
        // A server announcing itself over its own link is vouched for by
        // that link; one announced through another server is not, yet.
        let via = (from.link != from.origin).then_some(from.link);
        if let Err(r) = self.learn(peer.clone(), via) {
            log::warn!("SERVER_ANNOUNCE from {}: {}", from.origin, r.detail);
            return;
        }
        self.relay_onward(from, out);
        if !self.is_linked(from.origin) {
            if self.is_earned(from.origin) || self.take_dial(now) {
                out.push(Action::Connect(peer));
            } else {
                // Not dialled, so not kept: a real server links to us itself.
                self.refuse(refused::DIAL_RATE);
                self.forget_unearned(from.origin);
                log::debug!("not dialling {} now: over the dial rate", from.origin);
            }
        }
    }
}
