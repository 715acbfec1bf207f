//! Content signatures (SPEC.md §6.3–§6.5): the exact bytes each form covers,
//! sign/verify round trips in both forms, and the splitting of long text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use proptest::prelude::*;
use socp_protocol::content::{
    dm_bytes, dm_string, key_share, public_bytes, public_string, sign_dm, sign_public,
    split_for_rsa, split_text, verify_dm, verify_public,
};
use socp_protocol::crypto::MAX_OAEP_PLAINTEXT;
use socp_protocol::fixtures::key;
use socp_protocol::message::KeyShare;
use socp_protocol::{Base64Url, Error, PrivateKey, UserId};

const ALICE: &str = "5d3e1eb8-35f5-465c-be67-3f16b4574ccf";
const BOB: &str = "d36d330a-ff60-4f80-817c-18b84a774801";
const TS: i64 = 1_795_306_358_130;

fn ciphertext_for(recipient: &PrivateKey, text: &str) -> Base64Url {
    Base64Url::from_bytes(&recipient.public_key().encrypt(text.as_bytes()).unwrap())
}

// ---- exact bytes -------------------------------------------------------

#[test]
fn dm_string_is_ciphertext_text_from_to_ts() {
    assert_eq!(
        dm_string("Y2lwaGVy", "alice", "bob", 1_700_000_000_000),
        b"Y2lwaGVyalicebob1700000000000"
    );
    assert_eq!(
        dm_string("-_8", ALICE, BOB, TS),
        format!("-_8{ALICE}{BOB}1795306358130").into_bytes()
    );
    assert_eq!(dm_string("", "a", "b", 0), b"ab0");
    assert_eq!(dm_string("AA", "a", "b", -5), b"AAab-5");
}

#[test]
fn dm_bytes_is_decoded_ciphertext_then_from_to_ts() {
    let mut want = vec![0x00, 0xff, 0x10];
    want.extend_from_slice(b"alicebob42");
    assert_eq!(dm_bytes(&[0x00, 0xff, 0x10], "alice", "bob", 42), want);
    assert_eq!(dm_bytes(&[], "a", "b", 7), b"ab7");
    // The bytes form and the string form differ for the same ciphertext.
    let ct = Base64Url::from_bytes(b"ciphertext");
    assert_ne!(
        dm_bytes(ct.bytes(), "a", "b", 1),
        dm_string(ct.as_str(), "a", "b", 1)
    );
}

#[test]
fn public_string_and_bytes_have_no_recipient() {
    assert_eq!(
        public_string("Y2lwaGVy", "alice", 1_700_000_000_000),
        b"Y2lwaGVyalice1700000000000"
    );
    let mut want = vec![0xfb, 0x00];
    want.extend_from_slice(b"alice-1");
    assert_eq!(public_bytes(&[0xfb, 0x00], "alice", -1), want);
    assert_eq!(
        public_string("-_8", ALICE, TS),
        format!("-_8{ALICE}1795306358130").into_bytes()
    );
}

#[test]
fn key_share_is_canonical_shares_then_creator_pub() {
    let creator = key(0);
    let shares = vec![
        KeyShare {
            member: UserId::parse("bob").unwrap(),
            wrapped_public_channel_key: Base64Url::parse("AAEC").unwrap(),
        },
        KeyShare {
            member: UserId::parse("alice").unwrap(),
            wrapped_public_channel_key: Base64Url::parse("-_8=").unwrap(),
        },
    ];
    let mut want = br#"[{"member":"bob","wrapped_public_channel_key":"AAEC"},{"member":"alice","wrapped_public_channel_key":"-_8="}]"#.to_vec();
    want.extend_from_slice(creator.public_key().to_wire().as_bytes());
    assert_eq!(key_share(&shares, creator.public_key()), want);

    let mut empty = b"[]".to_vec();
    empty.extend_from_slice(creator.public_key().to_wire().as_bytes());
    assert_eq!(key_share(&[], creator.public_key()), empty);
}

// ---- direct messages -----------------------------------------------------

#[test]
fn dm_signature_round_trip_in_the_string_form() {
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "hello bob");
    let sig = sign_dm(&alice, &ct, ALICE, BOB, TS).unwrap();
    verify_dm(alice.public_key(), &sig, &ct, ALICE, BOB, TS).unwrap();
    // What was signed is exactly the string form.
    alice
        .public_key()
        .verify(&dm_string(ct.as_str(), ALICE, BOB, TS), &sig)
        .unwrap();
    assert!(alice
        .public_key()
        .verify(&dm_bytes(ct.bytes(), ALICE, BOB, TS), &sig)
        .is_err());
}

#[test]
fn dm_signature_in_the_bytes_form_verifies() {
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "hello bob");
    let sig = alice.sign(&dm_bytes(ct.bytes(), ALICE, BOB, TS)).unwrap();
    verify_dm(alice.public_key(), &sig, &ct, ALICE, BOB, TS).unwrap();
}

#[test]
fn dm_signature_fails_on_any_changed_field() {
    let (alice, bob, carol) = (key(0), key(1), key(2));
    let ct = ciphertext_for(&bob, "hello bob");
    let other_ct = ciphertext_for(&bob, "hello bob");
    assert_ne!(ct, other_ct);
    for sig in [
        sign_dm(&alice, &ct, ALICE, BOB, TS).unwrap(),
        alice.sign(&dm_bytes(ct.bytes(), ALICE, BOB, TS)).unwrap(),
    ] {
        let pk = alice.public_key();
        let fails = |r: Result<(), Error>, what: &str| {
            assert!(matches!(r, Err(Error::InvalidSignature)), "{what}: {r:?}");
        };
        fails(verify_dm(pk, &sig, &ct, BOB, BOB, TS), "from");
        fails(verify_dm(pk, &sig, &ct, ALICE, ALICE, TS), "to");
        fails(verify_dm(pk, &sig, &ct, ALICE, BOB, TS + 1), "ts");
        fails(verify_dm(pk, &sig, &other_ct, ALICE, BOB, TS), "ciphertext");
        fails(
            verify_dm(carol.public_key(), &sig, &ct, ALICE, BOB, TS),
            "key",
        );
        fails(verify_public(pk, &sig, &ct, ALICE, TS), "as public");
        verify_dm(pk, &sig, &ct, ALICE, BOB, TS).unwrap();
    }
}

// ---- public channel --------------------------------------------------------

#[test]
fn public_signature_round_trip_in_both_forms() {
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "public hello");
    let string_sig = sign_public(&alice, &ct, ALICE, TS).unwrap();
    alice
        .public_key()
        .verify(&public_string(ct.as_str(), ALICE, TS), &string_sig)
        .unwrap();
    let bytes_sig = alice.sign(&public_bytes(ct.bytes(), ALICE, TS)).unwrap();
    for sig in [&string_sig, &bytes_sig] {
        verify_public(alice.public_key(), sig, &ct, ALICE, TS).unwrap();
    }
}

#[test]
fn public_signature_fails_on_any_changed_field() {
    let (alice, bob, carol) = (key(0), key(1), key(2));
    let ct = ciphertext_for(&bob, "public hello");
    let other_ct = ciphertext_for(&carol, "public hello");
    let sig = sign_public(&alice, &ct, ALICE, TS).unwrap();
    let pk = alice.public_key();
    for (what, r) in [
        ("from", verify_public(pk, &sig, &ct, BOB, TS)),
        ("ts", verify_public(pk, &sig, &ct, ALICE, TS - 1)),
        ("ciphertext", verify_public(pk, &sig, &other_ct, ALICE, TS)),
        (
            "key",
            verify_public(carol.public_key(), &sig, &ct, ALICE, TS),
        ),
        ("as dm", verify_dm(pk, &sig, &ct, ALICE, BOB, TS)),
    ] {
        assert!(matches!(r, Err(Error::InvalidSignature)), "{what}: {r:?}");
    }
}

// ---- splitting ---------------------------------------------------------------

/// The properties every split must have.
fn check_split(text: &str, max: usize, pieces: &[&str]) {
    let max = max.max(4);
    assert_eq!(pieces.concat(), text, "concatenation");
    if text.is_empty() {
        assert_eq!(pieces, [""]);
        return;
    }
    for (i, piece) in pieces.iter().enumerate() {
        assert!(!piece.is_empty(), "piece {i} is empty");
        assert!(piece.len() <= max, "piece {i} has {} bytes", piece.len());
        // Greedy: the next character would not have fitted.
        if let Some(next) = pieces.get(i + 1).and_then(|p| p.chars().next()) {
            assert!(
                piece.len() + next.len_utf8() > max,
                "piece {i} ({} bytes) could hold the next character",
                piece.len()
            );
        }
    }
}

#[test]
fn split_empty_text_is_one_empty_piece() {
    assert_eq!(split_text("", 10), [""]);
    assert_eq!(split_for_rsa(""), [""]);
}

#[test]
fn split_ascii_at_the_oaep_limit() {
    assert_eq!(MAX_OAEP_PLAINTEXT, 446);
    let text = "x".repeat(1000);
    let lens: Vec<usize> = split_for_rsa(&text).iter().map(|p| p.len()).collect();
    assert_eq!(lens, [446, 446, 108]);
    assert_eq!(split_for_rsa(&"y".repeat(446)).len(), 1);
    let lens: Vec<usize> = split_for_rsa(&"y".repeat(447))
        .iter()
        .map(|p| p.len())
        .collect();
    assert_eq!(lens, [446, 1]);
}

#[test]
fn split_never_cuts_a_character_straddling_446() {
    // 2-byte é at bytes 445..447.
    let text = format!("{}é", "a".repeat(445));
    assert_eq!(split_for_rsa(&text), ["a".repeat(445), "é".to_owned()]);
    // 4-byte 😀 at bytes 444..448.
    let text = format!("{}😀tail", "a".repeat(444));
    assert_eq!(split_for_rsa(&text), ["a".repeat(444), "😀tail".to_owned()]);
    // 3-byte € ending exactly at 446 fits.
    let text = format!("{}€b", "a".repeat(443));
    assert_eq!(
        split_for_rsa(&text),
        [format!("{}€", "a".repeat(443)), "b".to_owned()]
    );
    // Only 4-byte characters: 111 of them (444 bytes) per piece.
    let text = "😀".repeat(200);
    let pieces = split_for_rsa(&text);
    let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    assert_eq!(lens, [444, 356]);
    check_split(&text, 446, &pieces);
}

#[test]
fn split_with_a_tiny_limit_still_fits_every_character() {
    assert_eq!(split_text("😀😀", 1), ["😀", "😀"]);
    assert_eq!(split_text("abcdef", 0), ["abcd", "ef"]);
    assert_eq!(split_text("é€😀", 4), ["é", "€", "😀"]);
}

#[test]
fn split_pieces_encrypt_and_reassemble() {
    let bob = key(1);
    let text = "Zoë ✓ 😀 中文 ".repeat(60);
    let pieces = split_for_rsa(&text);
    assert!(pieces.len() > 1);
    let mut out = Vec::new();
    for piece in &pieces {
        let ct = bob.public_key().encrypt(piece.as_bytes()).unwrap();
        out.extend_from_slice(&bob.decrypt(&ct).unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), text);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn split_properties_hold(
        text in proptest::collection::vec(
            prop_oneof![
                Just('a'), Just('é'), Just('€'), Just('😀'), Just('\n'), any::<char>()
            ],
            0..700,
        ).prop_map(|chars| chars.into_iter().collect::<String>()),
        max in 0usize..600,
    ) {
        check_split(&text, max, &split_text(&text, max));
        check_split(&text, 446, &split_for_rsa(&text));
    }
}

// ---- the forms other implementations sign (SPEC.md §6.3, §11) -----------

/// The byte strings of each accepted form, written out here rather than
/// taken from the module under test.
fn other_dm_forms(ct: &Base64Url) -> Vec<(&'static str, Vec<u8>)> {
    use sha2::{Digest, Sha256};
    let string = format!("{}{ALICE}{BOB}{TS}", ct.as_str()).into_bytes();
    let mut bytes = ct.bytes().to_vec();
    bytes.extend_from_slice(format!("{ALICE}{BOB}{TS}").as_bytes());
    let json = format!(
        r#"{{"ciphertext":"{}","from":"{ALICE}","to":"{BOB}","ts":{TS}}}"#,
        ct.as_str()
    );
    vec![
        (
            "with | separators",
            format!("{}|{ALICE}|{BOB}|{TS}", ct.as_str()).into_bytes(),
        ),
        ("string form hashed twice", Sha256::digest(&string).to_vec()),
        ("bytes form hashed twice", Sha256::digest(&bytes).to_vec()),
        ("canonical JSON", json.into_bytes()),
    ]
}

#[test]
fn dm_signatures_in_every_form_seen_on_the_wire_verify() {
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "hello bob");
    for (form, signed) in other_dm_forms(&ct) {
        let sig = alice.sign(&signed).unwrap();
        verify_dm(alice.public_key(), &sig, &ct, ALICE, BOB, TS)
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        // Each binds every field: another recipient, time or key fails.
        assert!(
            verify_dm(alice.public_key(), &sig, &ct, ALICE, ALICE, TS).is_err(),
            "{form}"
        );
        assert!(
            verify_dm(alice.public_key(), &sig, &ct, ALICE, BOB, TS + 1).is_err(),
            "{form}"
        );
        assert!(
            verify_dm(key(2).public_key(), &sig, &ct, ALICE, BOB, TS).is_err(),
            "{form}"
        );
    }
}

#[test]
fn public_signatures_in_every_form_seen_on_the_wire_verify() {
    use sha2::{Digest, Sha256};
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "hello all");
    let string = format!("{}{ALICE}{TS}", ct.as_str()).into_bytes();
    let json = format!(
        r#"{{"ciphertext":"{}","from":"{ALICE}","ts":{TS}}}"#,
        ct.as_str()
    );
    for signed in [
        format!("{}|{ALICE}|{TS}", ct.as_str()).into_bytes(),
        Sha256::digest(&string).to_vec(),
        json.into_bytes(),
    ] {
        let sig = alice.sign(&signed).unwrap();
        verify_public(alice.public_key(), &sig, &ct, ALICE, TS).unwrap();
        assert!(verify_public(alice.public_key(), &sig, &ct, BOB, TS).is_err());
    }
}

#[test]
fn a_chunk_signed_over_its_place_in_the_file_verifies_only_there() {
    use socp_protocol::content::verify_chunk;
    let (alice, bob) = (key(0), key(1));
    let ct = ciphertext_for(&bob, "chunk");
    let mut signed = ct.bytes().to_vec();
    signed.extend_from_slice(format!("{ALICE}{BOB}{TS}file-1{}{}", 3, 7).as_bytes());
    let sig = alice.sign(&signed).unwrap();
    let pk = alice.public_key();
    verify_chunk(pk, &sig, &ct, (ALICE, BOB, TS), ("file-1", 3, Some(7))).unwrap();
    // Another place, another file, or no count: refused.
    assert!(verify_chunk(pk, &sig, &ct, (ALICE, BOB, TS), ("file-1", 4, Some(7))).is_err());
    assert!(verify_chunk(pk, &sig, &ct, (ALICE, BOB, TS), ("file-2", 3, Some(7))).is_err());
    assert!(verify_chunk(pk, &sig, &ct, (ALICE, BOB, TS), ("file-1", 3, None)).is_err());
    // A chunk signed like a DM verifies wherever it is.
    let dm = sign_dm(&alice, &ct, ALICE, BOB, TS).unwrap();
    verify_chunk(pk, &dm, &ct, (ALICE, BOB, TS), ("file-1", 3, None)).unwrap();
}
