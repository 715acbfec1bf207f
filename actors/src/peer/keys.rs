//! Presence of another dialect that carries no keys: a link's keyless
//! adverts are held while the link is asked PUBKEY_REQUEST, and the link's
//! own requests are answered (SPEC.md §11). And users' own signatures where a
//! link's frame needs one: a MAIL_ACK [ext] erasing a user's kept DMs.

use actix::prelude::*;
use socp_protocol::message::{PubkeyRequest, PubkeyResponse, UserAdvertise};
use socp_protocol::{now_ms, Envelope, ErrorCode, Message, To};

use super::PeerLink;
use crate::crypto::{CryptoPool, FrameText, Lane};
use crate::router::{LinkFrame, UserKey};
use crate::routing::Peer;
use crate::transport::InQueue;

/// Keyless adverts a link may have waiting for their keys.
const MAX_KEYLESS: usize = 256;

impl PeerLink {
    /// An advert of the link's own server without `pubkey`, from a server not
    /// known to speak socp: its dialect hands keys out on PUBKEY_REQUEST.
    pub(super) fn is_keyless_advert(&self, env: &Envelope) -> bool {
        env.msg_type() == "USER_ADVERTISE"
            && !self.dialect.socp
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.server_id.as_str() == env.from())
            && env.payload().get("pubkey").is_none()
            && env.payload()["user_id"].is_string()
    }

    /// Verify a keyless advert with the link's key, keep it, and ask the
    /// link for the user's key; the advert goes to the router with it.
    pub(super) fn keyless_advert(
        &mut self,
        ctx: &mut Context<Self>,
        env: Envelope,
        raw: FrameText,
    ) {
        let (Some(peer), Ok(user)) = (
            self.peer.clone(),
            socp_protocol::UserId::parse(env.payload()["user_id"].as_str().unwrap_or_default()),
        ) else {
            return self.unreadable(ctx, &env, ErrorCode::BadRequest, "a bad user id".into());
        };
        if !env.is_fresh(now_ms(), self.shared.settings.ts_window_ms) {
            return self.strike(
                ctx,
                ErrorCode::BadRequest,
                "`ts` is outside the accepted window".into(),
            );
        }
        if self.keyless.len() >= MAX_KEYLESS && !self.keyless.contains_key(user.as_str()) {
            return self.unreadable(
                ctx,
                &env,
                ErrorCode::BadRequest,
                "too many keys asked for".into(),
            );
        }
        let lane = crate::crypto::Lane::flow(peer.server_id.as_str());
        let check = self.shared.pool.verify_in(lane, env, peer.pubkey.clone());
        InQueue::wait_for(ctx, self, check, move |act, ctx, checked| match checked {
            Some((env, true)) => {
                act.keyless.insert(user.to_string(), (env, raw));
                act.send(
                    ctx,
                    To::from(&peer.server_id),
                    Message::PubkeyRequest(PubkeyRequest { user_id: user }),
                );
            }
            _ => act.strike(
                ctx,
                ErrorCode::InvalidSig,
                "signature does not verify".into(),
            ),
        });
    }

    /// The key of a user whose advert came without one: the advert goes to
    /// the router now, as the user's.
    pub(super) fn keyed(&mut self, peer: &Peer, answer: PubkeyResponse) {
        let Some((env, raw)) = self.keyless.remove(answer.user_id.as_str()) else {
            return;
        };
        let server = socp_protocol::ServerId::parse(
            env.payload()["server_id"]
                .as_str()
                .unwrap_or(peer.server_id.as_str()),
        );
        let (Some(pubkey), Ok(server_id)) = (answer.pubkey, server) else {
            return;
        };
        let meta = env.payload().get("meta").filter(|m| m.is_object()).cloned();
        let advert = UserAdvertise {
            user_id: answer.user_id,
            server_id,
            pubkey,
            meta,
            seq: None,
        };
        self.shared.router.link_frame.do_send(LinkFrame {
            link: peer.server_id.clone(),
            env,
            msg: Message::UserAdvertise(advert),
            raw,
            charge: None,
        });
    }

    /// PUBKEY_REQUEST from the link: the key we know for that user, or null.
    pub(super) fn answer_pubkey(
        &mut self,
        ctx: &mut Context<Self>,
        peer: &Peer,
        ask: PubkeyRequest,
    ) {
        let to = To::from(&peer.server_id);
        let user_id = ask.user_id.clone();
        let lookup = self.shared.router.user_key.send(UserKey(ask.user_id));
        ctx.spawn(lookup.into_actor(self).map(move |key, act, ctx| {
            let pubkey = key.ok().flatten();
            act.send(
                ctx,
                to,
                Message::PubkeyResponse(PubkeyResponse { user_id, pubkey }),
            );
        }));
    }
}

/// A MAIL_ACK [ext] erases a user's kept DMs: one from a linked server must
/// carry the user's own MAIL_ACK frame, signed with the key the network
/// advertises for the user (checked on the pool). Other frames pass.
pub(super) async fn user_signed_ack(
    msg: &Message,
    pool: &CryptoPool,
    lane: Lane,
    user_key: &Recipient<UserKey>,
) -> Result<(), String> {
    let Message::MailAck(socp_protocol::message::MailAck {
        user_id: Some(user),
        user_frame: Some(text),
        ..
    }) = msg
    else {
        return Ok(());
    };
    let nested = Envelope::parse(text.as_bytes()).map_err(|e| format!("its user frame: {e}"))?;
    if nested.from() != user.as_str() {
        return Err("its user frame is another user's".to_owned());
    }
    let key = user_key
        .send(UserKey(user.clone()))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| "its user is not advertised here".to_owned())?;
    match pool.verify_in(lane, nested, key).await {
        Some((_, true)) => Ok(()),
        _ => Err("its user frame's signature does not verify".to_owned()),
    }
}
