//! Dialects (SPEC.md §11): how the other end of a connection speaks v1.3,
//! learned from what it sends, and the one place that decides what we write
//! to it. Implementations differ where the standard is silent: the encoding
//! of public keys, which frames carry files, which extensions exist.
//!
//! A peer is *socp* when its hello, join, announce or welcome carries the
//! capability object [`CAPABILITY`] (others ignore unknown payload fields).
//! Toward a peer not known to speak socp we send only standard frames, with
//! keys in the encoding it uses itself; toward socp peers, everything.

use serde_json::{json, Map, Value};

use crate::crypto::{b64url_decode, b64url_encode, PublicKey};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::id::{To, UserId};
use crate::message::MessageType;

/// The payload field that says "this sender is socp" ([ext]): an object,
/// `{"v": 1}` today. Its presence is what counts; receivers that are not
/// socp ignore it.
pub const CAPABILITY: &str = "socp";

/// The capability object we send.
pub fn capability() -> Value {
    json!({ "v": 1 })
}

/// Whether a hello's capability object says its client reads fast-mode file
/// chunks [ext] (`"files": ["aes-256-gcm"]`).
pub fn reads_fast_files(payload: &Value) -> bool {
    payload
        .get(CAPABILITY)
        .and_then(|c| c.get("files"))
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == crate::crypto::file::FAST_CIPHER))
}

/// Whether a hello's capability object says its client reads `NEWS_BATCH`
/// frames [ext] (`"news": ["batch"]`; docs/PROTOCOL.md, "Batched presence
/// news").
pub fn reads_news_batches(payload: &Value) -> bool {
    payload
        .get(CAPABILITY)
        .and_then(|c| c.get("news"))
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == "batch"))
}

/// A client's hello with our capability object, saying it reads fast-mode
/// file chunks and batched presence news.
pub fn with_client_capability(env: Envelope) -> Envelope {
    let mut env = with_capability(env);
    if let Some(Value::Object(cap)) = env.payload_mut().get_mut(CAPABILITY) {
        cap.insert(
            "files".to_owned(),
            json!([crate::crypto::file::FAST_CIPHER]),
        );
        cap.insert("news".to_owned(), json!(["batch"]));
    }
    env
}

/// Add our capability object to a hello, join, announce or welcome we are
/// about to sign.
pub fn with_capability(mut env: Envelope) -> Envelope {
    if let Value::Object(obj) = env.payload_mut() {
        obj.insert(CAPABILITY.to_owned(), capability());
    }
    env
}

/// How a peer writes public keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyEncoding {
    /// base64url of the DER SubjectPublicKeyInfo (SPEC.md §2; socp's form).
    #[default]
    Der,
    /// base64url of the PEM text (`-----BEGIN PUBLIC KEY-----…`).
    PemBase64Url,
    /// The PEM text itself.
    Pem,
}

impl KeyEncoding {
    /// How `text`, a key as received, is written.
    pub fn of(text: &str) -> KeyEncoding {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return KeyEncoding::Pem;
        }
        // The first 16 characters (12 bytes) show a PEM header.
        let head = text.get(..16).unwrap_or_default();
        match b64url_decode(head) {
            Ok(bytes) if bytes.starts_with(b"-----BEGIN") => KeyEncoding::PemBase64Url,
            _ => KeyEncoding::Der,
        }
    }

    /// `key` written this way.
    pub fn write(self, key: &PublicKey) -> Result<String> {
        Ok(match self {
            KeyEncoding::Der => key.to_wire().to_owned(),
            KeyEncoding::PemBase64Url => b64url_encode(key.to_pem()?.as_bytes()),
            KeyEncoding::Pem => key.to_pem()?,
        })
    }
}

/// How the other end of one connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// The encoding of its own key, which is the one it can read.
    pub keys: KeyEncoding,
    /// It sent socp's capability object: every [ext] frame and field is
    /// understood.
    pub socp: bool,
}

impl Default for Dialect {
    /// Not known to speak socp; DER keys, as the standard writes them.
    fn default() -> Self {
        Dialect::STANDARD
    }
}

/// The payload fields that hold a public key, at the top level or in the
/// entries of a welcome's `servers` and `clients`.
const KEY_FIELDS: [&str; 5] = [
    "pubkey",
    "sender_pub",
    "creator_pub",
    "server_pub",
    "enc_pubkey",
];

/// [ext] frames only socp understands: left out toward other peers.
const SOCP_ONLY: [&str; 9] = [
    "DIRECTORY_RECORD",
    "DIRECTORY_SYNC",
    "DIRECTORY_PAGE",
    "USER_RENAME",
    "USER_LOOKUP",
    "USER_LOOKUP_RESULT",
    "MAIL_DEPOSIT",
    "MAIL_RECEIPT",
    "MAIL_ACK",
];

/// What to write instead of a frame (see [`Dialect::translate`]).
#[derive(Debug)]
pub enum Translation {
    /// The frame as it is.
    AsIs,
    /// Nothing: the peer does not know this [ext] frame.
    Omit,
    /// This envelope, signed by us (the frame was ours, or a delivery we
    /// rewrote into the peer's standard frames).
    Resign(Envelope),
}

impl Dialect {
    /// A socp peer.
    pub const SOCP: Dialect = Dialect {
        keys: KeyEncoding::Der,
        socp: true,
    };

    /// A peer not known to speak socp, with DER keys.
    pub const STANDARD: Dialect = Dialect {
        keys: KeyEncoding::Der,
        socp: false,
    };

    /// Learn from the payload of a peer's hello, join, announce or welcome:
    /// `key_field` holds its own key.
    pub fn learn(payload: &Value, key_field: &str) -> Dialect {
        Dialect {
            keys: payload
                .get(key_field)
                .and_then(Value::as_str)
                .map(KeyEncoding::of)
                .unwrap_or_default(),
            socp: payload.get(CAPABILITY).is_some_and(Value::is_object),
        }
    }

    /// What to write to this peer for `env`, a frame about to be sent by the
    /// server `me`. Deliveries of files become the standard FILE_* frames
    /// (from the sending user, as other implementations route them); keys
    /// are written in the peer's encoding; socp-only frames are left out.
    /// A frame someone else signed (relayed unchanged) is never altered,
    /// except that a user (`to_user`) is given a user's message passed on as
    /// it came as the USER_DELIVER every client reads.
    pub fn translate(&self, env: &Envelope, me: &str, to_user: bool) -> Translation {
        if self.socp {
            return Translation::AsIs;
        }
        let t = env.msg_type();
        if SOCP_ONLY.contains(&t) {
            return Translation::Omit;
        }
        if env.from() != me {
            if !to_user {
                // Another server's frame passed on: its signature is its
                // origin's, so its keys cannot be rewritten. A server that
                // reads another encoding would keep keys it cannot use (and
                // over the copy its origin sends it in its encoding): omitted.
                let mut probe = env.payload().clone();
                return if self.rewrite_keys(&mut probe) {
                    Translation::Omit
                } else {
                    Translation::AsIs
                };
            }
            if let Some(mut delivery) = as_user_deliver(env, me) {
                self.rewrite_keys(delivery.payload_mut());
                return Translation::Resign(delivery);
            }
            // Another server's frame passed on to a client (an advert): a
            // client reads keys only in its encoding, so we vouch for it,
            // rewritten and signed by us.
            let mut ours = match env.known_type() {
                Some(t) => Envelope::raw(t, me, env.to().clone(), env.ts(), env.payload().clone()),
                None => return Translation::AsIs,
            };
            return if self.rewrite_keys(ours.payload_mut()) {
                Translation::Resign(ours)
            } else {
                Translation::AsIs
            };
        }
        let mut out = match t {
            "USER_DELIVER" | "SERVER_DELIVER" => match as_plain_file(env) {
                Some(plain) => plain,
                None => env.clone(),
            },
            _ => env.clone(),
        };
        let rewritten = self.rewrite_keys(out.payload_mut());
        if rewritten || out.msg_type() != t {
            Translation::Resign(out)
        } else {
            Translation::AsIs
        }
    }

    /// Write every key of `payload` in this peer's encoding; true if any
    /// changed.
    pub fn rewrite_keys(&self, payload: &mut Value) -> bool {
        if self.keys == KeyEncoding::Der {
            return false;
        }
        let mut changed = rewrite_object(self.keys, payload);
        for list in ["servers", "clients"] {
            if let Some(Value::Array(entries)) = payload.get_mut(list) {
                for entry in entries {
                    changed |= rewrite_object(self.keys, entry);
                }
            }
        }
        changed
    }
}

fn rewrite_object(keys: KeyEncoding, obj: &mut Value) -> bool {
    let Value::Object(obj) = obj else {
        return false;
    };
    let mut changed = false;
    for field in KEY_FIELDS {
        let Some(Value::String(text)) = obj.get(field) else {
            continue;
        };
        if KeyEncoding::of(text) == keys {
            continue;
        }
        let Ok(key) = PublicKey::parse(text) else {
            continue;
        };
        if let Ok(written) = keys.write(&key) {
            obj.insert(field.to_owned(), Value::String(written));
            changed = true;
        }
    }
    changed
}

/// A user's MSG_DIRECT or MSG_PUBLIC_CHANNEL as a USER_DELIVER from `me`.
fn as_user_deliver(env: &Envelope, me: &str) -> Option<Envelope> {
    let kind = match env.msg_type() {
        "MSG_DIRECT" => "dm",
        "MSG_PUBLIC_CHANNEL" => "public",
        _ => return None,
    };
    let mut payload = env.payload().as_object()?.clone();
    payload.insert("kind".into(), Value::from(kind));
    payload.insert("sender".into(), Value::from(env.from()));
    payload.insert("orig_ts".into(), Value::from(env.ts()));
    Some(Envelope::raw(
        MessageType::UserDeliver,
        me,
        env.to().clone(),
        env.ts(),
        Value::Object(payload),
    ))
}

/// A USER_DELIVER or SERVER_DELIVER of a file (`kind: file_*`) as the plain
/// FILE_* frame other implementations route: `from` the sending user, `to`
/// the recipient, `ts` the sender's, the content fields as the user sent them.
fn as_plain_file(env: &Envelope) -> Option<Envelope> {
    let payload = env.payload().as_object()?;
    let msg_type = match payload.get("kind").and_then(Value::as_str)? {
        "file_start" => MessageType::FileStart,
        "file_chunk" => MessageType::FileChunk,
        "file_end" => MessageType::FileEnd,
        _ => return None,
    };
    let sender = UserId::parse(payload.get("sender")?.as_str()?).ok()?;
    let to = match env.msg_type() {
        "SERVER_DELIVER" => To::Id(payload.get("user_id")?.as_str()?.to_owned()),
        _ => env.to().clone(),
    };
    let ts = payload
        .get("orig_ts")
        .and_then(Value::as_i64)
        .unwrap_or(env.ts());
    let content: Map<String, Value> = payload
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "kind" | "sender" | "user_id" | "orig_ts"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Envelope::raw(
        msg_type,
        sender.as_str(),
        to,
        ts,
        Value::Object(content),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn key_encodings_are_recognised() {
        let key = fixtures::key(0).public_key().clone();
        for enc in [
            KeyEncoding::Der,
            KeyEncoding::PemBase64Url,
            KeyEncoding::Pem,
        ] {
            let text = enc.write(&key).expect("writes");
            assert_eq!(KeyEncoding::of(&text), enc, "{text:.40}");
            assert_eq!(PublicKey::parse(&text).expect("parses"), key);
        }
        assert_eq!(KeyEncoding::of(""), KeyEncoding::Der);
        assert_eq!(KeyEncoding::of("!!"), KeyEncoding::Der);
        assert_eq!(KeyEncoding::of("ééééééééééééééééé"), KeyEncoding::Der);
    }

    const ME: &str = "srv-a";

    fn frame(msg_type: MessageType, from: &str, to: &str, payload: Value) -> Envelope {
        let to = To::parse(to).expect("a valid to");
        Envelope::raw(msg_type, from, to, 1_700_000_000_000, payload)
    }

    fn chunk_delivery() -> Envelope {
        let ct = crate::Base64Url::from_bytes(b"ciphertext")
            .as_str()
            .to_owned();
        frame(
            MessageType::UserDeliver,
            ME,
            "bob",
            json!({"kind": "file_chunk", "sender": "alice", "orig_ts": 1_699_999_999_000_i64,
                   "file_id": "f-1", "index": 3, "ciphertext": ct}),
        )
    }

    #[test]
    fn a_file_delivery_becomes_the_standard_frame_only_for_other_peers() {
        assert!(matches!(
            Dialect::SOCP.translate(&chunk_delivery(), ME, true),
            Translation::AsIs
        ));
        let Translation::Resign(plain) = Dialect::STANDARD.translate(&chunk_delivery(), ME, true)
        else {
            panic!("not rewritten")
        };
        assert_eq!(plain.msg_type(), "FILE_CHUNK");
        assert_eq!((plain.from(), plain.to().as_str()), ("alice", "bob"));
        assert_eq!(plain.ts(), 1_699_999_999_000, "the sender's ts");
        assert!(plain.sig().is_none(), "to be signed by us");
        let crate::Message::FileChunk(c) = plain.message().expect("a valid FILE_CHUNK") else {
            panic!("not a chunk")
        };
        assert_eq!((c.file_id.as_str(), c.index), ("f-1", 3));
        assert!(plain.payload().get("kind").is_none());
        // The same as a SERVER_DELIVER: `to` is the recipient, not the server.
        let mut payload = chunk_delivery().payload().clone();
        payload["user_id"] = json!("bob");
        let sd = frame(MessageType::ServerDeliver, ME, "srv-b", payload);
        let Translation::Resign(plain) = Dialect::STANDARD.translate(&sd, ME, false) else {
            panic!("not rewritten")
        };
        assert_eq!(
            (plain.msg_type(), plain.to().as_str()),
            ("FILE_CHUNK", "bob")
        );
        // A DM delivery stays what it is.
        let mut dm = chunk_delivery().payload().clone();
        dm["kind"] = json!("dm");
        let dm = frame(MessageType::UserDeliver, ME, "bob", dm);
        assert!(matches!(
            Dialect::STANDARD.translate(&dm, ME, true),
            Translation::AsIs
        ));
    }

    #[test]
    fn keys_go_out_in_the_peers_encoding_and_socp_only_frames_stay_home() {
        let key = fixtures::key(0).public_key().clone();
        let pem_peer = Dialect {
            keys: KeyEncoding::PemBase64Url,
            socp: false,
        };
        let advert = frame(
            MessageType::UserAdvertise,
            ME,
            "*",
            json!({"user_id": "alice", "server_id": ME, "pubkey": key.to_wire()}),
        );
        let Translation::Resign(pem) = pem_peer.translate(&advert, ME, false) else {
            panic!("not rewritten")
        };
        let text = pem.payload()["pubkey"].as_str().expect("a key");
        assert_eq!(KeyEncoding::of(text), KeyEncoding::PemBase64Url);
        assert_eq!(PublicKey::parse(text).expect("parses"), key);
        // A DER peer gets it as it is. Relayed to a PEM peer (another
        // server's frame, whose keys we cannot rewrite), it is not sent: that
        // server kept the DER key over the PEM one its origin sent it, and
        // then could read nothing signed with it. In its encoding already, or
        // with no key, a relayed frame goes as it is.
        assert!(matches!(
            Dialect::STANDARD.translate(&advert, ME, false),
            Translation::AsIs
        ));
        assert!(matches!(
            pem_peer.translate(&advert, "srv-c", false),
            Translation::Omit
        ));
        let mut in_pem = advert.clone();
        pem_peer.rewrite_keys(in_pem.payload_mut());
        assert!(matches!(
            pem_peer.translate(&in_pem, "srv-c", false),
            Translation::AsIs
        ));
        let removal = frame(
            MessageType::UserRemove,
            "srv-c",
            "*",
            json!({"user_id": "alice", "server_id": "srv-c"}),
        );
        assert!(matches!(
            pem_peer.translate(&removal, ME, false),
            Translation::AsIs
        ));
        // A PEM client is given another server's advert by us, rewritten.
        let Translation::Resign(vouched) = pem_peer.translate(&advert, "srv-c", true) else {
            panic!("not rewritten for a client")
        };
        assert_eq!(vouched.from(), "srv-c", "from us");
        let text = vouched.payload()["pubkey"].as_str().expect("a key");
        assert_eq!(KeyEncoding::of(text), KeyEncoding::PemBase64Url);
        // Keys inside a welcome's lists too.
        let mut welcome = frame(
            MessageType::ServerWelcome,
            ME,
            "srv-b",
            json!({"assigned_id": "srv-b", "servers": [{"server_id": ME, "host": "h", "port": 1,
                   "pubkey": key.to_wire()}], "clients": []}),
        );
        assert!(pem_peer.rewrite_keys(welcome.payload_mut()));
        let text = welcome.payload()["servers"][0]["pubkey"]
            .as_str()
            .expect("a key");
        assert_eq!(KeyEncoding::of(text), KeyEncoding::PemBase64Url);
        let record = frame(MessageType::DirectoryRecord, ME, "*", json!({}));
        assert!(matches!(
            pem_peer.translate(&record, ME, false),
            Translation::Omit
        ));
        assert!(matches!(
            Dialect::SOCP.translate(&record, ME, false),
            Translation::AsIs
        ));
    }

    #[test]
    fn a_dialect_is_learnt_from_the_key_and_the_capability() {
        let key = fixtures::key(0).public_key().clone();
        let pem = KeyEncoding::PemBase64Url.write(&key).expect("writes");
        let ours = json!({"host": "h", "port": 1, "pubkey": key.to_wire(), "socp": capability()});
        assert_eq!(Dialect::learn(&ours, "pubkey"), Dialect::SOCP);
        let theirs = json!({"host": "h", "port": 1, "pubkey": pem});
        assert_eq!(
            Dialect::learn(&theirs, "pubkey"),
            Dialect {
                keys: KeyEncoding::PemBase64Url,
                socp: false
            }
        );
        let odd = json!({"pubkey": key.to_wire(), "socp": "yes"});
        assert_eq!(Dialect::learn(&odd, "pubkey"), Dialect::STANDARD);
    }
}
