//! Presence news to local users, batched [ext] for clients that read
//! `NEWS_BATCH` (docs/PROTOCOL.md, "Batched presence news").
//!
//! Every join, leave and rename is news to every user, and a new user is
//! sent every advert: attaching N users is N² adverts. A client whose hello
//! says it reads batches gets them in few frames, and fewer bytes:
//! - the news of a moment (every [`flush_news`](RouterState::flush_news)) as
//!   one batch whose text is made once and shared by every such user. We
//!   sign the batch, so our own adverts and removals inside it go as
//!   `{type, payload}` (no envelope and signature of their own: half the
//!   bytes); other servers' frames inside are whole, as their origin signed
//!   them;
//! - the roster as a *snapshot*: the state of one moment in signed batches,
//!   made at most once a second and shared by every user that attaches
//!   meanwhile, followed by the newcomers since that moment (each advert as
//!   signed, in unsigned batches) and the user's own advert. Once anyone
//!   leaves or changes, the snapshot is dropped (a user attaching must see
//!   the state as it is, not how it came to be); until the next may be made,
//!   users attaching get every advert as signed, made for each alone.
//!
//! Other clients get each frame on its own, at once, as before.

use std::collections::HashMap;

use futures_util::FutureExt;
use serde_json::{json, Value};
use socp_protocol::message::NewsBatch;

use super::*;

/// Most bytes of frames one batch carries (our adverts are ~1.7 KB signed,
/// ~1 KB inside a batch of ours): well inside every client's frame limit,
/// and small enough that a DM queued behind one waits only a moment.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a frame is counted as while its size is not known (one of our own
/// adverts still being signed, or one inside a batch of ours).
const ESTIMATE: usize = 2048;

/// The shortest time between two batches, ms.
const MIN_GAP_MS: i64 = 25;

/// Each user that reads batches adds this much to the time between two
/// batches, µs: every batch is a frame to each of them, so with 10,000 of
/// them a batch goes every 425 ms (about 24,000 frames a second at most;
/// at 10 µs, 80,000 frames a second made attaching 10,000 users a fifth
/// slower).
const GAP_PER_READER_US: i64 = 40;

/// How old a snapshot may be when a user attaches, ms (a change that is not
/// news, such as users learnt from a welcome, shows in the next one); and
/// how often one may be made (its batches are signed).
const SNAPSHOT_FRESH_MS: i64 = 1000;

/// A snapshot nobody has used for this long is dropped (its memory), ms.
const SNAPSHOT_KEPT_MS: i64 = 10_000;

/// Most news kept after a snapshot for the users that attach next; past it
/// the snapshot is dropped and the next attach makes a new one.
const MAX_SINCE_SNAPSHOT: usize = 4096;

/// One piece of news: the frame as signed, and, if we signed it, its
/// `{type, payload}` for batches of ours.
#[derive(Clone)]
pub(super) struct Item {
    frame: SignedFrame,
    ours: Option<Value>,
}

/// News not yet sent to the users that read batches, and the snapshot
/// users attaching now are given.
#[derive(Default)]
pub(super) struct News {
    pending: Vec<Item>,
    /// When the last batch went (ms).
    last: i64,
    /// Users that read batches.
    readers: usize,
    /// The state at `snapshot_at`, in signed batches.
    snapshot: Vec<SignedFrame>,
    snapshot_at: Option<i64>,
    /// When a user last attached with the snapshot (ms).
    snapshot_used: i64,
    /// When the last snapshot was made (ms): at most one a second.
    snapshot_made: i64,
    /// The users the snapshot and the news after it advertise.
    snapshot_ids: std::collections::HashSet<UserId>,
    /// Every piece of news since the snapshot, as signed.
    since_snapshot: Vec<SignedFrame>,
}

impl<H: Clone> RouterState<H> {
    /// `frame` (a USER_ADVERTISE or USER_REMOVE another server signed, or
    /// one of ours signed elsewhere) about `(user, online)` to every local
    /// user: at once to those that do not read batches, in the next batch to
    /// those that do.
    pub(super) fn news(
        &mut self,
        frame: &SignedFrame,
        about: (&UserId, bool),
        out: &mut Vec<Action<H>>,
    ) {
        let item = Item {
            frame: frame.clone(),
            ours: None,
        };
        self.news_item(item, about, out);
    }

    /// [`news`](Self::news) for `frame`, which we signed from `msg` (a
    /// USER_ADVERTISE or USER_REMOVE).
    pub(super) fn news_ours(
        &mut self,
        frame: &SignedFrame,
        msg: &Message,
        out: &mut Vec<Action<H>>,
    ) {
        let item = ours_item(frame, msg);
        match msg {
            Message::UserAdvertise(a) => self.news_item(item, (&a.user_id, true), out),
            Message::UserRemove(r) => self.news_item(item, (&r.user_id, false), out),
            _ => {}
        }
    }

    fn news_item(&mut self, item: Item, (user, online): (&UserId, bool), out: &mut Vec<Action<H>>) {
        let mut batched = false;
        for u in self.local.values() {
            if u.batched {
                batched = true;
            } else {
                out.push(Action::Send(u.conn.tx.clone(), item.frame.clone()));
            }
        }
        if self.news.snapshot_at.is_some() {
            // A user attaching later is given the snapshot and this news after
            // it: only a newcomer may follow the snapshot, or that user
            // would see a state that has passed (a key since changed, someone
            // online who has left).
            if online && self.news.snapshot_ids.insert(user.clone()) {
                self.news.since_snapshot.push(item.frame.clone());
            } else {
                self.drop_snapshot();
            }
            if self.news.since_snapshot.len() > MAX_SINCE_SNAPSHOT {
                self.drop_snapshot();
            }
        }
        if batched {
            self.news.pending.push(item);
        }
    }

    /// A public channel membership frame (PUBLIC_CHANNEL_ADD or _UPDATED) to
    /// every local user, except that one a socp server made (`socp`: it
    /// carries the capability object) does not go to clients that read
    /// batches: those are socp clients, which take no group key from a socp
    /// server (its channel is per-member RSA and the key encrypts nothing),
    /// and with many users these frames are a fifth of the bytes attaching
    /// costs (each version carries a ~760-byte wrap per new member).
    pub(super) fn channel_news_to_users(
        &self,
        frame: &SignedFrame,
        socp: bool,
        out: &mut Vec<Action<H>>,
    ) {
        for user in self.local.values().filter(|u| !(socp && u.batched)) {
            out.push(Action::Send(user.conn.tx.clone(), frame.clone()));
        }
    }

    /// Whether news waits for the next batch.
    pub fn news_pending(&self) -> bool {
        !self.news.pending.is_empty()
    }

    /// Whether news waits and the next batch is due at `now` (ms): batches
    /// are further apart the more users read them. Also lets go of a
    /// snapshot nobody has used for a while.
    pub fn news_due(&mut self, now: i64) -> bool {
        if self.news.snapshot_at.is_some()
            && now.saturating_sub(self.news.snapshot_used) > SNAPSHOT_KEPT_MS
        {
            self.drop_snapshot();
        }
        let readers = i64::try_from(self.news.readers).unwrap_or(i64::MAX);
        let gap = MIN_GAP_MS.saturating_add(readers.saturating_mul(GAP_PER_READER_US) / 1000);
        self.news_pending() && now.saturating_sub(self.news.last) >= gap
    }

    /// Send the news waiting since the last flush to every user that reads
    /// batches: one text for all (a batch we sign), except that a user who
    /// attached meanwhile (its roster already showed the news before it)
    /// gets only what came after its attach.
    pub fn flush_news(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.news.pending);
        if pending.is_empty() {
            return out;
        }
        self.news.last = now;
        let mut readers = 0;
        let mut made: HashMap<usize, Vec<SignedFrame>> = HashMap::new();
        let mut users: Vec<(usize, H)> = Vec::new();
        for user in self.local.values_mut().filter(|u| u.batched) {
            readers += 1;
            let from = std::mem::take(&mut user.news_from).min(pending.len());
            if from < pending.len() {
                users.push((from, user.conn.tx.clone()));
            }
        }
        for (from, tx) in users {
            let these = made.entry(from).or_insert_with(|| {
                if from == 0 {
                    self.signed_batches(&pending, now)
                } else {
                    let frames: Vec<SignedFrame> =
                        pending[from..].iter().map(|i| i.frame.clone()).collect();
                    batches(&self.config.me, now, &frames)
                }
            });
            for batch in these.iter() {
                out.push(Action::Send(tx.clone(), batch.clone()));
            }
        }
        self.news.readers = readers;
        out
    }

    /// Before anything else goes to `user`: the news it has not had yet,
    /// if it reads batches. A frame from a user must never reach a client
    /// before that user's advert does (clients refuse messages from users not
    /// advertised online), so a delivery takes the waiting news with it; the
    /// next batch then brings this user only what came after.
    pub(super) fn catch_up(&mut self, user: &UserId, now: i64, out: &mut Vec<Action<H>>) {
        let pending = self.news.pending.len();
        let Some(u) = self.local.get_mut(user).filter(|u| u.batched) else {
            return;
        };
        let from = u.news_from.min(pending);
        if from == pending {
            return;
        }
        u.news_from = pending;
        let tx = u.conn.tx.clone();
        let frames: Vec<SignedFrame> = self.news.pending[from..]
            .iter()
            .map(|i| i.frame.clone())
            .collect();
        for batch in batches(&self.config.me, now, &frames) {
            out.push(Action::Send(tx.clone(), batch));
        }
    }

    /// Where the news for a user attaching now starts: after everything
    /// already pending (its roster shows that state).
    pub(super) fn news_mark(&self) -> usize {
        self.news.pending.len()
    }

    /// The roster for a user attaching now, its own advert (`own`) last:
    /// for a client that reads batches, the snapshot (made now if it is
    /// older than a second) and the news since it; for others, every advert
    /// on its own.
    pub(super) fn roster(
        &mut self,
        own: &SignedFrame,
        batched: bool,
        now: i64,
    ) -> Vec<SignedFrame> {
        if !batched {
            let mut roster = self.every_advert(now);
            roster.push(own.clone());
            return roster;
        }
        let fresh = self
            .news
            .snapshot_at
            .is_some_and(|at| now.saturating_sub(at) < SNAPSHOT_FRESH_MS);
        if !fresh {
            if now.saturating_sub(self.news.snapshot_made) < SNAPSHOT_FRESH_MS {
                // Users came and went since the last snapshot: this user's
                // roster is made for it alone, each advert as signed.
                let mut roster = self.every_advert(now);
                roster.push(own.clone());
                return batches(&self.config.me, now, &roster);
            }
            self.take_snapshot(now);
        }
        self.news.snapshot_used = now;
        let mut roster = self.news.snapshot.clone();
        let mut tail = self.news.since_snapshot.clone();
        tail.push(own.clone());
        roster.extend(batches(&self.config.me, now, &tail));
        roster
    }

    /// Every user's advert as signed: ours, and those of users of servers
    /// we have a link to (the others cannot be reached, and a server that
    /// is not linked cannot flood new users); one we learnt without an
    /// advert (from a welcome) signed by us now, once.
    fn every_advert(&mut self, now: i64) -> Vec<SignedFrame> {
        let mut all: Vec<SignedFrame> = self.local.values().map(|u| u.advert.clone()).collect();
        let mut missing = Vec::new();
        for (id, user) in self
            .remote
            .iter()
            .filter(|(_, u)| self.is_linked(&u.server_id))
        {
            match &user.advert {
                Some(advert) => all.push(advert.clone()),
                None => missing.push(id.clone()),
            }
        }
        for id in missing {
            if let Some(frame) = self.resign_remote_advert(&id, now) {
                all.push(frame);
            }
        }
        all
    }

    /// The state now as signed batches: our users as `{type, payload}`,
    /// other servers' users as their origin signed them (or as ours, when
    /// we have no advert of theirs that is signed yet).
    fn take_snapshot(&mut self, now: i64) {
        let mut items: Vec<Item> = Vec::with_capacity(self.local.len() + self.remote.len());
        for (id, u) in &self.local {
            let msg = self.advert_message(id, &u.pubkey, u.traits(), None);
            items.push(ours_item(&u.advert, &msg));
        }
        for (id, u) in self
            .remote
            .iter()
            .filter(|(_, u)| self.is_linked(&u.server_id))
        {
            match u.advert.as_ref().filter(|a| a.peek().is_some()) {
                Some(advert) => items.push(Item {
                    frame: advert.clone(),
                    ours: None,
                }),
                None => items.push(ours_item(&SignedFrame::failed(), &u.advert_message(id))),
            }
        }
        self.news.snapshot = self.signed_batches(&items, now);
        self.news.snapshot_at = Some(now);
        self.news.snapshot_made = now;
        self.news.since_snapshot.clear();
        self.news.snapshot_ids = self
            .local
            .keys()
            .chain(
                self.remote
                    .iter()
                    .filter(|(_, u)| self.is_linked(&u.server_id))
                    .map(|(id, _)| id),
            )
            .cloned()
            .collect();
    }

    fn drop_snapshot(&mut self) {
        self.news.snapshot = Vec::new();
        self.news.snapshot_at = None;
        self.news.since_snapshot = Vec::new();
        self.news.snapshot_ids = std::collections::HashSet::new();
    }

    /// `items` as batches we sign: ours as `{type, payload}`, others whole.
    /// An item of neither kind yet (one of ours signed elsewhere, still
    /// being signed) makes these unsigned batches of every frame as signed.
    fn signed_batches(&self, items: &[Item], now: i64) -> Vec<SignedFrame> {
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            match (&item.ours, item.frame.peek()) {
                (Some(ours), _) => values.push((ours.clone(), ESTIMATE / 2)),
                (None, Some(text)) => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => values.push((v, text.len())),
                    Err(_) => continue,
                },
                (None, None) => {
                    let frames: Vec<SignedFrame> = items.iter().map(|i| i.frame.clone()).collect();
                    return batches(&self.config.me, now, &frames);
                }
            }
        }
        let mut out = Vec::new();
        let mut part: Vec<Value> = Vec::new();
        let mut bytes = 0;
        for (value, size) in values {
            if !part.is_empty() && bytes + size > MAX_BATCH_BYTES {
                out.push(self.sign_batch(std::mem::take(&mut part), now));
                bytes = 0;
            }
            bytes += size;
            part.push(value);
        }
        if !part.is_empty() {
            out.push(self.sign_batch(part, now));
        }
        out
    }

    fn sign_batch(&self, frames: Vec<Value>, now: i64) -> SignedFrame {
        self.signer.sign(Envelope::new(
            &self.config.me,
            To::All,
            now,
            &NewsBatch { frames },
        ))
    }
}

fn ours_item(frame: &SignedFrame, msg: &Message) -> Item {
    Item {
        frame: frame.clone(),
        ours: Some(json!({ "type": msg.msg_type().as_str(), "payload": msg.to_payload() })),
    }
}

/// `frames` as unsigned `NEWS_BATCH` frames of at most [`MAX_BATCH_BYTES`]
/// each, in order, each frame inside as signed.
pub(super) fn batches(me: &ServerId, now: i64, frames: &[SignedFrame]) -> Vec<SignedFrame> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, frame) in frames.iter().enumerate() {
        let size = frame.peek().map_or(ESTIMATE, |t| t.len());
        if i > start && bytes + size > MAX_BATCH_BYTES {
            out.push(batch(me, now, frames[start..i].to_vec()));
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < frames.len() {
        out.push(batch(me, now, frames[start..].to_vec()));
    }
    out
}

/// One unsigned `NEWS_BATCH` carrying `frames`, made once they are all
/// signed (one that failed to sign is left out, as it would not have been
/// sent alone).
fn batch(me: &ServerId, now: i64, frames: Vec<SignedFrame>) -> SignedFrame {
    let head = format!(
        r#"{{"type":"{}","from":{},"to":"*","ts":{now},"payload":{{"frames":["#,
        socp_protocol::MessageType::NewsBatch.as_str(),
        serde_json::Value::from(me.as_str())
    );
    SignedFrame::from_future(
        async move {
            let texts = futures_util::future::join_all(frames.iter().map(SignedFrame::text)).await;
            let texts: Vec<FrameText> = texts.into_iter().flatten().collect();
            if texts.is_empty() {
                return None;
            }
            let mut text = String::with_capacity(
                head.len() + texts.iter().map(|t| t.len() + 1).sum::<usize>() + 3,
            );
            text.push_str(&head);
            for (i, t) in texts.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(t);
            }
            text.push_str("]}}");
            Some(FrameText::from(text))
        }
        .boxed(),
    )
}
