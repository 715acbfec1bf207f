//! Part 1, the crypto ceiling: PSS sign/verify and OAEP encrypt/decrypt per
//! second on one core and on all, with the server's own code, for every
//! crypto backend built in (side by side); and the speed of the backend in
//! use sampled beside each later part ([`Beside`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socp_protocol::crypto::Backend;
use socp_protocol::{fixtures, PrivateKey};

/// Operations per second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Crypto {
    /// The backend measured (`aws-lc-rs`, `rsa`).
    pub backend: String,
    /// Cores the machine offers.
    pub cores: usize,
    /// PSS-SHA256 signatures per second on one core.
    pub sign_per_s_1: f64,
    /// PSS-SHA256 verifications per second on one core.
    pub verify_per_s_1: f64,
    /// OAEP-SHA256 encryptions per second on one core.
    pub encrypt_per_s_1: f64,
    /// OAEP-SHA256 decryptions per second on one core.
    pub decrypt_per_s_1: f64,
    /// Signatures per second on all cores at once.
    pub sign_per_s_all: f64,
    /// Verifications per second on all cores at once.
    pub verify_per_s_all: f64,
    /// Encryptions per second on all cores at once.
    pub encrypt_per_s_all: f64,
    /// Decryptions per second on all cores at once.
    pub decrypt_per_s_all: f64,
    /// One signature, milliseconds (1 / sign_per_s_1).
    pub sign_ms: f64,
}

/// The crypto ceiling of this machine on backend `b`, with the server's own code.
pub(crate) fn crypto(b: Backend, secs: f64) -> Crypto {
    let ops = Ops::get();
    let cores = cores();
    // Public-key operations are ~15x faster: half the time still counts
    // hundreds of them.
    let fast = secs / 2.0;
    let mut c = Crypto {
        backend: b.name().to_owned(),
        cores,
        sign_per_s_1: rate(1, secs, || ops.sign(b)),
        verify_per_s_1: rate(1, fast, || ops.verify(b)),
        encrypt_per_s_1: rate(1, fast, || ops.encrypt(b)),
        decrypt_per_s_1: rate(1, secs, || ops.decrypt(b)),
        sign_per_s_all: rate(cores, secs, || ops.sign(b)),
        verify_per_s_all: rate(cores, fast, || ops.verify(b)),
        encrypt_per_s_all: rate(cores, fast, || ops.encrypt(b)),
        decrypt_per_s_all: rate(cores, secs, || ops.decrypt(b)),
        sign_ms: 0.0,
    };
    c.sign_ms = 1000.0 / c.sign_per_s_1.max(f64::MIN_POSITIVE);
    c
}

/// The machine's speed beside one timed part: signatures per second on one
/// core and on all, and decryptions on all, sampled just before the part and
/// just after it, averaged. This VM's speed drifts within a run (one
/// signature took 12 to 24 ms across runs, and the second core's share
/// varies), so a part's ratios use the speed of its own moment, not the
/// ceiling measured a minute earlier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Beside {
    /// Signatures per second on one core (0: not sampled for this part).
    pub sign_per_s_1: f64,
    /// Signatures per second on all cores at once.
    pub sign_per_s_all: f64,
    /// Decryptions per second on all cores at once (0: not sampled).
    pub decrypt_per_s_all: f64,
    /// One signature, milliseconds (1 / sign_per_s_1).
    pub sign_ms: f64,
}

impl Beside {
    /// Sample signatures/s on all cores, and on one core and decryptions/s on
    /// all cores if asked (0 if not), `secs` each, off the event loop, on
    /// the backend in use (the servers', started from this build).
    pub(crate) async fn sample(secs: f64, one_core: bool, decrypt: bool) -> Beside {
        actix_web::rt::task::spawn_blocking(move || {
            let ops = Ops::get();
            let backend = Backend::current();
            let mut b = Beside {
                sign_per_s_all: rate(cores(), secs, || ops.sign(backend)),
                ..Beside::default()
            };
            if one_core {
                b.sign_per_s_1 = rate(1, secs, || ops.sign(backend));
                b.sign_ms = 1000.0 / b.sign_per_s_1.max(f64::MIN_POSITIVE);
            }
            if decrypt {
                b.decrypt_per_s_all = rate(cores(), secs, || ops.decrypt(backend));
            }
            b
        })
        .await
        .unwrap_or_default()
    }

    /// The mean of a sample before and one after (of what each measured).
    pub(crate) fn mean(before: &Beside, after: &Beside) -> Beside {
        let avg = |a: f64, b: f64| {
            if a > 0.0 && b > 0.0 {
                (a + b) / 2.0
            } else {
                a.max(b)
            }
        };
        let sign_per_s_1 = avg(before.sign_per_s_1, after.sign_per_s_1);
        Beside {
            sign_per_s_1,
            sign_per_s_all: avg(before.sign_per_s_all, after.sign_per_s_all),
            decrypt_per_s_all: avg(before.decrypt_per_s_all, after.decrypt_per_s_all),
            sign_ms: if sign_per_s_1 > 0.0 {
                1000.0 / sign_per_s_1
            } else {
                0.0
            },
        }
    }
}

/// Run `op` on `threads` threads for `secs`; operations per second in all.
fn rate(threads: usize, secs: f64, op: impl Fn() + Sync) -> f64 {
    let count = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    op();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The RSA operations the ceiling counts, with the server's own code.
struct Ops {
    key: PrivateKey,
    public: socp_protocol::PublicKey,
    msg: Vec<u8>,
    sig: socp_protocol::Signature,
    plain: Vec<u8>,
    ct: Vec<u8>,
}

impl Ops {
    /// Made once per run (parsing the key and precomputing its CRT values).
    fn get() -> &'static Ops {
        static OPS: std::sync::OnceLock<Ops> = std::sync::OnceLock::new();
        OPS.get_or_init(|| {
            let key = fixtures::key(20);
            let public = key.public_key().clone();
            let msg = b"{\"user_id\":\"bench\",\"server_id\":\"bench\"}".to_vec();
            let sig = key
                .sign(&msg)
                .unwrap_or_else(|_| socp_protocol::Signature::from_bytes(&[0; 512]));
            let plain = vec![7u8; 32];
            let ct = public.encrypt(&plain).unwrap_or_default();
            Ops {
                key,
                public,
                msg,
                sig,
                plain,
                ct,
            }
        })
    }

    fn sign(&self, b: Backend) {
        let _ = self.key.sign_on(b, &self.msg);
    }

    fn verify(&self, b: Backend) {
        let _ = self.public.verify_on(b, &self.msg, &self.sig);
    }

    fn encrypt(&self, b: Backend) {
        let _ = self.public.encrypt_on(b, &self.plain);
    }

    fn decrypt(&self, b: Backend) {
        let _ = self.key.decrypt_on(b, &self.ct);
    }
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
