//! The terminal client (`socp-client`): speaks SOCP through awc.
//!
//! - [`command`]: the command-line parser;
//! - [`state`]: who is online with which key, files being received;
//! - [`output`]: text or JSON lines, printed above the line being typed;
//! - [`input`]: the input thread (line editing, history, passwords);
//! - this module: the connection, identities (ephemeral, registered, logged
//!   in), and the commands.
//!
//! Every RSA operation runs on a blocking thread, never on the event loop that
//! reads the socket.

pub mod command;
pub mod input;
pub mod output;
pub mod state;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use socp_protocol::content;
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{
    DeliverContent, FileChunk, FileEnd, FileId, FileMode, FileStart, ListRequest, MsgDirect,
    MsgPublicChannel, UserAdvertise, UserDeliver, UserHello, UserRegister, UserRemove,
};
use socp_protocol::{
    now_ms, Base64Url, Envelope, ErrorCode, Message, PrivateKey, To, UserId, Username,
};
use tokio::sync::{mpsc, oneshot};

use command::{Command, HELP};
use input::{Input, InputEvent};
use output::Output;
use state::{Contact, IncomingFile, Roster};

/// Settings of a client run.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server host and port.
    pub host: String,
    pub port: u16,
    /// `Some`: connect with `wss://`, trusting these roots; `None`: `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Ephemeral user id (default: a fresh UUID v4).
    pub user_id: Option<UserId>,
    /// Keys and settings.
    pub home: PathBuf,
    /// Where received files are saved.
    pub download_dir: PathBuf,
    /// One JSON object per event.
    pub json: bool,
    /// Unencrypted PEM key for the ephemeral identity (default: generate one).
    pub key_file: Option<PathBuf>,
    /// Unencrypted PEM key `/register` uses instead of generating one.
    pub register_key_file: Option<PathBuf>,
    /// Password for `/register` and `/login` (from `--password-file` or
    /// `SOCP_PASSWORD`); otherwise asked for.
    pub password: Option<String>,
    /// Frames per second the client sends at most (the server's limit).
    pub send_rate: f64,
    /// Whether stdin is a terminal (line editing) or a script.
    pub terminal: bool,
}

/// How long to wait for the server's answer to a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the writer task writes.
enum Outgoing {
    Text(String),
    Pong(bytes::Bytes),
    Close,
}

type Sink = mpsc::UnboundedSender<Outgoing>;

/// A request waiting for the server's answer.
struct Waiter {
    want: fn(&Envelope) -> bool,
    tx: oneshot::Sender<Envelope>,
}

/// Who we are on the network.
#[derive(Clone)]
struct Me {
    id: UserId,
    key: Arc<PrivateKey>,
    name: Option<String>,
}

/// Everything the reader and the commands share (one thread: `Rc<RefCell>`).
struct Client {
    me: Me,
    /// The account a `/login` is switching to, until the server accepts it.
    joining: Option<UserId>,
    roster: Roster,
    files: HashMap<(UserId, String), IncomingFile>,
    waiters: Vec<Waiter>,
    out: Output,
    config: ClientConfig,
}

type Shared = Rc<RefCell<Client>>;

/// Run the client until `/quit` or end of input; the process exit code.
pub async fn run(config: ClientConfig) -> i32 {
    let out = Output::new(config.json);
    let key = match load_or_generate(&out, config.key_file.clone(), "your session key").await {
        Ok(k) => k,
        Err(e) => {
            out.error("BAD_KEY", e);
            return 1;
        }
    };
    let url = socp_actors::ws_url(config.tls.is_some(), &config.host, config.port);
    let client = socp_actors::ws_client(config.tls.as_ref(), Duration::from_secs(15));
    let framed = match client
        .ws(url.as_str())
        .max_frame_size(4 * 1024 * 1024)
        .connect()
        .await
    {
        Ok((_, framed)) => framed,
        Err(e) => {
            let e = e.to_string();
            // rustls says "invalid peer certificate: UnknownIssuer" and the like.
            let hint = if config.tls.is_some() && e.contains("certificate") {
                " (the server's TLS certificate was refused: if a private CA signed it, \
                 give --ca FILE with that CA)"
            } else if config.tls.is_none() && e.contains("HTTP version") {
                // A TLS server answers an HTTP request with a TLS alert.
                " (does the server use TLS? try --server wss://HOST:PORT)"
            } else {
                ""
            };
            out.error("CONNECT", format!("cannot connect to {url}: {e}{hint}"));
            return 1;
        }
    };
    let (mut sink, mut stream) = framed.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    // The writer: the only owner of the socket's write half.
    let writer = actix_web::rt::spawn(async move {
        while let Some(item) = rx.recv().await {
            let msg = match item {
                Outgoing::Text(text) => awc::ws::Message::Text(text.into()),
                Outgoing::Pong(p) => awc::ws::Message::Pong(p),
                Outgoing::Close => {
                    let _ = sink
                        .send(awc::ws::Message::Close(Some(awc::ws::CloseReason {
                            code: awc::ws::CloseCode::Normal,
                            description: Some("bye".into()),
                        })))
                        .await;
                    break;
                }
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });

    let me = Me {
        id: config.user_id.clone().unwrap_or_else(UserId::random),
        key: Arc::new(key),
        name: None,
    };
    let shared: Shared = Rc::new(RefCell::new(Client {
        me: me.clone(),
        joining: None,
        roster: Roster::default(),
        files: HashMap::new(),
        waiters: Vec::new(),
        out: out.clone(),
        config: config.clone(),
    }));

    // The reader: every frame from the server, in order.
    let reader_state = shared.clone();
    let reader_tx = tx.clone();
    let (closed_tx, mut closed_rx) = oneshot::channel::<String>();
    actix_web::rt::spawn(async move {
        let reason = loop {
            match stream.next().await {
                Some(Ok(awc::ws::Frame::Text(bytes))) => {
                    handle_frame(&reader_state, &bytes).await;
                }
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    let _ = reader_tx.send(Outgoing::Pong(p));
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    break format!(
                        "server closed the connection{}",
                        reason
                            .map(|r| format!(
                                " ({:?} {})",
                                r.code,
                                r.description.unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    )
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("connection error: {e}"),
                None => break "connection closed".to_owned(),
            }
        };
        let _ = closed_tx.send(reason);
    });

    // Identify at once.
    match hello(&shared, &tx, &me, None).await {
        Ok(()) => out.event(
            "connected",
            format!("connected to {url} as {} (type /help)", me.id),
            json!({ "user_id": me.id, "server": url }),
        ),
        Err(e) => {
            out.error(&e.0, e.1);
            return 1;
        }
    }

    let mut input = input::spawn(out.clone(), config.terminal);
    // One listener for the whole run, so a Ctrl-C during a long command is
    // not lost: the client leaves once the command is done.
    let (interrupt_tx, mut interrupted) = mpsc::unbounded_channel::<()>();
    actix_web::rt::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if interrupt_tx.send(()).is_err() {
                break;
            }
        }
    });
    let code = loop {
        let event = tokio::select! {
            reason = &mut closed_rx => {
                out.error("CLOSED", reason.unwrap_or_else(|_| "connection closed".into()));
                break 1;
            }
            event = input.events.recv() => event,
            // Ctrl-C outside the line editor (scripts): leave cleanly, code 1000.
            _ = interrupted.recv() => break 0,
        };
        match event {
            Some(InputEvent::Line(line)) => {
                let quit = run_line(&shared, &tx, &mut input, &line).await;
                if quit {
                    break 0;
                }
                input.ready();
            }
            Some(InputEvent::Password(_)) => input.ready(),
            Some(InputEvent::Eof) | None => break 0,
        }
    };
    let _ = tx.send(Outgoing::Close);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    code
}

/// Handle one command line; true to quit.
async fn run_line(shared: &Shared, tx: &Sink, input: &mut Input, line: &str) -> bool {
    let out = shared.borrow().out.clone();
    let cmd = match command::parse(line) {
        Ok(c) => c,
        Err(usage) => {
            out.error("USAGE", usage.0);
            return false;
        }
    };
    let result = match cmd {
        Command::Nothing => Ok(()),
        Command::Help => {
            out.info(HELP);
            Ok(())
        }
        Command::Quit => return true,
        Command::List => list(shared, tx).await,
        Command::Tell { to, text } => tell(shared, tx, &to, &text).await,
        Command::All { text } => all(shared, tx, &text).await,
        Command::File { to, path } => send_file(shared, tx, &to, path).await,
        Command::Register { username } => register(shared, tx, input, username).await,
        Command::Login { who } => login(shared, tx, input, &who).await,
    };
    if let Err((code, detail)) = result {
        out.error(&code, detail);
    }
    false
}

/// A failed command: a code (a SPEC error code or a client one) and words.
type Failure = (String, String);

fn fail(code: &str, detail: impl Into<String>) -> Failure {
    (code.to_owned(), detail.into())
}

/// Register a waiter before sending the request it answers.
fn expect(shared: &Shared, want: fn(&Envelope) -> bool) -> oneshot::Receiver<Envelope> {
    let (tx, rx) = oneshot::channel();
    shared.borrow_mut().waiters.push(Waiter { want, tx });
    rx
}

async fn answer(rx: oneshot::Receiver<Envelope>, what: &str) -> Result<Envelope, Failure> {
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(env)) if env.msg_type() == "ERROR" => {
            let code = env.payload()["code"].as_str().unwrap_or("ERROR").to_owned();
            let detail = env.payload()["detail"].as_str().unwrap_or("").to_owned();
            let words = ErrorCode::parse(&code).describe().to_owned();
            Err((
                code,
                format!(
                    "{what}: {words}{}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({detail})")
                    }
                ),
            ))
        }
        Ok(Ok(env)) => Ok(env),
        Ok(Err(_)) => Err(fail("CLOSED", format!("{what}: connection closed"))),
        Err(_) => Err(fail(
            "TIMEOUT",
            format!("{what}: no answer from the server"),
        )),
    }
}

fn send(tx: &Sink, env: &Envelope) -> Result<(), Failure> {
    tx.send(Outgoing::Text(env.to_json()))
        .map_err(|_| fail("CLOSED", "the connection is closed"))
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Failure> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .map_err(|e| fail("INTERNAL", e.to_string()))
}

async fn load_or_generate(
    out: &Output,
    file: Option<PathBuf>,
    what: &str,
) -> Result<PrivateKey, String> {
    match file {
        Some(path) => {
            let pem =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            PrivateKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            out.info(format!("generating {what} (RSA-4096, a few seconds)..."));
            actix_web::rt::task::spawn_blocking(PrivateKey::generate)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    }
}

/// USER_HELLO (signed with our key; with the login nonce when logging in).
async fn hello(shared: &Shared, tx: &Sink, me: &Me, nonce: Option<String>) -> Result<(), Failure> {
    let payload = UserHello {
        client: format!("socp-client/{}", env!("CARGO_PKG_VERSION")),
        pubkey: me.key.public_key().clone(),
        enc_pubkey: None,
        meta: None,
        nonce,
    };
    let env = Envelope::new(&me.id, To::Id("server".into()), now_ms(), &payload);
    let key = me.key.clone();
    let env = blocking(move || env.signed(&key))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    let rx = expect(shared, |e| {
        e.msg_type() == "ERROR" || (e.msg_type() == "ACK" && e.payload()["msg_ref"] == "USER_HELLO")
    });
    send(tx, &env)?;
    answer(rx, "identification").await.map(drop)
}

async fn list(shared: &Shared, tx: &Sink) -> Result<(), Failure> {
    let me = shared.borrow().me.clone();
    let rx = expect(shared, |e| {
        matches!(e.msg_type(), "LIST_RESPONSE" | "ERROR")
    });
    send(
        tx,
        &Envelope::new(&me.id, To::Id("server".into()), now_ms(), &ListRequest {}),
    )?;
    let env = answer(rx, "/list").await?;
    let users = match env.message() {
        Ok(Message::ListResponse(l)) => l.users,
        _ => return Err(fail("BAD_REQUEST", "the server's list was malformed")),
    };
    let names = state::format_listing(&users);
    let out = shared.borrow().out.clone();
    out.event(
        "list",
        format!("Online users: {}", names.join(", ")),
        json!({ "users": users.iter().map(|u| json!({"user_id": u.user_id, "server_id": u.server_id, "name": u.name})).collect::<Vec<_>>() }),
    );
    Ok(())
}

fn resolve(shared: &Shared, who: &str) -> Result<Contact, Failure> {
    shared
        .borrow()
        .roster
        .resolve(who)
        .cloned()
        .map_err(|e| fail("USER_NOT_FOUND", e))
}

/// Paces sending at the server's frame-rate limit.
struct Pacer {
    interval: Duration,
    next: tokio::time::Instant,
    burst: u32,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        // Stay a little under the server's limit.
        let rate = (rate * 0.9).max(1.0);
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: tokio::time::Instant::now(),
            burst: 100,
        }
    }

    async fn wait(&mut self) {
        if self.burst > 0 {
            self.burst -= 1;
            return;
        }
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now().max(self.next) + self.interval;
    }
}

/// Frames sent between two flow-control round trips.
const FLOW_WINDOW: usize = 64;

/// Sends a run of frames: paced at the server's rate limit, and with at most
/// about two windows of frames waiting at the server. A server processes a
/// user's frames in order and cuts off a user with too many frames waiting
/// (256 by default), which a loaded server reaches even at the allowed rate.
/// So after every [`FLOW_WINDOW`] frames the client asks for the user list
/// and, before the next window, waits for the answer to the previous request:
/// the answer comes only once every frame before it was handled. In a
/// `strict` run an ERROR meanwhile (a frame refused, the recipient gone) ends
/// the run; otherwise it is shown and the run goes on.
struct Flow {
    pacer: Pacer,
    sent: usize,
    sync: Option<oneshot::Receiver<Envelope>>,
    strict: bool,
}

impl Flow {
    fn new(rate: f64, strict: bool) -> Self {
        Flow {
            pacer: Pacer::new(rate),
            sent: 0,
            sync: None,
            strict,
        }
    }

    async fn send(&mut self, shared: &Shared, tx: &Sink, env: &Envelope) -> Result<(), Failure> {
        self.pacer.wait().await;
        send(tx, env)?;
        self.sent += 1;
        if self.sent % FLOW_WINDOW == 0 {
            self.settle().await?;
            self.request(shared, tx).await?;
        }
        Ok(())
    }

    async fn request(&mut self, shared: &Shared, tx: &Sink) -> Result<(), Failure> {
        let me = shared.borrow().me.id.clone();
        let rx = if self.strict {
            expect(shared, |e| {
                matches!(e.msg_type(), "LIST_RESPONSE" | "ERROR")
            })
        } else {
            expect(shared, |e| e.msg_type() == "LIST_RESPONSE")
        };
        self.pacer.wait().await;
        send(
            tx,
            &Envelope::new(&me, To::Id("server".into()), now_ms(), &ListRequest {}),
        )?;
        self.sync = Some(rx);
        Ok(())
    }

    /// Wait for the outstanding round trip, if any.
    async fn settle(&mut self) -> Result<(), Failure> {
        match self.sync.take() {
            Some(rx) => answer(rx, "sending").await.map(drop),
            None => Ok(()),
        }
    }

    /// Wait until the server has handled every frame sent.
    async fn confirm(&mut self, shared: &Shared, tx: &Sink) -> Result<(), Failure> {
        self.settle().await?;
        self.request(shared, tx).await?;
        self.settle().await
    }
}

async fn tell(shared: &Shared, tx: &Sink, who: &str, text: &str) -> Result<(), Failure> {
    let contact = resolve(shared, who)?;
    let (me, rate) = {
        let c = shared.borrow();
        (c.me.clone(), c.config.send_rate)
    };
    let pieces: Vec<String> = content::split_for_rsa(text)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut flow = Flow::new(rate, true);
    for piece in pieces {
        let (me2, to) = (me.clone(), contact.clone());
        let env = blocking(move || -> Result<Envelope, socp_protocol::Error> {
            let ts = now_ms();
            let ct = Base64Url::from_bytes(&to.pubkey.encrypt(piece.as_bytes())?);
            let sig = content::sign_dm(&me2.key, &ct, me2.id.as_str(), to.user_id.as_str(), ts)?;
            Ok(Envelope::new(
                &me2.id,
                To::from(&to.user_id),
                ts,
                &MsgDirect {
                    ciphertext: ct,
                    sender_pub: me2.key.public_key().clone(),
                    content_sig: sig,
                },
            ))
        })
        .await?
        .map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
        flow.send(shared, tx, &env).await?;
    }
    flow.settle().await?;
    let out = shared.borrow().out.clone();
    let name = shared.borrow().roster.display(&contact.user_id);
    out.event(
        "sent",
        format!("DM to {name}: {text}"),
        json!({ "kind": "dm", "to": contact.user_id, "text": text }),
    );
    Ok(())
}

/// Encrypt-and-sign jobs on every core; results in input order.
async fn parallel<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Result<Vec<R>, Failure>
where
    T: Send + 'static,
    R: Send + 'static,
{
    blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = items.len();
        let slots: Vec<std::sync::Mutex<Option<T>>> = items
            .into_iter()
            .map(|t| std::sync::Mutex::new(Some(t)))
            .collect();
        let results: Vec<std::sync::Mutex<Option<R>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.min(n.max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let item = slots[i].lock().ok().and_then(|mut g| g.take());
                    if let Some(item) = item {
                        let r = f(item);
                        if let Ok(mut g) = results[i].lock() {
                            *g = Some(r);
                        }
                    }
                });
            }
        });
        results
            .into_iter()
            .filter_map(|m| m.into_inner().ok().flatten())
            .collect()
    })
    .await
}

async fn all(shared: &Shared, tx: &Sink, text: &str) -> Result<(), Failure> {
    let (me, members, rate) = {
        let c = shared.borrow();
        let members: Vec<Contact> = c
            .roster
            .all()
            .filter(|m| m.user_id != c.me.id)
            .cloned()
            .collect();
        (c.me.clone(), members, c.config.send_rate)
    };
    let pieces: Vec<String> = content::split_for_rsa(text)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut jobs = Vec::new();
    for piece in &pieces {
        for m in &members {
            jobs.push((piece.clone(), m.clone()));
        }
    }
    let me2 = me.clone();
    let frames = parallel(
        jobs,
        move |(piece, m): (String, Contact)| -> Result<Envelope, socp_protocol::Error> {
            let ts = now_ms();
            let ct = Base64Url::from_bytes(&m.pubkey.encrypt(piece.as_bytes())?);
            let sig = content::sign_public(&me2.key, &ct, me2.id.as_str(), ts)?;
            Ok(Envelope::new(
                &me2.id,
                To::from(&m.user_id),
                ts,
                &MsgPublicChannel {
                    ciphertext: ct,
                    sender_pub: me2.key.public_key().clone(),
                    content_sig: sig,
                    group_id: "public".into(),
                    public_version: None,
                },
            ))
        },
    )
    .await?;
    // One member gone must not stop the message to the others.
    let mut flow = Flow::new(rate, false);
    for env in frames {
        let env = env.map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
        flow.send(shared, tx, &env).await?;
    }
    flow.settle().await?;
    let out = shared.borrow().out.clone();
    out.event(
        "sent",
        format!(
            "[public] {}: {text}",
            me.name.clone().unwrap_or_else(|| me.id.to_string())
        ),
        json!({ "kind": "public", "members": members.len(), "text": text }),
    );
    Ok(())
}

/// Largest file `/file` sends.
const MAX_SEND_FILE: u64 = 64 * 1024 * 1024;

async fn send_file(shared: &Shared, tx: &Sink, who: &str, path: PathBuf) -> Result<(), Failure> {
    let contact = resolve(shared, who)?;
    let (me, rate, out) = {
        let c = shared.borrow();
        (c.me.clone(), c.config.send_rate, c.out.clone())
    };
    let meta =
        std::fs::metadata(&path).map_err(|e| fail("FILE", format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > MAX_SEND_FILE {
        return Err(fail(
            "FILE",
            format!(
                "{}: not a file of at most {MAX_SEND_FILE} bytes",
                path.display()
            ),
        ));
    }
    let data =
        std::fs::read(&path).map_err(|e| fail("FILE", format!("{}: {e}", path.display())))?;
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let file_id = FileId::random();
    let start = Envelope::new(
        &me.id,
        To::from(&contact.user_id),
        now_ms(),
        &FileStart {
            file_id: file_id.clone(),
            name: name.clone(),
            size: data.len() as u64,
            sha256: sha256_hex(&data),
            mode: FileMode::Dm,
        },
    );
    let chunks: Vec<(u64, Vec<u8>)> = data
        .chunks(MAX_OAEP_PLAINTEXT)
        .enumerate()
        .map(|(i, c)| (i as u64, c.to_vec()))
        .collect();
    let total = chunks.len();
    out.event(
        "file_progress",
        format!(
            "sending {name} ({} bytes, {total} chunks) to {}: encrypting on every core...",
            data.len(),
            contact.user_id
        ),
        json!({ "file_id": file_id.as_str(), "direction": "send", "done": 0, "total": total }),
    );
    let (me2, to2, fid) = (me.clone(), contact.clone(), file_id.clone());
    let frames = parallel(
        chunks,
        move |(index, plain): (u64, Vec<u8>)| -> Result<Envelope, socp_protocol::Error> {
            let ts = now_ms();
            let ct = Base64Url::from_bytes(&to2.pubkey.encrypt(&plain)?);
            let sig = content::sign_dm(&me2.key, &ct, me2.id.as_str(), to2.user_id.as_str(), ts)?;
            Ok(Envelope::new(
                &me2.id,
                To::from(&to2.user_id),
                ts,
                &FileChunk {
                    file_id: fid.clone(),
                    index,
                    ciphertext: ct,
                    sender_pub: Some(me2.key.public_key().clone()),
                    content_sig: Some(sig),
                },
            ))
        },
    )
    .await?;
    let mut flow = Flow::new(rate, true);
    flow.send(shared, tx, &start).await?;
    let mut shown = 0;
    for (i, env) in frames.into_iter().enumerate() {
        let env = env.map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
        flow.send(shared, tx, &env).await?;
        let pct = (i + 1) * 100 / total.max(1);
        if pct >= shown + 10 {
            shown = pct - pct % 10;
            out.event(
                "file_progress",
                format!("sending {name}: {}", bar(pct)),
                json!({ "file_id": file_id.as_str(), "direction": "send", "done": i + 1, "total": total }),
            );
        }
    }
    flow.send(
        shared,
        tx,
        &Envelope::new(
            &me.id,
            To::from(&contact.user_id),
            now_ms(),
            &FileEnd {
                file_id: file_id.clone(),
            },
        ),
    )
    .await?;
    // `file_sent` means the server took every frame.
    flow.confirm(shared, tx).await?;
    out.event(
        "file_sent",
        format!("sent {name} to {}", contact.user_id),
        json!({ "file_id": file_id.as_str(), "to": contact.user_id, "name": name, "size": data.len() }),
    );
    Ok(())
}

fn bar(pct: usize) -> String {
    let filled = pct.min(100) / 5;
    format!(
        "[{}{}] {pct:>3}%",
        "#".repeat(filled),
        ".".repeat(20 - filled)
    )
}

fn accounts_path(shared: &Shared) -> PathBuf {
    shared.borrow().config.home.join("accounts.json")
}

fn key_path(shared: &Shared, id: &UserId) -> PathBuf {
    shared
        .borrow()
        .config
        .home
        .join("keys")
        .join(format!("{id}.pem"))
}

/// username (lower-case) → user id, from earlier registrations on this machine.
fn read_accounts(shared: &Shared) -> HashMap<String, String> {
    std::fs::read_to_string(accounts_path(shared))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options.open(path)?.write_all(text.as_bytes())
}

async fn password(shared: &Shared, input: &mut Input, prompt: &str) -> Result<String, Failure> {
    let given = shared.borrow().config.password.clone();
    match given {
        Some(p) => Ok(p),
        None => input
            .password(prompt)
            .await
            .filter(|p| !p.is_empty())
            .ok_or_else(|| fail("AUTH_FAILED", "no password given")),
    }
}

async fn register(
    shared: &Shared,
    tx: &Sink,
    input: &mut Input,
    username: Option<String>,
) -> Result<(), Failure> {
    let (out, me, key_file, scripted) = {
        let c = shared.borrow();
        (
            c.out.clone(),
            c.me.clone(),
            c.config.register_key_file.clone(),
            c.config.password.is_some(),
        )
    };
    let username = match username {
        Some(u) => u,
        None => input
            .password("username: ")
            .await
            .ok_or_else(|| fail("USAGE", "usage: /register <username>"))?,
    };
    let username =
        Username::parse(username.trim()).map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
    let pass = password(shared, input, "password: ").await?;
    if !scripted {
        let again = password(shared, input, "password again: ").await?;
        if again != pass {
            return Err(fail(
                "AUTH_FAILED",
                "the passwords differ; nothing was registered",
            ));
        }
    }
    let key = load_or_generate(&out, key_file, "your account key")
        .await
        .map_err(|e| fail("BAD_KEY", e))?;
    let key = Arc::new(key);
    let (k2, p2) = (key.clone(), pass.clone());
    let store = blocking(move || k2.to_encrypted_pem(&p2))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    let user_id = UserId::random();
    let reg = Envelope::new(
        &me.id,
        To::Id("server".into()),
        now_ms(),
        &UserRegister {
            user_id: user_id.clone(),
            username: username.clone(),
            pubkey: key.public_key().clone(),
            privkey_store: store.clone(),
        },
    );
    let k3 = key.clone();
    let reg = blocking(move || reg.signed(&k3))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    let rx = expect(shared, |e| matches!(e.msg_type(), "REGISTER_OK" | "ERROR"));
    send(tx, &reg)?;
    answer(rx, "/register").await?;
    write_private(&key_path(shared, &user_id), &store)
        .map_err(|e| fail("FILE", format!("saving the key: {e}")))?;
    let mut accounts = read_accounts(shared);
    accounts.insert(username.key(), user_id.to_string());
    let _ = write_private(
        &accounts_path(shared),
        &serde_json::to_string_pretty(&accounts).unwrap_or_default(),
    );
    out.event(
        "registered",
        format!("registered {username}: your id is {user_id}; log in with /login {username}"),
        json!({ "user_id": user_id, "username": username.as_str() }),
    );
    Ok(())
}

async fn login(shared: &Shared, tx: &Sink, input: &mut Input, who: &str) -> Result<(), Failure> {
    let (out, me, scripted) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone(), c.config.password.is_some())
    };
    let rx = expect(shared, |e| {
        matches!(e.msg_type(), "LOGIN_CHALLENGE" | "ERROR")
    });
    send(
        tx,
        &Envelope::new(
            &me.id,
            To::Id("server".into()),
            now_ms(),
            &socp_protocol::message::LoginRequest {
                who: who.to_owned(),
            },
        ),
    )?;
    let challenge = match answer(rx, "/login").await?.message() {
        Ok(Message::LoginChallenge(c)) => c,
        _ => return Err(fail("BAD_REQUEST", "malformed login challenge")),
    };
    // Our own copy of the key file if we have one, else the server's.
    let local = std::fs::read_to_string(key_path(shared, &challenge.user_id)).ok();
    let store = local.unwrap_or_else(|| challenge.privkey_store.clone());
    let mut tries = 0;
    let key = loop {
        tries += 1;
        let pass = password(shared, input, &format!("password for {who}: ")).await?;
        let s = store.clone();
        match blocking(move || PrivateKey::from_encrypted(&s, &pass)).await? {
            Ok(k) => break k,
            Err(socp_protocol::Error::WrongPassword) if !scripted && tries < 3 => {
                out.error(
                    "AUTH_FAILED",
                    "wrong password; try again (nothing was sent)",
                );
            }
            Err(socp_protocol::Error::WrongPassword) => {
                return Err(fail("AUTH_FAILED", "wrong password; nothing was sent"))
            }
            Err(e) => {
                return Err(fail(
                    "BAD_KEY",
                    format!("the stored key cannot be used: {e}"),
                ))
            }
        }
    };
    let _ = write_private(&key_path(shared, &challenge.user_id), &store);
    let new_me = Me {
        id: challenge.user_id.clone(),
        key: Arc::new(key),
        name: (!who.eq_ignore_ascii_case(challenge.user_id.as_str())).then(|| who.to_owned()),
    };
    shared.borrow_mut().joining = Some(new_me.id.clone());
    let accepted = hello(shared, tx, &new_me, Some(challenge.nonce)).await;
    shared.borrow_mut().joining = None;
    accepted?;
    let name = shared
        .borrow()
        .roster
        .get(&new_me.id)
        .and_then(|c| c.name.clone())
        .or(new_me.name.clone());
    let new_me = Me {
        name: name.clone(),
        ..new_me
    };
    {
        let mut c = shared.borrow_mut();
        c.me = new_me.clone();
        // The server detached our earlier identity; nobody tells this
        // connection, so forget it here (else `/all` would still send to it).
        if me.id != new_me.id {
            c.roster.forget(&me.id);
        }
    }
    out.event(
        "login",
        format!(
            "[LOGIN SUCCESS] logged in as {} ({})",
            name.unwrap_or_else(|| new_me.id.to_string()),
            new_me.id
        ),
        json!({ "user_id": new_me.id }),
    );
    Ok(())
}

/// Check a text delivery: `sender_pub` must be the key the network advertised
/// for the sender, `verify` (the content signature, with that key) must pass;
/// then decrypt. All RSA on a blocking thread. The text, or why it was refused.
async fn open_text(
    contact: &Contact,
    sender_pub: &socp_protocol::PublicKey,
    key: Arc<PrivateKey>,
    verify: impl FnOnce(&socp_protocol::PublicKey) -> Option<Base64Url> + Send + 'static,
) -> Result<String, String> {
    if *sender_pub != contact.pubkey {
        return Err("FORGED: the sender key does not match the key the network advertised".into());
    }
    let pk = contact.pubkey.clone();
    let opened = blocking(move || -> Result<String, &'static str> {
        let ct = verify(&pk).ok_or("the content signature does not verify")?;
        let plain = key
            .decrypt(ct.bytes())
            .map_err(|_| "it cannot be decrypted with your key")?;
        String::from_utf8(plain).map_err(|_| "it is not text")
    })
    .await
    .map_err(|e| e.1)?;
    opened.map_err(str::to_owned)
}

/// A text delivery's kind: how it is shown.
#[derive(Clone, Copy)]
enum TextKind {
    Dm,
    Public,
}

/// Check, open and show a text delivery, or warn why it was refused.
#[allow(clippy::too_many_arguments)]
async fn show_text(
    out: &Output,
    contact: &Contact,
    sender_pub: &socp_protocol::PublicKey,
    key: Arc<PrivateKey>,
    verify: impl FnOnce(&socp_protocol::PublicKey) -> Option<Base64Url> + Send + 'static,
    kind: TextKind,
    shown: &str,
    ts: i64,
) {
    let (event, what, line) = match kind {
        TextKind::Dm => ("dm", "a DM", format!("DM from {shown}: ")),
        TextKind::Public => ("public", "a public message", format!("[public] {shown}: ")),
    };
    match open_text(contact, sender_pub, key, verify).await {
        Ok(text) => out.event(
            event,
            format!("{line}{text}"),
            json!({ "from": contact.user_id, "name": contact.name, "text": text, "ts": ts }),
        ),
        Err(why) => out.warning(format!(
            "{what} claiming to be from {shown} was refused: {why}"
        )),
    }
}

/// One frame from the server.
async fn handle_frame(shared: &Shared, bytes: &[u8]) {
    let out = shared.borrow().out.clone();
    let env = match Envelope::parse_with(
        bytes,
        &socp_protocol::Limits {
            max_frame_bytes: 4 * 1024 * 1024,
            ..Default::default()
        },
    ) {
        Ok(env) => env,
        Err(e) => {
            out.warning(format!("unreadable frame from the server: {e}"));
            return;
        }
    };
    // Requests waiting for this answer.
    {
        let mut c = shared.borrow_mut();
        // Requests given up on (timed out, or their command failed).
        c.waiters.retain(|w| !w.tx.is_closed());
        if let Some(i) = c.waiters.iter().position(|w| (w.want)(&env)) {
            let w = c.waiters.remove(i);
            let _ = w.tx.send(env.clone());
            if env.msg_type() != "USER_ADVERTISE" {
                return;
            }
        }
    }
    let msg = match env.message() {
        Ok(m) => m,
        Err(e) => {
            out.warning(format!("malformed {} from the server: {e}", env.msg_type()));
            return;
        }
    };
    match msg {
        Message::UserAdvertise(UserAdvertise {
            user_id,
            server_id,
            pubkey,
            meta,
            ..
        }) => {
            let name = meta.as_ref().and_then(|m| {
                ["name", "username", "display_name"]
                    .iter()
                    .find_map(|k| m.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
            });
            let is_me = {
                let c = shared.borrow();
                c.me.id == user_id || c.joining.as_ref() == Some(&user_id)
            };
            let new = shared.borrow_mut().roster.upsert(Contact {
                user_id: user_id.clone(),
                server_id: server_id.clone(),
                pubkey,
                name: name.clone(),
            });
            if new && !is_me {
                let shown = shared.borrow().roster.display(&user_id);
                out.event(
                    "presence",
                    format!("* {shown} is online"),
                    json!({ "user_id": user_id, "server_id": server_id, "name": name, "online": true }),
                );
            }
        }
        Message::UserRemove(UserRemove {
            user_id, server_id, ..
        }) => {
            let shown = shared.borrow().roster.display(&user_id);
            if shared
                .borrow_mut()
                .roster
                .remove(&user_id, &server_id)
                .is_some()
            {
                out.event(
                    "presence",
                    format!("* {shown} left"),
                    json!({ "user_id": user_id, "online": false }),
                );
            }
        }
        Message::UserDeliver(d) => deliver(shared, &env, d).await,
        Message::Error(e) => {
            let words = e.code.describe().to_owned();
            out.error(
                e.code.as_str(),
                if e.detail.is_empty() {
                    words
                } else {
                    format!("{words} ({})", e.detail)
                },
            );
        }
        _ => {}
    }
}

/// A delivery: verify that `sender_pub` is the key the network advertised for
/// the sender and that the content signature verifies, then decrypt.
async fn deliver(shared: &Shared, env: &Envelope, d: UserDeliver) {
    let (out, me, contact, download_dir) = {
        let c = shared.borrow();
        (
            c.out.clone(),
            c.me.clone(),
            c.roster.get(&d.sender).cloned(),
            c.config.download_dir.clone(),
        )
    };
    let ts = d.orig_ts.unwrap_or(env.ts());
    let sender = d.sender.clone();
    let shown = shared.borrow().roster.display(&sender);
    let Some(contact) = contact else {
        out.warning(format!(
            "a message claiming to be from {sender}, who is not advertised online, was refused"
        ));
        return;
    };
    let forged = |what: &str| {
        format!(
            "FORGED {what} claiming to be from {shown}: {}; not shown",
            "the sender key does not match the key the network advertised"
        )
    };
    match d.content {
        DeliverContent::Dm(m) => {
            let (me_id, s) = (me.id.clone(), sender.clone());
            let verify = move |pk: &socp_protocol::PublicKey| {
                content::verify_dm(
                    pk,
                    &m.content_sig,
                    &m.ciphertext,
                    s.as_str(),
                    me_id.as_str(),
                    ts,
                )
                .is_ok()
                .then_some(m.ciphertext)
            };
            let (sender_pub, what) = (m.sender_pub, TextKind::Dm);
            show_text(
                &out,
                &contact,
                &sender_pub,
                me.key.clone(),
                verify,
                what,
                &shown,
                ts,
            )
            .await;
        }
        DeliverContent::Public(m) => {
            let s = sender.clone();
            let verify = move |pk: &socp_protocol::PublicKey| {
                content::verify_public(pk, &m.content_sig, &m.ciphertext, s.as_str(), ts)
                    .is_ok()
                    .then_some(m.ciphertext)
            };
            let (sender_pub, what) = (m.sender_pub, TextKind::Public);
            show_text(
                &out,
                &contact,
                &sender_pub,
                me.key.clone(),
                verify,
                what,
                &shown,
                ts,
            )
            .await;
        }
        DeliverContent::FileStart(start) => {
            let key = (sender.clone(), start.file_id.as_str().to_owned());
            let (name, size) = (start.name.clone(), start.size);
            match IncomingFile::new(sender.clone(), start) {
                Ok(file) => {
                    shared.borrow_mut().files.insert(key.clone(), file);
                    out.event(
                        "file_progress",
                        format!("receiving {} ({size} bytes) from {shown}", state::safe_name(&name)),
                        json!({ "file_id": key.1, "direction": "receive", "from": sender, "name": name, "size": size, "done": 0 }),
                    );
                }
                Err(why) => out.warning(format!("file {name} from {shown} refused: {}", why.0)),
            }
        }
        DeliverContent::FileChunk(chunk) => {
            let file_key = (sender.clone(), chunk.file_id.as_str().to_owned());
            if !shared.borrow().files.contains_key(&file_key) {
                return;
            }
            if chunk
                .sender_pub
                .as_ref()
                .is_some_and(|p| *p != contact.pubkey)
            {
                shared.borrow_mut().files.remove(&file_key);
                return out.warning(forged("file chunk"));
            }
            let (key, pk, me_id, s) = (
                me.key.clone(),
                contact.pubkey.clone(),
                me.id.clone(),
                sender.clone(),
            );
            let index = chunk.index;
            let opened = blocking(move || -> Result<Vec<u8>, &'static str> {
                if let Some(sig) = &chunk.content_sig {
                    content::verify_dm(&pk, sig, &chunk.ciphertext, s.as_str(), me_id.as_str(), ts)
                        .map_err(|_| "a chunk's signature does not verify")?;
                }
                key.decrypt(chunk.ciphertext.bytes())
                    .map_err(|_| "a chunk cannot be decrypted")
            })
            .await;
            let mut c = shared.borrow_mut();
            let result = match opened {
                Ok(Ok(plain)) => match c.files.get_mut(&file_key) {
                    Some(f) => f
                        .add(index, plain)
                        .map_err(|d| d.0)
                        .map(|_| (f.received(), f.start.size)),
                    None => return,
                },
                Ok(Err(why)) => Err(why.to_owned()),
                Err(_) => return,
            };
            drop(c);
            match result {
                Ok((got, size)) => {
                    let before = got.saturating_sub(MAX_OAEP_PLAINTEXT as u64) * 10 / size.max(1);
                    let now = got * 10 / size.max(1);
                    if now != before {
                        out.event(
                            "file_progress",
                            format!("receiving from {shown}: {}", bar((got * 100 / size.max(1)) as usize)),
                            json!({ "file_id": file_key.1, "direction": "receive", "done_bytes": got, "size": size }),
                        );
                    }
                }
                Err(why) => {
                    shared.borrow_mut().files.remove(&file_key);
                    out.warning(format!("file from {shown} discarded: {why}"));
                }
            }
        }
        DeliverContent::FileEnd(end) => {
            let Some(file) = shared
                .borrow_mut()
                .files
                .remove(&(sender.clone(), end.file_id.as_str().to_owned()))
            else {
                return;
            };
            let name = file.start.name.clone();
            match file.finish() {
                Ok(data) => match state::save_new(&download_dir, &name, &data) {
                    Ok(path) => out.event(
                        "file_received",
                        format!("received {} from {shown}: saved {}", state::safe_name(&name), path.display()),
                        json!({ "from": sender, "name": name, "path": path, "size": data.len(), "sha256": sha256_hex(&data) }),
                    ),
                    Err(e) => out.error("FILE", format!("cannot save {name}: {e}")),
                },
                Err(why) => out.warning(format!("file {name} from {shown} discarded: {}", why.0)),
            }
        }
    }
}
