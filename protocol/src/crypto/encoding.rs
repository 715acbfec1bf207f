//! base64url, hashes and randomness, and the validated binary values of the
//! wire: [`Base64Url`] and [`Signature`].

use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use rsa::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// base64url, no padding on output, padding optional on input.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encode bytes as base64url without padding.
pub fn b64url_encode(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// Decode base64url, with or without `=` padding (when present, padding must
/// be the right amount: one or two `=` completing a multiple of 4).
pub fn b64url_decode(text: &str) -> Result<Vec<u8>> {
    let body = text.trim_end_matches('=');
    let pad = text.len() - body.len();
    if pad > 0 && (pad > 2 || text.len() % 4 != 0 || body.is_empty()) {
        return Err(Error::BadBase64("wrong padding".into()));
    }
    B64URL
        .decode(body)
        .map_err(|e| Error::BadBase64(e.to_string()))
}

/// SHA-256 of `data`, as lower-case hex (the form of `FILE_START.sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    buf
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// A validated base64url value (ciphertexts and the like). It keeps the text
/// as received, because content signatures cover that text, and the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Base64Url {
    text: String,
    bytes: Vec<u8>,
}

impl Base64Url {
    /// Parse base64url text (padding optional).
    pub fn parse(text: &str) -> Result<Self> {
        let bytes = b64url_decode(text)?;
        Ok(Base64Url {
            text: text.to_owned(),
            bytes,
        })
    }

    /// Encode bytes (unpadded).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Base64Url {
            text: b64url_encode(bytes),
            bytes: bytes.to_vec(),
        }
    }

    /// The text as received (or as we encoded it).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The decoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Url({} bytes)", self.bytes.len())
    }
}

impl Serialize for Base64Url {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Base64Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Base64Url::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A PSS signature (transport `sig` or `content_sig`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature(Base64Url);

impl Signature {
    /// Parse base64url signature text.
    pub fn parse(text: &str) -> Result<Self> {
        Base64Url::parse(text).map(Signature)
    }

    /// Wrap raw signature bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Signature(Base64Url::from_bytes(bytes))
    }

    /// The signature bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// base64url text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.as_str();
        write!(f, "Signature({}…)", &text[..text.len().min(12)])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Base64Url::deserialize(d).map(Signature)
    }
}
