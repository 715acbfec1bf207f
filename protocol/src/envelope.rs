//! The envelope (SPEC.md §3): parsing with size limits first, transport
//! signatures over the canonical payload, freshness, and the seen-ids key.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::canonical::{canonical_bytes, canonical_bytes_with, Escaping};
use crate::crypto::{PrivateKey, PublicKey, Signature};
use crate::error::{Error, Result};
use crate::id::{ServerId, To, UserId};
use crate::message::{to_payload, Message, MessageType, Payload};

/// Input limits (SPEC.md §1). The defaults are the spec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes.
    pub max_frame_bytes: usize,
    /// Longest `type`, `from` and `to`, in characters.
    pub max_envelope_string: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_envelope_string: 256,
        }
    }
}

/// Longest `sig` text: a 4096-bit signature is 683 characters of base64url.
const MAX_SIG_TEXT: usize = 2048;

/// Freshness window for server-originated and content frames: ±10 minutes.
pub const TS_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An id that can stand in an envelope's `from`.
pub trait Sender {
    /// The id text.
    fn id_str(&self) -> &str;
}

impl Sender for UserId {
    fn id_str(&self) -> &str {
        self.as_str()
    }
}

impl Sender for ServerId {
    fn id_str(&self) -> &str {
        self.as_str()
    }
}

/// One frame: `{type, from, to, ts, payload, sig?}`.
///
/// The payload is kept as received (a JSON object), because transport
/// signatures cover its canonical form; [`Envelope::message`] gives the typed view.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    msg_type: String,
    from: String,
    to: To,
    ts: i64,
    payload: Value,
    sig: Option<Signature>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    msg_type: &'a str,
    from: &'a str,
    to: &'a str,
    ts: i64,
    payload: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<&'a str>,
}

impl Envelope {
    /// Build an unsigned envelope from a typed payload.
    pub fn new<P: Payload>(from: &impl Sender, to: To, ts: i64, payload: &P) -> Envelope {
        Envelope {
            msg_type: P::TYPE.as_str().to_owned(),
            from: from.id_str().to_owned(),
            to,
            ts,
            payload: to_payload(payload),
            sig: None,
        }
    }

    /// Build an unsigned envelope from a [`Message`].
    pub fn from_message(from: &impl Sender, to: To, ts: i64, message: &Message) -> Envelope {
        Envelope {
            msg_type: message.msg_type().as_str().to_owned(),
            from: from.id_str().to_owned(),
            to,
            ts,
            payload: message.to_payload(),
            sig: None,
        }
    }

    /// Build an unsigned envelope from a type and a payload as JSON (for
    /// rewriting a frame into another form; the payload should be what the
    /// type's typed form would accept).
    pub fn raw(msg_type: MessageType, from: &str, to: To, ts: i64, payload: Value) -> Envelope {
        Envelope {
            msg_type: msg_type.as_str().to_owned(),
            from: from.to_owned(),
            to,
            ts,
            payload,
            sig: None,
        }
    }

    /// Parse a frame with the default limits.
    pub fn parse(bytes: &[u8]) -> Result<Envelope> {
        Self::parse_with(bytes, &Limits::default())
    }

    /// Parse a frame: size limit first, then JSON, then the envelope fields.
    /// The payload must be an object; its typed form is checked by [`Envelope::message`].
    pub fn parse_with(bytes: &[u8], limits: &Limits) -> Result<Envelope> {
        if bytes.len() > limits.max_frame_bytes {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: limits.max_frame_bytes,
            });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::Json(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(Error::NotAnObject);
        };
        let max = limits.max_envelope_string;
        let msg_type = take_string(&obj, "type", max)?;
        let from = take_string(&obj, "from", max)?;
        crate::id::UserId::parse(&from).map_err(|e| Error::InvalidField {
            field: "from",
            reason: e.to_string(),
        })?;
        let to = To::parse(&take_string(&obj, "to", max)?).map_err(|e| Error::InvalidField {
            field: "to",
            reason: e.to_string(),
        })?;
        let ts = match obj.get("ts") {
            None => return Err(Error::MissingField("ts")),
            Some(Value::Number(n)) => read_ts(n).ok_or_else(|| Error::InvalidField {
                field: "ts",
                reason: "must be an integer (Unix ms)".into(),
            })?,
            Some(_) => {
                return Err(Error::InvalidField {
                    field: "ts",
                    reason: "must be an integer (Unix ms)".into(),
                })
            }
        };
        let payload = match obj.remove("payload") {
            // A request with nothing to say (`CMD_LIST`) may leave it out.
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p,
            Some(_) => {
                return Err(Error::InvalidField {
                    field: "payload",
                    reason: "must be an object".into(),
                })
            }
        };
        let sig = match obj.get("sig") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if s.len() > MAX_SIG_TEXT => {
                return Err(Error::InvalidField {
                    field: "sig",
                    reason: format!("{} characters", s.len()),
                })
            }
            Some(Value::String(s)) => Some(Signature::parse(s)?),
            Some(_) => {
                return Err(Error::InvalidField {
                    field: "sig",
                    reason: "must be a base64url string".into(),
                })
            }
        };
        Ok(Envelope {
            msg_type,
            from,
            to,
            ts,
            payload,
            sig,
        })
    }

    /// The payload, to change before signing (the signature is cleared).
    pub fn payload_mut(&mut self) -> &mut Value {
        self.sig = None;
        &mut self.payload
    }

    /// The `type` as received.
    pub fn msg_type(&self) -> &str {
        &self.msg_type
    }

    /// The known message type, if it is one.
    pub fn known_type(&self) -> Option<MessageType> {
        MessageType::parse(&self.msg_type)
    }

    /// `from` as text.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// `from` as a user id.
    pub fn from_user(&self) -> UserId {
        // `from` was validated as an id when parsed, or came from an id when built.
        UserId::from_validated(self.from.clone())
    }

    /// `from` as a server id.
    pub fn from_server(&self) -> ServerId {
        ServerId::from_validated(self.from.clone())
    }

    /// `to`.
    pub fn to(&self) -> &To {
        &self.to
    }

    /// `ts` (Unix ms).
    pub fn ts(&self) -> i64 {
        self.ts
    }

    /// The payload object as received.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The transport signature, if any.
    pub fn sig(&self) -> Option<&Signature> {
        self.sig.as_ref()
    }

    /// The typed payload.
    pub fn message(&self) -> Result<Message> {
        Message::parse(&self.msg_type, &self.payload)
    }

    /// Whether `ts` is within `window_ms` of `now_ms`.
    pub fn is_fresh(&self, now_ms: i64, window_ms: i64) -> bool {
        self.ts.abs_diff(now_ms) <= window_ms.unsigned_abs()
    }

    /// Canonical bytes of the payload: what the transport signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        canonical_bytes(&self.payload)
    }

    /// Attach a signature made elsewhere (a crypto pool) over [`Envelope::signing_bytes`].
    pub fn set_sig(&mut self, sig: Signature) {
        self.sig = Some(sig);
    }

    /// Sign the payload with `key` (RSASSA-PSS, maximum salt).
    pub fn sign(&mut self, key: &PrivateKey) -> Result<()> {
        self.sig = Some(key.sign(&self.signing_bytes())?);
        Ok(())
    }

    /// Builder form of [`Envelope::sign`].
    pub fn signed(mut self, key: &PrivateKey) -> Result<Envelope> {
        self.sign(key)?;
        Ok(self)
    }

    /// Verify the transport signature with `key`: over the canonical payload,
    /// and, when the payload has non-ASCII text, over its unescaped UTF-8 form.
    pub fn verify(&self, key: &PublicKey) -> Result<()> {
        let sig = self.sig.as_ref().ok_or(Error::InvalidSignature)?;
        verify_payload(key, &self.payload, sig)
    }

    /// The key of this frame in the seen-ids cache (SPEC.md §5.5):
    /// SHA-256 over `ts`, `from`, `to` and SHA-256 of the canonical payload.
    pub fn seen_key(&self) -> [u8; 32] {
        let payload_hash = Sha256::digest(self.signing_bytes());
        Sha256::new()
            .chain_update(self.ts.to_be_bytes())
            .chain_update((self.from.len() as u64).to_be_bytes())
            .chain_update(self.from.as_bytes())
            .chain_update((self.to.as_str().len() as u64).to_be_bytes())
            .chain_update(self.to.as_str().as_bytes())
            .chain_update(payload_hash)
            .finalize()
            .into()
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            msg_type: &self.msg_type,
            from: &self.from,
            to: self.to.as_str(),
            ts: self.ts,
            payload: &self.payload,
            sig: self.sig.as_ref().map(Signature::as_str),
        };
        // Serialising strings, an integer and a `Value` cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The envelope fields other than the payload, for logs (no content).
    pub fn summary(&self) -> String {
        format!(
            "{} {}->{} ts={}",
            self.msg_type, self.from, self.to, self.ts
        )
    }
}

/// Verify a signature over a payload object in both accepted canonical forms.
pub fn verify_payload(key: &PublicKey, payload: &Value, sig: &Signature) -> Result<()> {
    let ascii = canonical_bytes(payload);
    if key.verify(&ascii, sig).is_ok() {
        return Ok(());
    }
    // The forms differ for non-ASCII text and also for DEL, which only the
    // ASCII form escapes (a payload can have DEL and nothing non-ASCII).
    let utf8 = canonical_bytes_with(payload, Escaping::Utf8);
    if utf8 != ascii {
        return key.verify(&utf8, sig);
    }
    Err(Error::InvalidSignature)
}

/// Seconds below this are read as seconds (SPEC.md §11); 10^11 ms is 1973.
const SECONDS_BELOW: f64 = 1e11;

/// `ts` as Unix milliseconds: an integer as is; a fractional number is
/// seconds when below 10^11, as some implementations send it (SPEC.md §11).
fn read_ts(n: &serde_json::Number) -> Option<i64> {
    if let Some(ms) = n.as_i64() {
        return Some(ms);
    }
    let f = n.as_f64().filter(|f| f.is_finite())?;
    let ms = if f.abs() < SECONDS_BELOW {
        f * 1000.0
    } else {
        f
    };
    (ms.abs() < 9.0e15).then(|| ms.round() as i64)
}

fn take_string(obj: &Map<String, Value>, field: &'static str, max: usize) -> Result<String> {
    match obj.get(field) {
        None => Err(Error::MissingField(field)),
        Some(Value::String(s)) if s.chars().count() > max => Err(Error::InvalidField {
            field,
            reason: format!("longer than {max} characters"),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::InvalidField {
            field,
            reason: "must be a string".into(),
        }),
    }
}
