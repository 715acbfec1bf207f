//! Property tests: nothing from the network makes the parser panic, and
//! canonical JSON is always JSON that means the same value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use socp_protocol::canonical::{canonical_bytes, canonical_bytes_with, Escaping};
use socp_protocol::{Envelope, MessageType};

/// A real RSA-4096 public key (wire form), from the committed interop vectors.
fn pubkey_wire() -> String {
    let v: Value =
        serde_json::from_str(include_str!("../testdata/python-interop.json")).expect("JSON");
    v["keys"]["user_alice"]["public_der_b64url"]
        .as_str()
        .expect("key")
        .to_owned()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Keys that matter to envelopes and payloads, plus arbitrary ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "from", "to", "ts", "payload", "sig", "kind", "ciphertext", "sender_pub",
            "content_sig", "user_id", "server_id", "sender", "orig_ts", "pubkey", "enc_pubkey",
            "host", "port", "file_id", "index", "size", "sha256", "mode", "name", "code",
            "detail", "add", "if_version", "version", "wraps", "shares", "assigned_id",
            "servers", "clients", "users", "cmd", "msg_ref", "username", "who", "nonce",
            "meta", "client", "group_id", "public_version", "member_id", "wrapped_key",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Scalars that are likely to be (almost) valid somewhere.
fn scalar() -> impl Strategy<Value = Value> {
    let texts: Vec<String> = MessageType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .chain(
            [
                "dm",
                "public",
                "file_start",
                "file_chunk",
                "file_end",
                "*",
                "alice",
                "127.0.0.1:8765",
                "AAEC",
                "-_8=",
                "+/",
                "",
                "list",
                "USER_NOT_FOUND",
                "5d3e1eb8-35f5-465c-be67-3f16b4574ccf",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ]
            .map(str::to_owned),
        )
        .chain([pubkey_wire(), "QQ".repeat(342)])
        .collect();
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i64..1_000_000, 0u32..6)
            .prop_map(|(m, k)| Value::from(m as f64 / 10f64.powi(k as i32))),
        ".{0,24}".prop_map(Value::String),
        prop::sample::select(texts).prop_map(Value::String),
    ]
}

/// Arbitrary JSON values, biased towards protocol keys and values.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid payload for every message type (and every delivery kind).
fn templates() -> Vec<(&'static str, Value)> {
    let pk = pubkey_wire();
    let ct = "QQ".repeat(342);
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let addr = json!({"host": "10.0.0.1", "port": 8765, "pubkey": pk});
    let dm = json!({"ciphertext": ct, "sender_pub": pk, "content_sig": ct});
    let public = json!({"ciphertext": ct, "sender_pub": pk, "content_sig": ct,
                        "group_id": "public", "public_version": 3});
    let start = json!({"file_id": "f1", "name": "a.txt", "size": 3, "sha256": sha, "mode": "dm"});
    let chunk = json!({"file_id": "f1", "index": 0, "ciphertext": ct,
                       "sender_pub": pk, "content_sig": ct});
    let end = json!({"file_id": "f1"});
    let users = json!([{"user_id": "alice", "server_id": "s1", "name": "alice"}]);
    let mut out = vec![
        (
            "USER_HELLO",
            json!({"client": "c", "pubkey": pk, "enc_pubkey": pk, "meta": {}}),
        ),
        ("SERVER_HELLO_JOIN", addr.clone()),
        (
            "SERVER_WELCOME",
            json!({"assigned_id": "s2",
                   "servers": [{"server_id": "s1", "host": "h", "port": 2, "pubkey": pk}],
                   "clients": [{"user_id": "alice", "server_id": "s1", "pubkey": pk}]}),
        ),
        ("SERVER_HELLO_LINK", addr.clone()),
        ("SERVER_ANNOUNCE", addr),
        ("SERVER_GOODBYE", json!({})),
        ("HEARTBEAT", json!({})),
        (
            "USER_ADVERTISE",
            json!({"user_id": "alice", "server_id": "s1", "pubkey": pk, "meta": {"n": 1}}),
        ),
        (
            "USER_REMOVE",
            json!({"user_id": "alice", "server_id": "s1"}),
        ),
        ("MSG_DIRECT", dm.clone()),
        ("MSG_PUBLIC_CHANNEL", public.clone()),
        (
            "PUBLIC_CHANNEL_ADD",
            json!({"add": ["alice", "bob"], "if_version": 1}),
        ),
        (
            "PUBLIC_CHANNEL_UPDATED",
            json!({"version": 2, "wraps": [{"member_id": "bob", "wrapped_key": ct}]}),
        ),
        (
            "PUBLIC_CHANNEL_KEY_SHARE",
            json!({"shares": [{"member": "bob", "wrapped_public_channel_key": ct}],
                   "creator_pub": pk, "content_sig": ct}),
        ),
        ("FILE_START", start.clone()),
        ("FILE_CHUNK", chunk.clone()),
        ("FILE_END", end.clone()),
        ("LIST_REQUEST", json!({})),
        ("LIST_RESPONSE", json!({"users": users})),
        ("COMMAND", json!({"cmd": "list"})),
        ("COMMAND_RESPONSE", json!({"cmd": "list", "users": users})),
        ("ACK", json!({"msg_ref": "m1"})),
        ("ERROR", json!({"code": "USER_NOT_FOUND", "detail": "d"})),
        (
            "USER_REGISTER",
            json!({"user_id": "alice", "username": "alice", "pubkey": pk, "privkey_store": "s"}),
        ),
        (
            "REGISTER_OK",
            json!({"user_id": "alice", "username": "alice"}),
        ),
        ("LOGIN_REQUEST", json!({"who": "alice"})),
        (
            "LOGIN_CHALLENGE",
            json!({"user_id": "alice", "privkey_store": "s", "nonce": "n"}),
        ),
        ("CTRL_CLOSE", json!({})),
        (
            "DIRECTORY_RECORD",
            json!({"user_id": "alice", "username": "alice", "pubkey": pk,
                   "home_server": "srv-1", "privkey_store": "s",
                   "registered_at": 1, "version": 1}),
        ),
        ("DIRECTORY_SYNC", json!({"after": "alice"})),
        (
            "DIRECTORY_PAGE",
            json!({"records": [{"type": "DIRECTORY_RECORD"}], "next": "bob"}),
        ),
        ("USER_RENAME", json!({"username": "alice2"})),
        ("PUBKEY_REQUEST", json!({"user_id": "alice"})),
        (
            "PUBKEY_RESPONSE",
            json!({"user_id": "alice", "pubkey": null}),
        ),
        ("USER_LOOKUP", json!({"user": "carol"})),
        (
            "USER_LOOKUP_RESULT",
            json!({"user_id": "carol", "pubkey": pk, "home_server": "srv-1"}),
        ),
        (
            "MAIL_DEPOSIT",
            json!({"user_id": "carol", "sender": "alice", "orig_ts": 1, "kind": "dm",
                   "ciphertext": ct, "sender_pub": pk, "content_sig": ct}),
        ),
        (
            "MAIL_RECEIPT",
            json!({"mail_id": "m", "user_id": "carol", "sender": "alice", "orig_ts": 1,
                   "status": "queued"}),
        ),
        ("MAIL_ACK", json!({"mail_ids": ["m"]})),
        ("NEWS_BATCH", json!({"frames": []})),
    ];
    for (kind, content) in [
        ("dm", dm),
        ("public", public),
        ("file_start", start),
        ("file_chunk", chunk),
        ("file_end", end),
    ] {
        let mut user = content;
        user["kind"] = json!(kind);
        user["sender"] = json!("alice");
        user["orig_ts"] = json!(1_795_306_358_130_i64);
        let mut server = user.clone();
        server["user_id"] = json!("bob");
        out.push(("USER_DELIVER", user));
        out.push(("SERVER_DELIVER", server));
    }
    out
}

/// One change to a payload object.
#[derive(Debug, Clone)]
enum Mutation {
    Drop(prop::sample::Index),
    Replace(prop::sample::Index, Value),
    Add(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Drop),
        (any::<prop::sample::Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (key(), json_value()).prop_map(|(k, v)| Mutation::Add(k, v)),
    ]
}

fn mutate(payload: &mut Value, mutations: Vec<Mutation>) {
    let Value::Object(map) = payload else { return };
    for m in mutations {
        let keys: Vec<String> = map.keys().cloned().collect();
        match m {
            Mutation::Drop(i) if !keys.is_empty() => {
                map.remove(&keys[i.index(keys.len())]);
            }
            Mutation::Replace(i, v) if !keys.is_empty() => {
                map.insert(keys[i.index(keys.len())].clone(), v);
            }
            Mutation::Add(k, v) => {
                map.insert(k, v);
            }
            Mutation::Drop(_) | Mutation::Replace(..) => {}
        }
    }
}

/// Envelope-shaped objects: mostly a valid frame of some type with a few
/// mutations in its payload; sometimes wrong in the envelope fields too.
fn envelope_like() -> impl Strategy<Value = Value> {
    let n = templates().len();
    let other_type = prop_oneof![
        prop::sample::select(MessageType::ALL.to_vec()).prop_map(|t| Value::from(t.as_str())),
        json_value(),
    ];
    let id = prop_oneof![
        6 => prop::sample::select(vec![
            "alice", "srv-1", "5d3e1eb8-35f5-465c-be67-3f16b4574ccf", "a.b@c-d_e",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ];
    let to = prop_oneof![
        6 => prop::sample::select(vec!["alice", "*", "public", "127.0.0.1:8765", "[::1]:1"])
            .prop_map(Value::from),
        1 => json_value(),
    ];
    let ts = prop_oneof![
        6 => any::<i64>().prop_map(Value::from),
        1 => json_value(),
    ];
    let sig = prop::option::weighted(
        0.3,
        prop_oneof![Just(Value::from("QQ".repeat(342))), json_value()],
    );
    let drop = prop::option::weighted(
        0.1,
        prop::sample::select(vec!["type", "from", "to", "ts", "payload"]),
    );
    (
        0..n,
        prop::option::weighted(0.1, other_type),
        vec(mutation(), 0..3),
        prop::option::weighted(0.05, json_value()),
        (id, to, ts, sig, drop, btree_map(key(), json_value(), 0..2)),
    )
        .prop_map(
            move |(i, other_type, mutations, random_payload, (from, to, ts, sig, drop, extra))| {
                let (t, mut payload) = templates().swap_remove(i);
                mutate(&mut payload, mutations);
                let mut m: Map<String, Value> = extra.into_iter().collect();
                m.insert("type".into(), other_type.unwrap_or_else(|| Value::from(t)));
                m.insert("from".into(), from);
                m.insert("to".into(), to);
                m.insert("ts".into(), ts);
                m.insert("payload".into(), random_payload.unwrap_or(payload));
                if let Some(sig) = sig {
                    m.insert("sig".into(), sig);
                }
                if let Some(field) = drop {
                    m.remove(field);
                }
                Value::Object(m)
            },
        )
}

#[test]
fn every_template_is_a_valid_message_of_its_type() {
    let mut seen = std::collections::HashSet::new();
    for (t, payload) in templates() {
        let frame = json!({"type": t, "from": "alice", "to": "srv-1", "ts": 1, "payload": payload});
        let env = Envelope::parse(frame.to_string().as_bytes()).expect("template frame parses");
        let message = env
            .message()
            .unwrap_or_else(|e| panic!("template {t}: {e}"));
        assert_eq!(message.msg_type().as_str(), t);
        seen.insert(t);
    }
    assert_eq!(seen.len(), MessageType::ALL.len());
}

/// Everything a caller may do with a parsed envelope; none of it may panic,
/// and the envelope must survive its own serialisation.
fn exercise(env: &Envelope) {
    let _ = env.message();
    let _ = env.known_type();
    let _ = env.seen_key();
    let _ = env.summary();
    let _ = env.is_fresh(socp_protocol::now_ms(), 600_000);
    let again = Envelope::parse(env.to_json().as_bytes()).expect("our own JSON re-parses");
    assert_eq!(&again, env);
    assert_eq!(again.seen_key(), env.seen_key());
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        if let Ok(env) = Envelope::parse(&bytes) {
            exercise(&env);
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_frames(
        frame in envelope_like(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let text = frame.to_string();
        // The frame as generated, then truncated, then with one byte changed.
        if let Ok(env) = Envelope::parse(text.as_bytes()) {
            exercise(&env);
        }
        let bytes = text.as_bytes();
        let _ = Envelope::parse(&bytes[..cut.index(bytes.len() + 1)]);
        let mut flipped = bytes.to_vec();
        if !flipped.is_empty() {
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x20;
            if let Ok(env) = Envelope::parse(&flipped) {
                exercise(&env);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn message_never_panics_on_json_ish_frames(frame in envelope_like()) {
        if let Ok(env) = Envelope::parse(frame.to_string().as_bytes()) {
            exercise(&env);
        }
    }

    #[test]
    fn canonical_bytes_are_json_of_the_same_value(value in json_value()) {
        let ascii = canonical_bytes(&value);
        prop_assert!(ascii.is_ascii());
        let back: Value = serde_json::from_slice(&ascii).expect("canonical bytes are JSON");
        prop_assert_eq!(&back, &value);
        // Canonical form is a fixed point.
        prop_assert_eq!(canonical_bytes(&back), ascii.clone());

        let utf8 = canonical_bytes_with(&value, Escaping::Utf8);
        let text = String::from_utf8(utf8).expect("UTF-8");
        let back: Value = serde_json::from_str(&text).expect("UTF-8 form is JSON");
        prop_assert_eq!(&back, &value);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any finite float must come back as the same `f64`. Shortest round-trip
    /// digits do, with a correct parser; `serde_json` without its
    /// `float_roundtrip` feature parses some 16–17 digit values one ulp off.
    #[test]
    fn canonical_floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let value = Value::from(f);
        let back: Value = serde_json::from_slice(&canonical_bytes(&value)).expect("JSON");
        prop_assert_eq!(back.as_f64(), Some(f));
    }
}
