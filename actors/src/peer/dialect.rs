//! How the server at the other end speaks (SPEC.md §11): what we learn of
//! its dialect from what it sends, and what we do with frames of its dialect
//! that we cannot read or verify.

use std::time::Instant;

use actix::prelude::*;
use socp_protocol::{Dialect, Envelope, ErrorCode, Message};

use super::PeerLink;
use crate::dialect::Translator;

impl PeerLink {
    /// Speak `dialect` to the peer from the start.
    pub(super) fn speaking(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        let translator =
            Translator::new(dialect, &self.shared.pool, &self.shared.me, &self.unhandled);
        self.out.speak(translator);
        self
    }

    /// The peer speaks `dialect`: what we write from now on is written for it.
    pub(super) fn learn(&mut self, dialect: Dialect) {
        if dialect == self.dialect {
            return;
        }
        self.dialect = dialect;
        let translator =
            Translator::new(dialect, &self.shared.pool, &self.shared.me, &self.unhandled);
        self.out.speak(translator);
    }

    /// What a verified frame on the link tells about the peer's dialect: a
    /// capability object or a socp-only frame says socp; the key in its own
    /// announce or hello says how it writes keys.
    pub(super) fn learn_from(&mut self, ctx: &mut Context<Self>, env: &Envelope, msg: &Message) {
        let from_link = self
            .peer
            .as_ref()
            .is_some_and(|p| p.server_id.as_str() == env.from());
        if !from_link {
            return;
        }
        if let Message::Error(e) = msg {
            self.unhandled_type(e);
        }
        let mut dialect = self.dialect;
        // Its own key: in the frames that carry it (an advert carries a user's).
        let own_key = matches!(
            msg,
            Message::ServerAnnounce(_) | Message::ServerHelloLink(_) | Message::ServerHelloJoin(_)
        );
        if let (true, Some(key)) = (
            own_key,
            env.payload().get("pubkey").and_then(|k| k.as_str()),
        ) {
            dialect.keys = socp_protocol::dialect::KeyEncoding::of(key);
        }
        let socp_only = matches!(
            msg,
            Message::DirectorySync(_) | Message::DirectoryPage(_) | Message::DirectoryRecord(_)
        );
        if socp_only
            || env
                .payload()
                .get(socp_protocol::dialect::CAPABILITY)
                .is_some()
        {
            dialect.socp = true;
        }
        self.learn(dialect);
        if self.dialect.socp && self.directory_owed {
            self.directory_owed = false;
            if let Some(peer) = self.peer.clone() {
                self.ask_directory(ctx, &peer);
            }
        }
    }

    /// An ERROR UNKNOWN_TYPE from a server of another dialect naming a type
    /// we send (`Unhandled type PUBLIC_CHANNEL_ADD`): that type is not sent
    /// to it again over this link. Said once per type.
    fn unhandled_type(&mut self, e: &socp_protocol::message::ErrorPayload) {
        if self.dialect.socp || e.code != ErrorCode::UnknownType {
            return;
        }
        let named = e
            .detail
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .find(|w| socp_protocol::MessageType::parse(w).is_some());
        if let Some(t) = named {
            if self.unhandled.add(t) {
                log::info!(
                    "link {}: the server does not handle {t}: not sent to it again",
                    self.conn_id
                );
            }
        }
    }

    /// A frame whose type or payload we do not read. From an identified
    /// server of another dialect it is its way of speaking (frames of its
    /// own, payloads of another shape): dropped, counted, logged once per
    /// episode. An ERROR is never answered with an ERROR (two servers would
    /// answer each other forever). Otherwise it is a bad frame.
    pub(super) fn unreadable(
        &mut self,
        ctx: &mut Context<Self>,
        env: &Envelope,
        code: ErrorCode,
        detail: String,
    ) {
        let foreign = self.peer.is_some() && !self.dialect.socp;
        if foreign || env.msg_type() == "ERROR" {
            self.shared
                .metrics
                .inc(crate::metrics::family::LINK_DROPPED, "unread");
            if let Some(repeats) = self.foreign.hit(Instant::now()) {
                log::info!(
                    "link {}: dropping frames we do not read, first {}: {detail} \
                     ({repeats} more in the last episode)",
                    self.conn_id,
                    env.msg_type().chars().take(64).collect::<String>()
                );
            }
            return;
        }
        self.strike(ctx, code, detail);
    }

    /// A frame the link relayed from another server that cannot be verified
    /// here (its origin is unknown to us, or its signature fails): the link
    /// may be honest and its origin one we cannot see, so the frame is
    /// dropped and counted, and the link is not struck.
    pub(super) fn unverifiable(&mut self, kind: &'static str, detail: &str) {
        self.shared
            .metrics
            .inc(crate::metrics::family::RELAYED_UNVERIFIABLE, kind);
        if let Some(repeats) = self.unverifiable.hit(Instant::now()) {
            let who = self
                .peer
                .as_ref()
                .map_or_else(String::new, |p| p.server_id.to_string());
            log::warn!(
                "link {} ({who}): dropping relayed frames that cannot be verified here, \
                 first {kind}: {detail} ({repeats} more in the last episode)",
                self.conn_id
            );
        }
    }
}
