//! Asking who is online and for keys: LIST_REQUEST and LIST_RESPONSE [ext],
//! the first seed's COMMAND forms, and another implementation's
//! PUBKEY_REQUEST and PUBKEY_RESPONSE (SPEC.md §6.2, §11).

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;
use crate::id::{ServerId, UserId};

/// `LIST_REQUEST {}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequest {}

/// One online user in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedUser {
    /// The user's id.
    pub user_id: UserId,
    /// The server it is attached to.
    pub server_id: ServerId,
    /// Display name: the username if registered, else the id.
    #[serde(default)]
    pub name: String,
}

/// `LIST_RESPONSE {users}`, sorted by name, then id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListResponse {
    /// Every user attached to the answering server or to a server it has a
    /// live link to (or, with `more`, one part of them).
    #[serde(default)]
    pub users: Vec<ListedUser>,
    /// Ids only, as one implementation lists them (`online_users`) instead
    /// of `users`: their keys are asked for with PUBKEY_REQUEST. Never sent.
    #[serde(default, skip_serializing)]
    pub online_users: Vec<UserId>,
    /// \[ext\] More parts follow: a long listing is sent as several
    /// LIST_RESPONSE frames, each far under the frame limit; the last has no
    /// `more`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// `COMMAND {cmd}` (the first seed's `/list`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    /// The command: socp servers answer `list` or `/list` (any case) and
    /// reply UNKNOWN_TYPE to anything else. Read from `cmd`, or from
    /// `command` as another implementation's client sends it.
    #[serde(alias = "command")]
    pub cmd: String,
}

/// `COMMAND_RESPONSE {cmd, users}`, plus `command` and `response` as
/// another implementation's client reads them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The request's `cmd`, as it was sent (absent in the other form, which
    /// says `command`).
    #[serde(default)]
    pub cmd: String,
    /// For `list`: the same rows as LIST_RESPONSE. Absent reads as empty.
    #[serde(default)]
    pub users: Vec<ListedUser>,
    /// The command again, under the name another implementation uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The answer as one JSON text, `{"users": [ids]}`, as that
    /// implementation's client reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// `PUBKEY_REQUEST {user_id}`: one implementation's servers advertise users
/// without their keys and answer this for them (SPEC.md §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubkeyRequest {
    /// The user whose key is asked for.
    pub user_id: UserId,
}

/// `PUBKEY_RESPONSE {user_id, pubkey}`: `pubkey` null when the user is not known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubkeyResponse {
    /// The user asked about.
    pub user_id: UserId,
    /// Its key, or null.
    #[serde(default)]
    pub pubkey: Option<PublicKey>,
}
