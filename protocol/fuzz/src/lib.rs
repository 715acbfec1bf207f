//! The properties the fuzz targets check, one function per target. The same
//! file is compiled into `protocol/tests/fuzz_props.rs`, which runs these
//! functions under proptest in CI; the fuzz targets run them under libFuzzer.
//!
//! Each function takes arbitrary bytes, returns quietly when they are not
//! input of its kind, and panics (a finding) when a property fails.

use serde_json::Value;
use socp_protocol::canonical::{canonical_bytes, canonical_bytes_with, has_non_ascii, Escaping};
use socp_protocol::envelope::TS_WINDOW_MS;
use socp_protocol::{Envelope, Limits, Message};

/// `data` as a frame from the network.
///
/// - `Envelope::parse` and everything a receiver does with what it accepts
///   (typed payload, ids, freshness, seen-ids key, log summary) never panic;
/// - the canonical payload (the bytes transport signatures cover) is ASCII and
///   a fixed point: canonical(parse(canonical(p))) == canonical(p);
/// - the envelope survives its own serialisation: the same fields, the same
///   signing bytes, the same seen-ids key;
/// - a typed payload that parses is written back in a form that parses again
///   to the same payload.
pub fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::parse(data) else {
        return;
    };
    let _ = env.known_type();
    let _ = env.summary();
    let _ = env.is_fresh(0, TS_WINDOW_MS);
    let _ = (env.from_user(), env.from_server(), env.to().as_str());
    let seen = env.seen_key();

    let signing = env.signing_bytes();
    assert!(signing.is_ascii(), "canonical payload is ASCII");
    let reparsed: Value = serde_json::from_slice(&signing).expect("the canonical payload is JSON");
    assert_eq!(
        &reparsed,
        env.payload(),
        "the canonical payload means the same"
    );
    assert_eq!(
        canonical_bytes(&reparsed),
        signing,
        "the canonical payload is a fixed point"
    );

    // Our own JSON of a frame may be longer than the frame (`1e5` is written
    // `100000.0`), so it is re-parsed without the size limit.
    let unlimited = Limits {
        max_frame_bytes: usize::MAX,
        ..Limits::default()
    };
    let again = Envelope::parse_with(env.to_json().as_bytes(), &unlimited)
        .expect("our own JSON of a frame re-parses");
    assert_eq!(again, env, "the envelope survives its own JSON");
    assert_eq!(again.signing_bytes(), signing);
    assert_eq!(again.seen_key(), seen);

    if let Ok(message) = env.message() {
        let written = message.to_payload();
        let read = Message::parse(env.msg_type(), &written)
            .expect("a typed payload we write parses again");
        assert_eq!(
            read.to_payload(),
            written,
            "a typed payload is a fixed point of parse and write"
        );
    }
}

/// `data` as JSON text.
///
/// - canonical JSON of any value is ASCII, is JSON, means the same value, and
///   is a fixed point: canonical(parse(canonical(x))) == canonical(x);
/// - the UTF-8 form (the other form verifiers accept) means the same value and
///   differs from the ASCII form exactly when the value has non-ASCII text or
///   DEL (only the ASCII form escapes DEL, as Python's `ensure_ascii` does).
pub fn canonical(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let ascii = canonical_bytes(&value);
    assert!(ascii.is_ascii(), "canonical JSON is ASCII");
    let back: Value = serde_json::from_slice(&ascii).expect("canonical JSON is JSON");
    assert_eq!(back, value, "canonical JSON means the same value");
    assert_eq!(
        canonical_bytes(&back),
        ascii,
        "canonical JSON is a fixed point"
    );

    let utf8 = canonical_bytes_with(&value, Escaping::Utf8);
    let back_utf8: Value = serde_json::from_slice(&utf8).expect("the UTF-8 form is JSON");
    assert_eq!(back_utf8, value, "the UTF-8 form means the same value");
    assert_eq!(canonical_bytes(&back_utf8), ascii);
    assert_eq!(
        utf8 != ascii,
        has_non_ascii(&value) || has_del(&value),
        "the forms differ exactly for non-ASCII text and DEL"
    );
}

/// Whether any string (key or value) in `value` has DEL, which the ASCII form
/// escapes and the UTF-8 form does not.
fn has_del(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\u{7f}'),
        Value::Array(items) => items.iter().any(has_del),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\u{7f}') || has_del(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}
