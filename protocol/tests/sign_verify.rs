//! RSASSA-PSS-SHA256 signatures (SPEC.md §2) and envelope transport
//! signatures over the canonical payload (SPEC.md §3, §4).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use rsa::pkcs8::DecodePrivateKey;
use rsa::rand_core::OsRng;
use rsa::{Pss, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use socp_protocol::canonical::{canonical_bytes, canonical_bytes_with, Escaping};
use socp_protocol::crypto::{BLOCK_BYTES, MAX_PSS_SALT};
use socp_protocol::envelope::verify_payload;
use socp_protocol::fixtures::{key, key_pem};
use socp_protocol::message::UserAdvertise;
use socp_protocol::{Envelope, Error, ServerId, Signature, To, UserId};

const SERVER: &str = "e24a7889-23e0-48c0-a18c-4467bf925021";
const USER: &str = "5d3e1eb8-35f5-465c-be67-3f16b4574ccf";
const TS: i64 = 1_795_306_358_130;

fn assert_invalid(r: Result<(), Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::InvalidSignature)),
        "{what}: expected InvalidSignature, got {r:?}"
    );
}

/// The `rsa` crate's view of fixture key `n`, to make signatures our API
/// does not (other salt lengths), as other implementations do.
fn raw_key(n: usize) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(key_pem(n)).unwrap()
}

fn pss_sign(key: &RsaPrivateKey, message: &[u8], salt: usize) -> Signature {
    let digest = Sha256::digest(message);
    let sig = key
        .sign_with_rng(&mut OsRng, Pss::new_with_salt::<Sha256>(salt), &digest)
        .unwrap();
    Signature::from_bytes(&sig)
}

// ---- raw signatures ------------------------------------------------------

#[test]
fn sign_verify_round_trip() {
    let k = key(0);
    for message in [&b""[..], b"hello", &[0u8; 1000][..], "Zoë 😀".as_bytes()] {
        let sig = k.sign(message).unwrap();
        assert_eq!(sig.bytes().len(), BLOCK_BYTES);
        k.public_key().verify(message, &sig).unwrap();
        // Through the wire form too.
        let parsed = Signature::parse(sig.as_str()).unwrap();
        k.public_key().verify(message, &parsed).unwrap();
    }
}

#[test]
fn signatures_are_randomised() {
    let k = key(0);
    let a = k.sign(b"same message").unwrap();
    let b = k.sign(b"same message").unwrap();
    assert_ne!(
        a, b,
        "PSS with a random salt gives a new signature each time"
    );
}

#[test]
fn we_sign_with_the_maximum_salt_length() {
    // Other v1.3 implementations verify with exactly 478 bytes of salt.
    assert_eq!(MAX_PSS_SALT, 478);
    let k = key(0);
    let raw_pub = RsaPublicKey::from(&raw_key(0));
    let sig = k.sign(b"interop").unwrap();
    let digest = Sha256::digest(b"interop");
    raw_pub
        .verify(Pss::new_with_salt::<Sha256>(478), &digest, sig.bytes())
        .expect("verifies with salt length 478");
    assert!(raw_pub
        .verify(Pss::new_with_salt::<Sha256>(32), &digest, sig.bytes())
        .is_err());
}

#[test]
fn any_salt_length_is_accepted() {
    let raw = raw_key(1);
    let public = key(1).public_key().clone();
    for salt in [0, 1, 20, 32, 64, 100, 255, 477, 478] {
        let sig = pss_sign(&raw, b"any salt", salt);
        public
            .verify(b"any salt", &sig)
            .unwrap_or_else(|e| panic!("salt length {salt}: {e}"));
        // The salt length recovered from the signature does not stand in for
        // checking the message.
        assert_invalid(public.verify(b"any salT", &sig), &format!("salt {salt}"));
    }
}

#[test]
fn every_single_bit_flip_fails() {
    // 4096 failed verifications, each two public-key operations (the
    // max-salt check, then salt recovery): ~3 ms each on a loaded 2-core
    // machine, so the bits are shared out over the available cores.
    let k = key(0);
    let message = b"flip me";
    let sig = k.sign(message).unwrap();
    let public = k.public_key();
    public.verify(message, &sig).unwrap();
    assert_eq!(sig.bytes().len() * 8, 4096);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bits: Vec<usize> = (0..4096).collect();
    std::thread::scope(|scope| {
        for chunk in bits.chunks(4096_usize.div_ceil(threads)) {
            let sig = &sig;
            scope.spawn(move || {
                let mut bytes = sig.bytes().to_vec();
                for &bit in chunk {
                    bytes[bit / 8] ^= 1 << (bit % 8);
                    let flipped = Signature::from_bytes(&bytes);
                    assert_invalid(public.verify(message, &flipped), &format!("bit {bit}"));
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
            });
        }
    });
}

#[test]
fn bit_flips_of_a_short_salt_signature_fail() {
    // A signature with a 32-byte salt takes the salt-recovery path.
    let raw = raw_key(2);
    let public = key(2).public_key().clone();
    let sig = pss_sign(&raw, b"short salt", 32);
    public.verify(b"short salt", &sig).unwrap();
    let mut bytes = sig.bytes().to_vec();
    for bit in (0..4096).step_by(7) {
        bytes[bit / 8] ^= 1 << (bit % 8);
        assert_invalid(
            public.verify(b"short salt", &Signature::from_bytes(&bytes)),
            &format!("bit {bit}"),
        );
        bytes[bit / 8] ^= 1 << (bit % 8);
    }
}

#[test]
fn a_signature_by_another_key_fails() {
    let (a, b) = (key(0), key(1));
    let sig = a.sign(b"message").unwrap();
    assert_invalid(b.public_key().verify(b"message", &sig), "other key");
}

#[test]
fn a_tampered_message_fails() {
    let k = key(0);
    let message = b"pay alice 10";
    let sig = k.sign(message).unwrap();
    let public = k.public_key();
    assert_invalid(public.verify(b"pay alice 11", &sig), "changed byte");
    assert_invalid(public.verify(b"pay alice 10 ", &sig), "extended");
    assert_invalid(public.verify(b"pay alice 1", &sig), "truncated");
    assert_invalid(public.verify(b"", &sig), "empty");
}

#[test]
fn wrong_length_and_degenerate_signatures_fail() {
    let k = key(0);
    let sig = k.sign(b"length").unwrap();
    let public = k.public_key();
    let bytes = sig.bytes();
    let mut leading_zero = vec![0u8];
    leading_zero.extend_from_slice(bytes);
    for (what, bad) in [
        ("empty", Vec::new()),
        ("511 bytes", bytes[..511].to_vec()),
        ("513 bytes", leading_zero),
        ("1024 bytes", [bytes, bytes].concat()),
        ("one byte", vec![1]),
        ("zeros", vec![0; 512]),
        ("ones (over the modulus)", vec![0xff; 512]),
        ("1", {
            let mut one = vec![0; 512];
            one[511] = 1;
            one
        }),
    ] {
        assert_invalid(public.verify(b"length", &Signature::from_bytes(&bad)), what);
    }
}

#[test]
fn verify_any_needs_one_matching_message() {
    let k = key(0);
    let sig = k.sign(b"right").unwrap();
    let public = k.public_key();
    public.verify_any(&[b"wrong", b"right"], &sig).unwrap();
    public.verify_any(&[b"right"], &sig).unwrap();
    assert_invalid(public.verify_any(&[b"wrong", b"also wrong"], &sig), "none");
    assert_invalid(public.verify_any(&[], &sig), "no candidates");
}

// ---- envelopes ---------------------------------------------------------------

fn advertise_envelope() -> Envelope {
    let payload = UserAdvertise {
        user_id: UserId::parse(USER).unwrap(),
        server_id: ServerId::parse(SERVER).unwrap(),
        pubkey: key(3).public_key().clone(),
        meta: Some(json!({"display_name": "Zoe", "age": 37})),
        seq: None,
    };
    Envelope::new(&ServerId::parse(SERVER).unwrap(), To::All, TS, &payload)
}

/// A frame as JSON text with its fields replaced by `edit`.
fn edited(env: &Envelope, edit: impl FnOnce(&mut Value)) -> Envelope {
    let mut v: Value = serde_json::from_str(&env.to_json()).unwrap();
    edit(&mut v);
    Envelope::parse(v.to_string().as_bytes()).unwrap()
}

#[test]
fn envelope_sign_verify_round_trip() {
    let server = key(0);
    let env = advertise_envelope().signed(&server).unwrap();
    env.verify(server.public_key()).unwrap();
    let parsed = Envelope::parse(env.to_json().as_bytes()).unwrap();
    assert_eq!(parsed, env);
    parsed.verify(server.public_key()).unwrap();
    assert_eq!(parsed.sig().unwrap().bytes().len(), BLOCK_BYTES);
    // The signature is over the canonical payload.
    server
        .public_key()
        .verify(&canonical_bytes(parsed.payload()), parsed.sig().unwrap())
        .unwrap();
    assert_eq!(parsed.signing_bytes(), canonical_bytes(parsed.payload()));
}

#[test]
fn envelope_signed_by_another_key_fails() {
    let env = advertise_envelope().signed(&key(0)).unwrap();
    assert_invalid(env.verify(key(1).public_key()), "other key");
}

/// A change to a frame's JSON.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn envelope_with_a_tampered_payload_fails() {
    let server = key(0);
    let env = advertise_envelope().signed(&server).unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "changed value",
            Box::new(|v| v["payload"]["meta"]["age"] = json!(38)),
        ),
        (
            "changed id",
            Box::new(|v| v["payload"]["user_id"] = json!("alice")),
        ),
        (
            "added field",
            Box::new(|v| v["payload"]["extra"] = json!(true)),
        ),
        (
            "removed field",
            Box::new(|v| {
                v["payload"].as_object_mut().unwrap().remove("meta");
            }),
        ),
    ];
    for (what, edit) in cases {
        let tampered = edited(&env, edit);
        assert_invalid(tampered.verify(server.public_key()), what);
    }
}

#[test]
fn the_signature_covers_the_payload_only() {
    // SPEC.md §3: `sig` is over the canonical payload; the envelope fields are
    // protected by freshness and the seen-ids cache, not by the signature.
    let server = key(0);
    let env = advertise_envelope().signed(&server).unwrap();
    let moved = edited(&env, |v| {
        v["ts"] = json!(TS + 1);
        v["to"] = json!("public");
        v["unknown_envelope_field"] = json!("x");
    });
    moved.verify(server.public_key()).unwrap();
}

#[test]
fn unknown_payload_fields_are_covered() {
    // A peer signs a payload with a field we do not know; the signature is
    // checked over the payload as received, so it still verifies.
    let peer = key(4);
    let payload = json!({
        "user_id": USER, "server_id": SERVER, "pubkey": key(3).public_key().to_wire(),
        "meta": {}, "future_field": {"z": [1, 2], "a": "é"}
    });
    let sig = peer.sign(&canonical_bytes(&payload)).unwrap();
    let frame = json!({
        "type": "USER_ADVERTISE", "from": SERVER, "to": "*", "ts": TS,
        "payload": payload, "sig": sig.as_str()
    });
    let env = Envelope::parse(frame.to_string().as_bytes()).unwrap();
    env.verify(peer.public_key()).unwrap();
    env.message().unwrap();
    let stripped = edited(&env, |v| {
        v["payload"].as_object_mut().unwrap().remove("future_field");
    });
    assert_invalid(stripped.verify(peer.public_key()), "field dropped");
}

#[test]
fn key_order_and_whitespace_of_the_received_text_do_not_matter() {
    let peer = key(5);
    let payload = json!({"b": 1, "a": {"y": [1, 2], "x": "z"}});
    let sig = peer.sign(&canonical_bytes(&payload)).unwrap();
    let text = format!(
        r#"{{ "sig" : "{}", "payload" : {{ "a" : {{ "x" : "z", "y" : [ 1 , 2 ] }},
            "b" : 1 }}, "ts" : {TS}, "to" : "*", "from" : "{SERVER}", "type" : "HEARTBEAT" }}"#,
        sig.as_str()
    );
    let env = Envelope::parse(text.as_bytes()).unwrap();
    env.verify(peer.public_key()).unwrap();
}

#[test]
fn envelope_accepts_the_utf8_form_signature_for_non_ascii_payloads() {
    let peer = key(6);
    let payload = json!({"display_name": "Zoë ✓ 😀", "nested": {"ключ": "значение"}});
    let frame = |sig: &Signature| {
        json!({"type": "ACK", "from": USER, "to": SERVER, "ts": TS,
               "payload": payload, "sig": sig.as_str()})
        .to_string()
    };
    let utf8_sig = peer
        .sign(&canonical_bytes_with(&payload, Escaping::Utf8))
        .unwrap();
    let ascii_sig = peer.sign(&canonical_bytes(&payload)).unwrap();
    for (what, sig) in [("utf8", &utf8_sig), ("ascii", &ascii_sig)] {
        let env = Envelope::parse(frame(sig).as_bytes()).unwrap();
        env.verify(peer.public_key())
            .unwrap_or_else(|e| panic!("{what} form: {e}"));
        verify_payload(peer.public_key(), &payload, sig).unwrap();
    }
    // A signature over some other serialisation is not accepted.
    let pretty_sig = peer
        .sign(serde_json::to_string_pretty(&payload).unwrap().as_bytes())
        .unwrap();
    let env = Envelope::parse(frame(&pretty_sig).as_bytes()).unwrap();
    assert_invalid(env.verify(peer.public_key()), "pretty form");
}

#[test]
fn envelope_with_a_wrong_length_signature_fails() {
    let server = key(0);
    let env = advertise_envelope().signed(&server).unwrap();
    let sig = env.sig().unwrap().bytes().to_vec();
    for bad in [&sig[..511], &sig[..1], &[sig.as_slice(), &[0]].concat()[..]] {
        let mut e = env.clone();
        e.set_sig(Signature::from_bytes(bad));
        assert_invalid(
            e.verify(server.public_key()),
            &format!("{} bytes", bad.len()),
        );
    }
}

#[test]
fn envelope_without_a_signature_fails() {
    let server = key(0);
    let env = advertise_envelope();
    assert!(env.sig().is_none());
    assert_invalid(env.verify(server.public_key()), "unsigned");
    assert!(!env.to_json().contains("\"sig\""));
    for sig in [None, Some(json!(null)), Some(json!(""))] {
        let parsed = edited(&env, |v| {
            if let Some(sig) = sig {
                v["sig"] = sig;
            }
        });
        assert!(parsed.sig().is_none());
        assert_invalid(parsed.verify(server.public_key()), "no sig");
    }
}

#[test]
fn set_sig_attaches_a_signature_made_elsewhere() {
    let server = key(0);
    let mut env = advertise_envelope();
    let sig = server.sign(&env.signing_bytes()).unwrap();
    env.set_sig(sig.clone());
    assert_eq!(env.sig(), Some(&sig));
    env.verify(server.public_key()).unwrap();
    let mut env2 = advertise_envelope();
    env2.sign(&server).unwrap();
    env2.verify(server.public_key()).unwrap();
}
