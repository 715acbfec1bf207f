//! RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label (SPEC.md §2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use rsa::pkcs8::DecodePrivateKey;
use rsa::rand_core::OsRng;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use socp_protocol::crypto::{random_bytes, BLOCK_BYTES, MAX_OAEP_PLAINTEXT};
use socp_protocol::fixtures::{key, key_pem};
use socp_protocol::{Error, ErrorCode};

fn assert_decrypt_error(r: Result<Vec<u8>, Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::Decrypt)),
        "{what}: expected Error::Decrypt, got {r:?}"
    );
}

fn raw_key(n: usize) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(key_pem(n)).unwrap()
}

#[test]
fn round_trips_up_to_the_block_limit() {
    assert_eq!(MAX_OAEP_PLAINTEXT, 446);
    let k = key(7);
    for len in [0, 1, 2, 100, 445, 446] {
        let plaintext = random_bytes(len);
        let ct = k.public_key().encrypt(&plaintext).unwrap();
        assert_eq!(ct.len(), BLOCK_BYTES, "ciphertext length for {len} bytes");
        assert_eq!(k.decrypt(&ct).unwrap(), plaintext, "{len} bytes");
    }
}

#[test]
fn plaintext_over_446_bytes_is_refused() {
    let k = key(7);
    for len in [447, 512, 10_000] {
        match k.public_key().encrypt(&vec![b'x'; len]) {
            Err(e @ Error::PlaintextTooLong { .. }) => {
                assert!(
                    matches!(e, Error::PlaintextTooLong { len: l, max: 446 } if l == len),
                    "{e:?}"
                );
                assert_eq!(e.code(), ErrorCode::TooLarge);
            }
            other => panic!("{len} bytes: expected PlaintextTooLong, got {other:?}"),
        }
    }
}

#[test]
fn encryption_is_randomised() {
    let k = key(7);
    let a = k.public_key().encrypt(b"same").unwrap();
    let b = k.public_key().encrypt(b"same").unwrap();
    assert_ne!(a, b);
    assert_eq!(k.decrypt(&a).unwrap(), b"same");
    assert_eq!(k.decrypt(&b).unwrap(), b"same");
}

#[test]
fn garbage_is_a_decrypt_error() {
    let k = key(7);
    assert_decrypt_error(k.decrypt(&[0u8; 512]), "zeros");
    assert_decrypt_error(k.decrypt(&[0xffu8; 512]), "over the modulus");
    assert_decrypt_error(k.decrypt(&random_bytes(512)), "random");
    let err = k.decrypt(&[0u8; 512]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
}

#[test]
fn wrong_length_is_a_decrypt_error() {
    let k = key(7);
    let ct = k.public_key().encrypt(b"hello").unwrap();
    assert_decrypt_error(k.decrypt(&[]), "empty");
    assert_decrypt_error(k.decrypt(&ct[..1]), "1 byte");
    assert_decrypt_error(k.decrypt(&ct[..511]), "511 bytes");
    let mut long = vec![0u8];
    long.extend_from_slice(&ct);
    assert_decrypt_error(k.decrypt(&long), "513 bytes (leading zero)");
    assert_decrypt_error(k.decrypt(&[ct.as_slice(), &ct].concat()), "1024 bytes");
}

#[test]
fn wrong_key_is_a_decrypt_error() {
    let ct = key(7).public_key().encrypt(b"for key 7").unwrap();
    assert_decrypt_error(key(8).decrypt(&ct), "other key");
}

#[test]
fn tampered_ciphertext_is_a_decrypt_error() {
    let k = key(7);
    let ct = k.public_key().encrypt(b"tamper").unwrap();
    for byte in [0, 1, 100, 255, 511] {
        let mut bad = ct.clone();
        bad[byte] ^= 0x01;
        assert_decrypt_error(k.decrypt(&bad), &format!("byte {byte} flipped"));
    }
}

#[test]
fn parameters_match_the_reference_oaep_sha256() {
    // What the `rsa` crate makes with OAEP-SHA256/MGF1-SHA256 and an empty
    // label is what we decrypt, and the other way round.
    let raw = raw_key(7);
    let raw_pub = RsaPublicKey::from(&raw);
    let k = key(7);
    let theirs = raw_pub
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), b"interop")
        .unwrap();
    assert_eq!(k.decrypt(&theirs).unwrap(), b"interop");
    let ours = k.public_key().encrypt(b"interop").unwrap();
    assert_eq!(
        raw.decrypt(Oaep::new::<Sha256>(), &ours).unwrap(),
        b"interop"
    );
}

#[test]
fn other_paddings_and_labels_are_not_accepted() {
    let raw_pub = RsaPublicKey::from(&raw_key(7));
    let k = key(7);
    let labelled = raw_pub
        .encrypt(
            &mut OsRng,
            Oaep::new_with_label::<Sha256, _>("label"),
            b"labelled",
        )
        .unwrap();
    assert_decrypt_error(k.decrypt(&labelled), "non-empty label");
    let pkcs1 = raw_pub
        .encrypt(&mut OsRng, Pkcs1v15Encrypt, b"pkcs1")
        .unwrap();
    assert_decrypt_error(k.decrypt(&pkcs1), "PKCS#1 v1.5");
}
