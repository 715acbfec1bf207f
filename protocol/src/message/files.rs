//! File transfer payloads (SPEC.md §6.5).

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

use crate::crypto::{Base64Url, PublicKey, Signature};
use crate::error::{Error, Result};

/// Whether a file goes to one user or to every public channel member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    Dm,
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

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let h = String::deserialize(d)?;
    if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(serde::de::Error::custom("sha256 must be 64 hex digits"))
    }
}

/// `FILE_START {file_id, name, size, sha256, mode}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStart {
    pub file_id: FileId,
    #[serde(deserialize_with = "file_name")]
    pub name: String,
    pub size: u64,
    #[serde(deserialize_with = "sha256_hex")]
    pub sha256: String,
    #[serde(default = "dm_mode")]
    pub mode: FileMode,
}

fn dm_mode() -> FileMode {
    FileMode::Dm
}

/// `FILE_CHUNK {file_id, index, ciphertext}` plus [ext] `sender_pub` and
/// `content_sig` (over `ciphertext ‖ from ‖ to ‖ ts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileChunk {
    pub file_id: FileId,
    pub index: u64,
    pub ciphertext: Base64Url,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_pub: Option<PublicKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sig: Option<Signature>,
}

/// `FILE_END {file_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEnd {
    pub file_id: FileId,
}
