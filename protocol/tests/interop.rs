//! Interoperability vectors made with Python's `cryptography` (OpenSSL), the
//! library most SOCP v1.3 implementations use (`testdata/python-interop.json`,
//! a copy of `shared/vectors/python-interop.json`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use serde_json::Value;
use socp_protocol::canonical::{canonical_bytes, canonical_bytes_with, Escaping};
use socp_protocol::content;
use socp_protocol::crypto::b64url_decode;
use socp_protocol::envelope::verify_payload;
use socp_protocol::{Base64Url, Error, PrivateKey, PublicKey, Signature};

fn vectors() -> Value {
    let text = include_str!("../testdata/python-interop.json");
    serde_json::from_str(text).expect("vector file is JSON")
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn private(v: &Value, name: &str) -> PrivateKey {
    PrivateKey::from_pem(str_at(v, &["keys", name, "private_pkcs8_pem"])).expect("private key")
}

fn public(v: &Value, name: &str) -> PublicKey {
    PublicKey::parse(str_at(v, &["keys", name, "public_der_b64url"])).expect("public key")
}

#[test]
fn canonical_bytes_equal_python_byte_for_byte() {
    let v = vectors();
    let cases = v["canonical_json"].as_array().expect("array");
    assert!(!cases.is_empty());
    for case in cases {
        let want = case["canonical_utf8"].as_str().expect("string");
        let got = canonical_bytes(&case["payload"]);
        assert_eq!(String::from_utf8(got).expect("utf8"), want);
    }
}

#[test]
fn every_transport_signature_verifies_with_both_salt_lengths() {
    let v = vectors();
    let cases = v["transport_signatures"].as_array().expect("array");
    let mut salts = std::collections::BTreeSet::new();
    for case in cases {
        let key = public(&v, case["signer"].as_str().expect("signer"));
        let sig = Signature::parse(case["sig"].as_str().expect("sig")).expect("sig b64");
        verify_payload(&key, &case["payload"], &sig)
            .unwrap_or_else(|e| panic!("salt {} payload {}: {e}", case["salt"], case["payload"]));
        // The strict form alone (ASCII-escaped canonical bytes) verifies too:
        // Python signed exactly the bytes we compute.
        key.verify(&canonical_bytes(&case["payload"]), &sig)
            .expect("ascii canonical form");
        salts.insert(case["salt"].as_str().expect("salt").to_owned());
    }
    assert_eq!(salts.into_iter().collect::<Vec<_>>(), ["32", "max"]);
}

#[test]
fn transport_signature_fails_for_another_key_or_payload() {
    let v = vectors();
    let case = &v["transport_signatures"][0];
    let sig = Signature::parse(case["sig"].as_str().expect("sig")).expect("sig b64");
    let other = public(&v, "user_bob");
    assert!(matches!(
        verify_payload(&other, &case["payload"], &sig),
        Err(Error::InvalidSignature)
    ));
    let mut tampered = case["payload"].clone();
    tampered["user_id"] = Value::String("someone-else".into());
    let signer = public(&v, "server_a");
    assert!(verify_payload(&signer, &tampered, &sig).is_err());
}

#[test]
fn unescaped_utf8_form_is_accepted_when_payload_has_non_ascii() {
    // Sign the UTF-8 form with a vector key (as some implementations do) and
    // check the verifier accepts it.
    let v = vectors();
    let key = private(&v, "server_a");
    let payload = &v["canonical_json"][0]["payload"];
    let utf8 = canonical_bytes_with(payload, Escaping::Utf8);
    assert_ne!(utf8, canonical_bytes(payload), "payload has non-ASCII text");
    let sig = key.sign(&utf8).expect("sign");
    verify_payload(key.public_key(), payload, &sig).expect("utf-8 form verifies");
}

#[test]
fn direct_message_decrypts_and_both_content_sig_forms_verify() {
    let v = vectors();
    let dm = &v["direct_message"];
    let bob = private(&v, str_at(dm, &["recipient_key"]));
    let alice = public(&v, str_at(dm, &["sender_key"]));
    let ct = Base64Url::parse(str_at(dm, &["ciphertext"])).expect("ciphertext");
    let plain = bob.decrypt(ct.bytes()).expect("decrypt");
    assert_eq!(
        std::str::from_utf8(&plain).expect("utf8"),
        str_at(dm, &["plaintext"])
    );

    let (from, to) = (str_at(dm, &["from"]), str_at(dm, &["to"]));
    let ts = dm["ts"].as_i64().expect("ts");
    for form in ["content_sig_string_form", "content_sig_bytes_form"] {
        let sig = Signature::parse(str_at(dm, &[form])).expect("sig");
        content::verify_dm(&alice, &sig, &ct, from, to, ts)
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert!(content::verify_dm(&alice, &sig, &ct, from, to, ts + 1).is_err());
        assert!(content::verify_dm(&alice, &sig, &ct, to, from, ts).is_err());
    }
    // Each form is exactly what its name says.
    let string_sig = Signature::parse(str_at(dm, &["content_sig_string_form"])).expect("sig");
    alice
        .verify(&content::dm_string(ct.as_str(), from, to, ts), &string_sig)
        .expect("string form bytes");
    let bytes_sig = Signature::parse(str_at(dm, &["content_sig_bytes_form"])).expect("sig");
    alice
        .verify(&content::dm_bytes(ct.bytes(), from, to, ts), &bytes_sig)
        .expect("bytes form bytes");
}

#[test]
fn public_message_decrypts_and_content_sig_verifies() {
    let v = vectors();
    let pm = &v["public_message"];
    let bob = private(&v, str_at(pm, &["recipient_key"]));
    let alice = public(&v, str_at(pm, &["sender_key"]));
    let ct = Base64Url::parse(str_at(pm, &["ciphertext"])).expect("ciphertext");
    let plain = bob.decrypt(ct.bytes()).expect("decrypt");
    assert_eq!(
        std::str::from_utf8(&plain).expect("utf8"),
        str_at(pm, &["plaintext"])
    );
    let sig = Signature::parse(str_at(pm, &["content_sig"])).expect("sig");
    let from = str_at(pm, &["from"]);
    let ts = pm["ts"].as_i64().expect("ts");
    content::verify_public(&alice, &sig, &ct, from, ts).expect("verifies");
    alice
        .verify(&content::public_string(ct.as_str(), from, ts), &sig)
        .expect("string form");
    assert!(content::verify_public(&alice, &sig, &ct, "mallory", ts).is_err());
}

#[test]
fn every_oaep_ciphertext_decrypts() {
    let v = vectors();
    let cases = v["oaep"].as_array().expect("array");
    let mut lengths = Vec::new();
    for case in cases {
        let key = private(&v, str_at(case, &["recipient_key"]));
        let want = b64url_decode(str_at(case, &["plaintext_b64url"])).expect("plaintext");
        let ct = b64url_decode(str_at(case, &["ciphertext"])).expect("ciphertext");
        assert_eq!(key.decrypt(&ct).expect("decrypt"), want);
        lengths.push(want.len());
    }
    assert!(
        lengths.contains(&0) && lengths.contains(&446),
        "{lengths:?}"
    );
}

#[test]
fn all_key_encodings_parse_to_the_same_key() {
    let v = vectors();
    for name in ["server_a", "user_alice", "user_bob"] {
        let der = PublicKey::parse(str_at(&v, &["keys", name, "public_der_b64url"])).expect("der");
        let pem = PublicKey::parse(str_at(&v, &["keys", name, "public_pem"])).expect("pem");
        let pem_b64 =
            PublicKey::parse(str_at(&v, &["keys", name, "public_pem_b64url"])).expect("pem b64");
        assert_eq!(der, pem);
        assert_eq!(der, pem_b64);
        assert_eq!(
            der.to_wire(),
            str_at(&v, &["keys", name, "public_der_b64url"])
        );
        let private = private(&v, name);
        assert_eq!(private.public_key(), &der);
    }
}

#[test]
fn encrypted_pkcs8_key_opens_with_its_password() {
    let v = vectors();
    let e = &v["encrypted_private_key"];
    let key = PrivateKey::from_encrypted(
        str_at(e, &["pkcs8_encrypted_pem"]),
        str_at(e, &["password"]),
    )
    .expect("opens");
    assert_eq!(key.public_key(), &public(&v, str_at(e, &["key"])));
    assert!(matches!(
        PrivateKey::from_encrypted(str_at(e, &["pkcs8_encrypted_pem"]), "wrong horse"),
        Err(Error::WrongPassword)
    ));
}

#[test]
fn every_weak_key_is_rejected_with_bad_key() {
    let v = vectors();
    let weak = v["weak_keys_must_be_rejected"].as_object().expect("object");
    assert_eq!(weak.len(), 3);
    for (name, key) in weak {
        let err = PublicKey::parse(key.as_str().expect("string")).expect_err(name);
        assert!(matches!(err, Error::BadKey(_)), "{name}: {err:?}");
        assert_eq!(err.code(), socp_protocol::ErrorCode::BadKey);
    }
}
