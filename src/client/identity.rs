//! Who the client is on the network: the session key (loaded or generated)
//! and USER_HELLO. Registered accounts are in `account`.

use std::path::PathBuf;
use std::sync::Arc;

use socp_protocol::dialect::KeyEncoding;
use socp_protocol::message::UserHello;
use socp_protocol::{now_ms, Envelope, PrivateKey, To, UserId};

use super::connection::{answer, expect, send, Sink};
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
