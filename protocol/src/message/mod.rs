//! One typed payload per message type of SPEC.md, and the [`Message`] enum that
//! dispatches on the envelope's `type`.
//!
//! Payloads are parsed leniently (unknown fields are ignored) and strictly on
//! types (a string where a number belongs is an error). What we send is built
//! from these structs, so it is always well-formed.

use std::borrow::Cow;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::{Base64Url, PublicKey, Signature};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{ServerId, UserId};

mod account;
mod files;
mod lists;
mod mail;
mod news;

pub use account::*;
pub use files::*;
pub use lists::*;
pub use mail::*;
pub use news::*;

/// A typed payload of one message type.
pub trait Payload: Serialize + DeserializeOwned {
    /// The envelope `type` this payload travels under.
    const TYPE: MessageType;
}

macro_rules! messages {
    ($($(#[$doc:meta])* $variant:ident($payload:ident) = $wire:literal,)*) => {
        /// Every message type of SPEC.md (the [ext] ones included).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageType {
            $($(#[$doc])* $variant,)*
        }

        impl MessageType {
            /// All types, in SPEC order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(MessageType::$variant => $wire,)*
                }
            }

            /// Look up a wire name, or another implementation's name for
            /// the same message (SPEC.md §11: `CMD_LIST` is LIST_REQUEST).
            pub fn parse(s: &str) -> Option<MessageType> {
                match s {
                    $($wire => Some(MessageType::$variant),)*
                    "CMD_LIST" => Some(MessageType::ListRequest),
                    _ => None,
                }
            }
        }

        /// A parsed payload, tagged by its message type.
        #[derive(Debug, Clone)]
        pub enum Message {
            $($(#[$doc])* $variant($payload),)*
        }

        impl Message {
            /// Parse `payload` as the payload of message type `msg_type`.
            pub fn parse(msg_type: &str, payload: &Value) -> Result<Message> {
                let t = MessageType::parse(msg_type)
                    .ok_or_else(|| Error::UnknownType(msg_type.chars().take(64).collect()))?;
                let payload = with_hello_key(t, payload);
                let payload = payload.as_ref();
                match t {
                    $(MessageType::$variant => parse_payload::<$payload>(t, payload).map(Message::$variant),)*
                }
            }

            /// This message's type.
            pub fn msg_type(&self) -> MessageType {
                match self {
                    $(Message::$variant(_) => MessageType::$variant,)*
                }
            }

            /// The payload as a JSON object.
            pub fn to_payload(&self) -> Value {
                match self {
                    $(Message::$variant(p) => to_payload(p),)*
                }
            }
        }

        $(
            impl Payload for $payload {
                const TYPE: MessageType = MessageType::$variant;
            }

            impl From<$payload> for Message {
                fn from(p: $payload) -> Message {
                    Message::$variant(p)
                }
            }
        )*
    };
}

messages! {
    /// A user identifies itself (first frame of a user connection).
    UserHello(UserHello) = "USER_HELLO",
    /// A server asks an introducer to join the mesh.
    ServerHelloJoin(ServerHelloJoin) = "SERVER_HELLO_JOIN",
    /// The introducer's answer: assigned id, servers, users.
    ServerWelcome(ServerWelcome) = "SERVER_WELCOME",
    /// A mesh server links to another (first frame).
    ServerHelloLink(ServerHelloLink) = "SERVER_HELLO_LINK",
    /// A server announces itself to the mesh.
    ServerAnnounce(ServerAnnounce) = "SERVER_ANNOUNCE",
    /// [ext] A server is shutting down.
    ServerGoodbye(ServerGoodbye) = "SERVER_GOODBYE",
    /// Server liveness.
    Heartbeat(Heartbeat) = "HEARTBEAT",
    /// Presence gossip: a user is attached to a server.
    UserAdvertise(UserAdvertise) = "USER_ADVERTISE",
    /// Presence gossip: a user left.
    UserRemove(UserRemove) = "USER_REMOVE",
    /// A delivery forwarded between servers.
    ServerDeliver(ServerDeliver) = "SERVER_DELIVER",
    /// A delivery from a server to its user.
    UserDeliver(UserDeliver) = "USER_DELIVER",
    /// A user's end-to-end encrypted direct message.
    MsgDirect(MsgDirect) = "MSG_DIRECT",
    /// A user's public-channel message for one member.
    MsgPublicChannel(MsgPublicChannel) = "MSG_PUBLIC_CHANNEL",
    /// Members added to the public channel.
    PublicChannelAdd(PublicChannelAdd) = "PUBLIC_CHANNEL_ADD",
    /// New public channel version and key wraps.
    PublicChannelUpdated(PublicChannelUpdated) = "PUBLIC_CHANNEL_UPDATED",
    /// Public channel key shares (routed for interop).
    PublicChannelKeyShare(PublicChannelKeyShare) = "PUBLIC_CHANNEL_KEY_SHARE",
    /// A file transfer begins.
    FileStart(FileStart) = "FILE_START",
    /// One encrypted file chunk.
    FileChunk(FileChunk) = "FILE_CHUNK",
    /// A file transfer ends.
    FileEnd(FileEnd) = "FILE_END",
    /// [ext] Ask for the online users.
    ListRequest(ListRequest) = "LIST_REQUEST",
    /// [ext] The online users.
    ListResponse(ListResponse) = "LIST_RESPONSE",
    /// The first seed's command form (`{cmd:"list"}`).
    Command(Command) = "COMMAND",
    /// The answer to COMMAND.
    CommandResponse(CommandResponse) = "COMMAND_RESPONSE",
    /// Optional acknowledgement.
    Ack(Ack) = "ACK",
    /// An error report.
    Error(ErrorPayload) = "ERROR",
    /// [ext] Register a user with its key store.
    UserRegister(UserRegister) = "USER_REGISTER",
    /// [ext] Registration succeeded.
    RegisterOk(RegisterOk) = "REGISTER_OK",
    /// [ext] Ask for a login challenge.
    LoginRequest(LoginRequest) = "LOGIN_REQUEST",
    /// [ext] The login challenge.
    LoginChallenge(LoginChallenge) = "LOGIN_CHALLENGE",
    /// Optional notice before a close.
    CtrlClose(CtrlClose) = "CTRL_CLOSE",
    /// [ext] A registered user's directory record, signed by its home server.
    DirectoryRecord(DirectoryRecord) = "DIRECTORY_RECORD",
    /// [ext] Ask a linked server for the directory records it holds.
    DirectorySync(DirectorySync) = "DIRECTORY_SYNC",
    /// [ext] One page of directory records, each as its home server signed it.
    DirectoryPage(DirectoryPage) = "DIRECTORY_PAGE",
    /// [ext] A registered user whose username was taken elsewhere first picks another.
    UserRename(UserRename) = "USER_RENAME",
    /// Another implementation's key lookup: a user's advertised key, asked of a server.
    PubkeyRequest(PubkeyRequest) = "PUBKEY_REQUEST",
    /// The answer to PUBKEY_REQUEST.
    PubkeyResponse(PubkeyResponse) = "PUBKEY_RESPONSE",
    /// [ext] Ask for a registered user's key, by name or id.
    UserLookup(UserLookup) = "USER_LOOKUP",
    /// [ext] The registered user a USER_LOOKUP names.
    UserLookupResult(UserLookupResult) = "USER_LOOKUP_RESULT",
    /// [ext] A DM to keep for a registered user who is offline.
    MailDeposit(MailDeposit) = "MAIL_DEPOSIT",
    /// [ext] What became of a kept DM.
    MailReceipt(MailReceipt) = "MAIL_RECEIPT",
    /// [ext] Kept DMs a client has received.
    MailAck(MailAck) = "MAIL_ACK",
    /// [ext] Presence news in one frame, to a client that reads batches.
    NewsBatch(NewsBatch) = "NEWS_BATCH",
}

/// A USER_HELLO whose key is in `pubkey_b64u` or `meta.pubkey` instead of
/// `pubkey` (SPEC.md §11) reads as if it were in `pubkey`. Only the typed view
/// changes: signatures are checked over the payload as received.
fn with_hello_key(t: MessageType, payload: &Value) -> Cow<'_, Value> {
    if t != MessageType::UserHello || payload.get("pubkey").is_some() {
        return Cow::Borrowed(payload);
    }
    let key = payload
        .get("pubkey_b64u")
        .or_else(|| payload.get("meta").and_then(|m| m.get("pubkey")));
    match (key, payload) {
        (Some(key), Value::Object(obj)) => {
            let mut obj = obj.clone();
            obj.insert("pubkey".into(), key.clone());
            Cow::Owned(Value::Object(obj))
        }
        _ => Cow::Borrowed(payload),
    }
}

fn parse_payload<T: DeserializeOwned>(t: MessageType, payload: &Value) -> Result<T> {
    if !payload.is_object() {
        return Err(Error::InvalidField {
            field: "payload",
            reason: "must be an object".into(),
        });
    }
    T::deserialize(payload).map_err(|e| {
        let reason = e.to_string();
        // A key rejected inside a payload is BAD_KEY wherever it appears
        // (SPEC.md §2); serde only carries the key error's text.
        if reason.starts_with(crate::error::BAD_KEY_PREFIX) {
            Error::BadKey(format!("{}: {reason}", t.as_str()))
        } else {
            Error::InvalidPayload {
                msg_type: t.as_str().to_owned(),
                reason,
            }
        }
    })
}

/// Serialise a typed payload to a JSON object.
pub fn to_payload<T: Serialize>(p: &T) -> Value {
    // Our payload structs serialise only strings, integers, booleans, arrays
    // and maps with string keys, which cannot fail; an empty object stands in
    // for the impossible error rather than a panic.
    serde_json::to_value(p).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// `USER_HELLO`: `{client, pubkey, enc_pubkey?, meta?}` plus `nonce` after a
/// login challenge (SPEC.md §6.1, §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserHello {
    /// Client software name and version (free text).
    #[serde(default)]
    pub client: String,
    /// The user's RSA-4096 public key (base64url DER SubjectPublicKeyInfo; PEM
    /// accepted on input): the key it signs with and that the server
    /// advertises for it. For a registered id it must be the registered key,
    /// else AUTH_FAILED (SPEC.md §6.1).
    pub pubkey: PublicKey,
    /// A separate encryption key; absent means `pubkey` (SPEC.md §11). socp
    /// servers do not read it and socp clients do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc_pubkey: Option<PublicKey>,
    /// Free-form profile data from the user. socp servers ignore it (an
    /// advert's `meta` is the server's own) and socp clients send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// \[ext\] The `nonce` of the LOGIN_CHALLENGE this hello answers: required
    /// for a registered id, single use, valid for 2 minutes, and covered by
    /// the hello's `sig` (SPEC.md §6.1, §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// A server's address and key: the payload of SERVER_HELLO_JOIN, SERVER_HELLO_LINK
/// and SERVER_ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAddress {
    /// Host name or address where the sending server accepts connections
    /// (socp: `--public-host`, else the host it binds).
    pub host: String,
    /// The port of that listener.
    pub port: u16,
    /// The sending server's RSA-4096 public key (base64url DER
    /// SubjectPublicKeyInfo): receivers pin it to the server id and verify
    /// the server's frames with it (SPEC.md §5.1, §5.2).
    pub pubkey: PublicKey,
}

/// `SERVER_HELLO_JOIN {host, port, pubkey}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerHelloJoin(pub ServerAddress);

/// `SERVER_HELLO_LINK {host, port, pubkey}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerHelloLink(pub ServerAddress);

/// `SERVER_ANNOUNCE {host, port, pubkey}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerAnnounce(pub ServerAddress);

/// One server in a SERVER_WELCOME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's id.
    pub server_id: ServerId,
    /// Where it accepts connections: the joiner links to `host:port`.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its RSA-4096 public key (base64url DER SubjectPublicKeyInfo), which
    /// the joiner pins to `server_id`.
    pub pubkey: PublicKey,
}

/// One online user in a SERVER_WELCOME.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The user's id.
    pub user_id: UserId,
    /// The server the user is attached to.
    pub server_id: ServerId,
    /// The user's RSA-4096 public key (base64url DER SubjectPublicKeyInfo).
    pub pubkey: PublicKey,
    /// The user's advert `meta`, if any (socp writes `{name}` for its own
    /// users that have a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Where the user's server is reached (another implementation's joiner
    /// requires them); socp sends them when it knows them and ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its port, with `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `SERVER_WELCOME {assigned_id, servers, clients}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerWelcome {
    /// The id the joiner is to use: the id it asked with (its `from`) unless
    /// that is the introducer's own or a known server's with another key,
    /// then a fresh UUID v4. Required here: a welcome without it, or with
    /// null, does not parse.
    pub assigned_id: ServerId,
    /// The servers the joiner is to link to: socp lists itself first, then
    /// the other servers it knows (not the joiner). Absent reads as empty.
    #[serde(default)]
    pub servers: Vec<ServerInfo>,
    /// Every user online in the mesh as the introducer knows it. Absent
    /// reads as empty.
    #[serde(default)]
    pub clients: Vec<ClientInfo>,
}

/// `SERVER_GOODBYE {}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerGoodbye {}

/// `HEARTBEAT {}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {}

/// `CTRL_CLOSE {}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CtrlClose {}

/// `USER_ADVERTISE {user_id, server_id, pubkey, meta}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserAdvertise {
    /// The user that is attached.
    pub user_id: UserId,
    /// The server it is attached to; must equal the envelope `from` (a
    /// server advertises only its own users, SPEC.md §5.3).
    pub server_id: ServerId,
    /// The user's RSA-4096 public key (base64url DER SubjectPublicKeyInfo):
    /// what clients encrypt to and check a delivery's `sender_pub` against.
    pub pubkey: PublicKey,
    /// Profile data. socp writes `{name, registered: true, home}` for a
    /// registered user (`home`: the server that registered it; `name` absent
    /// while it holds none) and `{name}` for an unregistered user with a
    /// name. Readers take the display name from `name`, `username` or
    /// `display_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// [ext] The origin's presence sequence number: grows with every presence
    /// frame the origin makes (across restarts too), inside the signed payload,
    /// so a replayed advert (with a fresh envelope `ts`) is recognised as old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `USER_REMOVE {user_id, server_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRemove {
    /// The user that left.
    pub user_id: UserId,
    /// The server it was attached to: receivers remove the user only if
    /// their mapping still points to this server (SPEC.md §5.3).
    pub server_id: ServerId,
    /// [ext] The origin's presence sequence number (see [`UserAdvertise::seq`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `MSG_DIRECT {ciphertext, sender_pub, content_sig}` (SPEC.md §6.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgDirect {
    /// The text (at most 446 bytes of UTF-8) encrypted with RSA-OAEP-SHA256
    /// to the recipient's key, base64url; longer text is sent as several
    /// frames. The server never decrypts it.
    pub ciphertext: Base64Url,
    /// The sender's public key (base64url DER SubjectPublicKeyInfo): its
    /// server refuses it (BAD_KEY) unless it is the key the sender identified
    /// with, and the recipient's client unless it is the advertised key.
    pub sender_pub: PublicKey,
    /// RSASSA-PSS-SHA256 by the sender over the UTF-8 of
    /// `ciphertext + from + to + ts` (the base64url text, envelope ids, `ts`
    /// in decimal), base64url (SPEC.md §6.3).
    pub content_sig: Signature,
}

fn public_group() -> String {
    "public".to_owned()
}

/// `MSG_PUBLIC_CHANNEL {ciphertext, sender_pub, content_sig, group_id, public_version}`
/// (SPEC.md §6.4): one frame per member, `to` = that member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgPublicChannel {
    /// The text (at most 446 bytes of UTF-8) encrypted with RSA-OAEP-SHA256
    /// to this member's key, base64url.
    pub ciphertext: Base64Url,
    /// The sender's public key (base64url DER SubjectPublicKeyInfo), checked
    /// as for a DM.
    pub sender_pub: PublicKey,
    /// RSASSA-PSS-SHA256 by the sender over the UTF-8 of
    /// `ciphertext + from + ts` (no `to`), base64url (SPEC.md §6.4).
    pub content_sig: Signature,
    /// The channel: `"public"`, which is also what an absent field reads
    /// as. socp servers do not check it.
    #[serde(default = "public_group")]
    pub group_id: String,
    /// The channel version the sender knew, if it says. socp clients leave
    /// it out and socp servers do not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_version: Option<u64>,
}

/// `PUBLIC_CHANNEL_ADD {add, if_version}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicChannelAdd {
    /// The members added in this version.
    pub add: Vec<UserId>,
    /// The channel version before this change; the PUBLIC_CHANNEL_UPDATED
    /// sent with it carries the new one.
    pub if_version: u64,
}

/// One member's wrapped group key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wrap {
    /// The member this wrap is for.
    pub member_id: UserId,
    /// The channel's random 256-bit group key encrypted with RSA-OAEP-SHA256
    /// to the member's key, base64url. In socp the group key encrypts
    /// nothing (SPEC.md §6.4).
    pub wrapped_key: Base64Url,
}

/// `PUBLIC_CHANNEL_UPDATED {version, wraps}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicChannelUpdated {
    /// The new channel version: it grows on every membership change, and
    /// receiving servers raise their own to at least this.
    pub version: u64,
    /// One wrap per member added in this version (empty when members only
    /// left). Absent reads as empty.
    #[serde(default)]
    pub wraps: Vec<Wrap>,
}

/// One share of a PUBLIC_CHANNEL_KEY_SHARE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyShare {
    /// The member this share is for; servers route a copy of the frame to it.
    pub member: UserId,
    /// The channel key encrypted to that member's key, base64url (opaque to
    /// socp).
    pub wrapped_public_channel_key: Base64Url,
}

/// `PUBLIC_CHANNEL_KEY_SHARE {shares, creator_pub, content_sig}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicChannelKeyShare {
    /// One share per member.
    pub shares: Vec<KeyShare>,
    /// The public key of the user who made the shares (base64url DER
    /// SubjectPublicKeyInfo).
    pub creator_pub: PublicKey,
    /// RSASSA-PSS-SHA256 by the creator over the canonical JSON of `shares`
    /// followed by `creator_pub` in its wire form, base64url. socp servers
    /// route the frame without checking it.
    pub content_sig: Signature,
}

/// What a SERVER_DELIVER or USER_DELIVER carries, by `kind` ([ext]; absent means `dm`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliverContent {
    /// `kind: "dm"` (or no `kind`): the fields of a MSG_DIRECT.
    Dm(MsgDirect),
    /// `kind: "public"`: the fields of a MSG_PUBLIC_CHANNEL.
    Public(MsgPublicChannel),
    /// `kind: "file_start"`: the fields of a FILE_START.
    FileStart(FileStart),
    /// `kind: "file_chunk"`: the fields of a FILE_CHUNK.
    FileChunk(FileChunk),
    /// `kind: "file_end"`: the fields of a FILE_END.
    FileEnd(FileEnd),
}

impl DeliverContent {
    /// The wire `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliverContent::Dm(_) => "dm",
            DeliverContent::Public(_) => "public",
            DeliverContent::FileStart(_) => "file_start",
            DeliverContent::FileChunk(_) => "file_chunk",
            DeliverContent::FileEnd(_) => "file_end",
        }
    }
}

impl<'de> Deserialize<'de> for DeliverContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let map = Map::<String, Value>::deserialize(d)?;
        let kind = match map.get("kind") {
            None | Some(Value::Null) => "dm".to_owned(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(D::Error::custom("`kind` must be a string")),
        };
        let value = Value::Object(map);
        let content = match kind.as_str() {
            "dm" => DeliverContent::Dm(MsgDirect::deserialize(&value).map_err(D::Error::custom)?),
            "public" => DeliverContent::Public(
                MsgPublicChannel::deserialize(&value).map_err(D::Error::custom)?,
            ),
            "file_start" => {
                DeliverContent::FileStart(FileStart::deserialize(&value).map_err(D::Error::custom)?)
            }
            "file_chunk" => {
                DeliverContent::FileChunk(FileChunk::deserialize(&value).map_err(D::Error::custom)?)
            }
            "file_end" => {
                DeliverContent::FileEnd(FileEnd::deserialize(&value).map_err(D::Error::custom)?)
            }
            other => {
                return Err(D::Error::custom(format!(
                    "unknown kind {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        Ok(content)
    }
}

/// `SERVER_DELIVER {user_id, sender, orig_ts, kind, ...}` (SPEC.md §5.4).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerDeliver {
    /// The recipient.
    pub user_id: UserId,
    /// The sending user.
    pub sender: UserId,
    /// The sender's envelope `ts` (what content signatures cover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_ts: Option<i64>,
    /// The content: its `kind` and that kind's fields, flattened into the
    /// payload.
    #[serde(flatten)]
    pub content: DeliverContent,
    /// \[ext\] A DM that waited in the recipient's mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailTag>,
}

/// `USER_DELIVER {sender, orig_ts, kind, ...}` (SPEC.md §6.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDeliver {
    /// The sending user's id (the `from` of its original frame).
    pub sender: UserId,
    /// The sender's envelope `ts` (Unix ms), which its content signature
    /// covers. socp servers always set it; when it is absent the receiver
    /// uses the envelope `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_ts: Option<i64>,
    /// The content: its `kind` and that kind's fields, flattened into the
    /// payload.
    #[serde(flatten)]
    pub content: DeliverContent,
    /// \[ext\] A DM that waited in the recipient's mailbox: acknowledge it
    /// with MAIL_ACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailTag>,
}

/// `ACK {msg_ref}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    /// What is acknowledged: socp servers send `"USER_HELLO"` once a hello is
    /// accepted, and socp clients wait for it.
    pub msg_ref: String,
}

/// `ERROR {code, detail}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// The error code (SPEC.md §6.6); a code not known here is kept as it
    /// arrived.
    pub code: ErrorCode,
    /// Free text for people. Absent reads as empty.
    #[serde(default)]
    pub detail: String,
}

impl ErrorPayload {
    /// An error payload.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ErrorPayload {
            code,
            detail: detail.into(),
        }
    }
}
