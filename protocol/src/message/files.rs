//! File transfer payloads (SPEC.md §6.5).

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use crate::crypto::{Base64Url, PublicKey, Signature};
use crate::error::{Error, Result};

/// Whether a file goes to one user or to every public channel member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    /// `"dm"`: to one user, the envelope `to`.
    Dm,
    /// `"public"`: to every public channel member, one copy per member.
    /// socp clients send `dm` only.
    Public,
}

/// A file id: 1–128 characters of `[A-Za-z0-9._-]` (a UUID v4 from our clients).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileId(String);

impl FileId {
    /// A fresh random file id.
    pub fn random() -> Self {
        FileId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FileId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(FileId(s))
        } else {
            Err(Error::InvalidId(format!(
                "file id {:?}",
                s.chars().take(32).collect::<String>()
            )))
        }
    }
}

impl From<FileId> for String {
    fn from(f: FileId) -> String {
        f.0
    }
}

/// Longest accepted file name, in bytes (the receiver reduces it further).
pub const MAX_FILE_NAME: usize = 255;

fn file_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() || name.len() > MAX_FILE_NAME {
        return Err(serde::de::Error::custom(format!(
            "file name must be 1-{MAX_FILE_NAME} bytes"
        )));
    }
    Ok(name)
}

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let Some(h) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(Some(h.to_ascii_lowercase()))
    } else {
        Err(serde::de::Error::custom("sha256 must be 64 hex digits"))
    }
}

/// `FILE_START {file_id, name, size, sha256, mode}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStart {
    /// Names the transfer: its FILE_CHUNKs and FILE_END carry the same id.
    pub file_id: FileId,
    /// The sender's file name, 1–[`MAX_FILE_NAME`] bytes; the receiver saves
    /// under a safe base name made from it.
    #[serde(deserialize_with = "file_name")]
    pub name: String,
    /// The file's length in bytes (before encryption).
    pub size: u64,
    /// SHA-256 of the whole file, 64 hex digits (lower-cased on input); the
    /// receiver checks it after reassembly. socp clients always send it;
    /// another implementation's may leave it out (then only `size` is checked).
    #[serde(
        default,
        deserialize_with = "sha256_hex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sha256: Option<String>,
    /// Who receives the file; absent reads as `dm`.
    #[serde(default = "dm_mode")]
    pub mode: FileMode,
    /// \[ext\] Fast mode between socp clients: chunks sealed with a file key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<FastFile>,
}

/// \[ext\] FILE_START `fast`: the file's chunks are AES-256-GCM under a
/// random per-file key (see `crypto::file`), up to `chunk` bytes of the file
/// each, instead of RSA-OAEP in 446-byte pieces. Sent only to a client whose
/// advert says it reads them (`meta.files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastFile {
    /// `"aes-256-gcm"`.
    pub cipher: String,
    /// The file key, RSA-OAEP-SHA256-encrypted to the recipient, base64url.
    pub key: Base64Url,
    /// Bytes of the file per chunk (the last may be shorter), at most
    /// [`MAX_FAST_CHUNK`].
    pub chunk: u32,
}

/// The largest fast-mode chunk: 384 KiB of the file (a 512 KiB base64url
/// ciphertext, far inside the 1 MiB frame limit with its envelope).
pub const MAX_FAST_CHUNK: u32 = 384 * 1024;

/// Bytes of fast-mode FILE_CHUNK frames a second socp clients send at most:
/// inside a server's default per-user byte rate (24 MiB/s) with room to chat
/// (three in flight at most between flow-control round trips: 1.5 MiB, inside a
/// server's default 8 MiB of a user's frames held).
pub const FAST_FILE_BYTES_PER_SECOND: f64 = 20.0 * 1024.0 * 1024.0;

fn dm_mode() -> FileMode {
    FileMode::Dm
}

/// `FILE_CHUNK {file_id, index, ciphertext}` plus [ext] `sender_pub` and
/// `content_sig` (over `ciphertext ‖ from ‖ to ‖ ts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileChunk {
    /// The transfer this chunk belongs to.
    pub file_id: FileId,
    /// The chunk's position in the file, counted from 0; the receiver
    /// reassembles by index.
    pub index: u64,
    /// At most 446 bytes of the file encrypted with RSA-OAEP-SHA256 to the
    /// recipient's key, base64url.
    pub ciphertext: Base64Url,
    /// \[ext\] The sender's public key (base64url DER SubjectPublicKeyInfo),
    /// sent with `content_sig`; with both present the sender's server refuses
    /// it (BAD_KEY) unless it is the key the sender identified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_pub: Option<PublicKey>,
    /// \[ext\] RSASSA-PSS-SHA256 by the sender over the UTF-8 of
    /// `ciphertext + from + to + ts`, as for a DM, base64url. When present
    /// with `sender_pub`, the sender's server and the receiving client verify
    /// it; a chunk without it is accepted unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sig: Option<Signature>,
    /// The number of chunks, as another implementation sends it (its chunk
    /// signature covers it); kept so that forwarding keeps the chunk intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// `FILE_END {file_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEnd {
    /// The transfer that is complete.
    pub file_id: FileId,
    /// \[ext\] `"cancelled"`: the sender stopped the transfer and the
    /// receiver drops what arrived. Absent: the file is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}
