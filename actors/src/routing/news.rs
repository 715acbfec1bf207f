//! Presence news to local users, batched [ext] for clients that read
//! `NEWS_BATCH` (docs/PROTOCOL.md, "Batched presence news").
//!
//! Every join, leave and rename is news to every user, and a new user is
//! sent every advert: attaching N users is N² frames. A client whose hello
//! says it reads batches gets the roster as a few `NEWS_BATCH` frames, and
//! the news of a moment (every [`flush_news`](RouterState::flush_news)) as
//! one: each USER_ADVERTISE and USER_REMOVE inside is the signed frame as its
//! origin server made it, so each stays verifiable. The batch itself is not
//! signed, and its text is made once and shared by every user it goes to.
//! Other clients get each frame on its own, at once, as before.

use futures_util::FutureExt;

use super::*;

/// Most bytes of frames one batch carries (our adverts are ~1.7 KB, so
/// about 150 of them): well inside every client's frame limit, and small
/// enough that a DM queued behind one waits only a moment.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What one of our own adverts is counted as while it is still being
/// signed (its text is not known yet).
const UNSIGNED_ESTIMATE: usize = 2048;

/// News not yet sent to the users that read batches.
#[derive(Default)]
pub(super) struct News {
    pending: Vec<SignedFrame>,
    /// When the last batch went (ms).
    last: i64,
    /// Users that read batches.
    readers: usize,
}

/// The shortest time between two batches, ms.
const MIN_GAP_MS: i64 = 25;

/// Each user that reads batches adds this much to the time between two
/// batches, µs: every batch is a frame to each of them, so with 10,000 of
/// them a batch goes every 125 ms (80,000 frames a second at most).
const GAP_PER_READER_US: i64 = 10;

impl<H: Clone> RouterState<H> {
    /// `frame` (a USER_ADVERTISE or USER_REMOVE) to every local user: at
    /// once to those that do not read batches, in the next batch to those
    /// that do.
    pub(super) fn news(&mut self, frame: &SignedFrame, out: &mut Vec<Action<H>>) {
        let mut batched = false;
        for user in self.local.values() {
            if user.batched {
                batched = true;
            } else {
                out.push(Action::Send(user.conn.tx.clone(), frame.clone()));
            }
        }
        if batched {
            self.news.pending.push(frame.clone());
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
    /// are further apart the more users read them.
    pub fn news_due(&self, now: i64) -> bool {
        let readers = i64::try_from(self.news.readers).unwrap_or(i64::MAX);
        let gap = MIN_GAP_MS.saturating_add(readers.saturating_mul(GAP_PER_READER_US) / 1000);
        self.news_pending() && now.saturating_sub(self.news.last) >= gap
    }

    /// Send the news waiting since the last flush to every user that reads
    /// batches: one text for all, except that a user who attached meanwhile
    /// (its roster already showed the news before it) gets only what came
    /// after its attach.
    pub fn flush_news(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.news.pending);
        if pending.is_empty() {
            return out;
        }
        self.news.last = now;
        let mut readers = 0;
        let mut made: HashMap<usize, Vec<SignedFrame>> = HashMap::new();
        for user in self.local.values_mut().filter(|u| u.batched) {
            readers += 1;
            let from = std::mem::take(&mut user.news_from).min(pending.len());
            if from == pending.len() {
                continue;
            }
            let batches = made
                .entry(from)
                .or_insert_with(|| batches(&self.config.me, now, &pending[from..]));
            for batch in batches.iter() {
                out.push(Action::Send(user.conn.tx.clone(), batch.clone()));
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
        for batch in batches(&self.config.me, now, &self.news.pending[from..]) {
            out.push(Action::Send(tx.clone(), batch));
        }
    }

    /// Where the news for a user attaching now starts: after everything
    /// already pending (its roster shows that state).
    pub(super) fn news_mark(&self) -> usize {
        self.news.pending.len()
    }
}

/// `frames` as `NEWS_BATCH` frames of at most [`MAX_BATCH_BYTES`] each, in
/// order.
pub(super) fn batches(me: &ServerId, now: i64, frames: &[SignedFrame]) -> Vec<SignedFrame> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, frame) in frames.iter().enumerate() {
        let size = frame.peek().map_or(UNSIGNED_ESTIMATE, |t| t.len());
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

/// One `NEWS_BATCH` carrying `frames`, made once they are all signed (one
/// that failed to sign is left out, as it would not have been sent alone).
fn batch(me: &ServerId, now: i64, frames: Vec<SignedFrame>) -> SignedFrame {
    let head = format!(
        r#"{{"type":"{}","from":{},"to":"*","ts":{now},"payload":{{"frames":["#,
        socp_protocol::dialect::NEWS_BATCH,
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
