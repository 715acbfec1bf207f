//! Public channel membership: changes folded into versions (SPEC.md §6.4).

use socp_protocol::message::{PublicChannelAdd, PublicChannelUpdated, Wrap};
use socp_protocol::{Base64Url, Envelope, Message, PublicKey, To, UserId};

use futures_util::FutureExt;

use super::*;
use crate::crypto::SignedFrame;

/// Most members one announcement adds: its PUBLIC_CHANNEL_UPDATED carries a
/// ~760-byte wrap for each, and must stay well inside every receiver's frame
/// limit (1 MiB by default). More joins go out in the next version.
pub const MAX_JOINS_PER_VERSION: usize = 256;

/// Public channel membership changes not announced yet. Changes that arrive
/// together (a burst of joins while the last announcement is still being
/// signed) make one version: one PUBLIC_CHANNEL_ADD listing every new member
/// and one PUBLIC_CHANNEL_UPDATED with their wraps (SPEC.md §6.4: `add` and
/// `wraps` are lists), two signatures instead of two per user.
#[derive(Default)]
pub(super) struct Membership {
    pub(super) joins: Vec<(UserId, PublicKey)>,
    /// Members who left, and whether they were registered (they keep their row).
    pub(super) leaves: Vec<(UserId, bool)>,
}

impl<H: Clone> RouterState<H> {
    /// Whether public channel membership changes wait to be announced.
    pub fn membership_pending(&self) -> bool {
        self.membership_changed() || self.shares_due()
    }

    fn membership_changed(&self) -> bool {
        !self.membership.joins.is_empty() || !self.membership.leaves.is_empty()
    }

    /// The last announced PUBLIC_CHANNEL_UPDATED while it is still being
    /// signed: the shell lets changes queue behind it, so that a burst of joins
    /// makes a few versions rather than one per user.
    pub(crate) fn membership_signing(&self) -> Option<SignedFrame> {
        self.announced
            .as_ref()
            .filter(|f| matches!(f.state(), crate::crypto::Signing::Running))
            .cloned()
    }

    /// Send the wraps of our key due to other servers' users (`sharing`), and
    /// announce the queued membership changes as one new version: a
    /// PUBLIC_CHANNEL_ADD listing the members who joined (if any; at most
    /// [`MAX_JOINS_PER_VERSION`], the rest stay queued) and a
    /// PUBLIC_CHANNEL_UPDATED with a wrap of the group key for each of them, to
    /// every linked server and local user; and the changes for the store.
    pub fn flush_membership(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        self.flush_shares(now, &mut out);
        if !self.membership_changed() {
            return out;
        }
        let take = self.membership.joins.len().min(MAX_JOINS_PER_VERSION);
        let joins: Vec<(UserId, PublicKey)> = self.membership.joins.drain(..take).collect();
        let leaves = std::mem::take(&mut self.membership.leaves);
        let old = self.public_version;
        self.public_version += 1;
        let version = self.public_version;
        let mut frames = Vec::with_capacity(2);
        if !joins.is_empty() {
            frames.push(self.sign(
                To::Public,
                now,
                Message::PublicChannelAdd(PublicChannelAdd {
                    add: joins.iter().map(|(id, _)| id.clone()).collect(),
                    if_version: old,
                }),
            ));
        }
        let (me, members, group_key) = (
            self.config.me.clone(),
            joins.clone(),
            self.group_key.clone(),
        );
        // The wraps are RSA encryptions: made on a crypto thread, once, for
        // the update and for each new member's own copy (below).
        let (made, wraps_made) = tokio::sync::oneshot::channel::<Arc<Vec<Wrap>>>();
        let updated = self.signer.sign_built(Box::new(move || {
            let wraps = wraps_of(members, &group_key);
            // Nobody may wait for the members' copies: nothing to do then.
            let _ = made.send(Arc::new(wraps.clone()));
            // With the capability object: the update of a socp server.
            Some(socp_protocol::dialect::with_capability(Envelope::new(
                &me,
                To::Public,
                now,
                &PublicChannelUpdated { version, wraps },
            )))
        }));
        frames.push(updated.clone());
        for frame in &frames {
            self.to_all_servers(frame, &[], &mut out);
            self.channel_news_to_users(frame, true, &mut out);
        }
        self.own_wraps(&joins, (&updated, wraps_made), version, now, &mut out);
        self.announced = Some(updated);
        for (user_id, registered) in leaves {
            out.push(Action::Store(StoreOp::PublicLeave {
                user_id,
                remove_row: !registered,
                version,
            }));
        }
        for (user_id, pubkey) in joins {
            out.push(Action::Store(StoreOp::PublicJoin {
                user_id,
                pubkey,
                group_key: self.group_key.clone(),
                version,
            }));
        }
        out
    }

    /// Each new local member that reads batches (and so gets no update of
    /// ours) is sent its own wrap of the group key, unsigned over its own
    /// connection: `PUBLIC_CHANNEL_UPDATED {version, wraps:[its wrap]}`. A
    /// client of another implementation attached here encrypts its public
    /// messages under that key; with it socp clients read them, and send it
    /// what it reads (docs/PROTOCOL.md §2, "Channels of one AES key").
    fn own_wraps(
        &self,
        joins: &[(UserId, PublicKey)],
        (updated, wraps): (&SignedFrame, tokio::sync::oneshot::Receiver<Arc<Vec<Wrap>>>),
        version: u64,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let wraps = wraps.shared();
        for (id, _) in joins {
            let Some(user) = self.local.get(id).filter(|u| u.batched) else {
                continue;
            };
            let (me, id, wraps) = (self.config.me.clone(), id.clone(), wraps.clone());
            let update_made = updated.text();
            let frame = SignedFrame::from_future(
                async move {
                    // The wraps are made with the update.
                    update_made.await;
                    let wraps = wraps.await.ok()?;
                    let own = wraps.iter().find(|w| w.member_id == id)?.clone();
                    let update = PublicChannelUpdated {
                        version,
                        wraps: vec![own],
                    };
                    let env = Envelope::new(&me, To::from(&id), now, &update);
                    Some(crate::crypto::FrameText::from(env.to_json()))
                }
                .boxed(),
            );
            // Made at once if the update is (writers then see it at once).
            let _made_now = frame.text().now_or_never();
            out.push(Action::Send(user.conn.tx.clone(), frame));
        }
    }
}

/// The group key wrapped (RSA-OAEP) for each of `members`; a member whose
/// key cannot wrap it is left out. RSA: call it on a crypto thread.
pub(super) fn wraps_of(members: Vec<(UserId, PublicKey)>, group_key: &[u8]) -> Vec<Wrap> {
    members
        .into_iter()
        .filter_map(|(member_id, key)| {
            let wrapped = key.encrypt(group_key).ok()?;
            Some(Wrap {
                member_id,
                wrapped_key: Base64Url::from_bytes(&wrapped),
            })
        })
        .collect()
}
