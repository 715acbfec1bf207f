//! Test doubles shared by the actor tests: a recorder actor that stands in for
//! sessions, links, the store, the dialer and the heartbeat; signers; fixture
//! keys; and helpers to read the frames the router emits.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod fakes;
pub mod loopback;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use actix::prelude::*;
use socp_actors::crypto::{FrameText, SignedFrame};
use socp_actors::router::Outbound;
use socp_actors::routing::Peer;
use socp_actors::routing::Signer;
use socp_protocol::{fixtures, Envelope, PrivateKey, PublicKey, ServerId, UserId};

/// Records every `M` it receives.
pub struct Recorder<M> {
    log: Arc<Mutex<Vec<M>>>,
}

impl<M: Unpin + 'static> Actor for Recorder<M> {
    type Context = Context<Self>;
}

impl<M> Handler<M> for Recorder<M>
where
    M: Message<Result = ()> + Send + Unpin + 'static,
{
    type Result = ();

    fn handle(&mut self, msg: M, _: &mut Self::Context) {
        lock(&self.log).push(msg);
    }
}

/// Answered once every message queued to the recorder before it was handled.
pub struct Flush<M>(PhantomData<M>);

impl<M> Message for Flush<M> {
    type Result = ();
}

impl<M> Handler<Flush<M>> for Recorder<M>
where
    M: Message<Result = ()> + Send + Unpin + 'static,
{
    type Result = ();

    fn handle(&mut self, _: Flush<M>, _: &mut Self::Context) {}
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A started recorder and what it has received.
pub struct Rec<M: Message<Result = ()> + Send + Unpin + 'static> {
    pub addr: Addr<Recorder<M>>,
    log: Arc<Mutex<Vec<M>>>,
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Rec<M> {
    /// Start a recorder (inside a running System).
    pub fn start() -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = Recorder { log: log.clone() }.start();
        Rec { addr, log }
    }

    /// The recorder as a recipient.
    pub fn recipient(&self) -> Recipient<M> {
        self.addr.clone().recipient()
    }

    /// Wait until the recorder has handled everything sent to it so far.
    pub async fn flush(&self) {
        self.addr
            .send(Flush(PhantomData))
            .await
            .expect("recorder alive");
    }

    /// Take everything recorded so far (after a flush).
    pub async fn take(&self) -> Vec<M> {
        self.flush().await;
        std::mem::take(&mut *lock(&self.log))
    }

    /// Look at what was recorded so far without waiting.
    pub fn with<R>(&self, f: impl FnOnce(&[M]) -> R) -> R {
        f(&lock(&self.log))
    }
}

/// Fixture key `n`, parsed once per test binary.
pub fn private(n: usize) -> &'static PrivateKey {
    static KEYS: [OnceLock<PrivateKey>; 32] = [const { OnceLock::new() }; 32];
    KEYS[n % 32].get_or_init(|| fixtures::key(n))
}

/// The public half of fixture key `n`.
pub fn pk(n: usize) -> PublicKey {
    private(n).public_key().clone()
}

/// A signer that does no RSA: frames are serialised unsigned, for tests of
/// routing logic that only look at the frames' JSON.
pub struct Plain;

impl Signer for Plain {
    fn sign(&self, env: Envelope) -> SignedFrame {
        SignedFrame::ready(FrameText::from(env.to_json()))
    }

    fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        SignedFrame::ready(FrameText::from(
            build().map(|e| e.to_json()).unwrap_or_default(),
        ))
    }
}

/// A signer that signs inline with a fixture key.
pub struct KeySigner(pub usize);

impl Signer for KeySigner {
    fn sign(&self, env: Envelope) -> SignedFrame {
        let signed = env.signed(private(self.0)).expect("fixture key signs");
        SignedFrame::ready(FrameText::from(signed.to_json()))
    }

    fn sign_built(&self, build: Box<dyn FnOnce() -> Option<Envelope> + Send>) -> SignedFrame {
        let text = build()
            .map(|e| {
                e.signed(private(self.0))
                    .expect("fixture key signs")
                    .to_json()
            })
            .unwrap_or_default();
        SignedFrame::ready(FrameText::from(text))
    }
}

/// The envelope of a ready frame.
pub fn parse_ready(frame: &SignedFrame) -> Envelope {
    let text = frame.peek().expect("frame is ready");
    Envelope::parse(text.as_bytes()).expect("frame parses")
}

/// What a recorder standing in for a session or link received, in order:
/// frames as their text, closes as their code.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Frame(FrameText),
    Close(u16),
}

impl Got {
    /// The frame's envelope, if it is a frame.
    pub fn env(&self) -> Option<Envelope> {
        match self {
            Got::Frame(t) => Some(Envelope::parse(t.as_bytes()).expect("frame parses")),
            Got::Close(_) => None,
        }
    }
}

/// Resolve what an `Outbound` recorder got.
pub async fn outbound(rec: &Rec<Outbound>) -> Vec<Got> {
    resolved(rec.take().await).await
}

/// `outs` once their frames are signed.
pub async fn resolved(outs: Vec<Outbound>) -> Vec<Got> {
    let mut got = Vec::new();
    for out in outs {
        match out {
            Outbound::Frame(f) | Outbound::Urgent(f) => {
                got.push(Got::Frame(f.text().await.expect("frame signed")))
            }
            Outbound::Close(code, _) => got.push(Got::Close(code)),
        }
    }
    got
}

/// The envelopes among `got`.
pub fn envs(got: &[Got]) -> Vec<Envelope> {
    got.iter().filter_map(Got::env).collect()
}

/// The `type`s of the envelopes among `got`.
pub fn types(got: &[Got]) -> Vec<String> {
    envs(got).iter().map(|e| e.msg_type().to_owned()).collect()
}

/// A server id from test text.
pub fn sid(s: &str) -> ServerId {
    ServerId::parse(s).expect("test server id")
}

/// A user id from test text.
pub fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("test user id")
}

/// Server `id` with fixture key `n`.
pub fn peer(id: &str, n: usize) -> Peer {
    Peer {
        server_id: sid(id),
        host: format!("10.0.0.{n}"),
        port: 9000 + n as u16,
        pubkey: pk(n),
    }
}
