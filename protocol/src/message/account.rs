//! [ext] Registration, login and the mesh-wide directory of registered users
//! (SPEC.md §6.1, §7).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::PublicKey;
use crate::id::{ServerId, UserId, Username};

/// `USER_REGISTER {user_id, username, pubkey, privkey_store}` (SPEC.md §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRegister {
    /// The id to register (socp clients make a fresh UUID v4); NAME_IN_USE if
    /// it is taken.
    pub user_id: UserId,
    /// The username to claim, unique case-insensitively; NAME_IN_USE if it is
    /// taken.
    pub username: Username,
    /// The user's RSA-4096 public key (base64url DER SubjectPublicKeyInfo).
    /// The envelope must be signed with it, else INVALID_SIG.
    pub pubkey: PublicKey,
    /// The password-protected PKCS#8 private key (PEM text).
    pub privkey_store: String,
}

/// `REGISTER_OK {user_id, username}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterOk {
    /// The registered user's id.
    pub user_id: UserId,
    /// The username it now holds (also the answer to a USER_RENAME).
    pub username: Username,
}

/// `LOGIN_REQUEST {who}`: a username or a user id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// A username (any case) or a user id, 1–64 characters; USER_NOT_FOUND if
    /// it names no registered user.
    pub who: String,
}

/// `DIRECTORY_RECORD {user_id, username, pubkey, home_server, privkey_store,
/// registered_at, version}` [ext]: a registered user as its home server
/// published it (`from` = `home_server`, signed by it, to `*`). Every server
/// keeps the records of the mesh, so a registered id or name is known, and its
/// key enforced, on every server; `version` grows when the home server
/// publishes a change (a new username).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    /// The registered user's id.
    pub user_id: UserId,
    /// Its username, as the home server holds it.
    pub username: Username,
    /// Its registered RSA-4096 public key (base64url DER
    /// SubjectPublicKeyInfo): adverts for this id with another key are
    /// refused.
    pub pubkey: PublicKey,
    /// The server that registered the user; a record whose signer (its
    /// envelope `from`) is another server is refused.
    pub home_server: ServerId,
    /// The password-encrypted private key, so `/login` works on any server.
    pub privkey_store: String,
    /// When the home server accepted the registration (ms since the epoch):
    /// of two users registered with the same name, the earlier keeps it.
    pub registered_at: i64,
    /// Grows when the home server publishes a change; a record from another
    /// home server is kept only if its version is newer than the one held.
    pub version: u64,
}

/// `DIRECTORY_SYNC {after}` [ext]: send me the directory records you hold,
/// ordered by user id, starting after `after` (absent: from the first).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectorySync {
    /// Send the records of user ids after this one; absent: from the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
}

/// `DIRECTORY_PAGE {records, next}` [ext]: directory records, each the
/// complete DIRECTORY_RECORD envelope its home server signed (so the receiver
/// verifies each against that server's key); `next` is the `after` of the
/// following page, absent on the last.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DirectoryPage {
    /// Complete DIRECTORY_RECORD envelopes (JSON objects, `sig` included) in
    /// user id order; socp sends up to 32 per page.
    pub records: Vec<Value>,
    /// The user id of the page's last record, to send as the next
    /// DIRECTORY_SYNC's `after`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<UserId>,
}

/// `USER_RENAME {username}` [ext]: from an attached registered user to its
/// home server, for a user whose username another server registered first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRename {
    /// The new username; NAME_IN_USE if it is taken, REGISTER_OK on success.
    pub username: Username,
}

/// `LOGIN_CHALLENGE {user_id, privkey_store, nonce}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginChallenge {
    /// The registered user that `who` named.
    pub user_id: UserId,
    /// The user's password-encrypted PKCS#8 private key (PEM text), as
    /// stored at registration; the client opens it with the password.
    pub privkey_store: String,
    /// base64url of 32 random bytes, to be sent back as the signed
    /// USER_HELLO's `nonce` within 2 minutes. Single use; only the session's
    /// latest challenge counts.
    pub nonce: String,
}
