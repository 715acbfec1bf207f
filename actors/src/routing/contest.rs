//! An id claimed on both sides of a partition [ext]: which claim stands,
//! and the claims we gave up that a server is owed until its links settle.

use std::collections::VecDeque;

use socp_protocol::message::UserAdvertise;
use socp_protocol::{ErrorCode, ServerId, To, UserId};

use super::*;
use crate::crypto::SignedFrame;

/// How long (ms) a server is owed the claims we gave up to its own: the
/// links of a heal settle well within.
pub(super) const OWED_FOR_MS: i64 = 30_000;

/// Most claims owed at once (the oldest are dropped first).
const MAX_OWED: usize = 256;

/// Claims given up to another server's (see
/// [`RouterState::claimed_on_both_sides`]): our advert of the holder we
/// closed and its USER_REMOVE, owed to that server.
#[derive(Default)]
pub(super) struct Contested {
    owed: VecDeque<(ServerId, [SignedFrame; 2], i64)>,
}

impl Contested {
    fn owe(&mut self, server: ServerId, frames: [SignedFrame; 2], now: i64) {
        self.forget_old(now);
        if self.owed.len() >= MAX_OWED {
            self.owed.pop_front();
        }
        self.owed.push_back((server, frames, now));
    }

    fn forget_old(&mut self, now: i64) {
        while self
            .owed
            .front()
            .is_some_and(|(_, _, at)| at.saturating_add(OWED_FOR_MS) < now)
        {
            self.owed.pop_front();
        }
    }

    /// The frames owed to `server`, in the order they were made.
    pub(super) fn owed_to(&mut self, server: &ServerId, now: i64) -> Vec<SignedFrame> {
        self.forget_old(now);
        self.owed
            .iter()
            .filter(|(s, _, _)| s == server)
            .flat_map(|(_, frames, _)| frames.iter().cloned())
            .collect()
    }
}

impl<H: Clone> RouterState<H> {
    /// `adv` (from a linked server) claims a user id attached here. SPEC.md
    /// §5.3 forbids taking over a live id; but an id can end up claimed on both
    /// sides of a partition (each side removed the other's users and let the id
    /// attach again), and after the heal both servers would refuse the other's
    /// advert forever, each side sending to its own holder's key. [ext] rule:
    /// - if `adv`'s server was linked to us, without a break, since before our
    ///   user attached, it saw our advert first: its claim is the late one;
    ///   refused (so a linked server cannot evict a user by claiming its id);
    /// - otherwise, the same key on both servers is one holder that
    ///   reattached: the lower server id keeps the session, the other closes
    ///   its own (ERROR NAME_IN_USE) and accepts the advert;
    /// - different keys: neither claim may take the id over silently, and
    ///   neither server can tell which holder came first, so both close their
    ///   own holder with ERROR NAME_IN_USE and remove it; the id is free again
    ///   for whoever attaches first, with the whole mesh agreeing. Our claim
    ///   (the latest advert we sent of our holder) goes to `adv`'s server
    ///   again ahead of the USER_REMOVE, and both over each link to it that
    ///   comes up in the next [`OWED_FOR_MS`]: when both servers dial each other at the
    ///   heal, our claim may have gone over the link it closed as a duplicate
    ///   of the other, unread, and it would keep its holder. Where it was
    ///   read, the copies are refused as not newer.
    ///
    /// Returns whether the advert may now be accepted.
    pub(super) fn claimed_on_both_sides(
        &mut self,
        adv: &UserAdvertise,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        let Some(mine) = self.local.get(&adv.user_id) else {
            return true;
        };
        let linked_since = self
            .servers
            .get(&adv.server_id)
            .and_then(|s| s.link.as_ref())
            .map(|l| l.since);
        let late = linked_since.is_none_or(|since| since < mine.attached);
        let same_key = mine.pubkey == adv.pubkey;
        if late || (same_key && self.config.me < adv.server_id) {
            log::warn!(
                "{} advertises {} who is attached here: refused",
                adv.server_id,
                adv.user_id
            );
            return false;
        }
        log::warn!(
            "{} was attached here and at {} while we could not see each other: {}",
            adv.user_id,
            adv.server_id,
            if same_key {
                "the same key, kept there"
            } else {
                "different keys, both holders closed"
            }
        );
        // Our claim before our remove: read after it, it would not be newer.
        let claim = mine.advert.clone();
        let link = self.link_of(&adv.server_id).map(|l| l.tx.clone());
        if let (false, Some(link)) = (same_key, link) {
            out.push(Action::Send(link, claim.clone()));
        }
        let detail = format!(
            "{} was also claimed at server {} while the two servers could not see each other; \
             connect again",
            adv.user_id, adv.server_id
        );
        let remove = self.evict(&adv.user_id, &detail, now, out);
        if let (false, Some(remove)) = (same_key, remove) {
            self.contested
                .owe(adv.server_id.clone(), [claim, remove], now);
        }
        same_key
    }

    /// Close a local user's session with ERROR NAME_IN_USE and remove it;
    /// the USER_REMOVE sent for it.
    fn evict(
        &mut self,
        user_id: &UserId,
        detail: &str,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) -> Option<SignedFrame> {
        let conn = self.local.get(user_id).map(|u| u.conn.clone())?;
        let error = self.error_frame(To::from(user_id), now, ErrorCode::NameInUse, detail);
        out.push(Action::Send(conn.tx.clone(), error));
        out.push(Action::Close(conn.tx, 1008, "name in use".into()));
        Some(self.remove_local(user_id, now, out))
    }
}
