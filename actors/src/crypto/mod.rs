//! CryptoPool: every RSA operation of the server, on its own threads (one per
//! core), never on an event loop; this server's own liveness first, and
//! everything else fair between origins ([`Lane`], in `lanes`).
//!
//! Signing returns a [`SignedFrame`]: a shared handle that resolves to the
//! frame's JSON text once signed, so one signature serves every destination
//! of a broadcast, and destinations can queue it in order before it is ready.
//! Because a transport signature covers only the payload, identical payloads
//! (heartbeats, common errors, a user's advertise) are signed once and the
//! signature is reused from a small cache.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use socp_protocol::crypto::sha256;
use socp_protocol::{Envelope, PrivateKey, PublicKey, Signature};

mod frame;
mod lanes;

pub use frame::{FrameText, SignedFrame, Signing};
pub(crate) use lanes::Lane;
use lanes::{Job, Queues, CONTENT};

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

struct Inner {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A job runs outside the lock, so a poisoned lock holds only queues.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops the threads when the last [`CryptoPool`] handle is dropped.
struct Threads(Arc<Inner>);

impl Drop for Threads {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

fn worker(inner: Arc<Inner>, key: Arc<PrivateKey>) {
    loop {
        let job = {
            let mut queues = inner.lock();
            loop {
                if queues.closed {
                    return;
                }
                if let Some(job) = queues.pop() {
                    break job;
                }
                queues = inner.ready.wait(queues).unwrap_or_else(|e| e.into_inner());
            }
        };
        let run = std::panic::AssertUnwindSafe(|| (job.run)(&key));
        if std::panic::catch_unwind(run).is_err() {
            log::error!("a crypto job panicked; the pool goes on");
        }
    }
}

/// The origin this server's own broadcasts built on the pool are queued as.
const OWN: &str = "this server";

/// A signing job's outcome, logged if it failed.
fn signature(
    result: Option<Result<Signature, socp_protocol::Error>>,
    what: &str,
) -> Option<Signature> {
    match result {
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

/// Handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct CryptoPool {
    inner: Arc<Inner>,
    _threads: Arc<Threads>,
    public: PublicKey,
    cache: Arc<Mutex<SigCache>>,
}

impl CryptoPool {
    /// Start `threads` crypto threads holding `key`.
    pub fn start(key: PrivateKey, threads: usize) -> CryptoPool {
        let public = key.public_key().clone();
        let key = Arc::new(key);
        let inner = Arc::new(Inner {
            queues: Mutex::default(),
            ready: Condvar::new(),
        });
        for n in 0..threads.max(1) {
            let (inner, key) = (inner.clone(), key.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("socp-crypto-{n}"))
                .spawn(move || worker(inner, key));
            if let Err(e) = spawned {
                log::error!("cannot start crypto thread {n}: {e}");
            }
        }
        CryptoPool {
            _threads: Arc::new(Threads(inner.clone())),
            inner,
            public,
            cache: Arc::default(),
        }
    }

    /// Jobs waiting for a crypto thread.
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiting
    }

    /// The server's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Sign `env` on the pool (or from the cache) and serialise it.
    ///
    /// Users' content is signed without the cache (every payload differs),
    /// and its job is skipped if the frame is dropped before its turn.
    pub fn sign(&self, mut env: Envelope) -> SignedFrame {
        let lane = Lane::signing(&env);
        let bytes = env.signing_bytes();
        let what = env.summary();
        if CONTENT.contains(&env.msg_type()) {
            let request = self.run_in(lane, move |key| key.sign(&bytes));
            return SignedFrame::from_future(
                async move {
                    env.set_sig(signature(request.await, &what)?);
                    Some(Arc::from(env.to_json()))
                }
                .boxed(),
            );
        }
        let hash = sha256(&bytes);
        let slot = {
            let Ok(mut cache) = self.cache.lock() else {
                log::error!("signature cache poisoned; {what} dropped");
                return SignedFrame::failed();
            };
            match cache.get(&hash) {
                Some(slot) => slot,
                None => {
                    let request = self.run_in(lane, move |key| key.sign(&bytes));
                    let slot: SigSlot = async move { signature(request.await, &what) }
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
        SignedFrame::from_future(
            async move {
                env.set_sig(slot.await?);
                Some(Arc::from(env.to_json()))
            }
            .boxed(),
        )
    }

    /// Build an envelope on a crypto thread (it may need RSA itself, like an
    /// OAEP key wrap), sign it there, and serialise it. It is this server's
    /// own broadcast: it takes its turn with [`CryptoPool::run`]'s work.
    pub fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        let built = self.run(move |key| {
            let mut env = build()?;
            env.sign(key).ok()?;
            Some(env.to_json())
        });
        SignedFrame::from_future(async move { built.await.flatten().map(Arc::from) }.boxed())
    }

    /// Verify `env`'s transport signature with `key` on the pool, in its
    /// origin's lane ([`Lane::of`]).
    pub fn verify(
        &self,
        env: Envelope,
        key: PublicKey,
    ) -> impl Future<Output = Option<(Envelope, bool)>> + Send + 'static {
        self.verify_in(Lane::of(&env), env, key)
    }

    /// Verify `env` in `lane`: a linked server's frames in the link's own,
    /// whatever senders they name (the link is the origin of that work).
    pub(crate) fn verify_in(
        &self,
        lane: Lane,
        env: Envelope,
        key: PublicKey,
    ) -> impl Future<Output = Option<(Envelope, bool)>> + Send + 'static {
        self.run_in(lane, move |_| {
            let ok = env.verify(&key).is_ok();
            (env, ok)
        })
    }

    /// Run `f` on a crypto thread, in this server's own lane (taking turns
    /// with every origin's), and return its result (`None` if the pool is
    /// gone).
    pub fn run<R, F>(&self, f: F) -> impl Future<Output = Option<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&PrivateKey) -> R + Send + 'static,
    {
        self.run_in(Lane::flow(OWN), f)
    }

    /// Run `f` on a crypto thread in `lane`. The caller never parks
    /// (thousands of parked senders woken together would starve the event
    /// loop they run on: measured, a 1 MiB file's chunks); what may wait here
    /// is bounded by the memory budgets of the frames that cause it. If the
    /// returned future is dropped before its turn, `f` is skipped.
    pub(crate) fn run_in<R, F>(
        &self,
        lane: Lane,
        f: F,
    ) -> impl Future<Output = Option<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&PrivateKey) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wanted = Arc::new(());
        let job = Job {
            run: Box::new(move |key| {
                // The receiver may be gone if the caller stopped; nothing to do then.
                let _ = tx.send(f(key));
            }),
            wanted: Some(Arc::downgrade(&wanted)),
        };
        {
            let mut queues = self.inner.lock();
            if !queues.closed {
                queues.push(lane, job);
            }
        }
        self.inner.ready.notify_one();
        async move {
            let _wanted = wanted;
            rx.await.ok()
        }
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

    #[actix::test]
    async fn a_job_nobody_waits_for_is_skipped() {
        let pool = CryptoPool::start(fixtures::key(6), 1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let held = pool.run(move |_| {
            let _ = wait.recv();
        });
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (ran.clone(), ran.clone());
        let dropped = pool.run_in(Lane::flow("gone"), move |_| {
            a.lock().unwrap().push("dropped")
        });
        let kept = pool.run_in(Lane::flow("gone"), move |_| b.lock().unwrap().push("kept"));
        drop(dropped);
        release.send(()).unwrap();
        held.await.unwrap();
        kept.await.unwrap();
        assert_eq!(*ran.lock().unwrap(), ["kept"]);
        assert_eq!(pool.waiting(), 0);
    }

    #[actix::test]
    async fn a_system_job_passes_a_queue_of_content() {
        let pool = CryptoPool::start(fixtures::key(6), 1);
        // Hold the only thread until the queue is built.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let held = pool.run(move |_| {
            let _ = wait.recv();
        });
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut content = Vec::new();
        for i in 0..50 {
            let order = order.clone();
            content.push(pool.run_in(Lane::flow("alice"), move |_| {
                order.lock().unwrap().push(format!("chunk{i}"))
            }));
        }
        let o = order.clone();
        let system = pool.run_in(Lane::System, move |_| {
            o.lock().unwrap().push("heartbeat".to_owned())
        });
        assert!(pool.waiting() >= 51);
        release.send(()).unwrap();
        held.await.unwrap();
        system.await.unwrap();
        futures_util::future::join_all(content).await;
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 51);
        assert_eq!(
            order[0], "heartbeat",
            "system work ran before any queued content"
        );
        assert_eq!(pool.waiting(), 0);
    }
}
