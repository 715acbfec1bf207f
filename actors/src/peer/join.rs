//! The introducer's side of a join: the welcome, then the join connection
//! kept open (bounded) until the joiner's first frame makes it the link
//! (SPEC.md §5.1.5), and the one path by which a link opened by the other
//! side comes up.

use actix::prelude::*;
use socp_protocol::message::{ErrorPayload, ServerAddress};
use socp_protocol::{now_ms, Envelope, Message, To};

use super::PeerLink;
use crate::crypto::FrameText;
use crate::router::{JoinRequest, LinkFrame, LinkUp};
use crate::routing::Peer;
use crate::transport::{close, InQueue};

/// Join connections a server keeps open at once without their being links
/// (welcomed and not used yet, or retired). Past it a welcome is followed by
/// a close, as a join connection never used would be anyway.
pub const MAX_KEPT_JOINS: usize = 64;

/// How long a welcomed join connection waits for its first frame.
const KEPT_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl PeerLink {
    /// We are the introducer: answer SERVER_WELCOME. The join connection
    /// then stays open as the link with the new server (SPEC.md §5.1.5):
    /// some implementations use it as their only link to us. A joiner that
    /// links separately closes it, or its later link replaces it.
    pub(super) fn join(&mut self, ctx: &mut Context<Self>, env: Envelope, address: ServerAddress) {
        let requested = env.from_server();
        let request = self.shared.router.join.send(JoinRequest {
            requested: requested.clone(),
            address: address.clone(),
        });
        InQueue::wait_for(ctx, self, request, move |act, ctx, welcome| match welcome {
            Ok(welcome) => {
                let keep = act.keep();
                // Also our id and key as `server_id` and `server_pub`: one
                // implementation's joiner learns our key only there.
                let welcome_id = welcome.assigned_id.clone();
                let written = keys_as_written(&welcome);
                let msg = Message::ServerWelcome(welcome);
                let mut env =
                    Envelope::from_message(&act.shared.me, To::from(&requested), now_ms(), &msg);
                if let serde_json::Value::Object(p) = env.payload_mut() {
                    let key = act.shared.pool.public_key().to_wire().to_owned();
                    p.insert("server_pub".into(), serde_json::Value::String(key));
                    p.insert("server_id".into(), act.shared.me.as_str().into());
                    written.apply(p);
                }
                act.send_env(ctx, socp_protocol::dialect::with_capability(env));
                if !keep {
                    act.close(ctx, close::NORMAL, "welcome sent");
                    return;
                }
                act.welcomed = Some((welcome_id, address));
                ctx.run_later(KEPT_JOIN_WAIT, |act, ctx| {
                    if act.peer.is_none() && act.welcomed.is_some() {
                        act.close(ctx, close::NORMAL, "welcome sent; no frame followed");
                    }
                });
            }
            Err(_) => act.close(ctx, close::AWAY, "server shutting down"),
        });
    }

    /// Count this connection among the kept join connections, if there is
    /// room; false if not.
    pub(super) fn keep(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if self.kept {
            return true;
        }
        let kept = self.shared.kept_joins.fetch_add(1, Ordering::Relaxed);
        if kept >= MAX_KEPT_JOINS {
            self.shared.kept_joins.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.kept = true;
        true
    }

    pub(super) fn release(&mut self) {
        if std::mem::take(&mut self.kept) {
            self.shared
                .kept_joins
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The first frame a server we welcomed sends over its join connection:
    /// the connection becomes the link, and the frame is handled as any on it.
    pub(super) fn adopt(&mut self, ctx: &mut Context<Self>, raw: FrameText) {
        let Some((server_id, address)) = self.welcomed.take() else {
            return;
        };
        // Set first: the router may replace it by the server's own link.
        self.via_join = true;
        self.come_up(ctx, server_id, address, move |act, ctx, _| {
            // A link now, bounded as links are (one per server).
            if !act.retired {
                act.release();
            }
            act.handle_frame(ctx, raw);
        });
    }

    /// A mesh server linked to us, as `server_id`.
    pub(super) fn link(
        &mut self,
        ctx: &mut Context<Self>,
        server_id: socp_protocol::ServerId,
        env: Envelope,
        msg: Message,
        address: ServerAddress,
        raw: FrameText,
    ) {
        // A server of another dialect linking with SERVER_ANNOUNCE takes a
        // server's key from that server's own announce, and may hold ours as
        // an introducer wrote it (in an encoding it may not read): our
        // announce first, our key in its encoding, before anything it checks.
        if matches!(msg, Message::ServerAnnounce(_)) && !self.dialect.socp {
            let ours = ServerAddress {
                host: self.shared.advertised.0.clone(),
                port: self.shared.advertised.1,
                pubkey: self.shared.pool.public_key().clone(),
            };
            let announce = socp_protocol::message::ServerAnnounce(ours);
            self.send_hello(ctx, To::from(&server_id), Message::ServerAnnounce(announce));
        }
        self.come_up(ctx, server_id, address, move |act, _, peer| {
            if matches!(msg, Message::ServerAnnounce(_)) {
                act.shared.router.link_frame.do_send(LinkFrame {
                    link: peer.server_id,
                    env,
                    msg,
                    raw,
                    charge: act.holding.take(),
                });
            }
        });
    }

    /// Tell the router that server `server_id` (at `address`) is linked over
    /// this connection, the other side having opened it; once it agrees, this
    /// is that server's link, its directory is asked for, and `then` runs.
    /// Refused, the connection is closed.
    fn come_up(
        &mut self,
        ctx: &mut Context<Self>,
        server_id: socp_protocol::ServerId,
        address: ServerAddress,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Peer) + 'static,
    ) {
        let peer = Peer {
            server_id,
            host: address.host,
            port: address.port,
            pubkey: address.pubkey,
        };
        let up = self.shared.router.link_up.send(LinkUp {
            peer: peer.clone(),
            conn: self.conn(ctx),
            opened_by_me: false,
        });
        InQueue::wait_for(ctx, self, up, move |act, ctx, result| match result {
            Ok(Ok(())) => {
                act.peer = Some(peer.clone());
                act.report_alive();
                act.ask_directory(ctx, &peer);
                then(act, ctx, peer);
            }
            Ok(Err(refusal)) => {
                act.send(
                    ctx,
                    To::from(&peer.server_id),
                    Message::Error(ErrorPayload::new(refusal.code, refusal.detail)),
                );
                act.close(ctx, close::POLICY, "link refused");
            }
            Err(_) => act.close(ctx, close::AWAY, "server shutting down"),
        });
    }
}

/// The keys of a welcome's servers and users that their holders write in
/// another encoding than DER (the PEM dialect), so written: a joiner links to
/// a PEM-dialect server in its dialect only if it learns its key as PEM.
struct KeysAsWritten {
    servers: Vec<Option<String>>,
    clients: Vec<Option<String>>,
}

fn keys_as_written(welcome: &socp_protocol::message::ServerWelcome) -> KeysAsWritten {
    let written = |key: &socp_protocol::PublicKey| {
        let encoding = key.written();
        (encoding != socp_protocol::dialect::KeyEncoding::Der)
            .then(|| encoding.write(key).ok())
            .flatten()
    };
    KeysAsWritten {
        servers: welcome.servers.iter().map(|s| written(&s.pubkey)).collect(),
        clients: welcome.clients.iter().map(|c| written(&c.pubkey)).collect(),
    }
}

impl KeysAsWritten {
    /// Write them into the welcome's payload `p`.
    fn apply(self, p: &mut serde_json::Map<String, serde_json::Value>) {
        for (list, keys) in [("servers", self.servers), ("clients", self.clients)] {
            if let Some(serde_json::Value::Array(items)) = p.get_mut(list) {
                for (item, key) in items.iter_mut().zip(keys) {
                    if let (Some(key), serde_json::Value::Object(item)) = (key, item) {
                        item.insert("pubkey".into(), key.into());
                    }
                }
            }
        }
    }
}
