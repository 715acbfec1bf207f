//! Routing users' content to its recipient, here or on another server (SPEC.md §8).

use socp_protocol::message::{
    Command, CommandResponse, DeliverContent, ListResponse, PublicChannelKeyShare, ServerDeliver,
    UserDeliver,
};
use socp_protocol::{Envelope, ErrorCode, Message, ServerId, To, UserId};

use super::*;

use super::inbound::Relayed;

/// Whether `to` names the public channel (`public`, its id, or `*` as one
/// implementation's servers pass a channel message on) rather than a member.
fn is_channel(to: &To) -> bool {
    matches!(to, To::Public | To::All)
}

/// The seen-cache key of a message to the channel: its sender and content
/// signature (which covers its ciphertext and `ts`), not its envelope.
fn channel_message_key(env: &Envelope) -> [u8; 32] {
    match env
        .payload()
        .get("content_sig")
        .and_then(serde_json::Value::as_str)
    {
        Some(sig) => {
            let text = format!("MSG_PUBLIC_CHANNEL\n{}\n{sig}", env.from());
            socp_protocol::crypto::sha256(text.as_bytes())
        }
        None => env.seen_key(),
    }
}

/// Users per LIST_RESPONSE part (~200 bytes each: a part stays under 512 KiB).
pub const LIST_PART: usize = 2_000;

/// Content on its way to one recipient.
pub(super) struct Delivery {
    pub(super) recipient: UserId,
    pub(super) sender: UserId,
    /// The sender's `ts` (what its content signature covers).
    pub(super) orig_ts: i64,
    pub(super) content: DeliverContent,
    /// A file frame of a local user, as the user sent it: what servers of
    /// another dialect are given instead of the SERVER_DELIVER.
    pub(super) original: Option<crate::crypto::FrameText>,
    /// \[ext\] A DM that waited in a mailbox (its home server's tag).
    pub(super) mail: Option<socp_protocol::message::MailTag>,
}

/// Where content to deliver came from: where a USER_NOT_FOUND goes, and the
/// link a SERVER_DELIVER must never be sent back over.
pub(super) enum Origin<'a, H> {
    /// A local user's session.
    User(&'a H),
    /// A server link.
    Link(&'a ServerId),
}

impl<H> Origin<'_, H> {
    fn link(&self) -> Option<&ServerId> {
        match self {
            Origin::Link(id) => Some(id),
            Origin::User(_) => None,
        }
    }
}

impl<H: Clone> RouterState<H> {
    /// Handle a frame from a local user, already checked by its session
    /// (identity, freshness, rate, content signature).
    pub fn from_user(
        &mut self,
        user_id: &UserId,
        env: &Envelope,
        msg: Message,
        now: i64,
    ) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let Some(origin) = self.local.get(user_id).map(|u| u.conn.tx.clone()) else {
            return out;
        };
        let reply_to = To::from(user_id);
        match msg {
            Message::ListRequest(_) => {
                // In parts far under the frame limit; the last has no `more`.
                let users = self.listing();
                let parts = users.len().div_ceil(LIST_PART).max(1);
                let mut users = users.into_iter();
                for part in 0..parts {
                    let frame = self.sign(
                        reply_to.clone(),
                        now,
                        Message::ListResponse(ListResponse {
                            users: users.by_ref().take(LIST_PART).collect(),
                            more: part + 1 < parts,
                            online_users: Vec::new(),
                        }),
                    );
                    out.push(Action::Send(origin.clone(), frame));
                }
            }
            Message::Command(Command { cmd }) => {
                let frame = if cmd.trim_start_matches('/').eq_ignore_ascii_case("list") {
                    self.sign(
                        reply_to,
                        now,
                        Message::CommandResponse({
                            // The first seed's form has no parts: at most
                            // what fits well inside the frame limit.
                            let users: Vec<_> =
                                self.listing().into_iter().take(4 * LIST_PART).collect();
                            let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
                            let response = serde_json::json!({ "users": ids }).to_string();
                            CommandResponse {
                                command: Some(cmd.clone()),
                                cmd,
                                users,
                                response: Some(response),
                            }
                        }),
                    )
                } else {
                    self.error_frame(reply_to, now, ErrorCode::UnknownType, "unknown command")
                };
                out.push(Action::Send(origin, frame));
            }
            Message::MsgDirect(m) => {
                self.route_content(env, DeliverContent::Dm(m), &origin, now, &mut out)
            }
            Message::MsgPublicChannel(_) if is_channel(env.to()) => {
                self.channel_message(env, None, now, &mut out)
            }
            Message::MsgPublicChannel(m) => {
                self.route_content(env, DeliverContent::Public(m), &origin, now, &mut out)
            }
            Message::FileStart(m) => {
                self.route_content(env, DeliverContent::FileStart(m), &origin, now, &mut out)
            }
            Message::FileChunk(m) => {
                self.route_content(env, DeliverContent::FileChunk(m), &origin, now, &mut out)
            }
            Message::FileEnd(m) => {
                self.route_content(env, DeliverContent::FileEnd(m), &origin, now, &mut out)
            }
            Message::PublicChannelKeyShare(share) => self.route_key_share(env, share, &mut out),
            Message::MailAck(ack) => self.user_mail_ack(user_id, env, ack, now, &mut out),
            other => {
                let frame = self.error_frame(
                    reply_to,
                    now,
                    ErrorCode::BadRequest,
                    &format!("{} is not accepted from a user", other.msg_type().as_str()),
                );
                out.push(Action::Send(origin, frame));
            }
        }
        out
    }

    /// Route a user's content frame to its recipient (SPEC.md §8).
    fn route_content(
        &mut self,
        env: &Envelope,
        content: DeliverContent,
        origin: &H,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let recipient = match env.to().id().map(UserId::parse) {
            Some(Ok(id)) => id,
            _ => {
                let frame = self.error_frame(
                    To::from(&env.from_user()),
                    now,
                    ErrorCode::BadRequest,
                    "`to` must be the recipient's user id",
                );
                out.push(Action::Send(origin.clone(), frame));
                return;
            }
        };
        let sender = env.from_user();
        let original = match content {
            DeliverContent::FileStart(_)
            | DeliverContent::FileChunk(_)
            | DeliverContent::FileEnd(_) => Some(std::sync::Arc::from(env.to_json())),
            _ => None,
        };
        let delivery = Delivery {
            recipient,
            sender,
            orig_ts: env.ts(),
            content,
            original,
            mail: None,
        };
        self.deliver(delivery, Origin::User(origin), now, out);
    }

    /// Deliver content to its recipient: locally as USER_DELIVER, to its
    /// server as SERVER_DELIVER, or answer USER_NOT_FOUND to the origin.
    pub(super) fn deliver(
        &mut self,
        delivery: Delivery,
        origin: Origin<'_, H>,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let Delivery {
            recipient,
            sender,
            orig_ts,
            content,
            original,
            mail,
        } = delivery;
        // The envelope `ts` is the sender's, as well as `orig_ts`: other
        // implementations check the content signature against the envelope
        // `ts` (SPEC.md §8 leaves which one open). It was checked to be
        // within the window where the sender is attached.
        if self.local.contains_key(&recipient) {
            self.catch_up(&recipient, now, out);
        }
        if let Some(user) = self.local.get(&recipient) {
            let frame = self.sign(
                To::from(&recipient),
                orig_ts,
                Message::UserDeliver(UserDeliver {
                    sender,
                    orig_ts: Some(orig_ts),
                    content,
                    mail,
                }),
            );
            out.push(Action::Send(user.conn.tx.clone(), frame));
            return;
        }
        let link = self
            .remote
            .get(&recipient)
            .and_then(|u| self.servers.get(&u.server_id))
            .and_then(|s| {
                s.link
                    .as_ref()
                    .map(|l| (s.peer.server_id.clone(), l.conn.tx.clone()))
            });
        match link {
            Some((server_id, tx)) if origin.link() != Some(&server_id) => {
                let frame = self
                    .sign(
                        To::from(&server_id),
                        orig_ts,
                        Message::ServerDeliver(ServerDeliver {
                            user_id: recipient,
                            sender,
                            orig_ts: Some(orig_ts),
                            content,
                            mail,
                        }),
                    )
                    .delivering(original);
                out.push(Action::Send(tx, frame));
            }
            _ => {
                // A registered user offline: a DM waits in its mailbox [ext].
                if let (Origin::User(_), DeliverContent::Dm(dm)) = (&origin, &content) {
                    if self.offline_dm(&recipient, &sender, orig_ts, dm, now, out) {
                        return;
                    }
                }
                let detail = format!("{recipient} is not online");
                match origin {
                    Origin::User(tx) => {
                        let frame = self.error_frame(
                            To::from(&sender),
                            now,
                            ErrorCode::UserNotFound,
                            &detail,
                        );
                        out.push(Action::Send(tx.clone(), frame));
                    }
                    Origin::Link(server_id) => {
                        if let Some(tx) = self.link_of(server_id).map(|c| c.tx.clone()) {
                            let frame = self.error_frame(
                                To::from(server_id),
                                now,
                                ErrorCode::UserNotFound,
                                &detail,
                            );
                            out.push(Action::Send(tx, frame));
                        }
                    }
                }
            }
        }
    }

    fn route_key_share(
        &mut self,
        env: &Envelope,
        share: PublicChannelKeyShare,
        out: &mut Vec<Action<H>>,
    ) {
        let members: Vec<UserId> = share.shares.iter().map(|s| s.member.clone()).collect();
        let sender = env.from_user();
        for member in members {
            let frame = self.signer.sign(Envelope::from_message(
                &sender,
                To::from(&member),
                env.ts(),
                &Message::PublicChannelKeyShare(share.clone()),
            ));
            if let Some(user) = self.local.get(&member) {
                out.push(Action::Send(user.conn.tx.clone(), frame));
            } else if let Some(tx) = self
                .remote
                .get(&member)
                .and_then(|u| self.servers.get(&u.server_id))
                .and_then(|s| s.link.as_ref())
                .map(|l| l.conn.tx.clone())
            {
                out.push(Action::Send(tx, frame));
            }
        }
    }

    /// A public message addressed to the channel itself, one ciphertext for
    /// everyone (SPEC.md §6.4, as other implementations send it): the user's
    /// frame, unchanged and with the user's signature, goes to every local
    /// user but its sender and, from the sender's own server only, to every
    /// linked server. No signature is made for it: receivers verify the
    /// user's (SPEC.md §5.2). `via`: the link it came over.
    fn channel_message(
        &mut self,
        env: &Envelope,
        via: Option<&ServerId>,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        // Once per message, however it comes back: another implementation's
        // server passes it on to every server, ours too, re-serialised and
        // perhaps readdressed ("public" or "*").
        if !self.seen.insert(channel_message_key(env), env.ts(), now) {
            return;
        }
        let frame = SignedFrame::ready(std::sync::Arc::from(env.to_json()));
        // Everyone gets it: the waiting news first (see `catch_up`).
        out.extend(self.flush_news(now));
        self.to_all_users(&frame, Some(&env.from_user()), out);
        if via.is_none() {
            self.to_all_servers(&frame, &[], out);
        }
    }

    /// Handle a content frame that another implementation's server forwarded
    /// as-is (`from` = a user, `to` = one of our users): routed like a DM.
    /// One addressed to the public channel goes to every local user.
    pub fn from_server_user_frame(
        &mut self,
        link: &ServerId,
        env: &Envelope,
        msg: Message,
        now: i64,
    ) -> Vec<Action<H>> {
        let mut out = Vec::new();
        if !self.seen.insert(env.seen_key(), env.ts(), now) {
            return out;
        }
        if matches!(msg, Message::MsgPublicChannel(_)) && is_channel(env.to()) {
            self.channel_message(env, Some(link), now, &mut out);
            return out;
        }
        let content = match msg {
            Message::MsgDirect(m) => DeliverContent::Dm(m),
            Message::MsgPublicChannel(m) => DeliverContent::Public(m),
            Message::FileStart(m) => DeliverContent::FileStart(m),
            Message::FileChunk(m) => DeliverContent::FileChunk(m),
            Message::FileEnd(m) => DeliverContent::FileEnd(m),
            _ => return out,
        };
        let Some(Ok(recipient)) = env.to().id().map(UserId::parse) else {
            return out;
        };
        if self.local.contains_key(&recipient) {
            let delivery = Delivery {
                recipient,
                sender: env.from_user(),
                orig_ts: env.ts(),
                content,
                original: None,
                mail: None,
            };
            self.deliver(delivery, Origin::Link(link), now, &mut out);
        }
        out
    }

    /// A SERVER_DELIVER from a server link: to a local user, or forwarded
    /// unchanged to the server the user moved to (never back where it came
    /// from), or answered USER_NOT_FOUND on the link it came over.
    pub(super) fn server_deliver(
        &mut self,
        d: ServerDeliver,
        env_ts: i64,
        from: &Relayed<'_>,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        if self.config.introducer_only {
            return;
        }
        if self.local.contains_key(&d.user_id) {
            let delivery = Delivery {
                recipient: d.user_id,
                sender: d.sender,
                orig_ts: d.orig_ts.unwrap_or(env_ts),
                content: d.content,
                original: None,
                mail: d.mail,
            };
            self.deliver(delivery, Origin::Link(from.link), now, out);
            return;
        }
        let target = self
            .remote
            .get(&d.user_id)
            .and_then(|u| self.servers.get(&u.server_id))
            .filter(|s| s.peer.server_id != *from.link && s.peer.server_id != *from.origin)
            .and_then(|s| s.link.as_ref())
            .map(|l| l.conn.tx.clone());
        match target {
            Some(tx) => out.push(Action::Send(tx, from.frame.clone())),
            // Nowhere to forward it but back (or nowhere at all): answer on
            // the link it came from. Re-sending it as our own SERVER_DELIVER
            // would put it back to its origin.
            None => {
                let detail = format!("{} is not online", d.user_id);
                let error =
                    self.error_frame(To::from(from.link), now, ErrorCode::UserNotFound, &detail);
                if let Some(link) = self.link_of(from.link) {
                    out.push(Action::Send(link.tx.clone(), error));
                }
            }
        }
    }
}
