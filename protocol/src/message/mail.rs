//! [ext] Offline delivery: a DM to a registered user who is offline waits,
//! still end-to-end encrypted, in a mailbox at the user's home server, and is
//! delivered at the user's next login (docs/PROTOCOL.md, "Offline delivery").
//! USER_LOOKUP gives a client an offline registered user's key.

use serde::{Deserialize, Serialize};

use super::DeliverContent;
use crate::crypto::PublicKey;
use crate::id::{ServerId, UserId};

/// `USER_LOOKUP {user}` (user → its server): a registered user by name or id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserLookup {
    /// A username (any case) or a user id, 1–64 characters.
    pub user: String,
}

/// `USER_LOOKUP_RESULT {user_id, username, pubkey, home_server}` (server →
/// user): the registered user the lookup names, from the directory. A name or
/// id that names no registered user is answered `ERROR USER_NOT_FOUND`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserLookupResult {
    /// The user's id.
    pub user_id: UserId,
    /// Its username, if it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its registered key.
    pub pubkey: PublicKey,
    /// The server that registered it (where its mailbox is).
    pub home_server: ServerId,
}

/// `mail` on a SERVER_DELIVER or USER_DELIVER of a DM that waited in a
/// mailbox: the client acknowledges `id` with MAIL_ACK once it has the DM
/// (until then the home server delivers it again at each attach).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailTag {
    /// The mail's id (a UUID the home server gave it).
    pub id: String,
    /// When the home server queued it (Unix ms).
    pub queued_at: i64,
    /// The sender's username, as the home server's directory holds it for the
    /// sender's registered key (absent for guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// Whether the sender is a registered user whose registered key is the
    /// content's `sender_pub` (checked by the home server).
    #[serde(default)]
    pub sender_registered: bool,
}

/// `MAIL_DEPOSIT {user_id, sender, orig_ts, kind:"dm", ...}` (the sender's
/// server → the recipient's home server): a DM for a registered user who is
/// not online, to keep. The fields of a SERVER_DELIVER.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailDeposit {
    /// The recipient (registered at the server this goes to).
    pub user_id: UserId,
    /// The sending user, attached to the server that sends this.
    pub sender: UserId,
    /// The sender's `ts` (what the content signature covers).
    pub orig_ts: i64,
    /// The DM: `kind` and its fields, flattened.
    #[serde(flatten)]
    pub content: DeliverContent,
}

/// What became of a mail: `MAIL_RECEIPT.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    /// Kept in the recipient's mailbox.
    Queued,
    /// The recipient's client acknowledged it.
    Delivered,
    /// Not kept (`detail` says why: a full mailbox, a home server that
    /// cannot be reached).
    Refused,
    /// Dropped unread after the mailbox expiry.
    Expired,
}

/// `MAIL_RECEIPT {mail_id, user_id, sender, orig_ts, status, detail}` (the
/// recipient's home server → the sender's server → the sender).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailReceipt {
    /// The mail's id (empty when it was refused before it got one).
    #[serde(default)]
    pub mail_id: String,
    /// The recipient.
    pub user_id: UserId,
    /// The sender (the user this receipt is for).
    pub sender: UserId,
    /// The sender's `ts` of the DM: which of its messages this is about.
    pub orig_ts: i64,
    /// What became of it.
    pub status: MailStatus,
    /// Why, for `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `MAIL_ACK {mail_ids, user_id, user_frame}`: the recipient's client has
/// these mails (user → its server, no `user_id`, signed by the user), passed
/// on to the user's home server (server → server, with `user_id` and the
/// user's own signed frame), which then forgets them: a server can erase a
/// user's kept DMs only with the user's signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAck {
    /// The mails, at most 256.
    pub mail_ids: Vec<String>,
    /// The recipient, between servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Between servers: the user's MAIL_ACK frame as the user signed it
    /// (the receiving server verifies it with the user's key; its
    /// `mail_ids` are the ones forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_frame: Option<String>,
}

/// Most mail ids one MAIL_ACK may carry.
pub const MAX_MAIL_ACK: usize = 256;
