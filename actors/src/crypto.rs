//! CryptoPool: every RSA operation of the server, on a SyncArbiter with one
//! thread per core, never on an event loop.
//!
//! Signing returns a [`SignedFrame`]: a shared handle that resolves to the
//! frame's JSON text once signed, so one signature serves every destination
//! of a broadcast, and destinations can queue it in order before it is ready.
//! Because a transport signature covers only the payload, identical payloads
//! (heartbeats, common errors, a user's advertise) are signed once and the
//! signature is reused from a small cache.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use socp_protocol::crypto::sha256;
use socp_protocol::{Envelope, PrivateKey, PublicKey, Signature};

/// Frame text ready to write; shared between destinations.
pub type FrameText = Arc<str>;

/// A frame that is, or will be, signed: resolves to its JSON text, or `None`
/// if signing failed (the frame is then dropped and logged).
#[derive(Clone)]
pub struct SignedFrame(Shared<BoxFuture<'static, Option<FrameText>>>);

impl SignedFrame {
    /// A frame whose text is already final (a relayed frame, unchanged).
    pub fn ready(text: FrameText) -> Self {
        let shared = futures_util::future::ready(Some(text)).boxed().shared();
        // A `Shared` shows its output to `peek` only once it has been polled.
        // This one is ready, so one poll completes it: writers then see the
        // text at once instead of waiting a round trip of the event loop.
        let _ready_now = shared.clone().now_or_never();
        SignedFrame(shared)
    }

    /// A frame made by `fut` (`None`: it could not be made).
    pub fn from_future(fut: BoxFuture<'static, Option<FrameText>>) -> Self {
        SignedFrame(fut.shared())
    }

    /// A frame that could not be made (dropped by writers, and logged).
    pub fn failed() -> Self {
        SignedFrame(futures_util::future::ready(None).boxed().shared())
    }

    /// Wait for the text.
    pub fn text(&self) -> impl Future<Output = Option<FrameText>> + Send + 'static {
        self.0.clone()
    }

    /// The text, if signing has finished.
    pub fn peek(&self) -> Option<FrameText> {
        self.0.peek().cloned().flatten()
    }
}

impl std::fmt::Debug for SignedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedFrame")
    }
}

/// How many payload signatures the cache keeps.
const SIG_CACHE_ENTRIES: usize = 4096;

/// A payload's signature, made or being made: requests for the same payload
/// at the same moment share one signing job.
type SigSlot = Shared<BoxFuture<'static, Option<Signature>>>;

/// Payload hash → signature slot, bounded, oldest evicted first.
#[derive(Default)]
struct SigCache {
    map: HashMap<[u8; 32], SigSlot>,
    order: VecDeque<[u8; 32]>,
}

impl SigCache {
    /// The slot for `key`, unless its signing failed (then it is retried).
    fn get(&self, key: &[u8; 32]) -> Option<SigSlot> {
        let slot = self.map.get(key)?;
        match slot.peek() {
            Some(None) => None,
            _ => Some(slot.clone()),
        }
    }

    fn put(&mut self, key: [u8; 32], slot: SigSlot) {
        if self.map.insert(key, slot).is_none() {
            self.order.push_back(key);
            if self.order.len() > SIG_CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The SyncArbiter worker: holds the server key.
pub struct CryptoWorker {
    key: Arc<PrivateKey>,
}

impl Actor for CryptoWorker {
    type Context = SyncContext<Self>;
}

/// Run a closure on a crypto thread (content-signature checks, OAEP wraps).
#[derive(Message)]
#[rtype(result = "()")]
struct Job(Box<dyn FnOnce(&PrivateKey) + Send>);

impl Handler<Job> for CryptoWorker {
    type Result = ();

    fn handle(&mut self, msg: Job, _: &mut Self::Context) {
        (msg.0)(&self.key);
    }
}

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct CryptoPool {
    addr: Addr<CryptoWorker>,
    public: PublicKey,
    cache: Arc<Mutex<SigCache>>,
}

impl CryptoPool {
    /// Start `threads` workers holding `key` (inside a running actix System).
    pub fn start(key: PrivateKey, threads: usize) -> CryptoPool {
        let public = key.public_key().clone();
        let key = Arc::new(key);
        let addr = SyncArbiter::start(threads.max(1), move || CryptoWorker { key: key.clone() });
        CryptoPool {
            addr,
            public,
            cache: Arc::default(),
        }
    }

    /// The server's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Sign `env` on the pool (or from the cache) and serialise it.
    pub fn sign(&self, mut env: Envelope) -> SignedFrame {
        let bytes = env.signing_bytes();
        let hash = sha256(&bytes);
        let slot = {
            let Ok(mut cache) = self.cache.lock() else {
                log::error!("signature cache poisoned; {} dropped", env.summary());
                return SignedFrame::failed();
            };
            match cache.get(&hash) {
                Some(slot) => slot,
                None => {
                    let what = env.summary();
                    let request = self.run(move |key| key.sign(&bytes));
                    let slot: SigSlot = async move {
                        match request.await {
                            Some(Ok(sig)) => Some(sig),
                            Some(Err(e)) => {
                                log::error!("signing {what} failed: {e}");
                                None
                            }
                            None => {
                                log::error!("crypto pool unavailable; {what} dropped");
                                None
                            }
                        }
                    }
                    .boxed()
                    .shared();
                    cache.put(hash, slot.clone());
                    slot
                }
            }
        };
        if let Some(Some(sig)) = slot.peek() {
            env.set_sig(sig.clone());
            return SignedFrame::ready(Arc::from(env.to_json()));
        }
        SignedFrame(
            async move {
                env.set_sig(slot.await?);
                Some(Arc::from(env.to_json()))
            }
            .boxed()
            .shared(),
        )
    }

    /// Build an envelope on a crypto thread (it may need RSA itself, like an
    /// OAEP key wrap), sign it there, and serialise it.
    pub fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        let built = self.run(move |key| {
            let mut env = build()?;
            env.sign(key).ok()?;
            Some(env.to_json())
        });
        SignedFrame(
            async move { built.await.flatten().map(Arc::from) }
                .boxed()
                .shared(),
        )
    }

    /// Verify `env`'s transport signature with `key` on the pool.
    pub fn verify(
        &self,
        env: Envelope,
        key: PublicKey,
    ) -> impl Future<Output = Option<(Envelope, bool)>> + Send + 'static {
        self.run(move |_| {
            let ok = env.verify(&key).is_ok();
            (env, ok)
        })
    }

    /// Run `f` on a crypto thread and return its result (`None` if the pool
    /// is gone). Jobs queue FIFO without bound and the caller never parks on a
    /// full mailbox: thousands of parked senders woken together would starve
    /// the event loop they run on (measured: a 1 MiB file's 2,351 chunks).
    pub fn run<R, F>(&self, f: F) -> impl Future<Output = Option<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&PrivateKey) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job(Box::new(move |key| {
            // The receiver may be gone if the caller stopped; nothing to do then.
            let _ = tx.send(f(key));
        }));
        self.addr.do_send(job);
        async move { rx.await.ok() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::message::Heartbeat;
    use socp_protocol::{fixtures, ServerId, To};

    #[actix::test]
    async fn signs_off_loop_and_caches_identical_payloads() {
        let key = fixtures::key(0);
        let public = key.public_key().clone();
        let pool = CryptoPool::start(key, 2);
        let me = ServerId::random();
        let env = Envelope::new(&me, To::All, 1, &Heartbeat {});
        let first = pool.sign(env.clone());
        let text = first.text().await.expect("signed");
        let parsed = Envelope::parse(text.as_bytes()).expect("parses");
        parsed.verify(&public).expect("verifies");
        // Same payload, other envelope fields: served from the cache at once.
        let again = pool.sign(Envelope::new(&me, To::All, 2, &Heartbeat {}));
        assert!(
            again.peek().is_some(),
            "cached signature is ready immediately"
        );
        let (env, ok) = pool.verify(parsed, public).await.expect("pool answers");
        assert!(ok);
        assert_eq!(env.ts(), 1);
    }

    #[test]
    fn ready_frames_can_be_peeked_at_once() {
        let frame = SignedFrame::ready(FrameText::from("{}"));
        assert_eq!(frame.peek().as_deref(), Some("{}"));
        assert_eq!(frame.clone().peek().as_deref(), Some("{}"));
    }

    #[actix::test]
    async fn simultaneous_requests_for_one_payload_share_one_signature() {
        let pool = CryptoPool::start(fixtures::key(4), 2);
        let me = ServerId::random();
        let a = pool.sign(Envelope::new(&me, To::All, 1, &Heartbeat {}));
        let b = pool.sign(Envelope::new(&me, To::All, 2, &Heartbeat {}));
        let (a, b) = (a.text().await.expect("a"), b.text().await.expect("b"));
        let (a, b) = (
            Envelope::parse(a.as_bytes()).unwrap(),
            Envelope::parse(b.as_bytes()).unwrap(),
        );
        assert_eq!((a.ts(), b.ts()), (1, 2));
        // PSS is randomised: equal signatures mean one signing job served both.
        assert_eq!(a.sig(), b.sig());
        a.verify(pool.public_key()).expect("verifies");
    }

    #[actix::test]
    async fn verify_rejects_another_key() {
        let pool = CryptoPool::start(fixtures::key(1), 1);
        let me = ServerId::random();
        let text = pool
            .sign(Envelope::new(&me, To::All, 1, &Heartbeat {}))
            .text()
            .await
            .expect("signed");
        let env = Envelope::parse(text.as_bytes()).expect("parses");
        let other = fixtures::key(2).public_key().clone();
        let (_, ok) = pool.verify(env, other).await.expect("pool answers");
        assert!(!ok);
    }

    #[actix::test]
    async fn run_executes_on_the_pool() {
        let pool = CryptoPool::start(fixtures::key(3), 1);
        let fp = pool.run(|key| key.public_key().fingerprint()).await;
        assert_eq!(fp, Some(pool.public_key().fingerprint()));
    }
}
