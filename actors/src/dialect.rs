//! What a session or link writes to a peer that speaks another dialect
//! (SPEC.md §11). The decision is `socp_protocol::dialect`'s; this carries it
//! out on the way to the socket: a frame is parsed once it is signed,
//! rewritten when the peer needs it (keys in its encoding, files as FILE_*,
//! socp-only frames left out) and signed again by us, in its place in the
//! connection's queue.

use futures_util::FutureExt;
use socp_protocol::dialect::Translation;
use socp_protocol::{Dialect, Envelope, ServerId};

use crate::crypto::{CryptoPool, SignedFrame};
use crate::router::Outbound;

/// Rewrites what one connection writes for its peer's dialect.
#[derive(Clone)]
pub struct Translator {
    dialect: Dialect,
    /// The peer is a user (a client), not a server.
    user: bool,
    pool: CryptoPool,
    me: ServerId,
}

impl Translator {
    /// For a server speaking `dialect`; `None` for a socp peer (nothing to do).
    pub fn new(dialect: Dialect, pool: &CryptoPool, me: &ServerId) -> Option<Translator> {
        Self::make(dialect, false, pool, me)
    }

    /// For a user's client speaking `dialect`.
    pub fn for_user(dialect: Dialect, pool: &CryptoPool, me: &ServerId) -> Option<Translator> {
        Self::make(dialect, true, pool, me)
    }

    fn make(dialect: Dialect, user: bool, pool: &CryptoPool, me: &ServerId) -> Option<Translator> {
        (!dialect.socp).then(|| Translator {
            dialect,
            user,
            pool: pool.clone(),
            me: me.clone(),
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
