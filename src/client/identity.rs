//! Who the client is on the network: the session key (loaded or generated),
//! USER_HELLO, `/register` and `/login`, and the keys and accounts file kept
//! under the client's home directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use socp_protocol::dialect::KeyEncoding;
use socp_protocol::message::{UserHello, UserRegister, UserRename};
use socp_protocol::{now_ms, Envelope, Message, PrivateKey, To, UserId, Username};

use super::connection::{answer, expect, send, Sink};
use super::input::{Input, Secret};
use super::output::Output;
use super::{blocking, fail, Failure, Shared};

/// Who we are on the network.
#[derive(Clone)]
pub(crate) struct Me {
    /// Our user id.
    pub(crate) id: UserId,
    /// Our private key (signs our frames, opens what is sent to us).
    pub(crate) key: Arc<PrivateKey>,
    /// Our username, once logged in to an account that has one.
    pub(crate) name: Option<String>,
}

impl Me {
    /// `env` with every key in it written as the server reads keys (`keys`),
    /// signed with our key (the transport `sig`: servers of other
    /// implementations verify every frame a user sends).
    pub(crate) fn sign_frame(
        &self,
        mut env: Envelope,
        keys: KeyEncoding,
    ) -> Result<Envelope, socp_protocol::Error> {
        if keys != KeyEncoding::Der {
            socp_protocol::Dialect { keys, socp: false }.rewrite_keys(env.payload_mut());
        }
        env.signed(&self.key)
    }
}

/// The key of `file` (unencrypted PEM), or a new one (telling the user,
/// as it takes seconds).
pub(crate) async fn load_or_generate(
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

/// The session key of an ephemeral identity: the one an earlier run made in
/// the background (taken once: claimed by a rename, so two clients never
/// share it, then deleted), else one made now. Either way the next is made
/// in the background, so a client start does not wait seconds for RSA.
pub(crate) async fn session_key(
    out: &Output,
    home: &std::path::Path,
) -> Result<PrivateKey, String> {
    let spare = home.join("next-session-key.pem");
    let claimed = home.join(format!("next-session-key.{}.taken", std::process::id()));
    let taken = std::fs::rename(&spare, &claimed).ok().and_then(|()| {
        let pem = std::fs::read_to_string(&claimed).ok();
        let _ = std::fs::remove_file(&claimed);
        PrivateKey::from_pem(&pem?).ok()
    });
    let key = match taken {
        Some(key) => key,
        None => load_or_generate(out, None, "your session key").await?,
    };
    let out = out.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let made = PrivateKey::generate()
            .map_err(|e| e.to_string())
            .and_then(|k| k.to_pkcs8_pem().map_err(|e| e.to_string()))
            .and_then(|pem| {
                let tmp = spare.with_extension("tmp");
                let mut f = super::history::open_private(&tmp, false).map_err(|e| e.to_string())?;
                std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &spare).map_err(|e| e.to_string())
            });
        if let Err(e) = made {
            out.warning(format!("cannot keep a session key for the next start: {e}"));
        }
    });
    Ok(key)
}

/// USER_HELLO (signed with our key; with the login nonce when logging in).
pub(crate) async fn hello(
    shared: &Shared,
    tx: &Sink,
    me: &Me,
    nonce: Option<String>,
) -> Result<(), Failure> {
    let nonce_less = nonce.is_none();
    let payload = UserHello {
        client: format!("socp-client/{}", env!("CARGO_PKG_VERSION")),
        pubkey: me.key.public_key().clone(),
        // One key signs and encrypts: the standard says to repeat it.
        enc_pubkey: Some(me.key.public_key().clone()),
        meta: None,
        nonce,
    };
    let env = Envelope::new(&me.id, To::Id("server".into()), now_ms(), &payload);
    // socp's capability object: the server may use socp's extensions with us.
    let mut env = socp_protocol::dialect::with_client_capability(env);
    let keys = shared.borrow().key_encoding;
    if keys != KeyEncoding::Der {
        socp_protocol::Dialect { keys, socp: false }.rewrite_keys(env.payload_mut());
    }
    let key = me.key.clone();
    // Encoding the private key and signing: off the event loop.
    let env = blocking(move || {
        let mut env = env;
        if nonce_less {
            // Servers of one other implementation answer only a hello with a
            // `password` (the first hello of an id registers it with that
            // password). An ephemeral identity gives one derived from its private
            // key: the same on every reconnect, unknowable to anyone else, never
            // typed. socp servers ignore it.
            if let (serde_json::Value::Object(p), Ok(secret)) =
                (env.payload_mut(), key.to_pkcs8_pem())
            {
                let mut material = b"socp ephemeral password\n".to_vec();
                material.extend_from_slice(secret.as_bytes());
                let derived = socp_protocol::crypto::sha256(&material);
                let password = socp_protocol::crypto::b64url_encode(&derived[..18]);
                p.insert("password".into(), serde_json::Value::String(password));
            }
        }
        env.signed(&key)
    })
    .await?
    .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    // SPEC.md makes the acknowledgement optional, and servers answer a hello
    // in several ways: ACK with any `msg_ref`, a welcome frame, the roster's
    // first USER_ADVERTISE, or nothing at all. An ERROR is a refusal; any of
    // the others, or silence for HELLO_SILENCE, is taken as accepted.
    let rx = expect(shared, |e| {
        matches!(e.msg_type(), "ERROR" | "ACK") || e.msg_type().ends_with("WELCOME")
    });
    send(tx, &env)?;
    match tokio::time::timeout(HELLO_SILENCE, answer(rx, "identification")).await {
        Ok(answered) => {
            let ack = answered?;
            if ack.msg_type() == "ACK" && ack.payload()["msg_ref"] == "USER_HELLO" {
                shared.borrow_mut().own_server = Some(ack.from().to_owned());
            }
            Ok(())
        }
        // Silence: accepted. A server that sent keys only as PEM meanwhile
        // reads no other form (it cannot check what we sign with a DER key):
        // identify again, over a new connection, with our key as PEM.
        Err(_) => {
            let pem_only = {
                let c = shared.borrow();
                let written: Vec<KeyEncoding> = c
                    .roster
                    .all()
                    .filter(|u| u.user_id != me.id)
                    .map(|u| u.pubkey.written())
                    .collect();
                keys == KeyEncoding::Der
                    && !written.is_empty()
                    && written.iter().all(|w| *w != KeyEncoding::Der)
            };
            if pem_only {
                shared.borrow_mut().key_encoding = KeyEncoding::PemBase64Url;
                return Err(fail(REDIAL, "the server reads keys only as PEM"));
            }
            Ok(())
        }
    }
}

/// The failure code of a hello that must be sent again over a new connection
/// (the server's dialect was learnt from its answer).
pub(crate) const REDIAL: &str = "REDIAL";

/// How long a server that does not acknowledge hellos may stay silent before
/// the hello is taken as accepted (a refusal still arrives as an ERROR, and
/// is shown, if it comes later).
const HELLO_SILENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// `/register`: a new account with a new (or given) key, stored on the
/// server encrypted under the password, and kept in the home directory.
pub(crate) async fn register(
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
    // The name on the command line (a prompt for it would be a password
    // prompt: nothing echoed).
    let username = username.ok_or_else(|| fail("USAGE", "usage: /register <username>"))?;
    let username =
        Username::parse(username.trim()).map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
    // Is the name free? Asked before the password and the key (seconds to
    // make): a login challenge for it means it is someone's.
    if name_taken(shared, tx, &me, username.as_str()).await? {
        return Err(fail(
            "NAME_IN_USE",
            format!("{username} is taken; pick another name (nothing was registered)"),
        ));
    }
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
    save_accounts(shared, &out, &accounts);
    out.event(
        "registered",
        format!("registered {username}: your id is {user_id}"),
        json!({ "user_id": user_id, "username": username.as_str() }),
    );
    // And logged in, with the key in hand: no password asked again.
    let challenge = challenge_for(shared, tx, &me, user_id.as_str(), "logging in").await?;
    become_account(shared, tx, &challenge, key, username.as_str()).await
}

/// Whether `name` is a registered account's (the server hands out a login
/// challenge for it). A refusal for another reason (the server's login rate)
/// is not an answer: the registration itself then says.
async fn name_taken(shared: &Shared, tx: &Sink, me: &Me, name: &str) -> Result<bool, Failure> {
    match challenge_for(shared, tx, me, name, "checking the name").await {
        Ok(_) => Ok(true),
        Err(f) if f.code == "USER_NOT_FOUND" || f.code == "RATE_LIMITED" => Ok(false),
        Err(f) => Err(f),
    }
}

/// A LOGIN_CHALLENGE for `who`.
async fn challenge_for(
    shared: &Shared,
    tx: &Sink,
    me: &Me,
    who: &str,
    what: &str,
) -> Result<socp_protocol::message::LoginChallenge, Failure> {
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
    match answer(rx, what).await?.message() {
        Ok(Message::LoginChallenge(c)) => Ok(c),
        _ => Err(fail("BAD_REQUEST", "malformed login challenge")),
    }
}

/// `/login`: answer the server's challenge with the account's key, opened
/// with the password, and become that account on this connection.
pub(crate) async fn login(
    shared: &Shared,
    tx: &Sink,
    input: &mut Input,
    who: &str,
) -> Result<(), Failure> {
    let (out, me, scripted) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone(), c.config.password.is_some())
    };
    let challenge = challenge_for(shared, tx, &me, who, "/login").await?;
    if shared.borrow().logged_in && challenge.user_id == me.id {
        out.event(
            "login",
            format!("you are logged in as {who} already"),
            json!({ "user_id": me.id }),
        );
        return Ok(());
    }
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
    if let Err(e) = write_private(&key_path(shared, &challenge.user_id), &store) {
        out.error(
            "FILE",
            format!("cannot keep a copy of the account's encrypted key: {e}"),
        );
    }
    become_account(shared, tx, &challenge, Arc::new(key), who).await
}

/// Answer `challenge` with the account's `key` and become that account on
/// this connection (`who` is how the user named it).
async fn become_account(
    shared: &Shared,
    tx: &Sink,
    challenge: &socp_protocol::message::LoginChallenge,
    key: Arc<PrivateKey>,
    who: &str,
) -> Result<(), Failure> {
    let (out, me) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone())
    };
    let new_me = Me {
        id: challenge.user_id.clone(),
        key,
        name: (!who.eq_ignore_ascii_case(challenge.user_id.as_str())).then(|| who.to_owned()),
    };
    shared.borrow_mut().joining = Some(new_me.clone());
    let accepted = hello(shared, tx, &new_me, Some(challenge.nonce.clone())).await;
    shared.borrow_mut().joining = None;
    accepted.map_err(|f| match f.code.as_str() {
        "NAME_IN_USE" => fail(
            "NAME_IN_USE",
            format!("{who} is logged in elsewhere; log out there first (you stay as you were)"),
        ),
        _ => f,
    })?;
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
        c.logged_in = true;
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

/// Identify again on a new connection, as who we are now: a hello for an
/// ephemeral identity; for a logged-in account, a login challenge answered
/// with the key we hold (no password: the key is already open).
pub(crate) async fn reattach(shared: &Shared, tx: &Sink) -> Result<(), Failure> {
    let (me, session, logged_in) = {
        let c = shared.borrow();
        (c.me.clone(), c.session.clone(), c.logged_in)
    };
    if !logged_in {
        return hello(shared, tx, &me, None).await;
    }
    // A connection's first frame is a hello: as the session's ephemeral
    // identity, then the login switches it to the account.
    hello(shared, tx, &session, None).await?;
    let challenge = challenge_for(shared, tx, &session, me.id.as_str(), "logging in again").await?;
    if challenge.user_id != me.id {
        return Err(fail(
            "AUTH_FAILED",
            format!(
                "the server answered for {} instead of {}",
                challenge.user_id, me.id
            ),
        ));
    }
    shared.borrow_mut().joining = Some(me.clone());
    let accepted = hello(shared, tx, &me, Some(challenge.nonce)).await;
    shared.borrow_mut().joining = None;
    accepted
}

/// `/rename`: ask our home server for a new username (USER_RENAME [ext]),
/// for a registered user logged in; REGISTER_OK says it is ours.
pub(crate) async fn rename(shared: &Shared, tx: &Sink, username: &str) -> Result<(), Failure> {
    let (out, me) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone())
    };
    let username = Username::parse(username).map_err(|e| fail("BAD_REQUEST", e.to_string()))?;
    let env = Envelope::new(
        &me.id,
        To::Id("server".into()),
        now_ms(),
        &UserRename {
            username: username.clone(),
        },
    );
    let key = me.key.clone();
    let env = blocking(move || env.signed(&key))
        .await?
        .map_err(|e| fail("BAD_KEY", e.to_string()))?;
    let rx = expect(shared, |e| matches!(e.msg_type(), "REGISTER_OK" | "ERROR"));
    send(tx, &env)?;
    let ok = match answer(rx, "/rename").await?.message() {
        Ok(Message::RegisterOk(ok)) => ok,
        _ => return Err(fail("BAD_REQUEST", "malformed answer to /rename")),
    };
    if ok.user_id != me.id {
        return Err(fail(
            "BAD_REQUEST",
            format!("the server renamed {} instead of you", ok.user_id),
        ));
    }
    {
        let mut c = shared.borrow_mut();
        c.me.name = Some(ok.username.as_str().to_owned());
    }
    // The accounts file names this account by its new name only.
    let mut accounts = read_accounts(shared);
    let id = me.id.to_string();
    accounts.retain(|_, v| *v != id);
    accounts.insert(ok.username.key(), id);
    save_accounts(shared, &out, &accounts);
    out.event(
        "renamed",
        format!(
            "you are now {} (user id {})",
            ok.username.as_str(),
            ok.user_id
        ),
        json!({ "user_id": ok.user_id, "username": ok.username.as_str() }),
    );
    Ok(())
}

/// Write the accounts file; a failure is reported.
fn save_accounts(shared: &Shared, out: &Output, accounts: &HashMap<String, String>) {
    let written = serde_json::to_string_pretty(accounts)
        .map_err(std::io::Error::other)
        .and_then(|text| write_private(&accounts_path(shared), &text));
    if let Err(e) = written {
        out.error(
            "FILE",
            format!("cannot save {}: {e}", accounts_path(shared).display()),
        );
    }
}

/// The password given in the configuration, or else asked for.
async fn password(shared: &Shared, input: &mut Input, prompt: &str) -> Result<String, Failure> {
    let given = shared.borrow().config.password.clone();
    match given {
        Some(p) => Ok(p),
        None => match input.password(prompt).await {
            Secret::Given(p) if !p.is_empty() => Ok(p),
            Secret::Cancelled => Err(fail("CANCELLED", "cancelled at the password prompt")),
            _ => Err(fail("AUTH_FAILED", "no password given")),
        },
    }
}

/// Where the encrypted key of account `id` is kept.
fn key_path(shared: &Shared, id: &UserId) -> PathBuf {
    shared
        .borrow()
        .config
        .home
        .join("keys")
        .join(format!("{id}.pem"))
}

/// The accounts file: usernames registered on this machine.
fn accounts_path(shared: &Shared) -> PathBuf {
    shared.borrow().config.home.join("accounts.json")
}

/// username (lower-case) → user id, from earlier registrations on this machine.
/// The user id of the account named `name` in the accounts file, if any.
pub(crate) fn account_id(shared: &Shared, name: &str) -> Option<String> {
    let key = Username::parse(name).ok()?.key();
    read_accounts(shared).get(&key).cloned()
}

fn read_accounts(shared: &Shared) -> HashMap<String, String> {
    std::fs::read_to_string(accounts_path(shared))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Write `text` to `path`, readable by its owner only.
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
