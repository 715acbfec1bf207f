//! Keys (SPEC.md §2): every accepted public key form normalises to the wire
//! form; weak and malformed keys are BAD_KEY; private keys never show in
//! `Debug`; password-protected key files round-trip and refuse hostile KDFs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use std::collections::HashSet;
use std::sync::OnceLock;

use pkcs8::der::Encode;
use pkcs8::pkcs5::pbes2::{self, Kdf, Pbkdf2Params, Pbkdf2Prf, ScryptParams};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use socp_protocol::crypto::{b64url_decode, b64url_encode};
use socp_protocol::fixtures::{key, key_pem};
use socp_protocol::{Error, ErrorCode, PrivateKey, PublicKey};

const INTEROP: &str = include_str!("../testdata/python-interop.json");
const WEAK_RSA2048: &str = include_str!("../testdata/weak-rsa2048.pem");
const WEAK_RSA4096_E3: &str = include_str!("../testdata/weak-rsa4096-e3.pem");

fn interop() -> Value {
    serde_json::from_str(INTEROP).unwrap()
}

fn assert_bad_key<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e @ Error::BadKey(_)) => assert_eq!(e.code(), ErrorCode::BadKey, "{what}"),
        other => panic!("{what}: expected BadKey, got {other:?}"),
    }
}

/// The PEM body (base64 lines) of a PEM document.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

// ---- public key forms --------------------------------------------------------

#[test]
fn every_accepted_form_normalises_to_the_same_wire_form() {
    let k = key(0);
    let public = k.public_key();
    let wire = public.to_wire().to_owned();
    let pem = public.to_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");

    let raw = RsaPublicKey::from_public_key_der(public.der()).unwrap();
    let pkcs1_der = raw.to_pkcs1_der().unwrap();
    let pkcs1_pem = raw.to_pkcs1_pem(LineEnding::LF).unwrap();
    assert!(pkcs1_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));

    let mut padded = wire.clone();
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    assert_ne!(padded, wire, "a 550-byte DER needs padding");

    let forms = [
        ("wire", wire.clone()),
        ("padded wire", padded),
        ("PEM", pem.clone()),
        ("PEM with CRLF", pem.replace('\n', "\r\n")),
        ("PEM without final newline", pem.trim_end().to_owned()),
        ("base64url of PEM", b64url_encode(pem.as_bytes())),
        ("surrounding whitespace", format!("  \n{wire}\n\t ")),
        ("PKCS#1 PEM", pkcs1_pem.clone()),
        (
            "base64url of PKCS#1 DER",
            b64url_encode(pkcs1_der.as_bytes()),
        ),
        (
            "base64url of PKCS#1 PEM",
            b64url_encode(pkcs1_pem.as_bytes()),
        ),
    ];
    let mut set = HashSet::new();
    for (what, text) in &forms {
        let parsed = PublicKey::parse(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(parsed.to_wire(), wire, "{what}");
        assert_eq!(parsed.der(), public.der(), "{what}");
        assert_eq!(&parsed, public, "{what}");
        assert_eq!(parsed.fingerprint(), public.fingerprint(), "{what}");
        set.insert(parsed);
    }
    assert_eq!(set.len(), 1, "equal keys hash alike");
}

#[test]
fn python_key_forms_normalise_to_the_der_form() {
    let v = interop();
    for name in ["server_a", "user_alice", "user_bob"] {
        let k = &v["keys"][name];
        let der_b64url = k["public_der_b64url"].as_str().unwrap();
        for form in ["public_der_b64url", "public_pem", "public_pem_b64url"] {
            let parsed = PublicKey::parse(k[form].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}.{form}: {e}"));
            assert_eq!(parsed.to_wire(), der_b64url, "{name}.{form}");
        }
        let private = PrivateKey::from_pem(k["private_pkcs8_pem"].as_str().unwrap()).unwrap();
        assert_eq!(private.public_key().to_wire(), der_b64url, "{name}");
    }
}

#[test]
fn the_wire_form_is_unpadded_base64url_of_the_spki_der() {
    let public = key(1).public_key().clone();
    let wire = public.to_wire();
    assert!(!wire.contains(['=', '+', '/']), "{wire}");
    assert_eq!(b64url_decode(wire).unwrap(), public.der());
    // SEQUENCE { SEQUENCE { rsaEncryption OID, NULL }, BIT STRING }
    assert_eq!(&public.der()[..4], &[0x30, 0x82, 0x02, 0x22]);
    assert_eq!(public.der().len(), 550);
    let fp = public.fingerprint();
    assert_eq!(fp.len(), 16);
    assert!(fp
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(format!("{public:?}").contains(&fp));
    assert_ne!(public, *key(2).public_key());
}

#[test]
fn serde_uses_the_wire_form_and_validates() {
    let public = key(0).public_key().clone();
    let json = serde_json::to_string(&public).unwrap();
    assert_eq!(json, format!("\"{}\"", public.to_wire()));
    let from_pem: PublicKey =
        serde_json::from_value(Value::String(public.to_pem().unwrap())).unwrap();
    assert_eq!(from_pem, public);
    let weak = interop()["weak_keys_must_be_rejected"]["rsa2048_public_der_b64url"].clone();
    assert!(serde_json::from_value::<PublicKey>(weak).is_err());
    assert!(serde_json::from_str::<PublicKey>("42").is_err());
}

// ---- weak keys -------------------------------------------------------------------

#[test]
fn weak_public_keys_from_python_are_bad_key() {
    let v = interop();
    let weak = v["weak_keys_must_be_rejected"].as_object().unwrap();
    assert_eq!(weak.len(), 3);
    for (name, text) in weak {
        let text = text.as_str().unwrap();
        assert_bad_key(PublicKey::parse(text), name);
        // The same key as PEM, and as base64url of PEM.
        let raw = RsaPublicKey::from_public_key_der(&b64url_decode(text).unwrap()).unwrap();
        let pem = raw.to_public_key_pem(LineEnding::LF).unwrap();
        assert_bad_key(PublicKey::parse(&pem), &format!("{name} as PEM"));
        assert_bad_key(
            PublicKey::parse(&b64url_encode(pem.as_bytes())),
            &format!("{name} as base64url of PEM"),
        );
        assert_bad_key(
            PublicKey::from_der(&b64url_decode(text).unwrap()),
            &format!("{name} from_der"),
        );
    }
}

#[test]
fn weak_private_keys_are_bad_key() {
    for (what, pem) in [("rsa2048", WEAK_RSA2048), ("rsa4096 e=3", WEAK_RSA4096_E3)] {
        assert_bad_key(PrivateKey::from_pem(pem), what);
        // Their public halves too.
        let raw = RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let der = raw.to_public_key().to_public_key_der().unwrap();
        assert_bad_key(
            PublicKey::parse(&b64url_encode(der.as_bytes())),
            &format!("{what} public"),
        );
    }
    let e3 = RsaPrivateKey::from_pkcs8_pem(WEAK_RSA4096_E3).unwrap();
    assert_eq!(
        e3.n().bits(),
        4096,
        "the e=3 key is rejected for e, not size"
    );
    assert_eq!(*e3.e(), BigUint::from(3u32));
}

#[test]
fn other_sizes_and_exponents_are_bad_key() {
    let raw = RsaPublicKey::from_public_key_der(key(0).public_key().der()).unwrap();
    let n = raw.n().clone();
    let cases = [
        ("e = 3", n.clone(), 3u32),
        ("e = 65539", n.clone(), 65539),
        ("e = 17", n.clone(), 17),
        ("e = 1", n.clone(), 1),
        ("4095-bit n", &n >> 1usize, 65537),
        ("4097-bit n", (&n << 1usize) + 1u32, 65537),
        ("8192-bit n", &n * &n, 65537),
    ];
    for (what, n, e) in cases {
        let key = RsaPublicKey::new_unchecked(n, BigUint::from(e));
        let der = key.to_public_key_der().unwrap();
        assert_bad_key(PublicKey::parse(&b64url_encode(der.as_bytes())), what);
        assert_bad_key(PublicKey::from_der(der.as_bytes()), what);
    }
}

// ---- malformed input -------------------------------------------------------------

#[test]
fn malformed_keys_are_bad_key() {
    let public = key(0).public_key().clone();
    let der = public.der().to_vec();
    let pem = public.to_pem().unwrap();
    let standard_b64 = pem_body(&pem);
    assert!(
        standard_b64.contains(['+', '/']),
        "the case needs the standard alphabet"
    );
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("whitespace", " \n\t ".into()),
        ("text", "not a key".into()),
        ("bad base64", "***".into()),
        ("standard base64 DER", standard_b64),
        ("truncated DER", b64url_encode(&der[..100])),
        ("DER minus one byte", b64url_encode(&der[..der.len() - 1])),
        (
            "DER plus trailing byte",
            b64url_encode(&[der.as_slice(), &[0]].concat()),
        ),
        ("random bytes", b64url_encode(&[0x5a; 550])),
        (
            "PEM without END",
            pem.lines().take(5).collect::<Vec<_>>().join("\n"),
        ),
        ("PEM cut in half", pem[..pem.len() / 2].to_owned()),
        ("PEM with a bad body character", pem.replacen('A', "*", 1)),
        (
            "certificate label",
            pem.replace("PUBLIC KEY", "CERTIFICATE"),
        ),
        ("private key PEM", key_pem(0).to_owned()),
        ("BEGIN only", "-----BEGIN PUBLIC KEY-----".into()),
        (
            "base64url of garbage PEM",
            b64url_encode(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        ),
        (
            "base64url of non-UTF-8 PEM",
            b64url_encode(b"-----BEGIN\xff\xfe"),
        ),
    ];
    for (what, text) in &cases {
        assert_bad_key(PublicKey::parse(text), what);
    }
}

#[test]
fn huge_key_text_is_refused() {
    for text in [
        "A".repeat(100 * 1024),
        format!("-----BEGIN PUBLIC KEY-----\n{}", "A".repeat(100 * 1024)),
        format!(
            "{}{}",
            key(0).public_key().to_wire(),
            " x".repeat(50 * 1024)
        ),
    ] {
        assert_bad_key(PublicKey::parse(&text), "100 KB");
    }
}

// ---- private keys ----------------------------------------------------------------

#[test]
fn private_key_pem_forms() {
    let k = key(3);
    let raw = RsaPrivateKey::from_pkcs8_pem(key_pem(3)).unwrap();
    let pkcs1 = raw.to_pkcs1_pem(LineEnding::LF).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let from_pkcs1 = PrivateKey::from_pem(&pkcs1).unwrap();
    assert_eq!(from_pkcs1.public_key(), k.public_key());
    let pkcs8 = k.to_pkcs8_pem().unwrap();
    assert_eq!(
        PrivateKey::from_pem(&pkcs8).unwrap().public_key(),
        k.public_key()
    );
    let (label, der) = pkcs8::der::pem::decode_vec(pkcs8.as_bytes()).unwrap();
    assert_eq!(label, "PRIVATE KEY");
    assert_eq!(
        PrivateKey::from_pkcs8_der(&der).unwrap().public_key(),
        k.public_key()
    );
    // A signature by the re-read key verifies with the original public key.
    let reread = PrivateKey::from_pem(&pkcs8).unwrap();
    let sig = reread.sign(b"same key").unwrap();
    k.public_key().verify(b"same key", &sig).unwrap();
}

#[test]
fn malformed_private_keys_are_bad_key() {
    let public_pem = key(0).public_key().to_pem().unwrap();
    let pem = key_pem(0);
    for (what, text) in [
        ("empty", ""),
        ("text", "not a key"),
        ("public key PEM", public_pem.as_str()),
        ("truncated", &pem[..pem.len() / 2]),
    ] {
        assert_bad_key(PrivateKey::from_pem(text), what);
    }
    assert_bad_key(PrivateKey::from_pkcs8_der(&[0x30, 0x00]), "empty DER");
    assert_bad_key(PrivateKey::from_pkcs8_der(b"junk"), "junk DER");
}

#[test]
fn private_key_debug_shows_no_secret_material() {
    let k = key(5);
    let body = pem_body(key_pem(5));
    for debug in [format!("{k:?}"), format!("{k:#?}")] {
        assert!(!debug.contains("BEGIN"), "{debug}");
        assert!(!debug.contains("MII"), "{debug}");
        let chars: Vec<char> = body.chars().collect();
        for window in chars.windows(8) {
            let piece: String = window.iter().collect();
            assert!(!debug.contains(&piece), "Debug contains {piece:?}: {debug}");
        }
        assert!(debug.contains(&k.public_key().fingerprint()), "{debug}");
    }
}

// ---- password-protected key files ---------------------------------------------

const PASSWORD: &str = "correct horse battery staple";

/// One encrypted key file for the whole test binary: scrypt is slow on purpose.
fn encrypted() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| key(9).to_encrypted_pem(PASSWORD).unwrap())
}

#[test]
fn encrypted_key_round_trip() {
    let pem = encrypted();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{pem}"
    );
    let plain_body = pem_body(&key(9).to_pkcs8_pem().unwrap());
    assert!(!pem.contains(&plain_body[..64]));
    let k = PrivateKey::from_encrypted(pem, PASSWORD).unwrap();
    assert_eq!(k.public_key(), key(9).public_key());
}

#[test]
fn encrypted_key_as_base64url_der() {
    let (label, der) = pkcs8::der::pem::decode_vec(encrypted().as_bytes()).unwrap();
    assert_eq!(label, "ENCRYPTED PRIVATE KEY");
    let k = PrivateKey::from_encrypted(&b64url_encode(&der), PASSWORD).unwrap();
    assert_eq!(k.public_key(), key(9).public_key());
}

#[test]
fn encrypted_key_uses_pbes2_scrypt_aes256() {
    let (_, der) = pkcs8::der::pem::decode_vec(encrypted().as_bytes()).unwrap();
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice()).unwrap();
    let pkcs8::pkcs5::EncryptionScheme::Pbes2(params) = info.encryption_algorithm else {
        panic!("not PBES2");
    };
    match params.kdf {
        Kdf::Scrypt(s) => {
            // What we write must be what we (and other peers) will open: at
            // least the documented log2 N = 15, at most our own limit of 20.
            // (It is 2^17 today, scrypt's `Params::recommended()`, while the
            // doc comment of `to_encrypted_pem` says 15.)
            assert!(s.cost_parameter.is_power_of_two());
            assert!(
                (1 << 15..=1 << 20).contains(&s.cost_parameter),
                "N = {}",
                s.cost_parameter
            );
            assert_eq!(s.block_size, 8);
            assert_eq!(s.parallelization, 1);
        }
        other => panic!("KDF {other:?}"),
    }
    assert!(matches!(
        params.encryption,
        pbes2::EncryptionScheme::Aes256Cbc { .. }
    ));
}

#[test]
fn wrong_password_is_wrong_password() {
    match PrivateKey::from_encrypted(encrypted(), "wrong password") {
        Err(e @ Error::WrongPassword) => assert_eq!(e.code(), ErrorCode::AuthFailed),
        other => panic!("expected WrongPassword, got {other:?}"),
    }
}

#[test]
fn non_encrypted_input_to_from_encrypted_is_bad_key() {
    assert_bad_key(
        PrivateKey::from_encrypted(key_pem(0), PASSWORD),
        "unencrypted PEM",
    );
    assert_bad_key(PrivateKey::from_encrypted("", PASSWORD), "empty");
    assert_bad_key(PrivateKey::from_encrypted("***", PASSWORD), "bad base64");
    assert_bad_key(
        PrivateKey::from_encrypted(&b64url_encode(b"junk"), PASSWORD),
        "junk DER",
    );
    let cut = &encrypted()[..encrypted().len() / 2];
    assert_bad_key(PrivateKey::from_encrypted(cut, PASSWORD), "truncated PEM");
}

/// base64url DER of an encrypted PKCS#8 file with the given KDF (the data
/// is junk: these files must be refused before any decryption work).
fn key_file_with(kdf: Kdf<'_>) -> String {
    let iv = [7u8; 16];
    let info = pkcs8::EncryptedPrivateKeyInfo {
        encryption_algorithm: pkcs8::pkcs5::EncryptionScheme::Pbes2(pbes2::Parameters {
            kdf,
            encryption: pbes2::EncryptionScheme::Aes256Cbc { iv: &iv },
        }),
        encrypted_data: &[0u8; 64],
    };
    b64url_encode(&info.to_der().unwrap())
}

fn scrypt(cost: u64, r: u16, p: u16) -> Kdf<'static> {
    Kdf::Scrypt(ScryptParams {
        salt: &[1u8; 16],
        cost_parameter: cost,
        block_size: r,
        parallelization: p,
        key_length: None,
    })
}

#[test]
fn hostile_kdf_parameters_are_refused_unopened() {
    let cases = [
        ("scrypt N = 2^30", scrypt(1 << 30, 8, 1)),
        ("scrypt N = 2^21", scrypt(1 << 21, 8, 1)),
        ("scrypt N not a power of two", scrypt(3 << 14, 8, 1)),
        ("scrypt r = 60000", scrypt(1 << 10, 60_000, 1)),
        ("scrypt p = 1000", scrypt(1 << 10, 8, 1000)),
        ("scrypt r = 0", scrypt(1 << 10, 0, 1)),
        (
            "PBKDF2 with 2^31 iterations",
            Kdf::Pbkdf2(Pbkdf2Params {
                salt: &[1u8; 16],
                iteration_count: 1 << 31,
                key_length: None,
                prf: Pbkdf2Prf::HmacWithSha256,
            }),
        ),
    ];
    // Refused before any key derivation runs (these would take minutes or
    // gigabytes if they ran).
    for (what, kdf) in cases {
        assert_bad_key(
            PrivateKey::from_encrypted(&key_file_with(kdf), PASSWORD),
            what,
        );
    }
}

/// `check_kdf_cost` computes `u64::BITS - 1 - cost.leading_zeros()` before it
/// checks the cost: for a scrypt cost parameter of 0 (which DER allows) that
/// is `63 - 64`, an arithmetic overflow that panics in debug builds. The key
/// store comes from the network (`LOGIN_CHALLENGE.privkey_store`).
#[test]
fn scrypt_cost_zero_is_bad_key_not_a_panic() {
    let file = key_file_with(scrypt(0, 8, 1));
    let result = std::panic::catch_unwind(|| PrivateKey::from_encrypted(&file, PASSWORD));
    let result = result.expect("from_encrypted must not panic on network input");
    assert_bad_key(result, "scrypt N = 0");
}
