//! Test harness: real servers on free loopback ports, and raw protocol test
//! users speaking SOCP over awc. Keys come from the protocol crate's fixtures.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use socp::server::{start, RunningServer, ServerConfig};
use socp_actors::introducer::Bootstrap;
use socp_actors::Settings;
use socp_protocol::message::{
    MsgDirect, MsgPublicChannel, ServerAddress, ServerAnnounce, ServerHelloLink, UserHello,
};
use socp_protocol::{
    content, fixtures, now_ms, Base64Url, Envelope, Message, PrivateKey, PublicKey, ServerId, To,
    UserId,
};

/// Fast heartbeats so liveness tests take seconds.
pub fn fast_settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(300),
        peer_timeout: Duration::from_millis(1500),
        ..Settings::default()
    }
}

/// [`fast_settings`], but a linked server that sends nothing (a fake one)
/// is not declared dead while a test runs.
pub fn patient_settings() -> Settings {
    Settings {
        peer_timeout: Duration::from_secs(60),
        ..fast_settings()
    }
}

/// A server config on a free port with fixture key `key` and a database in `db`
/// (`None`: in memory).
pub fn config(key: usize, db: Option<PathBuf>, bootstrap: &[SocketAddr]) -> ServerConfig {
    ServerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        db_path: db,
        first_key_pem: Some(fixtures::key_pem(key).to_owned()),
        bootstrap: bootstrap
            .iter()
            .map(|a| Bootstrap {
                host: a.ip().to_string(),
                port: a.port(),
                pubkey: None,
            })
            .collect(),
        settings: fast_settings(),
        crypto_threads: 2,
        ..ServerConfig::default()
    }
}

/// [`config`] with other settings.
pub fn config_with(
    key: usize,
    db: Option<PathBuf>,
    bootstrap: &[SocketAddr],
    settings: Settings,
) -> ServerConfig {
    ServerConfig {
        settings,
        ..config(key, db, bootstrap)
    }
}

/// A loopback address where nothing listens (a port bound, then released).
/// Picked below the kernel's ephemeral range (32768 and up on Linux), so
/// that no outgoing connection of a test running alongside takes it before
/// the test binds it.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread test binaries over the range by process id; probe upward.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 2_000) as u16 * 10;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        let port = 10_000 + (base - 10_000 + offset) % 22_000;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("has an address");
        }
    }
}

/// Start a server with fixture key `key`, joining through `bootstrap`.
pub async fn server(key: usize, bootstrap: &[SocketAddr]) -> RunningServer {
    start(config(key, None, bootstrap))
        .await
        .expect("server starts")
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two servers with `settings` (fixture keys 2 and 3), the second joined
/// through the first, once both have their link up.
pub async fn linked_pair(settings: Settings) -> (RunningServer, RunningServer) {
    let a = start(config_with(2, None, &[], settings.clone()))
        .await
        .expect("a starts");
    let b = start(config_with(3, None, &[a.addr], settings))
        .await
        .expect("b starts");
    for s in [&a, &b] {
        eventually(Duration::from_secs(30), "linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    (a, b)
}

/// Linked servers in a `/status` snapshot.
/// A server's `/metrics` text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let body = awc::Client::new()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answers")
        .body()
        .await
        .expect("body");
    String::from_utf8_lossy(&body).into_owned()
}

pub fn links_up(status: &Value) -> usize {
    status["servers"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["link"] == "up").count())
}

/// Users (local + remote) in a `/status` snapshot.
pub fn users_known(status: &Value) -> usize {
    status["local_users"].as_array().map_or(0, Vec::len)
        + status["remote_users"].as_array().map_or(0, Vec::len)
}

type Framed = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// A raw protocol user (or a fake server) on one WebSocket.
pub struct Peer {
    framed: Framed,
    /// Frames received and not yet taken.
    pub inbox: VecDeque<Envelope>,
    /// Close code, once the server closed the connection.
    pub closed: Option<u16>,
}

impl Peer {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> Peer {
        let (_, framed) = awc::Client::new()
            .ws(format!("ws://{addr}/ws"))
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
            .expect("connects");
        Peer {
            framed,
            inbox: VecDeque::new(),
            closed: None,
        }
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        let _ = self
            .framed
            .send(awc::ws::Message::Text(text.to_owned().into()))
            .await;
    }

    /// Send an envelope.
    pub async fn send(&mut self, env: &Envelope) {
        self.send_text(&env.to_json()).await;
    }

    /// Send several envelopes in one write, so that they arrive together.
    pub async fn send_batch(&mut self, envs: &[Envelope]) {
        for env in envs {
            let _ = self
                .framed
                .feed(awc::ws::Message::Text(env.to_json().into()))
                .await;
        }
        let _ = self.framed.flush().await;
    }

    /// Send a WebSocket ping.
    pub async fn send_ping(&mut self) {
        let _ = self
            .framed
            .send(awc::ws::Message::Ping(bytes::Bytes::from_static(b"alive")))
            .await;
    }

    /// Send a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let _ = self
            .framed
            .send(awc::ws::Message::Binary(bytes.to_vec().into()))
            .await;
    }

    /// Write one masked WebSocket frame with `opcode` and `payload` (final if
    /// `fin`) straight to the socket, bypassing the codec, which can carry
    /// neither a text frame that is not UTF-8 nor a fragment of raw bytes.
    pub async fn send_raw_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        use actix_codec::AsyncWrite;
        use std::pin::Pin;
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let io = self.framed.io_mut();
        let mut written = 0;
        while written < frame.len() {
            match std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, &frame[written..]))
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => written += n,
            }
        }
        let _ = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await;
    }

    /// Read frames for up to `wait`, into the inbox. False once closed.
    pub async fn pump(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            match tokio::time::timeout(left, self.framed.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(awc::ws::Frame::Text(bytes)))) => match Envelope::parse(&bytes) {
                    Ok(env) => self.inbox.push_back(env),
                    Err(e) => panic!("server sent an unparsable frame: {e}"),
                },
                Ok(Some(Ok(awc::ws::Frame::Close(reason)))) => {
                    self.closed = Some(reason.map_or(1005, |r| u16::from(r.code)));
                    return false;
                }
                Ok(Some(Ok(awc::ws::Frame::Ping(p)))) => {
                    let _ = self.framed.send(awc::ws::Message::Pong(p)).await;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => {
                    self.closed.get_or_insert(1006);
                    return false;
                }
            }
        }
    }

    /// Wait up to `wait` for a frame matching `pred`; it is removed from the inbox.
    pub async fn expect<F: Fn(&Envelope) -> bool>(
        &mut self,
        wait: Duration,
        what: &str,
        pred: F,
    ) -> Envelope {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(i).expect("index is valid");
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero()
                || !self.pump(left.min(Duration::from_millis(100))).await
                    && self.inbox.iter().all(|e| !pred(e))
            {
                let types: Vec<String> = self.inbox.iter().map(Envelope::summary).collect();
                panic!(
                    "no {what} within {wait:?} (closed: {:?}); inbox: {types:?}",
                    self.closed
                );
            }
        }
    }

    /// Whether a frame matching `pred` arrives within `wait` (it stays in the inbox).
    pub async fn sees<F: Fn(&Envelope) -> bool>(&mut self, wait: Duration, pred: F) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.inbox.iter().any(&pred) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.pump(left.min(Duration::from_millis(100))).await {
                return self.inbox.iter().any(&pred);
            }
        }
    }

    /// Count frames matching `pred` received within `wait`, removing them.
    pub async fn count<F: Fn(&Envelope) -> bool>(&mut self, wait: Duration, pred: F) -> usize {
        self.pump(wait).await;
        let before = self.inbox.len();
        self.inbox.retain(|e| !pred(e));
        before - self.inbox.len()
    }

    /// Wait for the server to close the connection; the close code.
    pub async fn closed_within(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.pump(left).await;
        }
        self.closed
    }
}

/// The link state a `/status` snapshot shows for `server`.
pub fn link_state(status: &Value, server: &ServerId) -> Option<String> {
    status["servers"]
        .as_array()?
        .iter()
        .find(|s| s["server_id"] == server.as_str())
        .and_then(|s| s["link"].as_str().map(str::to_owned))
}

/// Whether a `/status` snapshot knows `user` (attached here or elsewhere).
pub fn knows(status: &Value, user: &UserId) -> bool {
    let id = user.as_str();
    status["local_users"]
        .as_array()
        .is_some_and(|l| l.iter().any(|u| u == id))
        || status["remote_users"]
            .as_array()
            .is_some_and(|r| r.iter().any(|u| u["user_id"] == id))
}

/// `to` of a frame addressed to the server itself.
pub fn server_to() -> To {
    To::parse("server").expect("valid")
}

/// USER_REGISTER from `from` for `user_id` / `username` with fixture key
/// `key` and key store `store`, signed with fixture key `signer`.
pub fn register_frame(
    from: &UserId,
    user_id: &UserId,
    username: &str,
    key: usize,
    signer: usize,
    store: &str,
) -> Envelope {
    Envelope::from_message(
        from,
        server_to(),
        now_ms(),
        &Message::UserRegister(socp_protocol::message::UserRegister {
            user_id: user_id.clone(),
            username: socp_protocol::Username::parse(username).expect("valid username"),
            pubkey: fixtures::key(key).public_key().clone(),
            privkey_store: store.to_owned(),
        }),
    )
    .signed(&fixtures::key(signer))
    .expect("signs")
}

/// LOGIN_REQUEST from `from` for `who`.
pub fn login_frame(from: &UserId, who: &str) -> Envelope {
    Envelope::from_message(
        from,
        server_to(),
        now_ms(),
        &Message::LoginRequest(socp_protocol::message::LoginRequest { who: who.into() }),
    )
}

/// Frame-type predicate.
pub fn is(t: &'static str) -> impl Fn(&Envelope) -> bool {
    move |e: &Envelope| e.msg_type() == t
}

/// An ERROR frame with this code.
pub fn error_code(code: &'static str) -> impl Fn(&Envelope) -> bool {
    move |e: &Envelope| e.msg_type() == "ERROR" && e.payload()["code"] == code
}

/// A test user with a fixture key.
pub struct User {
    pub id: UserId,
    pub key: PrivateKey,
    pub peer: Peer,
}

impl User {
    /// Connect as a fresh ephemeral user with fixture key `key` and wait for the
    /// server's acknowledgement.
    pub async fn join(addr: SocketAddr, key: usize) -> User {
        let user = Self::hello(addr, key, UserId::random()).await;
        let mut user = user;
        user.peer
            .expect(Duration::from_secs(10), "hello ACK", is("ACK"))
            .await;
        user
    }

    /// Connect and send USER_HELLO, without waiting for anything.
    pub async fn hello(addr: SocketAddr, key: usize, id: UserId) -> User {
        let user = Self::connect(addr, key, id).await;
        let mut user = user;
        let hello = user.hello_frame(None);
        user.peer.send(&hello).await;
        user
    }

    /// Connect without sending anything.
    pub async fn connect(addr: SocketAddr, key: usize, id: UserId) -> User {
        let key = fixtures::key(key);
        let peer = Peer::connect(addr).await;
        User { id, key, peer }
    }

    /// An unsigned USER_HELLO for this user (with a login `nonce` if
    /// given), as a socp client sends it: with the socp capability object.
    pub fn hello_frame(&self, nonce: Option<String>) -> Envelope {
        socp_protocol::dialect::with_capability(Envelope::new(
            &self.id,
            To::parse("server").expect("valid"),
            now_ms(),
            &UserHello {
                client: "socp-tests".into(),
                pubkey: self.key.public_key().clone(),
                enc_pubkey: None,
                meta: None,
                nonce,
            },
        ))
    }

    /// A signed DM envelope for `to` (key `to_key`).
    pub fn dm(&self, to: &UserId, to_key: &socp_protocol::PublicKey, text: &str) -> Envelope {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&to_key.encrypt(text.as_bytes()).expect("fits"));
        let sig =
            content::sign_dm(&self.key, &ct, self.id.as_str(), to.as_str(), ts).expect("signs");
        Envelope::from_message(
            &self.id,
            To::from(to),
            ts,
            &Message::MsgDirect(MsgDirect {
                ciphertext: ct,
                sender_pub: self.key.public_key().clone(),
                content_sig: sig,
            }),
        )
    }

    /// Wait for a USER_ADVERTISE of `who`.
    pub async fn sees_user(&mut self, who: &UserId, wait: Duration) -> bool {
        let id = who.to_string();
        self.peer
            .sees(wait, move |e| {
                e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == id.as_str()
            })
            .await
    }

    /// Decrypt a USER_DELIVER's ciphertext.
    pub fn open(&self, env: &Envelope) -> String {
        let ct = Base64Url::parse(env.payload()["ciphertext"].as_str().expect("ciphertext"))
            .expect("b64");
        String::from_utf8(self.key.decrypt(ct.bytes()).expect("decrypts")).expect("utf8")
    }
}

impl User {
    /// A signed public channel message for member `to` (key `to_key`).
    pub fn public(&self, to: &UserId, to_key: &PublicKey, text: &str) -> Envelope {
        let ts = now_ms();
        let ct = Base64Url::from_bytes(&to_key.encrypt(text.as_bytes()).expect("fits"));
        let sig = content::sign_public(&self.key, &ct, self.id.as_str(), ts).expect("signs");
        Envelope::from_message(
            &self.id,
            To::from(to),
            ts,
            &Message::MsgPublicChannel(MsgPublicChannel {
                ciphertext: ct,
                sender_pub: self.key.public_key().clone(),
                content_sig: sig,
                group_id: "public".into(),
                public_version: None,
            }),
        )
    }
}

/// A fake server: a raw connection that linked to a real server with
/// SERVER_HELLO_LINK, signed with its own fixture key.
pub struct FakeServer {
    pub id: ServerId,
    pub key: PrivateKey,
    pub peer: Peer,
}

impl FakeServer {
    /// Link to the server at `addr` as a new server with fixture key `key`.
    pub async fn link(addr: SocketAddr, key: usize, to: &ServerId) -> FakeServer {
        Self::link_as(addr, key, ServerId::random(), to).await
    }

    /// Link to the server at `addr` as server `id` with fixture key `key`.
    pub async fn link_as(addr: SocketAddr, key: usize, id: ServerId, to: &ServerId) -> FakeServer {
        let mut fake = Self::connect_as(addr, key, id).await;
        let hello = fake.hello(to);
        fake.peer.send(&hello).await;
        fake
    }

    /// Connect as server `id` with fixture key `key`, sending nothing.
    pub async fn connect_as(addr: SocketAddr, key: usize, id: ServerId) -> FakeServer {
        let key = fixtures::key(key);
        let peer = Peer::connect(addr).await;
        FakeServer { id, key, peer }
    }

    /// Our signed SERVER_HELLO_LINK to server `to`.
    pub fn hello(&self, to: &ServerId) -> Envelope {
        self.signed(
            To::from(to),
            &Message::ServerHelloLink(ServerHelloLink(ServerAddress {
                host: "127.0.0.1".into(),
                port: 9,
                pubkey: self.key.public_key().clone(),
            })),
        )
    }

    /// Broadcast SERVER_ANNOUNCE, so that servers beyond the linked one learn
    /// (and pin) this server's key.
    pub async fn announce(&mut self) {
        let env = self.signed(
            To::All,
            &Message::ServerAnnounce(ServerAnnounce(ServerAddress {
                host: "127.0.0.1".into(),
                port: 9,
                pubkey: self.key.public_key().clone(),
            })),
        );
        self.peer.send(&env).await;
    }

    /// An envelope from this server, signed with its key. A fake server
    /// stands in for a socp server: its hellos and announces say so.
    pub fn signed(&self, to: To, msg: &Message) -> Envelope {
        let env = Envelope::from_message(&self.id, to, now_ms(), msg);
        let env = match msg {
            Message::ServerHelloLink(_)
            | Message::ServerHelloJoin(_)
            | Message::ServerAnnounce(_) => socp_protocol::dialect::with_capability(env),
            _ => env,
        };
        env.signed(&self.key).expect("signs")
    }
}

// Connections through a given awc client (tests/tls.rs: wss:// with a test CA).

impl Peer {
    /// Connect to `url` (`ws://` or `wss://`) with `client`; the connection
    /// error as text when it fails (say, a server certificate not trusted).
    pub async fn connect_with(client: &awc::Client, url: &str) -> Result<Peer, String> {
        let (_, framed) = client
            .ws(url)
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Peer {
            framed,
            inbox: VecDeque::new(),
            closed: None,
        })
    }
}

impl User {
    /// [`User::join`] at `url` through `client`.
    pub async fn join_with(client: &awc::Client, url: &str, key: usize) -> User {
        let peer = Peer::connect_with(client, url).await.expect("connects");
        let mut user = User {
            id: UserId::random(),
            key: fixtures::key(key),
            peer,
        };
        let hello = user.hello_frame(None);
        user.peer.send(&hello).await;
        user.peer
            .expect(Duration::from_secs(10), "hello ACK", is("ACK"))
            .await;
        user
    }
}

/// The password of every registered test user.
pub const PASSWORD: &str = "correct horse battery staple";

/// The fixture key every registered test user uses.
pub const REG_KEY: usize = 21;

/// `REG_KEY` as an encrypted PKCS#8 key store, as a client uploads it
/// (scrypt: made once per test binary).
pub fn key_store() -> &'static str {
    static STORE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STORE.get_or_init(|| {
        fixtures::key(REG_KEY)
            .to_encrypted_pem(PASSWORD)
            .expect("encrypts")
    })
}

/// A USER_ADVERTISE of `user` at `server` with fixture key `key`.
pub fn advertise(user: &UserId, server: &ServerId, key: usize) -> Message {
    Message::UserAdvertise(socp_protocol::message::UserAdvertise {
        user_id: user.clone(),
        server_id: server.clone(),
        pubkey: fixtures::key(key).public_key().clone(),
        meta: None,
        seq: None,
    })
}

/// A GET of `path` on the server at `addr`: the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut resp = awc::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("HTTP request");
    let body = resp.body().await.expect("HTTP body");
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of a counter line `name` (labels included) in Prometheus text,
/// 0 if absent.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The users attached to a server, from its `/status` snapshot.
pub fn local_users(status: &Value) -> Vec<String> {
    status["local_users"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
