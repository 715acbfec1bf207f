//! [ext] Registration, login and the mesh-wide directory of registered users
//! (SPEC.md §6.1, §7).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::PublicKey;
use crate::id::{ServerId, UserId, Username};

/// `USER_REGISTER {user_id, username, pubkey, privkey_store}` (SPEC.md §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRegister {
    pub user_id: UserId,
    pub username: Username,
    pub pubkey: PublicKey,
    /// The password-protected PKCS#8 private key (PEM text).
    pub privkey_store: String,
}

/// `REGISTER_OK {user_id, username}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterOk {
    pub user_id: UserId,
    pub username: Username,
}

/// `LOGIN_REQUEST {who}`: a username or a user id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
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
    pub user_id: UserId,
    pub username: Username,
    pub pubkey: PublicKey,
    pub home_server: ServerId,
    /// The password-encrypted private key, so `/login` works on any server.
    pub privkey_store: String,
    /// When the home server accepted the registration (ms since the epoch):
    /// of two users registered with the same name, the earlier keeps it.
    pub registered_at: i64,
    pub version: u64,
}

/// `DIRECTORY_SYNC {after}` [ext]: send me the directory records you hold,
/// ordered by user id, starting after `after` (absent: from the first).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectorySync {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
}

/// `DIRECTORY_PAGE {records, next}` [ext]: directory records, each the
/// complete DIRECTORY_RECORD envelope its home server signed (so the receiver
/// verifies each against that server's key); `next` is the `after` of the
/// following page, absent on the last.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DirectoryPage {
    pub records: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<UserId>,
}

/// `USER_RENAME {username}` [ext]: from an attached registered user to its
/// home server, for a user whose username another server registered first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRename {
    pub username: Username,
}

/// `LOGIN_CHALLENGE {user_id, privkey_store, nonce}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginChallenge {
    pub user_id: UserId,
    pub privkey_store: String,
    pub nonce: String,
}
