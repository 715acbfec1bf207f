//! Public channel membership: changes folded into versions (SPEC.md §6.4).

use socp_protocol::message::{PublicChannelAdd, PublicChannelUpdated, Wrap};
use socp_protocol::{Base64Url, Envelope, Message, PublicKey, To, UserId};

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

    /// Announce the queued membership changes as one new version: a
    /// PUBLIC_CHANNEL_ADD listing the members who joined (if any; at most
    /// [`MAX_JOINS_PER_VERSION`], the rest stay queued) and a
    /// PUBLIC_CHANNEL_UPDATED with a wrap of the group key for each of them, to
    /// every linked server and local user; and the changes for the store.
    pub fn flush_membership(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        if !self.membership_pending() {
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
        // The wraps are RSA encryptions: made on a crypto thread.
        let updated = self.signer.sign_built(Box::new(move || {
            let wraps = members
                .into_iter()
                .filter_map(|(member_id, key)| {
                    let wrapped = key.encrypt(&group_key).ok()?;
                    Some(Wrap {
                        member_id,
                        wrapped_key: Base64Url::from_bytes(&wrapped),
                    })
                })
                .collect();
            // With the capability object: socp clients read no group key
            // from a socp server's update (it encrypts nothing).
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
}
