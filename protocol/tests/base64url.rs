//! base64url as SPEC.md §2 has it: URL-safe alphabet, no padding on output,
//! padding optional on input, nothing else accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use socp_protocol::crypto::{b64url_decode, b64url_encode};
use socp_protocol::{Base64Url, Error, ErrorCode, Signature};

fn assert_bad_base64(text: &str) {
    match b64url_decode(text) {
        Err(e @ Error::BadBase64(_)) => assert_eq!(e.code(), ErrorCode::BadRequest),
        other => panic!("{text:?}: expected BadBase64, got {other:?}"),
    }
    assert!(
        matches!(Base64Url::parse(text), Err(Error::BadBase64(_))),
        "Base64Url::parse({text:?})"
    );
    assert!(
        matches!(Signature::parse(text), Err(Error::BadBase64(_))),
        "Signature::parse({text:?})"
    );
}

/// Deterministic test bytes (no RNG needed).
fn bytes(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(151).wrapping_add(0xfb))
        .collect()
}

#[test]
fn empty_input() {
    assert_eq!(b64url_encode(b""), "");
    assert_eq!(b64url_decode("").unwrap(), Vec::<u8>::new());
    let v = Base64Url::parse("").unwrap();
    assert!(v.bytes().is_empty());
    assert_eq!(v.as_str(), "");
}

#[test]
fn one_two_and_three_bytes() {
    // 0xfb 0xff 0xbf use the two URL-safe characters `-` and `_`.
    let cases: &[(&[u8], &str, &str)] = &[
        (&[0xfb], "-w", "-w=="),
        (&[0xfb, 0xff], "-_8", "-_8="),
        (&[0xfb, 0xff, 0xbf], "-_-_", "-_-_"),
        (&[0xfb, 0xff, 0xbf, 0x00], "-_-_AA", "-_-_AA=="),
        (b"hello world", "aGVsbG8gd29ybGQ", "aGVsbG8gd29ybGQ="),
    ];
    for (raw, unpadded, padded) in cases {
        assert_eq!(b64url_encode(raw), *unpadded);
        assert_eq!(b64url_decode(unpadded).unwrap(), *raw, "{unpadded}");
        assert_eq!(b64url_decode(padded).unwrap(), *raw, "{padded}");
    }
}

#[test]
fn padded_input_is_accepted() {
    assert_eq!(b64url_decode("-w==").unwrap(), [0xfb]);
    assert_eq!(b64url_decode("-_8=").unwrap(), [0xfb, 0xff]);
    let v = Base64Url::parse("-_8=").unwrap();
    assert_eq!(v.bytes(), [0xfb, 0xff]);
    // The text is kept as received: content signatures cover it.
    assert_eq!(v.as_str(), "-_8=");
}

#[test]
fn output_is_unpadded_url_safe_and_round_trips() {
    for n in 0..=100 {
        let raw = bytes(n);
        let text = b64url_encode(&raw);
        assert_eq!(text.len(), (4 * n).div_ceil(3), "length for {n} bytes");
        assert!(
            text.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{text}"
        );
        assert_eq!(b64url_decode(&text).unwrap(), raw);
        let v = Base64Url::from_bytes(&raw);
        assert_eq!(v.as_str(), text);
        assert_eq!(v.bytes(), raw);
        assert_eq!(Base64Url::parse(&text).unwrap(), v);
    }
}

#[test]
fn standard_alphabet_is_rejected() {
    for text in ["+w", "/w", "-_+_", "ab/c", "+/+/", "-_8+"] {
        assert_bad_base64(text);
    }
}

#[test]
fn whitespace_is_rejected() {
    for text in [
        " -w", "-w ", "-w\n", "-_\t-_", "-_-_\r\n", "-_ -_", "\u{a0}-w",
    ] {
        assert_bad_base64(text);
    }
}

#[test]
fn invalid_trailing_bits_are_rejected() {
    // One byte leaves 4 unused bits in the second character, two bytes leave 2:
    // they must be zero (`-w`, `-_8`), or two texts would decode to one value.
    for text in ["-x", "-_9", "-x==", "-_9=", "AB", "AAB"] {
        assert_bad_base64(text);
    }
}

#[test]
fn impossible_lengths_are_rejected() {
    for text in ["A", "AAAAA", "-_-_A", "A==="] {
        assert_bad_base64(text);
    }
}

#[test]
fn padding_is_only_accepted_at_the_end() {
    for text in ["=-w", "-w==-w", "-=w", "-_=8"] {
        assert_bad_base64(text);
    }
}

#[test]
fn non_ascii_is_rejected() {
    for text in ["é", "-wé", "ｗｗ", "-w\u{0}", "AA\u{7f}A", "😀😀"] {
        assert_bad_base64(text);
    }
}

#[test]
fn serde_keeps_the_received_text_and_rejects_bad_input() {
    let v: Base64Url = serde_json::from_str("\"-_8=\"").unwrap();
    assert_eq!(v.bytes(), [0xfb, 0xff]);
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"-_8=\"");
    for bad in ["\"+w\"", "\"-w \"", "42", "null", "[1]"] {
        assert!(serde_json::from_str::<Base64Url>(bad).is_err(), "{bad}");
        assert!(serde_json::from_str::<Signature>(bad).is_err(), "{bad}");
    }
}

#[test]
fn debug_does_not_print_the_content() {
    let v = Base64Url::from_bytes(b"secret ciphertext");
    let debug = format!("{v:?}");
    assert!(!debug.contains(v.as_str()), "{debug}");
    assert!(debug.contains("17"), "{debug}");
}
