//! The two RSA backends and which one is in use; the AWS-LC half of the keys.

/// Which library does the RSA operations (keys are parsed and encoded by the
/// `rsa` crate either way). Both are built with the `aws-lc` feature, so one
/// binary can measure both (`socp-bench`) and tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The pure-Rust `rsa` crate.
    RustCrypto,
    /// AWS-LC, through `aws-lc-rs`.
    #[cfg(feature = "aws-lc")]
    AwsLc,
}

impl Backend {
    /// Every backend built into this binary, the fastest first.
    pub fn all() -> &'static [Backend] {
        #[cfg(feature = "aws-lc")]
        {
            &[Backend::AwsLc, Backend::RustCrypto]
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            &[Backend::RustCrypto]
        }
    }

    /// The fastest backend built in (the default).
    pub fn fastest() -> Backend {
        Backend::all()[0]
    }

    /// Its name, as reports and `--crypto-backend` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rsa",
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => "aws-lc-rs",
        }
    }

    /// The backend named `name`, if built in.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::all().iter().copied().find(|b| b.name() == name)
    }

    /// The backend in use by [`PrivateKey::sign`] and the other operations
    /// that do not name one: the one [`Backend::select`]ed, else the one
    /// the environment variable `SOCP_CRYPTO_BACKEND` names (`rsa` or
    /// `aws-lc-rs`; how CI runs the crypto tests on each), else the fastest.
    pub fn current() -> Backend {
        let chosen = CURRENT.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = Backend::all().iter().copied().find(|b| *b as u8 == chosen) {
            return b;
        }
        static FROM_ENV: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        *FROM_ENV.get_or_init(|| {
            std::env::var("SOCP_CRYPTO_BACKEND")
                .ok()
                .and_then(|name| Backend::from_name(name.trim()))
                .unwrap_or_else(Backend::fastest)
        })
    }

    /// Use this backend from now on, process-wide.
    pub fn select(self) {
        CURRENT.store(self as u8, std::sync::atomic::Ordering::Relaxed);
    }
}

/// [`Backend::current`], as its discriminant (`u8::MAX`: the fastest).
static CURRENT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

#[cfg(feature = "aws-lc")]
pub(super) mod lc {
    //! The `aws-lc-rs` halves of the keys.
    use aws_lc_rs::rsa::{
        KeyPair, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
        PublicEncryptingKey, RsaPssSaltLength, OAEP_SHA256_MGF1SHA256,
    };
    use aws_lc_rs::signature::{
        RsaParameters, RsaSignatureEncoding, UnparsedPublicKey, RSA_PSS_2048_8192_SHA256,
        RSA_PSS_SHA256,
    };

    /// PSS-SHA256 with the maximum salt: what socp signs with (SPEC.md §2).
    static SIGN_MAX_SALT: RsaSignatureEncoding =
        RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
    /// Verification with the maximum salt, then with the digest's length
    /// (the two seen on the wire); other lengths go to the `rsa` crate.
    static VERIFY_MAX_SALT: RsaParameters =
        RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
    static VERIFY_DIGEST_SALT: RsaParameters = RSA_PSS_2048_8192_SHA256;

    /// A private key's AWS-LC objects (from its PKCS#8 DER).
    pub(in crate::crypto) struct Private {
        signer: KeyPair,
        decrypter: OaepPrivateDecryptingKey,
    }

    impl Private {
        pub(in crate::crypto) fn from_pkcs8(der: &[u8]) -> Option<Private> {
            let signer = KeyPair::from_pkcs8(der).ok()?;
            let decrypter =
                OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(der).ok()?).ok()?;
            Some(Private { signer, decrypter })
        }

        pub(in crate::crypto) fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
            let mut sig = vec![0u8; self.signer.public_modulus_len()];
            let rng = aws_lc_rs::rand::SystemRandom::new();
            self.signer
                .sign(&SIGN_MAX_SALT, &rng, message, &mut sig)
                .ok()?;
            Some(sig)
        }

        pub(in crate::crypto) fn decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
            let mut out = vec![0u8; self.decrypter.min_output_size()];
            let plain = self
                .decrypter
                .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
                .ok()?;
            Some(plain.to_vec())
        }
    }

    /// A fresh RSA-4096 key as PKCS#8 DER.
    pub(in crate::crypto) fn generate() -> Option<Vec<u8>> {
        use aws_lc_rs::encoding::AsDer;
        let pair = KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa4096).ok()?;
        let der = pair.as_der().ok()?;
        Some(der.as_ref().to_vec())
    }

    /// Verify with the two common salt lengths; false if neither verifies.
    pub(in crate::crypto) fn verify(spki: &[u8], message: &[u8], sig: &[u8]) -> bool {
        [&VERIFY_MAX_SALT, &VERIFY_DIGEST_SALT]
            .into_iter()
            .any(|params| {
                UnparsedPublicKey::new(params, spki)
                    .verify(message, sig)
                    .is_ok()
            })
    }

    /// OAEP-SHA256 (empty label) to the key `spki`.
    pub(in crate::crypto) fn encrypt(spki: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let key = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).ok()?).ok()?;
        let mut out = vec![0u8; key.ciphertext_size()];
        let ct = key
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
            .ok()?;
        Some(ct.to_vec())
    }
}
