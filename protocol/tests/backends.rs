//! Both crypto backends ([`Backend`]) against each other: what one signs or
//! encrypts, the other verifies or decrypts, with the salt and padding
//! SPEC.md §2 fixes. The rest of the crypto suite runs on each backend in
//! turn (CI runs it once as built, once with `SOCP_CRYPTO_BACKEND=rsa`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use socp_protocol::crypto::{Backend, MAX_OAEP_PLAINTEXT, MAX_PSS_SALT};
use socp_protocol::fixtures::{key, key_pem};
use socp_protocol::{Error, Signature};

#[test]
fn every_backend_built_in_is_used_by_the_fixture_keys() {
    let k = key(0);
    for b in Backend::all() {
        assert!(k.supports(*b), "{} refuses a fixture key", b.name());
        assert_eq!(Backend::from_name(b.name()), Some(*b));
    }
    assert_eq!(Backend::fastest(), Backend::all()[0]);
    #[cfg(feature = "aws-lc")]
    assert_eq!(Backend::fastest(), Backend::AwsLc);
}

#[test]
fn what_one_backend_signs_the_other_verifies() {
    let k = key(1);
    for signer in Backend::all() {
        let sig = k.sign_on(*signer, b"across backends").unwrap();
        for verifier in Backend::all() {
            k.public_key()
                .verify_on(*verifier, b"across backends", &sig)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", signer.name(), verifier.name()));
            assert!(matches!(
                k.public_key()
                    .verify_on(*verifier, b"across backendz", &sig),
                Err(Error::InvalidSignature)
            ));
        }
    }
}

#[test]
fn every_backend_signs_with_the_maximum_salt() {
    let k = key(2);
    let raw = RsaPublicKey::from(RsaPrivateKey::from_pkcs8_pem(key_pem(2)).unwrap());
    let digest = Sha256::digest(b"salt");
    for b in Backend::all() {
        let sig = k.sign_on(*b, b"salt").unwrap();
        raw.verify(
            Pss::new_with_salt::<Sha256>(MAX_PSS_SALT),
            &digest,
            sig.bytes(),
        )
        .unwrap_or_else(|e| panic!("{}: not the maximum salt: {e}", b.name()));
    }
}

#[test]
fn every_backend_verifies_any_salt_and_refuses_bit_flips() {
    let raw = RsaPrivateKey::from_pkcs8_pem(key_pem(3)).unwrap();
    let public = key(3).public_key().clone();
    for salt in [0, 20, 32, 64, 200, MAX_PSS_SALT - 1, MAX_PSS_SALT] {
        let digest = Sha256::digest(b"any salt");
        let bytes = raw
            .sign_with_rng(
                &mut rsa::rand_core::OsRng,
                Pss::new_with_salt::<Sha256>(salt),
                &digest,
            )
            .unwrap();
        for b in Backend::all() {
            public
                .verify_on(*b, b"any salt", &Signature::from_bytes(&bytes))
                .unwrap_or_else(|e| panic!("{} salt {salt}: {e}", b.name()));
            for bit in [0, 7, 1000, 4095] {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    public
                        .verify_on(*b, b"any salt", &Signature::from_bytes(&flipped))
                        .is_err(),
                    "{} salt {salt} bit {bit}",
                    b.name()
                );
            }
        }
    }
}

#[test]
fn what_one_backend_encrypts_the_other_decrypts() {
    let k = key(4);
    let longest = vec![0xa5; MAX_OAEP_PLAINTEXT];
    for plain in [&b""[..], b"x", &longest] {
        for enc in Backend::all() {
            let ct = k.public_key().encrypt_on(*enc, plain).unwrap();
            assert_eq!(ct.len(), 512);
            for dec in Backend::all() {
                assert_eq!(
                    k.decrypt_on(*dec, &ct).unwrap(),
                    plain,
                    "{} -> {}",
                    enc.name(),
                    dec.name()
                );
                let mut bad = ct.clone();
                bad[100] ^= 1;
                assert!(matches!(k.decrypt_on(*dec, &bad), Err(Error::Decrypt)));
                assert!(matches!(key(5).decrypt_on(*dec, &ct), Err(Error::Decrypt)));
            }
        }
        assert!(k
            .public_key()
            .encrypt_on(Backend::fastest(), &[0; MAX_OAEP_PLAINTEXT + 1])
            .is_err());
    }
}

/// AWS-LC generates keys in a second or two (the `rsa` crate takes several):
/// the client makes its keys with it. The key is RSA-4096, e = 65537, and
/// works on both backends.
#[cfg(feature = "aws-lc")]
#[test]
fn aws_lc_generates_a_key_both_backends_use() {
    Backend::AwsLc.select();
    let k = socp_protocol::PrivateKey::generate().unwrap();
    for b in Backend::all() {
        assert!(k.supports(*b));
        let sig = k.sign_on(*b, b"fresh").unwrap();
        for v in Backend::all() {
            k.public_key().verify_on(*v, b"fresh", &sig).unwrap();
        }
    }
    // Parsing checks the size and exponent: the wire form parses back.
    let again = socp_protocol::PublicKey::parse(k.public_key().to_wire()).unwrap();
    assert_eq!(&again, k.public_key());
}
