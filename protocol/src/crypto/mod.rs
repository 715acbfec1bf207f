//! RSA-4096 crypto exactly as SPEC.md §2: OAEP-SHA256 encryption, PSS-SHA256
//! signatures (signed with the maximum salt length, verified with any), keys as
//! base64url DER SubjectPublicKeyInfo, base64url without padding, and
//! password-protected private key files (encrypted PKCS#8).
//!
//! Two backends do the RSA operations ([`Backend`]): AWS-LC through `aws-lc-rs`
//! (cargo feature `aws-lc`, on by default: ~6x faster signing and decryption,
//! ~11x faster verification and encryption here) and the pure-Rust `rsa`
//! crate, which always parses and encodes keys (SPKI, PKCS#8, PEM, encrypted
//! key files) and is the complete backend with `--no-default-features`. No
//! type of either crate appears in this module's public API.

use std::fmt;
use std::sync::Arc;

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, Pss, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

mod backend;
mod encoding;
pub mod file;
pub mod group;

pub use crate::dialect::KeyEncoding;
#[cfg(feature = "aws-lc")]
use backend::lc;
pub use backend::Backend;
pub use encoding::{
    b64url_decode, b64url_encode, random_bytes, sha256, sha256_hex, Base64Url, Signature,
};

/// The only modulus size we accept, in bits.
pub const KEY_BITS: usize = 4096;
/// The only public exponent we accept.
pub const PUBLIC_EXPONENT: u32 = 65537;
/// Bytes in a modulus, a ciphertext block and a signature.
pub const BLOCK_BYTES: usize = KEY_BITS / 8;
/// Most plaintext bytes one RSA-OAEP-SHA256 block carries: 512 - 2·32 - 2.
pub const MAX_OAEP_PLAINTEXT: usize = BLOCK_BYTES - 2 * 32 - 2;
/// The maximum PSS salt length for a 4096-bit key and SHA-256: what we sign with.
pub const MAX_PSS_SALT: usize = BLOCK_BYTES - 32 - 2;
/// The longest key text we look at (PEM of base64 of PEM is ~1.1 KB).
const MAX_KEY_TEXT: usize = 8 * 1024;
/// Upper bounds on the work a key file may ask of us before it is opened:
/// a hostile `privkey_store` must not make a client spend minutes or gigabytes.
/// scrypt work (N·r·p, memory 128·N·r bytes) allowed: at most 4× what our own
/// files use (log₂N = 17, r = 8, p = 1: 128 MiB), e.g. log₂N = 19 with r = 8.
const MAX_SCRYPT_WORK: u64 = 1 << 22;
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// A validated RSA-4096 public key (exponent 65537). Cheap to clone.
///
/// On the wire it is base64url of the DER SubjectPublicKeyInfo; [`PublicKey::parse`]
/// also accepts PEM and base64url-of-PEM, as other implementations send.
/// Two keys are equal when their DER encodings are.
#[derive(Clone)]
pub struct PublicKey(Arc<PublicKeyInner>);

struct PublicKeyInner {
    key: RsaPublicKey,
    der: Vec<u8>,
    wire: String,
    /// How the key was written where we read it (DER for keys we make).
    written: KeyEncoding,
}

impl PublicKey {
    /// Parse any accepted text form: base64url DER SPKI (the wire form), a PEM
    /// string (`PUBLIC KEY` or `RSA PUBLIC KEY`), or base64url of PEM text.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::BadKey("empty key".into()));
        }
        if text.len() > MAX_KEY_TEXT {
            return Err(Error::BadKey(format!("key text of {} bytes", text.len())));
        }
        if text.starts_with("-----BEGIN") {
            return Self::from_pem(text).map(|k| k.written_as(KeyEncoding::Pem));
        }
        let bytes = b64url_decode(text).map_err(|e| Error::BadKey(e.to_string()))?;
        match bytes.strip_prefix(b"-----BEGIN") {
            Some(_) => {
                let pem = std::str::from_utf8(&bytes)
                    .map_err(|_| Error::BadKey("PEM text is not UTF-8".into()))?;
                Self::from_pem(pem.trim()).map(|k| k.written_as(KeyEncoding::PemBase64Url))
            }
            None => Self::from_der(&bytes),
        }
    }

    /// How this key was written where it was read ([`KeyEncoding::Der`] for
    /// keys made here): the encoding its owner uses, and can read.
    pub fn written(&self) -> KeyEncoding {
        self.0.written
    }

    fn written_as(self, written: KeyEncoding) -> Self {
        let inner = &self.0;
        PublicKey(Arc::new(PublicKeyInner {
            key: inner.key.clone(),
            der: inner.der.clone(),
            wire: inner.wire.clone(),
            written,
        }))
    }

    /// Parse DER: SubjectPublicKeyInfo, or a bare PKCS#1 RSAPublicKey.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let key = RsaPublicKey::from_public_key_der(der)
            .or_else(|_| RsaPublicKey::from_pkcs1_der(der))
            .map_err(|e| Error::BadKey(format!("not an RSA public key: {e}")))?;
        Self::from_rsa(key)
    }

    fn from_pem(pem: &str) -> Result<Self> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| Error::BadKey(format!("not an RSA public key PEM: {e}")))?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: RsaPublicKey) -> Result<Self> {
        check_params(key.n(), key.e())?;
        let der = key
            .to_public_key_der()
            .map_err(|e| Error::BadKey(e.to_string()))?
            .into_vec();
        let wire = b64url_encode(&der);
        Ok(PublicKey(Arc::new(PublicKeyInner {
            key,
            der,
            wire,
            written: KeyEncoding::Der,
        })))
    }

    /// The wire form: base64url of the DER SubjectPublicKeyInfo.
    pub fn to_wire(&self) -> &str {
        &self.0.wire
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }

    /// PEM (`BEGIN PUBLIC KEY`), for people and other tools.
    pub fn to_pem(&self) -> Result<String> {
        self.0
            .key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::BadKey(e.to_string()))
    }

    /// A short, stable fingerprint: the first 16 hex digits of SHA-256(DER).
    pub fn fingerprint(&self) -> String {
        let mut fp = sha256_hex(self.der());
        fp.truncate(16);
        fp
    }

    /// Encrypt at most [`MAX_OAEP_PLAINTEXT`] bytes with RSA-OAEP-SHA256.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.encrypt_on(Backend::current(), plaintext)
    }

    /// [`PublicKey::encrypt`] on `backend`.
    pub fn encrypt_on(&self, backend: Backend, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_OAEP_PLAINTEXT {
            return Err(Error::PlaintextTooLong {
                len: plaintext.len(),
                max: MAX_OAEP_PLAINTEXT,
            });
        }
        match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => lc::encrypt(self.der(), plaintext)
                .ok_or_else(|| Error::Encrypt("AWS-LC could not encrypt".into())),
            Backend::RustCrypto => self
                .0
                .key
                .encrypt(&mut OsRng, Oaep::new::<Sha256>(), plaintext)
                .map_err(|e| Error::Encrypt(e.to_string())),
        }
    }

    /// Verify an RSASSA-PSS-SHA256 signature over `message`, whatever salt
    /// length it was made with.
    ///
    /// The maximum salt length is tried first (what every known implementation
    /// signs with: one public-key operation), then the digest's length;
    /// otherwise the salt length is recovered from the encoded message and
    /// checked with that length.
    pub fn verify(&self, message: &[u8], sig: &Signature) -> Result<()> {
        self.verify_on(Backend::current(), message, sig)
    }

    /// [`PublicKey::verify`] on `backend`.
    pub fn verify_on(&self, backend: Backend, message: &[u8], sig: &Signature) -> Result<()> {
        let sig = sig.bytes();
        if sig.len() != BLOCK_BYTES {
            return Err(Error::InvalidSignature);
        }
        #[cfg(feature = "aws-lc")]
        if backend == Backend::AwsLc && lc::verify(self.der(), message, sig) {
            return Ok(());
        }
        let digest = Sha256::digest(message);
        let key = &self.0.key;
        if backend == Backend::RustCrypto
            && key
                .verify(Pss::new_with_salt::<Sha256>(MAX_PSS_SALT), &digest, sig)
                .is_ok()
        {
            return Ok(());
        }
        match pss_salt_len(key, sig) {
            Some(len) if len != MAX_PSS_SALT => key
                .verify(Pss::new_with_salt::<Sha256>(len), &digest, sig)
                .map_err(|_| Error::InvalidSignature),
            _ => Err(Error::InvalidSignature),
        }
    }

    /// Verify against several candidate messages (the accepted forms of one
    /// signed content); succeeds if any verifies.
    pub fn verify_any(&self, messages: &[&[u8]], sig: &Signature) -> Result<()> {
        if messages.iter().any(|m| self.verify(m, sig).is_ok()) {
            Ok(())
        } else {
            Err(Error::InvalidSignature)
        }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.der() == other.der()
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.der().hash(state);
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.to_wire())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn check_params(n: &BigUint, e: &BigUint) -> Result<()> {
    if n.bits() != KEY_BITS {
        return Err(Error::BadKey(format!(
            "RSA-{} key; only RSA-{KEY_BITS} is accepted",
            n.bits()
        )));
    }
    if *e != BigUint::from(PUBLIC_EXPONENT) {
        return Err(Error::BadKey(format!(
            "public exponent {e}; only {PUBLIC_EXPONENT} is accepted"
        )));
    }
    Ok(())
}

/// Recover the salt length of a PSS signature (RFC 8017 §9.1.2 steps 4–10,
/// with the salt length read off the data block instead of given). `None`
/// when the encoded message is malformed. The signature itself is then checked
/// by the `rsa` crate with the recovered length.
fn pss_salt_len(key: &RsaPublicKey, sig: &[u8]) -> Option<usize> {
    const H_LEN: usize = 32;
    let s = BigUint::from_bytes_be(sig);
    if &s >= key.n() {
        return None;
    }
    let m = rsa::hazmat::rsa_encrypt(key, &s).ok()?.to_bytes_be();
    if m.len() > BLOCK_BYTES {
        return None;
    }
    // emBits = 4095, so emLen = 512 and the top bit of EM must be zero.
    let mut em = vec![0u8; BLOCK_BYTES - m.len()];
    em.extend_from_slice(&m);
    if em[BLOCK_BYTES - 1] != 0xbc {
        return None;
    }
    let db_len = BLOCK_BYTES - H_LEN - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = &rest[..H_LEN];
    let mut db = masked_db.to_vec();
    let mut counter: u32 = 0;
    let mut offset = 0;
    while offset < db_len {
        let block = Sha256::new()
            .chain_update(h)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for (d, m) in db[offset..].iter_mut().zip(block.iter()) {
            *d ^= m;
        }
        offset += H_LEN;
        counter += 1;
    }
    db[0] &= 0x7f;
    let one = db.iter().position(|b| *b != 0)?;
    (db[one] == 0x01).then(|| db_len - one - 1)
}

/// An RSA-4096 private key. Its `Debug` shows only the public fingerprint.
pub struct PrivateKey {
    key: RsaPrivateKey,
    public: PublicKey,
    /// The same key as AWS-LC objects (`None` if AWS-LC refused it: the
    /// `rsa` crate then does everything).
    #[cfg(feature = "aws-lc")]
    lc: Option<lc::Private>,
}

impl PrivateKey {
    /// Generate a fresh RSA-4096 key (e = 65537), on the current backend.
    /// Slow: a second or two with AWS-LC, several with the `rsa` crate.
    pub fn generate() -> Result<Self> {
        #[cfg(feature = "aws-lc")]
        if Backend::current() == Backend::AwsLc {
            let der = lc::generate().ok_or_else(|| Error::KeyGen("AWS-LC failed".into()))?;
            return Self::from_pkcs8_der(&der);
        }
        let key =
            RsaPrivateKey::new_with_exp(&mut OsRng, KEY_BITS, &BigUint::from(PUBLIC_EXPONENT))
                .map_err(|e| Error::KeyGen(e.to_string()))?;
        Self::from_rsa(key)
    }

    /// Parse an unencrypted PEM private key (`PRIVATE KEY` PKCS#8, or
    /// `RSA PRIVATE KEY` PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let pem = pem.trim();
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|e| Error::BadKey(format!("not an RSA private key PEM: {e}")))?;
        Self::from_rsa(key)
    }

    /// Parse an unencrypted PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let key = RsaPrivateKey::from_pkcs8_der(der)
            .map_err(|e| Error::BadKey(format!("not an RSA private key: {e}")))?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: RsaPrivateKey) -> Result<Self> {
        check_params(key.n(), key.e())?;
        key.validate()
            .map_err(|e| Error::BadKey(format!("inconsistent private key: {e}")))?;
        let public = PublicKey::from_rsa(key.to_public_key())?;
        #[cfg(feature = "aws-lc")]
        let lc = key
            .to_pkcs8_der()
            .ok()
            .and_then(|der| lc::Private::from_pkcs8(der.as_bytes()));
        Ok(PrivateKey {
            key,
            public,
            #[cfg(feature = "aws-lc")]
            lc,
        })
    }

    /// Unencrypted PKCS#8 PEM. Secret material: for key files the owner protects.
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| Error::BadKey(e.to_string()))
    }

    /// Password-protected PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`): PBES2 with
    /// scrypt (log₂N = 17, r = 8, p = 1) and AES-256-CBC.
    pub fn to_encrypted_pem(&self, password: &str) -> Result<String> {
        self.key
            .to_pkcs8_encrypted_pem(&mut OsRng, password.as_bytes(), LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| Error::BadKey(e.to_string()))
    }

    /// Open a password-protected PKCS#8 key: PEM text, or base64url of its
    /// DER. Reads PBES2 with scrypt or PBKDF2 (what Python's `cryptography`
    /// writes). A file that asks for absurd KDF work is refused unopened.
    pub fn from_encrypted(text: &str, password: &str) -> Result<Self> {
        let text = text.trim();
        let der = if text.starts_with("-----BEGIN") {
            let (label, doc) = pkcs8::SecretDocument::from_pem(text)
                .map_err(|e| Error::BadKey(format!("bad PEM: {e}")))?;
            if label != "ENCRYPTED PRIVATE KEY" {
                return Err(Error::BadKey(format!(
                    "PEM label {label}, expected ENCRYPTED PRIVATE KEY"
                )));
            }
            doc.as_bytes().to_vec()
        } else {
            b64url_decode(text).map_err(|e| Error::BadKey(e.to_string()))?
        };
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| Error::BadKey(format!("not an encrypted PKCS#8 key: {e}")))?;
        check_kdf_cost(&info.encryption_algorithm)?;
        let plain = info
            .decrypt(password.as_bytes())
            .map_err(|_| Error::WrongPassword)?;
        // A wrong password that happens to unpad correctly yields garbage DER.
        let key =
            RsaPrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|_| Error::WrongPassword)?;
        Self::from_rsa(key)
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Whether `backend` does this key's private operations itself (AWS-LC
    /// could refuse a key the `rsa` crate takes; the `rsa` crate then does
    /// them).
    pub fn supports(&self, backend: Backend) -> bool {
        match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => self.lc.is_some(),
            Backend::RustCrypto => true,
        }
    }

    /// RSASSA-PSS-SHA256 over `message` with the maximum salt length.
    pub fn sign(&self, message: &[u8]) -> Result<Signature> {
        self.sign_on(Backend::current(), message)
    }

    /// [`PrivateKey::sign`] on `backend`.
    pub fn sign_on(&self, backend: Backend, message: &[u8]) -> Result<Signature> {
        match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => match &self.lc {
                Some(lc) => lc
                    .sign(message)
                    .map(|s| Signature::from_bytes(&s))
                    .ok_or_else(|| Error::Sign("AWS-LC could not sign".into())),
                None => self.sign_with_salt(message, MAX_PSS_SALT),
            },
            Backend::RustCrypto => self.sign_with_salt(message, MAX_PSS_SALT),
        }
    }

    /// PSS-SHA256 with the `rsa` crate and a given salt length (tests of
    /// verification with other salts).
    pub(crate) fn sign_with_salt(&self, message: &[u8], salt_len: usize) -> Result<Signature> {
        let digest = Sha256::digest(message);
        self.key
            .sign_with_rng(&mut OsRng, Pss::new_with_salt::<Sha256>(salt_len), &digest)
            .map(|s| Signature::from_bytes(&s))
            .map_err(|e| Error::Sign(e.to_string()))
    }

    /// RSA-OAEP-SHA256 decryption of one block (blinded).
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        self.decrypt_on(Backend::current(), ciphertext)
    }

    /// [`PrivateKey::decrypt`] on `backend`.
    pub fn decrypt_on(&self, backend: Backend, ciphertext: &[u8]) -> Result<Vec<u8>> {
        if ciphertext.len() != BLOCK_BYTES {
            return Err(Error::Decrypt);
        }
        #[cfg(feature = "aws-lc")]
        if let (Backend::AwsLc, Some(lc)) = (backend, &self.lc) {
            return lc.decrypt(ciphertext).ok_or(Error::Decrypt);
        }
        let _ = backend;
        self.key
            .decrypt_blinded(&mut OsRng, Oaep::new::<Sha256>(), ciphertext)
            .map_err(|_| Error::Decrypt)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey(<secret>, public {})",
            self.public.fingerprint()
        )
    }
}

fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Result<()> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let pkcs8::pkcs5::EncryptionScheme::Pbes2(params) = scheme else {
        return Err(Error::BadKey("only PBES2 key files are accepted".into()));
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => Err(Error::BadKey(format!(
            "PBKDF2 with {} iterations",
            p.iteration_count
        ))),
        Kdf::Scrypt(p) => {
            let n = p.cost_parameter;
            let work = n
                .checked_mul(u64::from(p.block_size))
                .and_then(|w| w.checked_mul(u64::from(p.parallelization)));
            let ok = n >= 2
                && n.is_power_of_two()
                && p.block_size >= 1
                && p.parallelization >= 1
                && work.is_some_and(|w| w <= MAX_SCRYPT_WORK);
            if ok {
                Ok(())
            } else {
                Err(Error::BadKey("scrypt parameters out of range".into()))
            }
        }
        Kdf::Pbkdf2(_) => Ok(()),
        _ => Err(Error::BadKey("unsupported key derivation function".into())),
    }
}
