//! Wire error codes (SPEC.md §6.6) and the crate's error type.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `code` of an `ERROR` frame.
///
/// Every code of SPEC.md §6.6 has a variant; a code we do not know is kept as
/// [`ErrorCode::Other`] so it can be shown to a person as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `USER_NOT_FOUND`: the recipient is online nowhere in the mesh, or a
    /// LOGIN_REQUEST names no registered user.
    UserNotFound,
    /// `INVALID_SIG`: a transport or content signature did not verify.
    InvalidSig,
    /// `BAD_KEY`: a key is unreadable or not RSA-4096 with exponent 65537, or
    /// a `sender_pub` is not the key its sender identified with.
    BadKey,
    /// `TIMEOUT`: the other side did not answer in time. socp servers do not
    /// send it.
    Timeout,
    /// `UNKNOWN_TYPE`: the envelope `type` (or a COMMAND's `cmd`) is not
    /// known; the connection stays open.
    UnknownType,
    /// `NAME_IN_USE`: the user id or username is already attached or
    /// registered.
    NameInUse,
    /// [ext] malformed frame: bad JSON, wrong types, missing fields.
    BadRequest,
    /// [ext] frame or field over a size limit.
    TooLarge,
    /// [ext] sender exceeded its frame rate.
    RateLimited,
    /// [ext] registered user without a valid signed hello, or a failed login.
    AuthFailed,
    /// A code this implementation does not know.
    Other(String),
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::UserNotFound => "USER_NOT_FOUND",
            ErrorCode::InvalidSig => "INVALID_SIG",
            ErrorCode::BadKey => "BAD_KEY",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::NameInUse => "NAME_IN_USE",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Other(s) => s,
        }
    }

    /// Parse a wire code; never fails (unknown codes become [`ErrorCode::Other`]).
    pub fn parse(s: &str) -> ErrorCode {
        match s {
            "USER_NOT_FOUND" => ErrorCode::UserNotFound,
            "INVALID_SIG" => ErrorCode::InvalidSig,
            "BAD_KEY" => ErrorCode::BadKey,
            "TIMEOUT" => ErrorCode::Timeout,
            "UNKNOWN_TYPE" => ErrorCode::UnknownType,
            "NAME_IN_USE" => ErrorCode::NameInUse,
            "BAD_REQUEST" => ErrorCode::BadRequest,
            "TOO_LARGE" => ErrorCode::TooLarge,
            "RATE_LIMITED" => ErrorCode::RateLimited,
            "AUTH_FAILED" => ErrorCode::AuthFailed,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// A sentence a person understands, for clients to show.
    pub fn describe(&self) -> &str {
        match self {
            ErrorCode::UserNotFound => "that user is not online anywhere in the network",
            ErrorCode::InvalidSig => "a signature did not verify",
            ErrorCode::BadKey => "the key was rejected (RSA-4096 with exponent 65537 is required)",
            ErrorCode::Timeout => "the other side did not answer in time",
            ErrorCode::UnknownType => "the server does not know that kind of message",
            ErrorCode::NameInUse => "that name or id is already in use",
            ErrorCode::BadRequest => "the message was malformed",
            ErrorCode::TooLarge => "the message was too large",
            ErrorCode::RateLimited => "too many messages too fast; slow down",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// How a [`Error::BadKey`] message starts (payload parsing recognises it).
pub(crate) const BAD_KEY_PREFIX: &str = "bad key: ";

/// Everything that can go wrong in this crate. Each variant maps to a wire
/// [`ErrorCode`] through [`Error::code`], so a server can answer any parse or
/// crypto failure with the right `ERROR` frame.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame over the size limit (TOO_LARGE).
    #[error("input of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The frame is not valid JSON (BAD_REQUEST).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The frame's JSON is not an object (BAD_REQUEST).
    #[error("the frame is not a JSON object")]
    NotAnObject,
    /// A required envelope field is absent (BAD_REQUEST).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// An envelope field, or the payload as a whole, has the wrong type or
    /// an invalid value (BAD_REQUEST).
    #[error("field `{field}`: {reason}")]
    InvalidField {
        /// The field's wire name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload does not fit its message type: a missing field, a wrong
    /// type, a bad value (BAD_REQUEST).
    #[error("invalid payload for {msg_type}: {reason}")]
    InvalidPayload {
        /// The envelope `type`.
        msg_type: String,
        /// The deserialiser's description of the problem.
        reason: String,
    },
    /// An envelope `type` not known here, cut to 64 characters
    /// (UNKNOWN_TYPE).
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// An id, username, file id or `to` not of the accepted form
    /// (BAD_REQUEST).
    #[error("invalid identifier: {0}")]
    InvalidId(String),
    /// Text that is not base64url, or is wrongly padded (BAD_REQUEST).
    #[error("invalid base64url: {0}")]
    BadBase64(String),
    /// A key that cannot be read or is not RSA-4096 with exponent 65537, or
    /// a private key file that is malformed or asks for too much key
    /// derivation work (BAD_KEY).
    #[error("bad key: {0}")]
    BadKey(String),
    /// A signature that does not verify, or a missing `sig` where one is
    /// required (INVALID_SIG).
    #[error("signature does not verify")]
    InvalidSignature,
    /// Plaintext longer than one RSA-OAEP block carries (TOO_LARGE).
    #[error("plaintext of {len} bytes is over the {max}-byte RSA-OAEP block limit")]
    PlaintextTooLong {
        /// The plaintext's length in bytes.
        len: usize,
        /// The most one block carries, in bytes (446).
        max: usize,
    },
    /// RSA-OAEP decryption failed: not one 512-byte block, the wrong key, or
    /// damaged ciphertext (BAD_REQUEST).
    #[error("decryption failed")]
    Decrypt,
    /// RSA-OAEP encryption failed (BAD_REQUEST).
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// Signing failed (BAD_REQUEST).
    #[error("signing failed: {0}")]
    Sign(String),
    /// A password-protected private key did not open: wrong password or
    /// damaged file (AUTH_FAILED).
    #[error("wrong password or damaged key file")]
    WrongPassword,
    /// Key generation failed (BAD_REQUEST).
    #[error("key generation failed: {0}")]
    KeyGen(String),
    /// A `ts` outside the accepted window (BAD_REQUEST).
    #[error("timestamp {ts} is outside the accepted window")]
    Stale {
        /// The rejected `ts` (Unix ms).
        ts: i64,
    },
}

impl Error {
    /// The wire error code that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::TooLarge { .. } | Error::PlaintextTooLong { .. } => ErrorCode::TooLarge,
            Error::UnknownType(_) => ErrorCode::UnknownType,
            Error::BadKey(_) => ErrorCode::BadKey,
            Error::InvalidSignature => ErrorCode::InvalidSig,
            Error::WrongPassword => ErrorCode::AuthFailed,
            Error::Json(_)
            | Error::NotAnObject
            | Error::MissingField(_)
            | Error::InvalidField { .. }
            | Error::InvalidPayload { .. }
            | Error::InvalidId(_)
            | Error::BadBase64(_)
            | Error::Decrypt
            | Error::Encrypt(_)
            | Error::Sign(_)
            | Error::KeyGen(_)
            | Error::Stale { .. } => ErrorCode::BadRequest,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for s in [
            "USER_NOT_FOUND",
            "INVALID_SIG",
            "BAD_KEY",
            "TIMEOUT",
            "UNKNOWN_TYPE",
            "NAME_IN_USE",
            "BAD_REQUEST",
            "TOO_LARGE",
            "RATE_LIMITED",
            "AUTH_FAILED",
        ] {
            let code = ErrorCode::parse(s);
            assert!(!matches!(code, ErrorCode::Other(_)), "{s} is a known code");
            assert_eq!(code.as_str(), s);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn unknown_code_is_kept_as_is() {
        let code: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(code, ErrorCode::Other("SOMETHING_NEW".into()));
        assert_eq!(code.to_string(), "SOMETHING_NEW");
        assert_eq!(code.describe(), "SOMETHING_NEW");
    }

    #[test]
    fn errors_map_to_wire_codes() {
        assert_eq!(Error::InvalidSignature.code(), ErrorCode::InvalidSig);
        assert_eq!(Error::BadKey("x".into()).code(), ErrorCode::BadKey);
        assert_eq!(
            Error::TooLarge { size: 2, limit: 1 }.code(),
            ErrorCode::TooLarge
        );
        assert_eq!(
            Error::UnknownType("X".into()).code(),
            ErrorCode::UnknownType
        );
        assert_eq!(Error::MissingField("ts").code(), ErrorCode::BadRequest);
    }
}
