//! Canonical JSON (SPEC.md §4): the bytes a transport signature covers.
//!
//! This is Python's `json.dumps(v, sort_keys=True, separators=(",", ":"))`:
//! keys sorted by code point, no whitespace, every non-ASCII character written
//! as a lower-case `\uXXXX` escape (surrogate pairs above U+FFFF). The
//! [`Escaping::Utf8`] form leaves non-ASCII text unescaped (`ensure_ascii=False`),
//! which verifiers also accept.
//!
//! It always works on a received [`serde_json::Value`], never on a re-serialised
//! typed struct, so fields we do not know are still covered.

use serde_json::{Map, Number, Value};

/// How non-ASCII characters in strings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// `\uXXXX` for every non-ASCII character: the form we sign.
    Ascii,
    /// Non-ASCII characters as UTF-8: the other form verifiers accept.
    Utf8,
}

/// Canonical bytes of `value` in the form we sign ([`Escaping::Ascii`]).
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    canonical_bytes_with(value, Escaping::Ascii)
}

/// Canonical bytes of `value` with the given escaping.
pub fn canonical_bytes_with(value: &Value, escaping: Escaping) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, escaping);
    out.into_bytes()
}

/// Canonical bytes of a payload object.
pub fn canonical_object(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    write_object(&mut out, map, Escaping::Ascii);
    out.into_bytes()
}

/// Whether any string (key or value) in `value` has a non-ASCII character,
/// i.e. whether the two escaping forms differ.
pub fn has_non_ascii(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.is_ascii(),
        Value::Array(items) => items.iter().any(has_non_ascii),
        Value::Object(map) => map.iter().any(|(k, v)| !k.is_ascii() || has_non_ascii(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn write_value(out: &mut String, value: &Value, escaping: Escaping) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s, escaping),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, escaping);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, escaping),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, escaping: Escaping) {
    // Rust's `str` ordering is byte-wise over UTF-8, which is code point order:
    // the same order as Python's `sort_keys`.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key, escaping);
        out.push(':');
        write_value(out, value, escaping);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float_repr(f));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional notation for
/// decimal exponents in [-4, 16), scientific (`1e+16`, `1.5e-05`) otherwise,
/// and a trailing `.0` on integral values.
fn python_float_repr(f: f64) -> String {
    if !f.is_finite() {
        // JSON input cannot hold these; Python writes them like this.
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16".
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.abs())
    }
}

fn write_string(out: &mut String, s: &str, escaping: Escaping) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(out, c as u32),
            // Python's ensure_ascii escapes everything outside ' '..='~', DEL included.
            '\u{7f}' if escaping == Escaping::Ascii => push_u_escape(out, 0x7f),
            c if c.is_ascii() || escaping == Escaping::Utf8 => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, u32::from(*unit));
                }
            }
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(char::from(HEX[((unit >> shift) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(canonical_bytes(v)).unwrap()
    }

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let v = json!({"b": {"z": 1, "a": [3, {"y": null, "x": true}]}, "a": "s"});
        assert_eq!(
            canon(&v),
            r#"{"a":"s","b":{"a":[3,{"x":true,"y":null}],"z":1}}"#
        );
    }

    #[test]
    fn keys_sort_by_code_point_not_locale() {
        let v = json!({"b": 1, "B": 2, "a": 3, "é": 4, "_": 5, "10": 6, "9": 7});
        assert_eq!(
            canon(&v),
            r#"{"10":6,"9":7,"B":2,"_":5,"a":3,"b":1,"\u00e9":4}"#
        );
    }

    #[test]
    fn escapes_like_python_ensure_ascii() {
        let v = json!("q\" b\\ n\n r\r t\t b\u{8} f\u{c} nul\u{0} us\u{1f} del\u{7f} /");
        assert_eq!(
            canon(&v),
            r#""q\" b\\ n\n r\r t\t b\b f\f nul\u0000 us\u001f del\u007f /""#
        );
        let utf8 = String::from_utf8(canonical_bytes_with(&v, Escaping::Utf8)).unwrap();
        assert!(
            utf8.contains("del\u{7f} /"),
            "DEL stays raw in the UTF-8 form"
        );
    }

    #[test]
    fn non_ascii_is_lower_case_u_escaped_with_surrogates() {
        let v = json!({"name": "Zoë ✓ 😀 \u{ffff} \u{10ffff}"});
        assert_eq!(
            canon(&v),
            r#"{"name":"Zo\u00eb \u2713 \ud83d\ude00 \uffff \udbff\udfff"}"#
        );
        let utf8 = String::from_utf8(canonical_bytes_with(&v, Escaping::Utf8)).unwrap();
        assert_eq!(utf8, "{\"name\":\"Zoë ✓ 😀 \u{ffff} \u{10ffff}\"}");
        assert!(has_non_ascii(&v));
        assert!(!has_non_ascii(&json!({"a": ["b", 1, null]})));
        assert!(has_non_ascii(&json!({"ключ": 1})));
    }

    #[test]
    fn integers_are_plain_decimal() {
        let v = json!({"big": 12345678901234567_u64, "max": u64::MAX, "min": i64::MIN, "neg": -5, "zero": 0});
        assert_eq!(
            canon(&v),
            r#"{"big":12345678901234567,"max":18446744073709551615,"min":-9223372036854775808,"neg":-5,"zero":0}"#
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e20, "1.25e+20"),
            (123.456, "123.456"),
            (1e300, "1e+300"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(*f), *want, "repr of {f}");
        }
        let v: Value = serde_json::from_str(r#"{"x": 2.50}"#).unwrap();
        assert_eq!(canon(&v), r#"{"x":2.5}"#);
    }

    #[test]
    fn empty_containers() {
        assert_eq!(canon(&json!({"e": {}, "l": []})), r#"{"e":{},"l":[]}"#);
        assert_eq!(canon(&json!({})), "{}");
    }

    #[test]
    fn object_helper_matches_value_form() {
        let v = json!({"b": 1, "a": "ü"});
        let map = v.as_object().unwrap();
        assert_eq!(canonical_object(map), canonical_bytes(&v));
    }
}
