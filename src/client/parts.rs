//! [ext] A message longer than one RSA block travels in parts (SPEC.md
//! §6.3), each its own frame; socp numbers them inside the encrypted text,
//! `[ID I/N] ` before each part's text, so that a socp client shows the
//! message once whole. Other clients show the parts, numbered.
//!
//! The receiver keeps parts per sender and message id, bounded (at most
//! [`MAX_PARTS`] parts a message and [`MAX_PENDING`] messages a sender), and
//! shows what arrived of a message still incomplete after [`PART_WAIT`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use socp_protocol::content;
use socp_protocol::crypto::MAX_OAEP_PLAINTEXT;
use socp_protocol::UserId;

/// Most parts one message may have (a 64 × 430-byte message is ~27 KB).
pub(crate) const MAX_PARTS: usize = 64;
/// Most incomplete messages kept per sender.
const MAX_PENDING: usize = 16;
/// How long the parts of an incomplete message wait for the rest.
const PART_WAIT: Duration = Duration::from_secs(120);
/// Bytes each part leaves for its number (`[abcdef 64/64] ` is 15).
const MARK_ROOM: usize = 16;

/// `text` as the pieces to send: itself if one block carries it, else
/// numbered parts (longer texts are cut at [`MAX_PARTS`] parts' worth).
pub(crate) fn split(text: &str) -> Vec<String> {
    if text.len() <= MAX_OAEP_PLAINTEXT {
        return vec![text.to_owned()];
    }
    let pieces = content::split_text(text, MAX_OAEP_PLAINTEXT - MARK_ROOM);
    let n = pieces.len().min(MAX_PARTS);
    let id = hex3(&socp_protocol::crypto::random_bytes(3));
    pieces
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, piece)| format!("[{id} {}/{n}] {piece}", i + 1))
        .collect()
}

fn hex3(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A numbered part: its message id, number (from 1), count, and text.
fn parse(text: &str) -> Option<(&str, usize, usize, &str)> {
    let rest = text.strip_prefix('[')?;
    let (mark, body) = rest.split_once("] ")?;
    let (id, count) = mark.split_once(' ')?;
    let (i, n) = count.split_once('/')?;
    let (i, n): (usize, usize) = (i.parse().ok()?, n.parse().ok()?);
    let id_ok = id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && (2..=MAX_PARTS).contains(&n) && (1..=n).contains(&i)).then_some((id, i, n, body))
}

/// One message's parts so far.
#[derive(Debug)]
struct Pending {
    count: usize,
    parts: BTreeMap<usize, String>,
    since: Instant,
}

impl Pending {
    fn joined(self) -> String {
        self.parts.into_values().collect()
    }
}

/// What became of a received text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A whole message to show (a plain text, or the last part of one).
    Whole(String),
    /// A part kept until the rest arrives.
    Waiting,
}

/// Parts waiting for the rest of their message, by sender, channel (DM or
/// public) and message id.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    pending: HashMap<(UserId, bool, String), Pending>,
}

impl Parts {
    /// Take one received text from `from` (`public`: on the public channel).
    pub(crate) fn take(
        &mut self,
        from: &UserId,
        public: bool,
        text: String,
        now: Instant,
    ) -> Taken {
        let Some((id, i, n, body)) = parse(&text) else {
            return Taken::Whole(text);
        };
        let key = (from.clone(), public, id.to_owned());
        if !self.pending.contains_key(&key) {
            let mine = self.pending.keys().filter(|(f, ..)| f == from).count();
            if mine >= MAX_PENDING {
                // Too many messages in flight from one sender: shown as parts.
                return Taken::Whole(text);
            }
        }
        let entry = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            count: n,
            parts: BTreeMap::new(),
            since: now,
        });
        if entry.count != n {
            return Taken::Whole(text);
        }
        entry.parts.insert(i, body.to_owned());
        if entry.parts.len() < n {
            return Taken::Waiting;
        }
        match self.pending.remove(&key) {
            Some(done) => Taken::Whole(done.joined()),
            None => Taken::Waiting,
        }
    }

    /// Messages still incomplete after [`PART_WAIT`]: removed, with what
    /// arrived of them (sender, public, text, and how many parts of how many).
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(UserId, bool, String, usize, usize)> {
        let old: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) >= PART_WAIT)
            .map(|(k, _)| k.clone())
            .collect();
        old.into_iter()
            .filter_map(|k| {
                let p = self.pending.remove(&k)?;
                let (got, count) = (p.parts.len(), p.count);
                Some((k.0, k.1, p.joined(), got, count))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn a_long_text_is_numbered_parts_that_join_back_in_any_order() {
        let text: String = (0..5000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let parts = split(&text);
        assert_eq!(parts.len(), 12);
        for p in &parts {
            assert!(p.len() <= MAX_OAEP_PLAINTEXT, "{}", p.len());
        }
        assert!(parts[0].starts_with('[') && parts[0].contains(" 1/12] "));
        let mut got = Parts::default();
        let now = Instant::now();
        let mut order: Vec<usize> = (0..12).rev().collect();
        order.swap(3, 7);
        let mut whole = None;
        for (k, i) in order.iter().enumerate() {
            match got.take(&alice(), false, parts[*i].clone(), now) {
                Taken::Whole(t) => {
                    assert_eq!(k, 11, "whole only with the last part");
                    whole = Some(t);
                }
                Taken::Waiting => assert!(k < 11),
            }
        }
        assert_eq!(whole.as_deref(), Some(text.as_str()));
        assert!(got.pending.is_empty());
    }

    #[test]
    fn short_texts_and_look_alikes_are_shown_as_they_are() {
        assert_eq!(split("hi"), ["hi"]);
        let mut got = Parts::default();
        let now = Instant::now();
        for text in [
            "hi",
            "[not a part] x",
            "[abcdeg 1/2] x",
            "[abcdef 3/2] x",
            "[abcdef 1/1] x",
        ] {
            assert_eq!(
                got.take(&alice(), false, text.to_owned(), now),
                Taken::Whole(text.to_owned())
            );
        }
    }

    #[test]
    fn incomplete_messages_are_bounded_and_given_up_after_a_while() {
        let mut got = Parts::default();
        let t0 = Instant::now();
        for m in 0..MAX_PENDING {
            let text = format!("[{m:06x} 1/2] part one");
            assert_eq!(got.take(&alice(), true, text, t0), Taken::Waiting);
        }
        let over = "[ffffff 1/2] one too many".to_owned();
        assert_eq!(
            got.take(&alice(), true, over.clone(), t0),
            Taken::Whole(over)
        );
        assert!(got.expired(t0 + Duration::from_secs(1)).is_empty());
        let late = got.expired(t0 + PART_WAIT);
        assert_eq!(late.len(), MAX_PENDING);
        assert!(late.iter().all(|(_, public, text, got, n)| *public
            && text == "part one"
            && (*got, *n) == (1, 2)));
        assert!(got.pending.is_empty());
    }
}
