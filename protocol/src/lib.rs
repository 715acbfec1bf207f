//! # socp-protocol
//!
//! The SOCP v1.3 wire protocol as this project implements it (`shared/SPEC.md`):
//! pure data and crypto, no I/O, no actix.
//!
//! - [`envelope`]: the envelope, parsed with size limits first; transport
//!   signatures; freshness; the seen-ids key.
//! - [`message`]: one typed payload per message type, and [`Message`].
//! - [`canonical`]: canonical JSON, the bytes a transport signature covers.
//! - [`crypto`]: RSA-4096 keys, OAEP, PSS, base64url, key files.
//! - [`content`]: the byte strings content signatures cover.
//! - [`dialect`]: how a peer speaks v1.3, and what we write to it.
//! - [`id`]: validated identifiers.
//! - [`error`]: wire error codes and the crate's error type.

pub mod canonical;
pub mod content;
pub mod crypto;
pub mod dialect;
pub mod envelope;
pub mod error;
pub mod id;
pub mod message;

pub use crypto::{Base64Url, PrivateKey, PublicKey, Signature};
pub use dialect::Dialect;
pub use envelope::{now_ms, Envelope, Limits};
pub use error::{Error, ErrorCode, Result};
pub use id::{ServerId, To, UserId, Username};
pub use message::{Message, MessageType, Payload};

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
