//! Registered accounts [ext]: `/register`, `/login` (through a socp
//! server's challenge, or as kept here on a server without logins),
//! `/rename`, identifying again after a reconnect, and the keys and accounts
//! file kept under the client's home directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use socp_protocol::message::{UserRegister, UserRename};
use socp_protocol::{now_ms, Envelope, Message, PrivateKey, To, UserId, Username};

use super::connection::{self, answer, expect, send, Sink};
use super::identity::{hello, load_or_generate, Me};
use super::input::{Input, Secret};
use super::output::Output;
use super::{blocking, fail, Failure, Shared};

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
    let nonce = Some(challenge.nonce);
    become_account(
        shared,
        tx,
        &challenge.user_id,
        nonce,
        key,
        username.as_str(),
    )
    .await
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
    challenge_within(shared, tx, me, who, what, connection::ANSWER_TIMEOUT).await
}

/// A LOGIN_CHALLENGE for `who`, if the server answers within `wait`.
async fn challenge_within(
    shared: &Shared,
    tx: &Sink,
    me: &Me,
    who: &str,
    what: &str,
    wait: std::time::Duration,
) -> Result<socp_protocol::message::LoginChallenge, Failure> {
    let rx = expect(shared, |e| {
        matches!(e.msg_type(), "LOGIN_CHALLENGE" | "ERROR" | "LOGIN_FAIL")
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
    let answer = connection::answer_within(rx, what, wait).await?;
    // One implementation's own logins (a password, not a key) refuse ours.
    if answer.msg_type() == "LOGIN_FAIL" {
        let detail = answer.payload()["detail"].as_str().unwrap_or_default();
        return Err(fail(
            OTHER_LOGINS,
            detail.chars().take(200).collect::<String>(),
        ));
    }
    match answer.message() {
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
    let (out, me) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone())
    };
    // A socp server answers at once; another implementation's may say
    // nothing: it has no logins, and the account is used as kept here.
    let socp_server = shared.borrow().own_server.is_some();
    let wait = if socp_server {
        connection::ANSWER_TIMEOUT
    } else {
        NO_LOGIN_WAIT
    };
    let challenge = match challenge_within(shared, tx, &me, who, "/login", wait).await {
        Ok(challenge) => challenge,
        Err(f) if !socp_server && NO_LOGINS.contains(&f.code.as_str()) => {
            return login_as_kept(shared, tx, input, who).await;
        }
        Err(f) => return Err(f),
    };
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
    let key = open_key(shared, input, who, &store).await?;
    if let Err(e) = write_private(&key_path(shared, &challenge.user_id), &store) {
        out.error(
            "FILE",
            format!("cannot keep a copy of the account's encrypted key: {e}"),
        );
    }
    if let Ok(name) = Username::parse(who) {
        let mut accounts = read_accounts(shared);
        accounts.insert(name.key(), challenge.user_id.to_string());
        save_accounts(shared, &out, &accounts);
    }
    let nonce = Some(challenge.nonce.clone());
    become_account(shared, tx, &challenge.user_id, nonce, Arc::new(key), who).await
}

/// How long another implementation's server may leave a LOGIN_REQUEST
/// unanswered before it is taken as having no logins.
const NO_LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What another implementation's server answers a LOGIN_REQUEST with, when it
/// answers at all: it has no logins.
const NO_LOGINS: [&str; 4] = ["TIMEOUT", "UNKNOWN_TYPE", "BAD_REQUEST", OTHER_LOGINS];

/// The failure of a LOGIN_REQUEST answered with LOGIN_FAIL: a server whose
/// logins are of another kind (it has no socp logins).
const OTHER_LOGINS: &str = "LOGIN_FAIL";

/// `/login` on a server without logins (another implementation's): the
/// account as this machine keeps it (its id, from the accounts file, else
/// `who` taken as the id, and its encrypted key, kept at registration or at a
/// login through a socp server), identified by a plain hello with its key.
async fn login_as_kept(
    shared: &Shared,
    tx: &Sink,
    input: &mut Input,
    who: &str,
) -> Result<(), Failure> {
    let named = Username::parse(who)
        .ok()
        .and_then(|name| UserId::parse(read_accounts(shared).get(&name.key())?).ok());
    let id = named.or_else(|| UserId::parse(who).ok());
    let store = id
        .as_ref()
        .and_then(|id| std::fs::read_to_string(key_path(shared, id)).ok());
    let (Some(id), Some(store)) = (id, store) else {
        return Err(fail(
            "USER_NOT_FOUND",
            format!(
                "this server has no logins and this machine keeps no key for {who}: \
                 log in once through a socp server"
            ),
        ));
    };
    let key = open_key(shared, input, who, &store).await?;
    become_account(shared, tx, &id, None, Arc::new(key), who).await?;
    shared.borrow_mut().account_without_login = true;
    Ok(())
}

/// The account key in `store`, opened with its password (asked up to three
/// times in a terminal).
async fn open_key(
    shared: &Shared,
    input: &mut Input,
    who: &str,
    store: &str,
) -> Result<PrivateKey, Failure> {
    let (out, scripted) = {
        let c = shared.borrow();
        (c.out.clone(), c.config.password.is_some())
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let pass = password(shared, input, &format!("password for {who}: ")).await?;
        let s = store.to_owned();
        match blocking(move || PrivateKey::from_encrypted(&s, &pass)).await? {
            Ok(k) => return Ok(k),
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
    }
}

/// Identify as account `id` with its `key` (answering the login challenge's
/// `nonce`, when the server gave one) and become that account on this
/// connection (`who` is how the user named it).
async fn become_account(
    shared: &Shared,
    tx: &Sink,
    id: &UserId,
    nonce: Option<String>,
    key: Arc<PrivateKey>,
    who: &str,
) -> Result<(), Failure> {
    let (out, me) = {
        let c = shared.borrow();
        (c.out.clone(), c.me.clone())
    };
    let new_me = Me {
        id: id.clone(),
        key,
        name: (!who.eq_ignore_ascii_case(id.as_str())).then(|| who.to_owned()),
    };
    shared.borrow_mut().joining = Some(new_me.clone());
    let accepted = hello(shared, tx, &new_me, nonce).await;
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
    if !logged_in || shared.borrow().account_without_login {
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
