//! The byte strings that content signatures cover (SPEC.md §6.3–§6.5), so that
//! client and server cannot disagree, and the splitting of long text.
//!
//! We sign the *string* form; verifiers also accept the other forms found in
//! other implementations (SPEC.md §6.3, §11: [`dm_forms`]).

use serde_json::Value;

use crate::canonical::canonical_bytes;
use crate::crypto::{sha256, Base64Url, PrivateKey, PublicKey, Signature, MAX_OAEP_PLAINTEXT};
use crate::error::Result;
use crate::message::KeyShare;

/// DM and file chunk, string form: UTF-8 of `ciphertext_b64url + from + to + ts`.
pub fn dm_string(ciphertext: &str, from: &str, to: &str, ts: i64) -> Vec<u8> {
    format!("{ciphertext}{from}{to}{ts}").into_bytes()
}

/// DM and file chunk, bytes form: decoded ciphertext, then UTF-8 of `from + to + ts`.
pub fn dm_bytes(ciphertext: &[u8], from: &str, to: &str, ts: i64) -> Vec<u8> {
    let mut out = ciphertext.to_vec();
    out.extend_from_slice(format!("{from}{to}{ts}").as_bytes());
    out
}

/// Public channel, string form: UTF-8 of `ciphertext_b64url + from + ts`.
pub fn public_string(ciphertext: &str, from: &str, ts: i64) -> Vec<u8> {
    format!("{ciphertext}{from}{ts}").into_bytes()
}

/// Public channel, bytes form: decoded ciphertext, then UTF-8 of `from + ts`.
pub fn public_bytes(ciphertext: &[u8], from: &str, ts: i64) -> Vec<u8> {
    let mut out = ciphertext.to_vec();
    out.extend_from_slice(format!("{from}{ts}").as_bytes());
    out
}

/// PUBLIC_CHANNEL_KEY_SHARE: canonical JSON of the `shares` array, then the
/// UTF-8 of `creator_pub` in its wire form.
pub fn key_share(shares: &[KeyShare], creator_pub: &PublicKey) -> Vec<u8> {
    let shares = serde_json::to_value(shares).unwrap_or(Value::Null);
    let mut out = canonical_bytes(&shares);
    out.extend_from_slice(creator_pub.to_wire().as_bytes());
    out
}

/// Sign a DM (or file chunk) in the string form.
pub fn sign_dm(
    key: &PrivateKey,
    ciphertext: &Base64Url,
    from: &str,
    to: &str,
    ts: i64,
) -> Result<Signature> {
    key.sign(&dm_string(ciphertext.as_str(), from, to, ts))
}

/// Verify a DM (or file chunk) content signature in any accepted form
/// ([`dm_forms`]).
pub fn verify_dm(
    key: &PublicKey,
    sig: &Signature,
    ciphertext: &Base64Url,
    from: &str,
    to: &str,
    ts: i64,
) -> Result<()> {
    verify_forms(key, sig, &dm_forms(ciphertext, from, to, ts))
}

/// Verify a file chunk's content signature: any DM form, or the form that
/// also covers the chunk's place in its file, `ciphertext bytes ‖ from ‖ to
/// ‖ ts ‖ file_id ‖ index ‖ total` (another implementation's), when the
/// chunk count is known.
pub fn verify_chunk(
    key: &PublicKey,
    sig: &Signature,
    ciphertext: &Base64Url,
    (from, to, ts): (&str, &str, i64),
    (file_id, index, total): (&str, u64, Option<u64>),
) -> Result<()> {
    let mut forms = dm_forms(ciphertext, from, to, ts);
    if let Some(total) = total {
        let mut placed = ciphertext.bytes().to_vec();
        placed.extend_from_slice(format!("{from}{to}{ts}{file_id}{index}{total}").as_bytes());
        forms.insert(0, placed);
    }
    verify_forms(key, sig, &forms)
}

/// Every byte string a DM content signature is accepted over (SPEC.md §6.3,
/// §11), most common first: (a) the string form, (b) the bytes form, the
/// string with `|` between its parts, (c) the SHA-256 digest of (a) or of (b)
/// (signed as a message, so hashed twice), and (d) the canonical JSON of
/// `{ciphertext, from, to, ts}`.
pub fn dm_forms(ciphertext: &Base64Url, from: &str, to: &str, ts: i64) -> Vec<Vec<u8>> {
    let json = serde_json::json!({
        "ciphertext": ciphertext.as_str(), "from": from, "to": to, "ts": ts,
    });
    forms(ciphertext, &[from, to, &ts.to_string()], &json)
}

/// Every byte string a public channel content signature is accepted over: the
/// forms of [`dm_forms`] without `to`.
pub fn public_forms(ciphertext: &Base64Url, from: &str, ts: i64) -> Vec<Vec<u8>> {
    let json = serde_json::json!({
        "ciphertext": ciphertext.as_str(), "from": from, "ts": ts,
    });
    forms(ciphertext, &[from, &ts.to_string()], &json)
}

fn forms(ciphertext: &Base64Url, parts: &[&str], json: &Value) -> Vec<Vec<u8>> {
    let tail = parts.concat();
    let string = format!("{}{tail}", ciphertext.as_str()).into_bytes();
    let mut bytes = ciphertext.bytes().to_vec();
    bytes.extend_from_slice(tail.as_bytes());
    let mut piped = ciphertext.as_str().to_owned();
    for part in parts {
        piped.push('|');
        piped.push_str(part);
    }
    let hashed_string = sha256(&string).to_vec();
    let hashed_bytes = sha256(&bytes).to_vec();
    vec![
        string,
        bytes,
        piped.into_bytes(),
        hashed_string,
        hashed_bytes,
        canonical_bytes(json),
    ]
}

fn verify_forms(key: &PublicKey, sig: &Signature, forms: &[Vec<u8>]) -> Result<()> {
    let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
    key.verify_any(&forms, sig)
}

/// Sign a public channel message in the string form.
pub fn sign_public(
    key: &PrivateKey,
    ciphertext: &Base64Url,
    from: &str,
    ts: i64,
) -> Result<Signature> {
    key.sign(&public_string(ciphertext.as_str(), from, ts))
}

/// Verify a public channel content signature in any accepted form
/// ([`public_forms`]).
pub fn verify_public(
    key: &PublicKey,
    sig: &Signature,
    ciphertext: &Base64Url,
    from: &str,
    ts: i64,
) -> Result<()> {
    verify_forms(key, sig, &public_forms(ciphertext, from, ts))
}

/// Split text into pieces of at most `max_bytes` UTF-8 bytes, on character
/// boundaries (SPEC.md §6.3). Empty text is one empty piece. `max_bytes` is
/// raised to 4 if smaller, so every character fits.
pub fn split_text(text: &str, max_bytes: usize) -> Vec<&str> {
    let max = max_bytes.max(4);
    if text.is_empty() {
        return vec![text];
    }
    let mut pieces = Vec::with_capacity(text.len() / max + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + max).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// [`split_text`] at the RSA-OAEP block limit.
pub fn split_for_rsa(text: &str) -> Vec<&str> {
    split_text(text, MAX_OAEP_PLAINTEXT)
}
