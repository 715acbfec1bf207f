//! The fuzz targets' checks (`protocol/fuzz/src/lib.rs`), run under proptest
//! so that CI runs them on every change: the envelope parser on arbitrary
//! bytes and on mutated real frames, canonical JSON on arbitrary JSON text.
//! Run the fuzz targets themselves for longer searches (README, "Fuzzing").
//!
//! The fuzz crate's seed corpus is checked here too (every seed is a valid
//! frame or JSON document and passes its check), so that the seeds stay useful.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use socp_protocol::Envelope;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The files of `protocol/fuzz/seeds/<target>/`, sorted.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(&fuzz_dir().join("seeds").join(target))
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted, with their contents.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("reads the seed");
            (path, bytes)
        })
        .collect()
}

#[test]
fn every_envelope_seed_is_a_typed_frame_and_passes_the_check() {
    let seeds = seeds("envelope");
    assert!(seeds.len() >= 10, "{} seeds", seeds.len());
    for (path, bytes) in seeds {
        let env = Envelope::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        env.message()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checks::envelope(&bytes);
    }
}

#[test]
fn every_canonical_seed_is_json_and_passes_the_check() {
    let seeds = seeds("canonical");
    assert!(seeds.len() >= 5, "{} seeds", seeds.len());
    for (path, bytes) in seeds {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checks::canonical(&bytes);
    }
}

/// Inputs the fuzz targets once failed on (`protocol/fuzz/regressions/<target>/`,
/// see README "Fuzzing"): each passes its check now.
#[test]
fn every_regression_input_passes_its_check() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 2] = [
        ("envelope", checks::envelope),
        ("canonical", checks::canonical),
    ];
    for (target, check) in targets {
        let dir = fuzz_dir().join("regressions").join(target);
        if dir.is_dir() {
            for (_, bytes) in files(&dir) {
                check(&bytes);
            }
        }
    }
}

/// Found by the `canonical` fuzz target (`regressions/canonical/`): DEL is
/// escaped in the ASCII form only, so a payload whose one unusual character is
/// DEL has two forms, and a signature over the UTF-8 form (Python's
/// `ensure_ascii=False`) must verify. It did not: the verifier tried the UTF-8
/// form for non-ASCII text only.
#[test]
fn a_payload_with_del_signed_in_the_utf8_form_verifies() {
    use socp_protocol::canonical::{canonical_bytes, canonical_bytes_with, Escaping};
    use socp_protocol::{envelope::verify_payload, PrivateKey};

    let payload = serde_json::json!({"meta": {"note": "rub\u{7f}out"}});
    let utf8 = canonical_bytes_with(&payload, Escaping::Utf8);
    assert_ne!(utf8, canonical_bytes(&payload));
    checks::canonical(&serde_json::to_vec(&payload).expect("JSON"));

    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/python-interop.json")).expect("JSON");
    let pem = vectors["keys"]["user_alice"]["private_pkcs8_pem"]
        .as_str()
        .expect("a PEM key");
    let key = PrivateKey::from_pem(pem).expect("the interop key");
    let sig = key.sign(&utf8).expect("signs");
    verify_payload(key.public_key(), &payload, &sig).expect("the UTF-8 form verifies");
}

/// A number as JSON text: integers of every size (past 64 bits too), floats in
/// plain and exponent form, and hand-shaped forms (`-0`, `1E5`, `1e-7`, `0.10`).
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
    ]
}

/// One character of a JSON string as written: plain, a short escape, or a
/// `\uXXXX` escape (surrogate pairs for astral characters; either hex case).
fn string_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 _.:*@/-]{1,4}",
        2 => any::<char>()
            .prop_filter("unescaped is allowed", |c| *c >= ' ' && *c != '"' && *c != '\\')
            .prop_map(String::from),
        1 => prop::sample::select(vec!["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"])
            .prop_map(str::to_owned),
        2 => (any::<char>(), any::<bool>()).prop_map(|(c, upper)| {
            let mut units = [0u16; 2];
            c.encode_utf16(&mut units)
                .iter()
                .map(|u| if upper { format!("\\u{u:04X}") } else { format!("\\u{u:04x}") })
                .collect()
        }),
        // A lone surrogate: not a character; the parser must refuse it cleanly.
        1 => (0xd800u16..0xe000).prop_map(|u| format!("\\u{u:04x}")),
    ]
}

fn string_text() -> impl Strategy<Value = String> {
    vec(string_piece(), 0..10).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// Arbitrary JSON text, nested, with some whitespace between tokens.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["null", "true", "false"]).prop_map(str::to_owned),
        number_text(),
        string_text(),
    ];
    let separator = prop::sample::select(vec![",", ", ", " ,\n\t", ",\r\n"]);
    leaf.prop_recursive(6, 96, 6, move |inner| {
        prop_oneof![
            (vec(inner.clone(), 0..6), separator.clone())
                .prop_map(|(items, sep)| format!("[{}]", items.join(sep))),
            (vec((string_text(), inner), 0..6), separator.clone()).prop_map(|(members, sep)| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k} : {v}"))
                    .collect();
                format!("{{{}}}", members.join(sep))
            }),
        ]
    })
}

/// One byte-level change, as a fuzzer makes them.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Cut(Index),
    Insert(Index, String),
    Remove(Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\u",
            "null",
            "-0",
            "1e400",
            "\"payload\"",
            "\"ts\"",
            "\"sig\"",
            "\"type\"",
            "\"kind\"",
            "\"\\ud83d\\ude00\"",
        ])
        .prop_map(str::to_owned),
        json_text(),
    ];
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<Index>().prop_map(Edit::Cut),
        (any::<Index>(), token).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Remove(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Flip(i, x) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Edit::Cut(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Edit::Insert(i, text) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, text.bytes());
        }
        Edit::Remove(a, b) if !bytes.is_empty() => {
            let (a, b) = (a.index(bytes.len()), b.index(bytes.len()));
            bytes.drain(a.min(b)..a.max(b));
        }
        Edit::Flip(..) | Edit::Remove(..) => {}
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn envelope_check_holds_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        checks::envelope(&bytes);
    }

    #[test]
    fn canonical_check_holds_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        checks::canonical(&bytes);
    }

    #[test]
    fn envelope_check_holds_on_mutated_seed_frames(
        seed in any::<Index>(),
        edits in vec(edit(), 0..4),
    ) {
        let seeds = seeds("envelope");
        let mut bytes = seeds[seed.index(seeds.len())].1.clone();
        for edit in &edits {
            apply(&mut bytes, edit);
        }
        checks::envelope(&bytes);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn canonical_check_holds_on_arbitrary_json_text(text in json_text()) {
        checks::canonical(text.as_bytes());
    }

    #[test]
    fn canonical_check_holds_on_arbitrary_json_text_as_a_payload(
        text in json_text(),
        ts in any::<i64>(),
    ) {
        // The same text as the payload of a frame: payload objects go
        // through the envelope check, anything else is refused cleanly.
        let frame = format!(
            "{{\"type\":\"USER_ADVERTISE\",\"from\":\"srv-1\",\"to\":\"*\",\"ts\":{ts},\"payload\":{text}}}"
        );
        checks::envelope(frame.as_bytes());
        let object = format!("{{\"meta\":{text}}}");
        let frame = format!(
            "{{\"type\":\"USER_ADVERTISE\",\"from\":\"srv-1\",\"to\":\"*\",\"ts\":{ts},\"payload\":{object}}}"
        );
        checks::envelope(frame.as_bytes());
    }
}
