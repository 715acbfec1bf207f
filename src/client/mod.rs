//! The terminal client (`socp-client`): speaks SOCP through awc.
//!
//! - [`command`]: the command-line parser;
//! - [`state`]: who is online with which key, files being received;
//! - [`output`]: text or JSON lines, printed above the line being typed;
//! - [`input`]: the input thread (line editing, history, passwords);
//! - [`pins`]: keys pinned on first use, changes, verification;
//! - `connection`: dialling the server, the WebSocket, reading and writing
//!   frames, requests waiting for their answers;
//! - `identity`: keys, ephemeral, registered and logged-in identities, the
//!   accounts file;
//! - `sending`: `/list`, `/tell`, `/all` and `/file`, paced at the server's
//!   rate;
//! - `receiving`: every frame from the server: presence, deliveries checked
//!   and opened, files reassembled;
//! - `trust`: `/whois`, `/verify`, `/accept`, and saving the pinned keys;
//! - this module: the run and its command loop.
//!
//! Every RSA operation runs on a blocking thread, never on the event loop that
//! reads the socket.

pub mod command;
pub mod incoming;
pub mod input;
pub mod output;
pub mod pins;
pub mod state;

mod account;
mod channel;
mod connection;
mod flow;
mod history;
mod identity;
mod mail;
mod parts;
mod receiving;
mod sending;
mod texts;
mod transfer;
mod trust;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::json;
use socp_protocol::UserId;
use tokio::sync::mpsc;

use command::{Command, HELP};
use connection::{Sink, Waiter};
use identity::Me;
use input::{Input, InputEvent};
use output::Output;
use pins::Pins;
use state::{IncomingFile, Roster};

/// Settings of a client run.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// More servers (host, port), tried in turn when the connection is lost
    /// (and at start, when the first cannot be reached).
    pub alternates: Vec<(String, u16)>,
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
    /// Files in the standard mode only, never fast mode [ext].
    pub standard_files: bool,
    /// Whether stdin is a terminal (line editing) or a script.
    pub terminal: bool,
}

/// Everything the reader and the commands share (one thread: `Rc<RefCell>`).
struct Client {
    me: Me,
    /// The account a `/login` is switching to, until the server accepts it
    /// (what the server sends it meanwhile, e.g. DMs kept for it, is its).
    joining: Option<Me>,
    /// `me` is a registered account we logged in to (identifying again after
    /// a reconnect needs a login challenge, answered with the key we hold).
    logged_in: bool,
    /// Logged in on a server without logins (another implementation's), as
    /// the account this machine keeps: identified by a plain hello.
    account_without_login: bool,
    /// The ephemeral identity the client started as: a new connection
    /// identifies as it before logging in again.
    session: Me,
    roster: Roster,
    /// Keys pinned per user id.
    pins: Pins,
    /// Whether a write of the pinned keys is scheduled.
    pins_flush: bool,
    /// The last failure to write them, reported once until it changes.
    pins_error: Option<String>,
    files: HashMap<(UserId, String), IncomingFile>,
    /// Parts of long messages waiting for the rest ([ext]).
    parts: parts::Parts,
    /// Conversations kept on disk.
    history: history::History,
    /// DMs kept for offline users [ext]: receipts, mail ids received.
    mail: mail::MailState,
    /// Files being sent in the background.
    transfers: Vec<transfer::Transfer>,
    /// Guests who came and left since the last line that said so (text mode).
    guest_news: (usize, usize),
    /// The last failure to write them, reported once until it changes.
    history_error: Option<String>,
    waiters: Vec<Waiter>,
    /// The number of the connection open now (waiters belong to one).
    connection: u64,
    /// How the server reads keys: DER (socp and the standard), or PEM when
    /// a server that never acknowledged our hello sent keys only in PEM
    /// (its implementation cannot read others); the hello then says ours so.
    key_encoding: socp_protocol::dialect::KeyEncoding,
    /// Our server, when it acknowledged our hello as socp servers do.
    own_server: Option<String>,
    /// Group keys of public channels that use one AES-GCM key per server
    /// (another implementation's), by the server that wrapped them for us:
    /// its members' public messages are opened, and ours sent, with them.
    group_keys: Vec<(String, socp_protocol::crypto::group::GroupKey)>,
    /// Public messages shown lately (sender, text): the copy of one under a
    /// group key is not shown twice.
    recent_public: std::collections::VecDeque<(UserId, String, std::time::Instant)>,
    /// Parts of a LIST_RESPONSE received so far (`more`), and the parts of
    /// the last complete one, for `/list`.
    list_parts: Vec<socp_protocol::message::ListedUser>,
    last_list: Vec<socp_protocol::message::ListedUser>,
    /// Users the server listed but gave no key for (at most 200).
    keyless: Vec<UserId>,
    /// The frame types this connection sent that we could not read, said
    /// once each: (connection, types).
    unread: (u64, Vec<String>),
    out: Output,
    config: ClientConfig,
}

type Shared = Rc<RefCell<Client>>;

/// A failed command: a code (a SPEC error code or a client one) and words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub(crate) struct Failure {
    /// A SPEC error code (`USER_NOT_FOUND`, ...) or a client one (`USAGE`, `FILE`, ...).
    pub(crate) code: String,
    /// What happened, for the person at the keyboard.
    pub(crate) detail: String,
}

/// Run the client until `/quit` or end of input; the process exit code.
pub async fn run(mut config: ClientConfig) -> i32 {
    let out = Output::new(config.json);
    // Several servers: start with the first that answers.
    let servers: Vec<(String, u16)> = std::iter::once((config.host.clone(), config.port))
        .chain(config.alternates.iter().cloned())
        .collect();
    if servers.len() > 1 {
        for (host, port) in &servers {
            let addr = format!("{host}:{port}");
            let probe = tokio::time::timeout(
                std::time::Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await;
            if matches!(probe, Ok(Ok(_))) {
                (config.host, config.port) = (host.clone(), *port);
                break;
            }
        }
    }
    let mut at = servers
        .iter()
        .position(|(h, p)| *h == config.host && *p == config.port)
        .unwrap_or(0);
    // Is the server there? Asked before a session key is made (seconds): a
    // client pointed at a server that is down says so at once.
    if config.key_file.is_none() {
        let addr = format!("{}:{}", config.host, config.port);
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await;
        if !matches!(probe, Ok(Ok(_))) {
            let why = match probe {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 10 s".to_owned(),
            };
            out.error(
                "CONNECT",
                format!("cannot reach the server at {addr}: {why}"),
            );
            return 1;
        }
    }
    let key = match &config.key_file {
        Some(_) => {
            identity::load_or_generate(&out, config.key_file.clone(), "your session key").await
        }
        None => identity::session_key(&out, &config.home).await,
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            out.error("BAD_KEY", e);
            return 1;
        }
    };
    let me = Me {
        id: config.user_id.clone().unwrap_or_else(UserId::random),
        key: Arc::new(key),
        name: None,
    };
    let (pins, problem) = Pins::load(&config.home);
    if let Some(problem) = problem {
        out.error("FILE", problem);
    }
    let shared: Shared = Rc::new(RefCell::new(Client {
        me: me.clone(),
        joining: None,
        logged_in: false,
        account_without_login: false,
        session: me.clone(),
        roster: Roster::default(),
        pins,
        pins_flush: false,
        pins_error: None,
        files: HashMap::new(),
        parts: parts::Parts::default(),
        history: history::History::new(&config.home),
        mail: mail::MailState::new(&config.home),
        transfers: Vec::new(),
        guest_news: (0, 0),
        history_error: None,
        waiters: Vec::new(),
        connection: 0,
        key_encoding: Default::default(),
        own_server: None,
        group_keys: Vec::new(),
        recent_public: Default::default(),
        list_parts: Vec::new(),
        last_list: Vec::new(),
        keyless: Vec::new(),
        unread: (0, Vec::new()),
        out: out.clone(),
        config: config.clone(),
    }));
    let conn = match connection::open(&config, &shared).await {
        Ok(conn) => conn,
        Err(e) => {
            out.error("CONNECT", e);
            return 1;
        }
    };
    let tx = conn.tx.clone();

    // Identify at once (again, once, over a new connection if the server
    // turned out to read keys only as PEM).
    let mut conn = conn;
    let mut tx = tx;
    let mut identified = identity::hello(&shared, &tx, &me, None).await;
    if identified
        .as_ref()
        .is_err_and(|e| e.code == identity::REDIAL)
    {
        conn.close().await;
        conn = match connection::open(&config, &shared).await {
            Ok(conn) => conn,
            Err(e) => {
                out.error("CONNECT", e);
                return 1;
            }
        };
        tx = conn.tx.clone();
        identified = identity::hello(&shared, &tx, &me, None).await;
    }
    match identified {
        Ok(()) => out.event(
            "connected",
            format!("connected to {} as {} (type /help)", conn.url, me.id),
            json!({ "user_id": me.id, "server": conn.url }),
        ),
        Err(e) => {
            out.error(&e.code, e.detail);
            trust::save_pins(&shared);
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
    let mut link = Some(conn);
    let mut retry = Backoff::default();
    // Lines that need the server, typed while the connection is down.
    let mut queued: Vec<String> = Vec::new();
    let code = loop {
        let step = match link.as_mut() {
            Some(conn) => tokio::select! {
                reason = &mut conn.closed => Step::Lost(
                    reason.unwrap_or_else(|_| "connection closed".into()),
                ),
                event = input.events.recv() => Step::Input(event),
                // Ctrl-C outside the line editor (scripts): leave cleanly, code 1000.
                _ = interrupted.recv() => Step::Interrupted,
            },
            None => tokio::select! {
                _ = tokio::time::sleep(retry.delay()) => Step::Retry,
                event = input.events.recv() => Step::Input(event),
                _ = interrupted.recv() => Step::Interrupted,
            },
        };
        match step {
            Step::Interrupted => break 0,
            Step::Lost(reason) => {
                let url = link.take().map(|c| c.url).unwrap_or_default();
                out.event(
                    "disconnected",
                    format!(
                        "connection to {url} lost ({reason}); reconnecting (what you type \
                         meanwhile is sent once back)"
                    ),
                    json!({ "reason": reason, "server": url }),
                );
                retry = Backoff::default();
            }
            Step::Retry => match reconnect(&at_server(&config, &servers, at), &shared).await {
                Ok(conn) => {
                    out.event(
                        "reconnected",
                        format!(
                            "back: connected to {} as {}",
                            conn.url,
                            shared.borrow().me.id
                        ),
                        json!({ "user_id": shared.borrow().me.id, "server": conn.url }),
                    );
                    let tx = conn.tx.clone();
                    link = Some(conn);
                    retry = Backoff::default();
                    for line in std::mem::take(&mut queued) {
                        if run_line(&shared, &tx, &mut input, &line).await {
                            break;
                        }
                    }
                }
                Err(e) => {
                    // Said once per reason, not once per attempt.
                    if retry.reason.as_deref() != Some(e.as_str()) {
                        out.info(format!("still not connected: {e}"));
                        retry.reason = Some(e);
                    }
                    retry.failed();
                    // The next server in turn, if several were given.
                    at = (at + 1) % servers.len().max(1);
                }
            },
            Step::Input(Some(InputEvent::Line(line))) => {
                match &link {
                    Some(conn) => {
                        let tx = conn.tx.clone();
                        if run_line(&shared, &tx, &mut input, &line).await {
                            break 0;
                        }
                    }
                    None if needs_server(&line) => {
                        out.info(format!("not connected: \"{line}\" is sent once back"));
                        queued.push(line);
                    }
                    None => {
                        // Local commands (help, keys, quit) work offline.
                        let (offline, _) = mpsc::unbounded_channel();
                        if run_line(&shared, &offline, &mut input, &line).await {
                            break 0;
                        }
                    }
                }
                input.ready();
            }
            Step::Input(Some(InputEvent::Password(_))) => input.ready(),
            Step::Input(Some(InputEvent::Eof) | None) => break 0,
        }
    };
    if let Some(conn) = link {
        conn.close().await;
    }
    trust::save_pins(&shared);
    code
}

/// What woke the command loop.
enum Step {
    /// The connection ended, and why.
    Lost(String),
    /// Time to try the server again.
    Retry,
    /// A line, a password, or the end of input.
    Input(Option<InputEvent>),
    /// Ctrl-C.
    Interrupted,
}

/// Waits between reconnection attempts: 1 s, doubling to 30 s.
struct Backoff {
    next: std::time::Duration,
    /// Why the last attempt failed (said once).
    reason: Option<String>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: std::time::Duration::from_secs(1),
            reason: None,
        }
    }
}

impl Backoff {
    fn delay(&self) -> std::time::Duration {
        self.next
    }

    fn failed(&mut self) {
        self.next = (self.next * 2).min(std::time::Duration::from_secs(30));
    }
}

/// `config` pointed at server `at` of `servers`.
fn at_server(config: &ClientConfig, servers: &[(String, u16)], at: usize) -> ClientConfig {
    let mut c = config.clone();
    if let Some((host, port)) = servers.get(at) {
        (c.host, c.port) = (host.clone(), *port);
    }
    c
}

/// Dial the server again and identify as who we are now.
async fn reconnect(
    config: &ClientConfig,
    shared: &Shared,
) -> Result<connection::Connection, String> {
    let conn = connection::open(config, shared).await?;
    match account::reattach(shared, &conn.tx).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.close().await;
            Err(e.to_string())
        }
    }
}

/// Whether a command line needs the server (else it runs offline too).
fn needs_server(line: &str) -> bool {
    matches!(
        command::parse(line),
        Ok(Command::List
            | Command::Tell { .. }
            | Command::All { .. }
            | Command::File { .. }
            | Command::Register { .. }
            | Command::Login { .. }
            | Command::Rename { .. })
    )
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
        Command::List => sending::list(shared, tx).await,
        Command::Tell { to, text } => sending::tell(shared, tx, &to, &text).await,
        Command::All { text } => sending::all(shared, tx, &text).await,
        Command::File { to, path } => transfer::send_file(shared, tx, &to, path).await,
        Command::Register { username } => account::register(shared, tx, input, username).await,
        Command::Login { who } => account::login(shared, tx, input, &who).await,
        Command::Rename { username } => account::rename(shared, tx, &username).await,
        Command::Whois { who } => trust::whois(shared, &who),
        Command::Verify { who } => trust::verify(shared, &who),
        Command::Accept { who } => trust::accept(shared, &who),
        Command::History { who, n } => show_history(shared, who.as_deref(), n),
        Command::Transfers => transfer::transfers(shared),
        Command::Cancel { which } => transfer::cancel_transfer(shared, &which),
    };
    if let Err(Failure { code, detail }) = result {
        out.error(&code, detail);
    }
    false
}

/// Keep a message in its conversation's history; a failure to write is
/// reported once until it changes.
fn remember(shared: &Shared, with: &str, entry: history::Entry) {
    let result = shared.borrow().history.append(with, &entry);
    let mut c = shared.borrow_mut();
    match result {
        Ok(()) => c.history_error = None,
        Err(e) => {
            let e = format!("cannot write the history: {e}");
            if c.history_error.as_deref() != Some(e.as_str()) {
                c.out.error("FILE", e.clone());
                c.history_error = Some(e);
            }
        }
    }
}

/// `/history [user] [n]`: the last `n` messages with `user` (a name, a user
/// id, or `public`), or of every conversation.
fn show_history(shared: &Shared, who: Option<&str>, n: usize) -> Result<(), Failure> {
    let with = match who {
        None => None,
        Some(w) if w == history::PUBLIC => Some(w.to_owned()),
        Some(w) => Some(match shared.borrow().roster.resolve(w) {
            Ok(contact) => contact.user_id.to_string(),
            // Offline now: a name from the accounts file, else an id as typed.
            Err(_) => account::account_id(shared, w).unwrap_or_else(|| w.to_owned()),
        }),
    };
    let (out, history) = {
        let c = shared.borrow();
        (c.out.clone(), c.history.clone())
    };
    let entries = history
        .last(with.as_deref(), n)
        .map_err(|e| fail("FILE", format!("cannot read the history: {e}")))?;
    if entries.is_empty() {
        out.info("no messages kept yet");
    }
    for (with, e) in entries {
        let at = history::Local::at(e.ts);
        let line = match (e.dir.as_str(), e.kind.as_str()) {
            ("out", "public") => format!("[public] you: {}", e.text),
            ("out", _) => format!("you to {}: {}", e.shown, e.text),
            (_, "public") => format!("[public] {}: {}", e.shown, e.text),
            _ => format!("{} from {}: {}", e.kind.to_uppercase(), e.shown, e.text),
        };
        out.event(
            "history",
            format!("[{} {}] {line}", at.date(), at.hm()),
            json!({ "with": with, "ts": e.ts, "dir": e.dir, "from": e.from, "shown": e.shown, "kind": e.kind, "text": e.text }),
        );
    }
    Ok(())
}

fn fail(code: &str, detail: impl Into<String>) -> Failure {
    Failure {
        code: code.to_owned(),
        detail: detail.into(),
    }
}

/// Run `f` on a blocking thread (RSA, files), off the event loop.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Failure> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .map_err(|e| fail("INTERNAL", e.to_string()))
}
