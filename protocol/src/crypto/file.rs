//! [ext] Fast-mode file chunks between socp clients: one random AES-256 key
//! per file (wrapped with RSA-OAEP for the recipient in FILE_START), each
//! chunk sealed with AES-256-GCM. The nonce is the chunk's index (unique under
//! a key used for one file only), and the associated data binds the file id
//! and the index, so a chunk moved to another place, or into another file,
//! does not open. Written `ciphertext ‖ tag` (16 bytes).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::encoding::random_bytes;
use crate::error::{Error, Result};

/// The cipher's name in FILE_START's `fast.cipher`.
pub const FAST_CIPHER: &str = "aes-256-gcm";

/// The length of a file key.
pub const FILE_KEY_LEN: usize = 32;

/// What a sealed chunk adds to its plaintext (the tag).
pub const FILE_TAG_LEN: usize = 16;

/// One file's AES-256 key.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey([u8; FILE_KEY_LEN]);

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(file_id: &str, index: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + file_id.len() + 8);
    aad.extend_from_slice(b"socp-file-v1\0");
    aad.extend_from_slice(file_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_be_bytes());
    aad
}

impl FileKey {
    /// A fresh random key.
    pub fn random() -> FileKey {
        let mut key = [0u8; FILE_KEY_LEN];
        key.copy_from_slice(&random_bytes(FILE_KEY_LEN));
        FileKey(key)
    }

    /// A key from its 32 bytes (what an unwrapped FILE_START key holds).
    pub fn from_bytes(bytes: &[u8]) -> Result<FileKey> {
        let key: [u8; FILE_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::BadKey(format!("a file key of {} bytes", bytes.len())))?;
        Ok(FileKey(key))
    }

    /// The key's bytes (to wrap for the recipient).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Chunk `index` of file `file_id`, sealed.
    pub fn seal(&self, file_id: &str, index: u64, plain: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(&self.0).map_err(|_| Error::Decrypt)?;
        let aad = aad(file_id, index);
        cipher
            .encrypt(
                Nonce::from_slice(&nonce(index)),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Decrypt)
    }

    /// The plaintext of chunk `index` of file `file_id`, if it is that chunk
    /// and authentic.
    pub fn open(&self, file_id: &str, index: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(&self.0).map_err(|_| Error::Decrypt)?;
        let aad = aad(file_id, index);
        cipher
            .decrypt(
                Nonce::from_slice(&nonce(index)),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Decrypt)
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_opens_only_in_its_place_in_its_file_under_its_key() {
        let key = FileKey::random();
        let plain = vec![7u8; 1000];
        let sealed = key.seal("file-1", 3, &plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + FILE_TAG_LEN);
        assert_eq!(key.open("file-1", 3, &sealed).unwrap(), plain);
        // Reordered: another index.
        assert!(key.open("file-1", 4, &sealed).is_err());
        // From another file (same key, another id; or another file's key).
        assert!(key.open("file-2", 3, &sealed).is_err());
        assert!(FileKey::random().open("file-1", 3, &sealed).is_err());
        // A flipped bit anywhere.
        for i in [0, 500, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key.open("file-1", 3, &bad).is_err(), "bit flip at {i}");
        }
        // Truncated.
        assert!(key.open("file-1", 3, &sealed[..sealed.len() - 1]).is_err());
        assert!(FileKey::from_bytes(&[0; 31]).is_err());
        let again = FileKey::from_bytes(key.bytes()).unwrap();
        assert_eq!(again.open("file-1", 3, &sealed).unwrap(), plain);
    }

    /// Known answer: AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce of
    /// four zero bytes and the big-endian index, checked against Python's
    /// `cryptography` (AESGCM(key).encrypt(nonce, data, aad)).
    #[test]
    fn known_answer() {
        let key = FileKey::from_bytes(&[0x42; 32]).unwrap();
        let sealed = key.seal("f", 1, b"socp").unwrap();
        let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KAT);
    }

    const KAT: &str = "3be4b764ff89a1ecda1fd64c9811be379dce778a";
}
