//! Known-answer tests for canonical JSON (SPEC.md §4).
//!
//! Every expected string below was produced by CPython 3.11 with
//! `json.dumps(json.loads(input), sort_keys=True, separators=(",", ":"))`
//! (and `ensure_ascii=False` for the [`Escaping::Utf8`] form), then pasted here.
//! Python is the reference because it is what most v1.3 peers sign with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use serde_json::{json, Value};
use socp_protocol::canonical::{
    canonical_bytes, canonical_bytes_with, canonical_object, has_non_ascii, Escaping,
};

/// Canonical text of JSON `input` (parsed as a received payload would be).
fn ascii(input: &str) -> String {
    let value: Value = serde_json::from_str(input).expect("test input is JSON");
    String::from_utf8(canonical_bytes(&value)).expect("canonical bytes are UTF-8")
}

/// The UTF-8 (unescaped) canonical form of JSON `input`.
fn utf8(input: &str) -> String {
    let value: Value = serde_json::from_str(input).expect("test input is JSON");
    String::from_utf8(canonical_bytes_with(&value, Escaping::Utf8)).expect("UTF-8")
}

fn canon(value: &Value) -> String {
    String::from_utf8(canonical_bytes(value)).expect("canonical bytes are UTF-8")
}

#[test]
fn nested_objects_sort_recursively_without_whitespace() {
    let input = r#"{"b": {"z": 1, "a": [3, {"y": null, "x": true}]}, "a": "s",
                    "c": [[], {}, [[1, [2, {"k": {"j": false}}]]]]}"#;
    assert_eq!(
        ascii(input),
        r#"{"a":"s","b":{"a":[3,{"x":true,"y":null}],"z":1},"c":[[],{},[[1,[2,{"k":{"j":false}}]]]]}"#
    );
}

#[test]
fn array_order_is_kept() {
    assert_eq!(ascii(r#"[3, 1, 2, "b", "a"]"#), r#"[3,1,2,"b","a"]"#);
}

#[test]
fn keys_sort_by_code_point() {
    // Upper case before lower case, digits before letters, "10" before "9"
    // (strings, not numbers), the empty key first, a key before its extensions,
    // and non-ASCII by code point: U+FF61 before U+1F600 (UTF-16 order would
    // put the surrogate pair 0xD83D first).
    let input = r#"{"b":1,"B":2,"a":3,"é":4,"_":5,"10":6,"9":7,"Z":8,"~":9,"ÿ":11,
                    "Ā":12,"😀":13,"｡":14,"":15,"a\u0000":16,"aa":17,"a\n":18," ":19,"!":20}"#;
    assert_eq!(
        ascii(input),
        r#"{"":15," ":19,"!":20,"10":6,"9":7,"B":2,"Z":8,"_":5,"a":3,"a\u0000":16,"a\n":18,"aa":17,"b":1,"~":9,"\u00e9":4,"\u00ff":11,"\u0100":12,"\uff61":14,"\ud83d\ude00":13}"#
    );
    assert_eq!(
        utf8(input),
        r#"{"":15," ":19,"!":20,"10":6,"9":7,"B":2,"Z":8,"_":5,"a":3,"a\u0000":16,"a\n":18,"aa":17,"b":1,"~":9,"é":4,"ÿ":11,"Ā":12,"｡":14,"😀":13}"#
    );
}

#[test]
fn key_order_of_the_input_does_not_matter() {
    let a = ascii(r#"{"x": 1, "y": {"q": 2, "p": 3}, "w": [1]}"#);
    let b = ascii(r#"{"w": [1], "y": {"p": 3, "q": 2}, "x": 1}"#);
    assert_eq!(a, b);
    assert_eq!(a, r#"{"w":[1],"x":1,"y":{"p":3,"q":2}}"#);
}

#[test]
fn non_ascii_is_escaped_lower_case_with_surrogate_pairs() {
    let input = r#"{"s": "Zoë ✓ 😀 \uffff \udbff\udfff 中文 e\u0301 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67 \u2028\u2029 \ufeff"}"#;
    assert_eq!(
        ascii(input),
        r#"{"s":"Zo\u00eb \u2713 \ud83d\ude00 \uffff \udbff\udfff \u4e2d\u6587 e\u0301 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67 \u2028\u2029 \ufeff"}"#
    );
    assert_eq!(
        utf8(input),
        "{\"s\":\"Zoë ✓ 😀 \u{ffff} \u{10ffff} 中文 e\u{301} \
         👨\u{200d}👩\u{200d}👧 \u{2028}\u{2029} \u{feff}\"}"
    );
}

#[test]
fn non_ascii_keys_and_nested_values_are_escaped() {
    let v = json!({"m": {"é": {"ü": [1, "😀"]}}});
    assert_eq!(
        canon(&v),
        r#"{"m":{"\u00e9":{"\u00fc":[1,"\ud83d\ude00"]}}}"#
    );
    assert_eq!(
        String::from_utf8(canonical_bytes_with(&v, Escaping::Utf8)).unwrap(),
        r#"{"m":{"é":{"ü":[1,"😀"]}}}"#
    );
}

#[test]
fn ascii_form_is_pure_ascii() {
    let v = json!({"κλειδί": "τιμή 😀", "a": ["\u{10ffff}", "\u{80}"]});
    let bytes = canonical_bytes(&v);
    assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        r#"{"a":["\udbff\udfff","\u0080"],"\u03ba\u03bb\u03b5\u03b9\u03b4\u03af":"\u03c4\u03b9\u03bc\u03ae \ud83d\ude00"}"#
    );
}

#[test]
fn control_characters_are_escaped() {
    let input = r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f ""#;
    let want = r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f ""#;
    assert_eq!(ascii(input), want);
    // Python escapes control characters the same way with ensure_ascii=False.
    assert_eq!(utf8(input), want);
}

#[test]
fn short_escapes() {
    let v = json!("q\" b\\ n\n r\r t\t b\u{8} f\u{c} end");
    assert_eq!(canon(&v), r#""q\" b\\ n\n r\r t\t b\b f\f end""#);
}

#[test]
fn solidus_is_not_escaped() {
    // `\/` in the input is a plain `/`; neither form escapes it.
    assert_eq!(ascii(r#""q\" b\\ / \/ ~""#), r#""q\" b\\ / / ~""#);
    assert_eq!(utf8(r#""a/b""#), r#""a/b""#);
}

/// Python's `ensure_ascii=True` encoder escapes everything outside `' '..='~'`,
/// and DEL (0x7f) is outside that range: `json.dumps("a\x7fb")` is `"a\u007fb"`.
/// A payload whose text holds a DEL (a file name, a `meta` field) signed by a
/// Python peer must verify here, and ours must verify there.
#[test]
fn del_is_escaped_in_the_ascii_form() {
    let v = json!({"del": "a\u{7f}b", "k\u{7f}": 1});
    assert_eq!(canon(&v), r#"{"del":"a\u007fb","k\u007f":1}"#);
}

#[test]
fn del_is_raw_in_the_utf8_form() {
    // With ensure_ascii=False Python leaves DEL as it is.
    let v = json!({"del": "a\u{7f}b"});
    assert_eq!(
        String::from_utf8(canonical_bytes_with(&v, Escaping::Utf8)).unwrap(),
        "{\"del\":\"a\u{7f}b\"}"
    );
}

#[test]
fn integers_are_plain_decimal() {
    let v = json!([
        u64::MAX,
        i64::MIN,
        i64::MAX,
        -1,
        0,
        9_007_199_254_740_993_u64
    ]);
    let want =
        "[18446744073709551615,-9223372036854775808,9223372036854775807,-1,0,9007199254740993]";
    assert_eq!(canon(&v), want);
    assert_eq!(ascii(want), want, "integers as received");
}

#[test]
fn floats_follow_python_repr() {
    // (value, Python's repr)
    let cases: &[(f64, &str)] = &[
        (1.0, "1.0"),
        (1e16, "1e+16"),
        (1e-5, "1e-05"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (1.5, "1.5"),
        (2.5, "2.5"),
        (1e22, "1e+22"),
        (f64::MAX, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (123_456_789.123, "123456789.123"),
        (1e15, "1000000000000000.0"),
        (9_999_999_999_999_998.0, "9999999999999998.0"),
        (0.0001, "0.0001"),
        (0.000_012_34, "1.234e-05"),
        (1e5, "100000.0"),
        (100.0, "100.0"),
        (-1.5e-7, "-1.5e-07"),
        (1.234_567_890_123_456_7e-300, "1.2345678901234568e-300"),
        (1_234_567_890_123_456_789.0, "1.2345678901234568e+18"),
        (0.5e-4, "5e-05"),
        (2.5e-5, "2.5e-05"),
        (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
        (-1e-4, "-0.0001"),
        (123_456_789.0, "123456789.0"),
        (0.000999, "0.000999"),
        (0.001, "0.001"),
        (1e21, "1e+21"),
        (4.35, "4.35"),
        (9_007_199_254_740_992.0, "9007199254740992.0"),
    ];
    for (f, want) in cases {
        assert_eq!(canon(&json!(f)), *want, "repr of {f:e}");
    }
    // Floats as received: the same rules apply to parsed text.
    assert_eq!(
        ascii("[1.0, 1e16, 1e-05, 2.50, 1E5, 1e+2, 0.5e-4, -0.0]"),
        "[1.0,1e+16,1e-05,2.5,100000.0,100.0,5e-05,-0.0]"
    );
}

/// Floats with 17 significant digits, as a Python peer writes them, paired
/// with what Python's canonical form of the *received* value is (the same
/// text). `serde_json` without its `float_roundtrip` feature parses such text
/// to a neighbouring `f64` (off by one ulp), so the canonical bytes differ from
/// the signer's and a valid transport signature over such a payload fails.
/// In a sample of 40,000 random 17-digit values in ±[1, 1e6], about 7% hit this.
#[test]
fn floats_as_received_keep_their_python_repr() {
    let cases = [
        ("-250778.36365138914", "-250778.36365138914"),
        ("864660.57377627864", "864660.5737762786"),
        ("8136.4315556354122", "8136.431555635412"),
        ("-970133.55768299545", "-970133.5576829955"),
        ("-1.5432835417340557e+88", "-1.5432835417340557e+88"),
        ("1.9015657400796622e-144", "1.9015657400796622e-144"),
    ];
    for (input, want) in cases {
        assert_eq!(ascii(input), want, "canonical form of {input}");
    }
}

#[test]
fn empty_containers_and_scalars() {
    assert_eq!(
        ascii(r#"{"e": {}, "l": [], "n": [{}], "m": {"": []}}"#),
        r#"{"e":{},"l":[],"m":{"":[]},"n":[{}]}"#
    );
    for s in ["{}", "[]", r#""""#, "null", "true", "false", "0"] {
        assert_eq!(ascii(s), s);
        assert_eq!(utf8(s), s);
    }
}

#[test]
fn canonical_object_matches_the_value_form() {
    let v = json!({"b": 1, "a": "ü", "c": {"z": [], "y": "😀"}});
    let map = v.as_object().unwrap();
    assert_eq!(canonical_object(map), canonical_bytes(&v));
    assert_eq!(
        String::from_utf8(canonical_object(map)).unwrap(),
        r#"{"a":"\u00fc","b":1,"c":{"y":"\ud83d\ude00","z":[]}}"#
    );
}

#[test]
fn has_non_ascii_looks_at_keys_and_nested_values() {
    assert!(!has_non_ascii(&json!({"a": ["b", 1, null, {"c": true}]})));
    assert!(!has_non_ascii(&json!("plain \n\u{7f}")));
    assert!(has_non_ascii(&json!({"ключ": 1})));
    assert!(has_non_ascii(&json!({"a": [1, {"b": ["x", "é"]}]})));
    assert!(has_non_ascii(&json!("😀")));
}

#[test]
fn ascii_and_utf8_forms_agree_on_ascii_only_values() {
    let v = json!({"a": "x\"y\\z\n", "b": [1, 2, {"z": false, "a": true}], "c": 1.5});
    assert_eq!(
        canonical_bytes(&v),
        canonical_bytes_with(&v, Escaping::Utf8)
    );
    assert_eq!(
        canon(&v),
        r#"{"a":"x\"y\\z\n","b":[1,2,{"a":true,"z":false}],"c":1.5}"#
    );
}

#[test]
fn both_forms_parse_back_to_the_same_value() {
    let v = json!({"name": "Zoë ✓ 😀", "ctl": "\u{1}\u{1f}", "n": [u64::MAX, i64::MIN, 0.25]});
    for escaping in [Escaping::Ascii, Escaping::Utf8] {
        let bytes = canonical_bytes_with(&v, escaping);
        let back: Value = serde_json::from_slice(&bytes).expect("canonical bytes are JSON");
        assert_eq!(back, v, "{escaping:?}");
    }
}
