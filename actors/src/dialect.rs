//! What a session or link writes to a peer that speaks another dialect
//! (SPEC.md §11). The decision is `socp_protocol::dialect`'s; this carries it
//! out on the way to the socket: a frame is parsed once it is signed,
//! rewritten when the peer needs it (keys in its encoding, files as FILE_*,
//! socp-only frames left out) and signed again by us, in its place in the
//! connection's queue.

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use socp_protocol::dialect::Translation;
use socp_protocol::{Dialect, Envelope, ServerId};

use crate::crypto::{CryptoPool, SignedFrame};
use crate::router::Outbound;

/// Frame types a server of another dialect said it does not handle (an
/// ERROR UNKNOWN_TYPE naming one): not written to it again. Kept by its link
/// for as long as it lives, whatever the dialect learnt meanwhile.
#[derive(Clone, Default)]
pub struct Unhandled(Arc<Mutex<Vec<String>>>);

impl Unhandled {
    /// Most types remembered (the standard has fewer than 40).
    const MAX: usize = 64;

    /// Remember `t`; true if it is new.
    pub fn add(&self, t: &str) -> bool {
        let Ok(mut types) = self.0.lock() else {
            return false;
        };
        if types.len() >= Self::MAX || types.iter().any(|x| x == t) {
            return false;
        }
        types.push(t.to_owned());
        true
    }

    fn has(&self, t: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|types| types.iter().any(|x| x == t))
    }
}

/// Rewrites what one connection writes for its peer's dialect.
#[derive(Clone)]
pub struct Translator {
    dialect: Dialect,
    /// The peer is a user (a client), not a server.
    user: bool,
    pool: CryptoPool,
    me: ServerId,
    unhandled: Unhandled,
}

impl Translator {
    /// For a server speaking `dialect`, which does not handle the types in
    /// `unhandled`; `None` for a socp peer (nothing to do).
    pub fn new(
        dialect: Dialect,
        pool: &CryptoPool,
        me: &ServerId,
        unhandled: &Unhandled,
    ) -> Option<Translator> {
        Self::make(dialect, false, pool, me, unhandled.clone())
    }

    /// For a user's client speaking `dialect`.
    pub fn for_user(dialect: Dialect, pool: &CryptoPool, me: &ServerId) -> Option<Translator> {
        Self::make(dialect, true, pool, me, Unhandled::default())
    }

    fn make(
        dialect: Dialect,
        user: bool,
        pool: &CryptoPool,
        me: &ServerId,
        unhandled: Unhandled,
    ) -> Option<Translator> {
        (!dialect.socp).then(|| Translator {
            dialect,
            user,
            pool: pool.clone(),
            me: me.clone(),
            unhandled,
        })
    }

    /// `out`, as this peer is to receive it.
    pub fn apply(&self, out: Outbound) -> Outbound {
        match out {
            Outbound::Frame(frame) => Outbound::Frame(self.frame(frame)),
            Outbound::Urgent(frame) => Outbound::Urgent(self.frame(frame)),
            close @ Outbound::Close(..) => close,
        }
    }

    fn frame(&self, frame: SignedFrame) -> SignedFrame {
        // A delivery of a user's own frame (a file's): a server of another
        // dialect routes those as the user sent them, and verifies the
        // user's signature (SPEC.md §5.2, §6.5).
        if !self.user {
            if let Some(original) = frame.original() {
                return original;
            }
        }
        let this = self.clone();
        frame.then(move |text| {
            async move {
                let env = match Envelope::parse(text.as_bytes()) {
                    Ok(env) => env,
                    Err(_) => return Some(text),
                };
                if this.unhandled.has(env.msg_type()) {
                    return None;
                }
                match this.dialect.translate(&env, this.me.as_str(), this.user) {
                    Translation::AsIs => Some(text),
                    Translation::Omit => None,
                    Translation::Resign(env) => this.pool.sign(env).text().await,
                }
            }
            .boxed()
        })
    }
}
