//! Public-channel group keys as another v1.3 implementation uses them: one
//! random AES-256 key per server, wrapped with RSA-OAEP for each member in
//! PUBLIC_CHANNEL_UPDATED, and each public message one AES-256-GCM
//! ciphertext for everyone, written `IV (16 bytes) ‖ tag (16) ‖ ciphertext`,
//! no associated data. socp's own channel is per-member RSA (SPEC.md §6.4);
//! socp clients use this to read, and write to, members of such channels.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};

use super::encoding::random_bytes;
use crate::error::{Error, Result};

/// AES-256-GCM with the 16-byte IV that implementation uses.
type Gcm16 = AesGcm<Aes256, U16>;

/// The length of a group key.
pub const GROUP_KEY_LEN: usize = 32;

const IV_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// A channel's AES-256 group key.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey([u8; GROUP_KEY_LEN]);

impl GroupKey {
    /// A key from its 32 bytes (what an unwrapped wrap holds).
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupKey> {
        let key: [u8; GROUP_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::BadKey(format!("a group key of {} bytes", bytes.len())))?;
        Ok(GroupKey(key))
    }

    /// `plain` encrypted under this key with a fresh IV: `IV ‖ tag ‖ ciphertext`.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let cipher = Gcm16::new_from_slice(&self.0).map_err(|_| Error::Decrypt)?;
        let iv = random_bytes(IV_LEN);
        let sealed = cipher
            .encrypt(Nonce::<U16>::from_slice(&iv), plain)
            .map_err(|_| Error::Decrypt)?;
        // The crate writes `ciphertext ‖ tag`.
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = Vec::with_capacity(IV_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(tag);
        out.extend_from_slice(ct);
        Ok(out)
    }

    /// The plaintext of `IV ‖ tag ‖ ciphertext` under this key, if it is
    /// authentic.
    pub fn open(&self, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() < IV_LEN + TAG_LEN {
            return Err(Error::Decrypt);
        }
        let (iv, rest) = data.split_at(IV_LEN);
        let (tag, ct) = rest.split_at(TAG_LEN);
        let mut sealed = Vec::with_capacity(rest.len());
        sealed.extend_from_slice(ct);
        sealed.extend_from_slice(tag);
        let cipher = Gcm16::new_from_slice(&self.0).map_err(|_| Error::Decrypt)?;
        cipher
            .decrypt(Nonce::<U16>::from_slice(iv), sealed.as_slice())
            .map_err(|_| Error::Decrypt)
    }
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_only_with_its_key_and_untouched() {
        let key = GroupKey::from_bytes(&[7u8; 32]).expect("a key");
        let other = GroupKey::from_bytes(&[8u8; 32]).expect("a key");
        let sealed = key.seal(b"hello all").expect("seals");
        assert_eq!(sealed.len(), 16 + 16 + 9);
        assert_eq!(key.open(&sealed).expect("opens"), b"hello all");
        assert!(other.open(&sealed).is_err());
        for at in [0, 20, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(key.open(&bad).is_err(), "a flipped bit at {at}");
        }
        assert!(key.open(&sealed[..31]).is_err());
        assert!(GroupKey::from_bytes(&[0u8; 31]).is_err());
    }

    /// Made with Python's `cryptography` (AES-GCM, a 16-byte IV, `IV ‖ tag ‖
    /// ciphertext`), as that implementation writes a public message.
    #[test]
    fn a_message_written_by_pythons_cryptography_opens() {
        let key: Vec<u8> = (0u8..32).collect();
        let key = GroupKey::from_bytes(&key).expect("a key");
        let sealed = crate::crypto::b64url_decode(
            "ZGVmZ2hpamtsbW5vcHFycxenryN7AtduNuz4F67Xu1Ww1i89izRBqt2Ujf0vsswKLhk9sryMiGqr7nEC",
        )
        .expect("base64url");
        assert_eq!(
            key.open(&sealed).expect("opens"),
            b"hello from the other channel"
        );
    }
}
