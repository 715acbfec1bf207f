//! Envelope and payload parsing (SPEC.md §3, §5, §6, §7): every message type
//! round-trips; what other implementations send is accepted leniently (unknown
//! fields ignored) but strictly typed; limits hold before JSON parsing; the
//! seen-ids key and freshness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test
#![cfg(feature = "fixtures")]

use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::{json, Value};
use socp_protocol::envelope::{Sender, TS_WINDOW_MS};
use socp_protocol::message::{
    to_payload, Ack, ClientInfo, Command, CommandResponse, CtrlClose, DeliverContent,
    DirectoryPage, DirectoryRecord, DirectorySync, ErrorPayload, FileChunk, FileEnd, FileId,
    FileMode, FileStart, Heartbeat, KeyShare, ListRequest, ListResponse, ListedUser,
    LoginChallenge, LoginRequest, MsgDirect, MsgPublicChannel, PublicChannelAdd,
    PublicChannelKeyShare, PublicChannelUpdated, RegisterOk, ServerAddress, ServerAnnounce,
    ServerDeliver, ServerGoodbye, ServerHelloJoin, ServerHelloLink, ServerInfo, ServerWelcome,
    UserAdvertise, UserDeliver, UserHello, UserRegister, UserRemove, UserRename, Wrap,
};
use socp_protocol::{
    Base64Url, Envelope, Error, ErrorCode, Limits, Message, MessageType, Payload, PublicKey,
    ServerId, Signature, To, UserId, Username,
};

const ALICE: &str = "5d3e1eb8-35f5-465c-be67-3f16b4574ccf";
const BOB: &str = "d36d330a-ff60-4f80-817c-18b84a774801";
const SERVER: &str = "e24a7889-23e0-48c0-a18c-4467bf925021";
const SERVER_B: &str = "0b6f3a52-5c59-4c36-9d0f-7f6f3c1f1a10";
const TS: i64 = 1_795_306_358_130;
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

// ---- helpers ---------------------------------------------------------------------

fn pk(n: usize) -> PublicKey {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..3)
            .map(|i| socp_protocol::fixtures::key(i).public_key().clone())
            .collect()
    })[n]
        .clone()
}

fn alice() -> UserId {
    UserId::parse(ALICE).unwrap()
}

fn bob() -> UserId {
    UserId::parse(BOB).unwrap()
}

fn server() -> ServerId {
    ServerId::parse(SERVER).unwrap()
}

fn server_b() -> ServerId {
    ServerId::parse(SERVER_B).unwrap()
}

fn ct() -> Base64Url {
    Base64Url::from_bytes(&[0x42; 512])
}

fn sig() -> Signature {
    Signature::from_bytes(&[0x24; 512])
}

fn file_id() -> FileId {
    FileId::try_from("f-1.part_2".to_owned()).unwrap()
}

fn msg_direct() -> MsgDirect {
    MsgDirect {
        ciphertext: ct(),
        sender_pub: pk(0),
        content_sig: sig(),
    }
}

fn msg_public() -> MsgPublicChannel {
    MsgPublicChannel {
        ciphertext: ct(),
        sender_pub: pk(0),
        content_sig: sig(),
        group_id: "public".into(),
        public_version: Some(7),
    }
}

fn file_start() -> FileStart {
    FileStart {
        file_id: file_id(),
        name: "report.pdf".into(),
        size: 123_456,
        sha256: Some(SHA.into()),
        mode: FileMode::Dm,
        fast: None,
    }
}

fn file_chunk() -> FileChunk {
    FileChunk {
        file_id: file_id(),
        index: 3,
        ciphertext: ct(),
        sender_pub: Some(pk(0)),
        content_sig: Some(sig()),
        total: None,
    }
}

fn all_contents() -> Vec<DeliverContent> {
    vec![
        DeliverContent::Dm(msg_direct()),
        DeliverContent::Public(msg_public()),
        DeliverContent::FileStart(file_start()),
        DeliverContent::FileChunk(file_chunk()),
        DeliverContent::FileEnd(FileEnd {
            file_id: file_id(),
            status: None,
        }),
    ]
}

fn addr(port: u16) -> ServerAddress {
    ServerAddress {
        host: "10.0.0.2".into(),
        port,
        pubkey: pk(1),
    }
}

fn listed() -> Vec<ListedUser> {
    vec![ListedUser {
        user_id: alice(),
        server_id: server(),
        name: "alice".into(),
    }]
}

/// One typed fixture for every message type, with the `to` it is sent to.
fn fixtures() -> Vec<(To, Message)> {
    let to_server = To::from(&server());
    let to_bob = To::from(&bob());
    let mut out: Vec<(To, Message)> = vec![
        (
            to_server.clone(),
            UserHello {
                client: "socp-client/0.1".into(),
                pubkey: pk(0),
                enc_pubkey: Some(pk(1)),
                meta: Some(json!({"display_name": "Zoë"})),
                nonce: Some("n0nce".into()),
            }
            .into(),
        ),
        (
            To::parse("10.0.0.1:8765").unwrap(),
            ServerHelloJoin(addr(8766)).into(),
        ),
        (
            to_server.clone(),
            ServerWelcome {
                assigned_id: server_b(),
                servers: vec![ServerInfo {
                    server_id: server(),
                    host: "10.0.0.1".into(),
                    port: 8765,
                    pubkey: pk(1),
                }],
                clients: vec![ClientInfo {
                    user_id: alice(),
                    server_id: server(),
                    pubkey: pk(0),
                    meta: Some(json!({"k": [1, 2]})),
                    host: None,
                    port: None,
                }],
            }
            .into(),
        ),
        (to_server.clone(), ServerHelloLink(addr(1)).into()),
        (To::All, ServerAnnounce(addr(65535)).into()),
        (To::All, ServerGoodbye {}.into()),
        (to_server.clone(), Heartbeat {}.into()),
        (
            To::All,
            UserAdvertise {
                user_id: alice(),
                server_id: server(),
                pubkey: pk(0),
                meta: Some(json!({})),
                seq: None,
            }
            .into(),
        ),
        (
            To::All,
            UserRemove {
                user_id: alice(),
                server_id: server(),
                seq: None,
            }
            .into(),
        ),
        (to_bob.clone(), msg_direct().into()),
        (to_bob.clone(), msg_public().into()),
        (
            To::Public,
            PublicChannelAdd {
                add: vec![alice(), bob()],
                if_version: 4,
            }
            .into(),
        ),
        (
            To::Public,
            PublicChannelUpdated {
                version: 5,
                wraps: vec![Wrap {
                    member_id: bob(),
                    wrapped_key: ct(),
                }],
            }
            .into(),
        ),
        (
            To::Public,
            PublicChannelKeyShare {
                shares: vec![KeyShare {
                    member: bob(),
                    wrapped_public_channel_key: ct(),
                }],
                creator_pub: pk(0),
                content_sig: sig(),
            }
            .into(),
        ),
        (to_bob.clone(), file_start().into()),
        (to_bob.clone(), file_chunk().into()),
        (
            to_bob.clone(),
            FileEnd {
                file_id: file_id(),
                status: None,
            }
            .into(),
        ),
        (to_server.clone(), ListRequest {}.into()),
        (
            To::from(&alice()),
            ListResponse {
                users: listed(),
                more: false,
                online_users: Vec::new(),
            }
            .into(),
        ),
        (to_server.clone(), Command { cmd: "list".into() }.into()),
        (
            To::from(&alice()),
            CommandResponse {
                cmd: "list".into(),
                users: listed(),
                command: None,
                response: None,
            }
            .into(),
        ),
        (
            to_server.clone(),
            Ack {
                msg_ref: "abc".into(),
            }
            .into(),
        ),
        (
            To::from(&alice()),
            ErrorPayload::new(ErrorCode::UserNotFound, "bob is not online").into(),
        ),
        (
            to_server.clone(),
            UserRegister {
                user_id: alice(),
                username: Username::parse("alice_01").unwrap(),
                pubkey: pk(0),
                privkey_store: "-----BEGIN ENCRYPTED PRIVATE KEY-----\n...".into(),
            }
            .into(),
        ),
        (
            To::from(&alice()),
            RegisterOk {
                user_id: alice(),
                username: Username::parse("alice_01").unwrap(),
            }
            .into(),
        ),
        (
            to_server.clone(),
            LoginRequest {
                who: "alice_01".into(),
            }
            .into(),
        ),
        (
            To::from(&alice()),
            LoginChallenge {
                user_id: alice(),
                privkey_store: "store".into(),
                nonce: "nonce-1".into(),
            }
            .into(),
        ),
        (to_server.clone(), CtrlClose {}.into()),
        (
            To::All,
            DirectoryRecord {
                user_id: bob(),
                username: Username::parse("Bob").unwrap(),
                pubkey: pk(2),
                home_server: server(),
                privkey_store: "-----BEGIN ENCRYPTED PRIVATE KEY-----".into(),
                registered_at: TS - 1,
                version: 2,
            }
            .into(),
        ),
        (
            To::from(&server_b()),
            DirectorySync {
                after: Some(alice()),
            }
            .into(),
        ),
        (
            To::from(&server_b()),
            DirectoryPage {
                records: vec![json!({"type": "DIRECTORY_RECORD", "payload": {}})],
                next: Some(bob()),
            }
            .into(),
        ),
        (
            to_server,
            UserRename {
                username: Username::parse("bobby").unwrap(),
            }
            .into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::PubkeyRequest { user_id: alice() }.into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::PubkeyResponse {
                user_id: alice(),
                pubkey: Some(pk(0)),
            }
            .into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::UserLookup {
                user: "carol".into(),
            }
            .into(),
        ),
        (
            To::from(&alice()),
            socp_protocol::message::UserLookupResult {
                user_id: bob(),
                username: Some("bob".into()),
                pubkey: pk(1),
                home_server: server(),
            }
            .into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::MailDeposit {
                user_id: bob(),
                sender: alice(),
                orig_ts: TS - 5,
                content: DeliverContent::Dm(msg_direct()),
            }
            .into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::MailReceipt {
                mail_id: "m-1".into(),
                user_id: bob(),
                sender: alice(),
                orig_ts: TS - 5,
                status: socp_protocol::message::MailStatus::Refused,
                detail: Some("full".into()),
            }
            .into(),
        ),
        (
            To::from(&server()),
            socp_protocol::message::MailAck {
                mail_ids: vec!["m-1".into()],
                user_id: Some(bob()),
                user_frame: None,
            }
            .into(),
        ),
        (
            To::All,
            socp_protocol::message::NewsBatch {
                frames: vec![json!({"type": "USER_REMOVE", "payload": {"user_id": "u"}})],
            }
            .into(),
        ),
    ];
    for content in all_contents() {
        out.push((
            To::from(&server_b()),
            ServerDeliver {
                user_id: bob(),
                sender: alice(),
                orig_ts: Some(TS - 5),
                content: content.clone(),
                mail: None,
            }
            .into(),
        ));
        out.push((
            To::from(&bob()),
            UserDeliver {
                sender: alice(),
                orig_ts: Some(TS - 5),
                content,
                mail: None,
            }
            .into(),
        ));
    }
    out
}

/// Build, serialise, re-parse: the same envelope and the same typed payload.
fn round_trip(from: &impl Sender, to: To, message: &Message) -> Message {
    let env = Envelope::from_message(from, to.clone(), TS, message);
    assert_eq!(env.msg_type(), message.msg_type().as_str());
    assert_eq!(env.known_type(), Some(message.msg_type()));
    let text = env.to_json();
    let wire: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = wire
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["from", "payload", "to", "ts", "type"], "{text}");
    assert_eq!(wire["type"], message.msg_type().as_str());
    assert_eq!(wire["to"], to.as_str());
    assert_eq!(wire["ts"], TS);
    let parsed = Envelope::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed, env);
    assert_eq!(parsed.from(), from.id_str());
    assert_eq!(parsed.to(), &to);
    assert_eq!(parsed.ts(), TS);
    let back = parsed.message().unwrap();
    assert_eq!(back.msg_type(), message.msg_type());
    assert_eq!(back.to_payload(), message.to_payload(), "{text}");
    back
}

/// A frame as JSON bytes.
fn frame(msg_type: &str, from: &str, to: &str, payload: Value) -> Vec<u8> {
    json!({"type": msg_type, "from": from, "to": to, "ts": TS, "payload": payload})
        .to_string()
        .into_bytes()
}

fn parse_message(msg_type: &str, payload: Value) -> Result<Message, Error> {
    Envelope::parse(&frame(msg_type, ALICE, SERVER, payload))
        .unwrap()
        .message()
}

fn assert_invalid_payload(msg_type: &str, payload: Value, what: &str) -> String {
    match parse_message(msg_type, payload) {
        Err(e @ Error::InvalidPayload { .. }) => {
            assert_eq!(e.code(), ErrorCode::BadRequest, "{what}");
            e.to_string()
        }
        other => panic!("{msg_type} {what}: expected InvalidPayload, got {other:?}"),
    }
}

fn assert_invalid_field(frame: &Value, field: &str) {
    match Envelope::parse(frame.to_string().as_bytes()) {
        Err(e @ Error::InvalidField { field: f, .. }) => {
            assert_eq!(f, field, "{frame}");
            assert_eq!(e.code(), ErrorCode::BadRequest);
        }
        other => panic!("{frame}: expected InvalidField({field}), got {other:?}"),
    }
}

fn good_frame() -> Value {
    json!({"type": "HEARTBEAT", "from": SERVER, "to": SERVER_B, "ts": TS, "payload": {}})
}

fn with(field: &str, value: Value) -> Value {
    let mut f = good_frame();
    f[field] = value;
    f
}

// ---- round trips -------------------------------------------------------------------

#[test]
fn every_message_type_round_trips() {
    let fixtures = fixtures();
    let mut seen = HashSet::new();
    for (to, message) in &fixtures {
        round_trip(&alice(), to.clone(), message);
        seen.insert(message.msg_type());
    }
    for t in MessageType::ALL {
        assert!(seen.contains(t), "no fixture for {t:?}");
        assert_eq!(MessageType::parse(t.as_str()), Some(*t));
    }
    assert_eq!(seen.len(), MessageType::ALL.len());
}

#[test]
fn envelope_new_equals_from_message() {
    let payload = UserRemove {
        user_id: alice(),
        server_id: server(),
        seq: None,
    };
    let a = Envelope::new(&server(), To::All, TS, &payload);
    let b = Envelope::from_message(&server(), To::All, TS, &Message::from(payload.clone()));
    assert_eq!(a, b);
    assert_eq!(a.msg_type(), UserRemove::TYPE.as_str());
    assert_eq!(a.payload(), &to_payload(&payload));
    assert_eq!(a.from_server(), server());
    assert_eq!(a.from_user().as_str(), SERVER);
}

#[test]
fn typed_fields_survive_the_round_trip() {
    let hello = UserHello {
        client: "c".into(),
        pubkey: pk(0),
        enc_pubkey: None,
        meta: None,
        nonce: None,
    };
    let Message::UserHello(h) = round_trip(&alice(), To::from(&server()), &hello.into()) else {
        panic!("not a USER_HELLO");
    };
    assert_eq!(h.pubkey, pk(0));
    assert!(h.enc_pubkey.is_none() && h.meta.is_none() && h.nonce.is_none());

    let join = ServerHelloJoin(addr(8766));
    let to = To::parse("intro.example:8765").unwrap();
    let Message::ServerHelloJoin(j) = round_trip(&server(), to, &join.clone().into()) else {
        panic!("not a SERVER_HELLO_JOIN");
    };
    assert_eq!(j, join);

    let start = file_start();
    let Message::FileStart(s) = round_trip(&alice(), To::from(&bob()), &start.into()) else {
        panic!("not a FILE_START");
    };
    assert_eq!(
        (
            s.file_id.as_str(),
            s.name.as_str(),
            s.size,
            s.sha256.as_deref().unwrap_or_default(),
            s.mode
        ),
        ("f-1.part_2", "report.pdf", 123_456, SHA, FileMode::Dm)
    );
}

#[test]
fn optional_fields_are_omitted_when_absent() {
    let hello = UserHello {
        client: "c".into(),
        pubkey: pk(0),
        enc_pubkey: None,
        meta: None,
        nonce: None,
    };
    let payload = to_payload(&hello);
    assert_eq!(
        payload,
        json!({"client": "c", "pubkey": pk(0).to_wire()}),
        "no nulls for absent optional fields"
    );
}

// ---- what other implementations send ---------------------------------------------

#[test]
fn json_fixtures_from_peers_are_accepted() {
    let pem = pk(0).to_pem().unwrap();
    // USER_HELLO with a PEM key: normalised to the wire form.
    let Message::UserHello(h) = parse_message(
        "USER_HELLO",
        json!({"client": "py-socp/1.3", "pubkey": pem, "meta": {"name": "alice"}}),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(h.pubkey.to_wire(), pk(0).to_wire());
    assert_eq!(h.meta, Some(json!({"name": "alice"})));
    // USER_HELLO without `client` (defaults to empty).
    let Message::UserHello(h) =
        parse_message("USER_HELLO", json!({"pubkey": pk(0).to_wire()})).unwrap()
    else {
        panic!()
    };
    assert_eq!(h.client, "");

    // MSG_PUBLIC_CHANNEL without group_id / public_version.
    let Message::MsgPublicChannel(m) = parse_message(
        "MSG_PUBLIC_CHANNEL",
        json!({"ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
               "content_sig": sig().as_str()}),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(m.group_id, "public");
    assert_eq!(m.public_version, None);

    // FILE_START without mode, upper-case sha256: dm, lower-cased.
    let Message::FileStart(f) = parse_message(
        "FILE_START",
        json!({"file_id": "abc", "name": "a.txt", "size": 0, "sha256": SHA.to_uppercase()}),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(f.mode, FileMode::Dm);
    assert_eq!(f.sha256.as_deref(), Some(SHA));

    // SERVER_WELCOME with servers/clients absent.
    let Message::ServerWelcome(w) =
        parse_message("SERVER_WELCOME", json!({"assigned_id": "srv-2"})).unwrap()
    else {
        panic!()
    };
    assert_eq!(w.assigned_id.as_str(), "srv-2");
    assert!(w.servers.is_empty() && w.clients.is_empty());

    // The first seed's /list.
    let Message::Command(c) = parse_message("COMMAND", json!({"cmd": "list"})).unwrap() else {
        panic!()
    };
    assert_eq!(c.cmd, "list");

    // Ids that are not UUIDs.
    let Message::UserAdvertise(a) = parse_message(
        "USER_ADVERTISE",
        json!({"user_id": "alice", "server_id": "server.1", "pubkey": pk(0).to_wire()}),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (a.user_id.as_str(), a.server_id.as_str()),
        ("alice", "server.1")
    );
    assert!(a.meta.is_none());
}

#[test]
fn unknown_fields_are_ignored() {
    let mut f = json!({
        "type": "USER_REMOVE", "from": SERVER, "to": "*", "ts": TS,
        "payload": {"user_id": ALICE, "server_id": SERVER, "reason": "quit", "x": [1, {"y": 2}]},
        "id": "msg-1", "version": "1.3", "extra": {"nested": true}, "hops": 3
    });
    let env = Envelope::parse(f.to_string().as_bytes()).unwrap();
    let Message::UserRemove(r) = env.message().unwrap() else {
        panic!("not USER_REMOVE")
    };
    assert_eq!(r.user_id, alice());
    // The payload is kept as received, unknown fields and all.
    assert_eq!(env.payload()["reason"], "quit");
    assert_eq!(env.payload(), &f["payload"]);
    // An unknown `sig`-like field does not confuse the signature slot.
    f["signature"] = json!("not base64 !!!");
    assert!(Envelope::parse(f.to_string().as_bytes())
        .unwrap()
        .sig()
        .is_none());
}

// ---- strict typing -----------------------------------------------------------------

#[test]
fn envelope_field_types_are_strict() {
    assert_invalid_field(&with("ts", json!("1795306358130")), "ts");
    assert_invalid_field(&with("ts", json!(u64::MAX)), "ts");
    assert_invalid_field(&with("ts", json!(1e300)), "ts");
    assert_invalid_field(&with("ts", json!(null)), "ts");
    assert_invalid_field(&with("payload", json!([1, 2])), "payload");
    assert_invalid_field(&with("payload", json!("{}")), "payload");
    assert_invalid_field(&with("from", json!(42)), "from");
    assert_invalid_field(&with("from", json!(null)), "from");
    assert_invalid_field(&with("type", json!(7)), "type");
    assert_invalid_field(&with("type", json!(["HEARTBEAT"])), "type");
    assert_invalid_field(&with("to", json!(1)), "to");
    assert_invalid_field(&with("sig", json!(12)), "sig");
    assert_invalid_field(&with("sig", json!({"sig": "x"})), "sig");
}

#[test]
fn a_fractional_ts_is_seconds_and_a_missing_payload_is_empty() {
    // SPEC.md §11: float seconds (below 10^11) read as milliseconds.
    for (ts, ms) in [
        (json!(1_796_170_263.369), 1_796_170_263_369),
        (json!(1.5), 1_500),
        (json!(1_796_170_263_369.0), 1_796_170_263_369),
    ] {
        let env = Envelope::parse(with("ts", ts.clone()).to_string().as_bytes()).unwrap();
        assert_eq!(env.ts(), ms, "{ts}");
    }
    // A request with nothing to say may leave its payload out, or send null.
    let mut f = with("type", json!("CMD_LIST"));
    f.as_object_mut().unwrap().remove("payload");
    let env = Envelope::parse(f.to_string().as_bytes()).unwrap();
    assert_eq!(env.payload(), &json!({}));
    assert!(matches!(env.message().unwrap(), Message::ListRequest(_)));
    let env = Envelope::parse(with("payload", json!(null)).to_string().as_bytes()).unwrap();
    assert_eq!(env.payload(), &json!({}));
}

#[test]
fn a_hello_key_in_pubkey_b64u_or_meta_pubkey_is_the_key() {
    let wire = pk(0).to_wire().to_owned();
    for payload in [
        json!({"client": "x", "pubkey_b64u": wire}),
        json!({"client": "x", "meta": {"pubkey": wire}}),
    ] {
        let f = json!({"type": "USER_HELLO", "from": ALICE, "to": "server", "ts": TS,
                       "payload": payload.clone()});
        let env = Envelope::parse(f.to_string().as_bytes()).unwrap();
        let Message::UserHello(h) = env.message().unwrap() else {
            panic!("not a hello")
        };
        assert_eq!(h.pubkey, pk(0));
        // Signatures are checked over the payload as received.
        assert_eq!(env.payload(), &payload);
    }
}

#[test]
fn envelope_field_values_are_validated() {
    for bad_from in ["", "al ice", "*", "a/b", "ü", &"x".repeat(65), "host:1"] {
        assert_invalid_field(&with("from", json!(bad_from)), "from");
    }
    for bad_to in ["", "a b", "host:", ":80", "host:99999", "ü"] {
        assert_invalid_field(&with("to", json!(bad_to)), "to");
    }
    for (to, want) in [
        ("*", To::All),
        ("public", To::Public),
        ("alice", To::Id("alice".into())),
        ("127.0.0.1:8765", To::HostPort("127.0.0.1:8765".into())),
        ("[::1]:8765", To::HostPort("[::1]:8765".into())),
        (
            "ws://127.0.0.1:8765/",
            To::HostPort("ws://127.0.0.1:8765/".into()),
        ),
    ] {
        let env = Envelope::parse(with("to", json!(to)).to_string().as_bytes()).unwrap();
        assert_eq!(env.to(), &want);
    }
    // Negative and zero ts are integers: parsed (freshness is a separate check).
    for ts in [0, -1, i64::MIN, i64::MAX] {
        let env = Envelope::parse(with("ts", json!(ts)).to_string().as_bytes()).unwrap();
        assert_eq!(env.ts(), ts);
    }
}

#[test]
fn a_bad_sig_is_a_typed_error() {
    match Envelope::parse(with("sig", json!("+/+/")).to_string().as_bytes()) {
        Err(e @ Error::BadBase64(_)) => assert_eq!(e.code(), ErrorCode::BadRequest),
        other => panic!("expected BadBase64, got {other:?}"),
    }
    assert_invalid_field(&with("sig", json!("A".repeat(3000))), "sig");
    let env = Envelope::parse(with("sig", json!(sig().as_str())).to_string().as_bytes()).unwrap();
    assert_eq!(env.sig(), Some(&sig()));
}

#[test]
fn payload_field_types_are_strict() {
    let addr = |port: Value| json!({"host": "h", "port": port, "pubkey": pk(1).to_wire()});
    for port in [
        json!("8080"),
        json!(70_000),
        json!(-1),
        json!(80.5),
        json!(null),
    ] {
        assert_invalid_payload(
            "SERVER_HELLO_JOIN",
            addr(port.clone()),
            &format!("port {port}"),
        );
        assert_invalid_payload("SERVER_ANNOUNCE", addr(port), "port");
    }
    let start = |field: &str, v: Value| {
        let mut p =
            json!({"file_id": "f1", "name": "a.txt", "size": 10, "sha256": SHA, "mode": "dm"});
        p[field] = v;
        p
    };
    for (field, v) in [
        ("size", json!(-1)),
        ("size", json!("10")),
        ("size", json!(1.5)),
        ("sha256", json!("abc")),
        ("sha256", json!(SHA.replace('9', "g"))),
        ("sha256", json!(format!("{SHA}00"))),
        ("name", json!("")),
        ("name", json!("n".repeat(256))),
        ("name", json!(5)),
        ("file_id", json!("a b")),
        ("file_id", json!("../etc")),
        ("file_id", json!("")),
        ("file_id", json!("f".repeat(129))),
        ("mode", json!("group")),
        ("mode", json!("DM")),
    ] {
        assert_invalid_payload(
            "FILE_START",
            start(field, v.clone()),
            &format!("{field} {v}"),
        );
    }
    for (msg_type, payload) in [
        (
            "FILE_CHUNK",
            json!({"file_id": "f1", "index": -1, "ciphertext": ct().as_str()}),
        ),
        (
            "FILE_CHUNK",
            json!({"file_id": "f1", "index": 0, "ciphertext": "+++"}),
        ),
        (
            "PUBLIC_CHANNEL_ADD",
            json!({"add": [ALICE], "if_version": "3"}),
        ),
        ("PUBLIC_CHANNEL_ADD", json!({"add": ALICE, "if_version": 3})),
        (
            "PUBLIC_CHANNEL_ADD",
            json!({"add": ["bad id"], "if_version": 3}),
        ),
        (
            "PUBLIC_CHANNEL_UPDATED",
            json!({"version": -2, "wraps": []}),
        ),
        (
            "MSG_DIRECT",
            json!({"ciphertext": "not base64!", "sender_pub": pk(0).to_wire(),
                   "content_sig": sig().as_str()}),
        ),
        (
            "MSG_DIRECT",
            json!({"ciphertext": 5, "sender_pub": pk(0).to_wire(), "content_sig": sig().as_str()}),
        ),
        ("USER_REMOVE", json!({"user_id": 7, "server_id": SERVER})),
        (
            "USER_REGISTER",
            json!({"user_id": ALICE, "username": "-bad", "pubkey": pk(0).to_wire(),
                   "privkey_store": "x"}),
        ),
        ("ERROR", json!({"code": 404, "detail": "x"})),
        ("ACK", json!({"msg_ref": 1})),
        ("LIST_RESPONSE", json!({"users": {}})),
    ] {
        assert_invalid_payload(msg_type, payload, "wrong type");
    }
}

/// SPEC.md §2: keys of any other size or exponent are rejected with BAD_KEY
/// *wherever they appear*. A weak key inside a payload (USER_HELLO.pubkey,
/// SERVER_HELLO_JOIN.pubkey, USER_REGISTER.pubkey, ...) comes out of
/// `Envelope::message()` as `InvalidPayload`, whose code is BAD_REQUEST: the
/// `BadKey` from `PublicKey`'s deserialiser is flattened into a serde message.
#[test]
fn weak_keys_inside_payloads_are_bad_key() {
    let interop: Value =
        serde_json::from_str(include_str!("../testdata/python-interop.json")).unwrap();
    let weak = interop["weak_keys_must_be_rejected"]["rsa2048_public_der_b64url"].clone();
    for (msg_type, payload) in [
        ("USER_HELLO", json!({"client": "c", "pubkey": weak})),
        (
            "SERVER_HELLO_JOIN",
            json!({"host": "h", "port": 1, "pubkey": weak}),
        ),
        (
            "USER_ADVERTISE",
            json!({"user_id": ALICE, "server_id": SERVER, "pubkey": weak}),
        ),
    ] {
        let err = parse_message(msg_type, payload).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadKey, "{msg_type}: {err}");
    }
}

#[test]
fn weak_and_malformed_keys_inside_payloads_are_bad_key() {
    let interop: Value =
        serde_json::from_str(include_str!("../testdata/python-interop.json")).unwrap();
    let mut bad: Vec<Value> = interop["weak_keys_must_be_rejected"]
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    bad.push(json!("garbage"));
    bad.push(json!(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    ));
    for weak in bad {
        for payload in [
            json!({"client": "c", "pubkey": weak}),
            json!({"client": "c", "pubkey": pk(0).to_wire(), "enc_pubkey": weak}),
        ] {
            match parse_message("USER_HELLO", payload) {
                Err(e @ Error::BadKey(_)) => assert_eq!(e.code(), ErrorCode::BadKey),
                other => panic!("{weak}: expected BadKey, got {other:?}"),
            }
        }
        let dm =
            json!({"ciphertext": ct().as_str(), "sender_pub": weak, "content_sig": sig().as_str()});
        assert!(matches!(
            parse_message("MSG_DIRECT", dm),
            Err(Error::BadKey(_))
        ));
    }
}

// ---- missing fields ----------------------------------------------------------------

#[test]
fn missing_envelope_fields_are_missing_field() {
    for field in ["type", "from", "to", "ts"] {
        let mut f = good_frame();
        f.as_object_mut().unwrap().remove(field);
        match Envelope::parse(f.to_string().as_bytes()) {
            Err(e @ Error::MissingField(name)) => {
                assert_eq!(name, field);
                assert_eq!(e.code(), ErrorCode::BadRequest);
            }
            other => panic!("without {field}: expected MissingField, got {other:?}"),
        }
    }
    // `sig` is optional, and so is `payload` (read as `{}`, SPEC.md §11).
    assert!(Envelope::parse(good_frame().to_string().as_bytes()).is_ok());
}

#[test]
fn missing_payload_fields_are_invalid_payload() {
    let full_direct = json!({"ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
                             "content_sig": sig().as_str()});
    for field in ["ciphertext", "sender_pub", "content_sig"] {
        let mut p = full_direct.clone();
        p.as_object_mut().unwrap().remove(field);
        let reason = assert_invalid_payload("MSG_DIRECT", p, field);
        assert!(reason.contains(field), "{reason}");
    }
    for (msg_type, payload, field) in [
        ("USER_HELLO", json!({"client": "c"}), "pubkey"),
        (
            "SERVER_HELLO_JOIN",
            json!({"host": "h", "pubkey": pk(0).to_wire()}),
            "port",
        ),
        ("USER_REMOVE", json!({"user_id": ALICE}), "server_id"),
        ("FILE_END", json!({}), "file_id"),
        ("ERROR", json!({"detail": "x"}), "code"),
        ("SERVER_WELCOME", json!({"servers": []}), "assigned_id"),
        (
            "LOGIN_CHALLENGE",
            json!({"user_id": ALICE, "nonce": "n"}),
            "privkey_store",
        ),
    ] {
        let reason = assert_invalid_payload(msg_type, payload, field);
        assert!(reason.contains(field), "{msg_type}: {reason}");
    }
}

// ---- unknown types -----------------------------------------------------------------

#[test]
fn unknown_type_parses_but_has_no_message() {
    for t in ["FOO_BAR", "user_hello", "MSG_DIRECT ", ""] {
        let env = Envelope::parse(&frame(t, ALICE, SERVER, json!({"x": 1}))).unwrap();
        assert_eq!(env.msg_type(), t);
        assert_eq!(env.known_type(), None);
        match env.message() {
            Err(e @ Error::UnknownType(_)) => {
                assert_eq!(e.code(), ErrorCode::UnknownType);
                assert_eq!(e.code().as_str(), "UNKNOWN_TYPE");
                assert!(matches!(&e, Error::UnknownType(name) if name == t));
            }
            other => panic!("{t:?}: expected UnknownType, got {other:?}"),
        }
    }
}

#[test]
fn unknown_type_name_in_the_error_is_bounded() {
    let long = "X".repeat(256);
    let env = Envelope::parse(&frame(&long, ALICE, SERVER, json!({}))).unwrap();
    match env.message() {
        Err(Error::UnknownType(name)) => assert!(name.len() <= 64, "{}", name.len()),
        other => panic!("expected UnknownType, got {other:?}"),
    }
}

// ---- limits --------------------------------------------------------------------------

#[test]
fn oversize_frame_is_too_large_before_json_parsing() {
    // 2 MiB of `[`: as JSON it would be a nesting error, so TooLarge proves the
    // size is checked first.
    let frame = vec![b'['; 2 * 1024 * 1024];
    match Envelope::parse(&frame) {
        Err(e @ Error::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (2 * 1024 * 1024, 1024 * 1024));
            assert_eq!(e.code(), ErrorCode::TooLarge);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A well-formed 2 MiB frame too.
    let big = frame_of_size(2 * 1024 * 1024);
    assert!(matches!(Envelope::parse(&big), Err(Error::TooLarge { .. })));
}

/// A valid frame of exactly `size` bytes (padding in a payload string).
fn frame_of_size(size: usize) -> Vec<u8> {
    let empty = frame("ACK", ALICE, SERVER, json!({"msg_ref": ""}));
    let pad = size - empty.len();
    let f = frame("ACK", ALICE, SERVER, json!({"msg_ref": "p".repeat(pad)}));
    assert_eq!(f.len(), size);
    f
}

#[test]
fn the_frame_limit_is_inclusive() {
    let limit = Limits::default().max_frame_bytes;
    assert_eq!(limit, 1024 * 1024);
    let env = Envelope::parse(&frame_of_size(limit)).unwrap();
    env.message().unwrap();
    assert!(matches!(
        Envelope::parse(&frame_of_size(limit + 1)),
        Err(Error::TooLarge { size, limit: 1_048_576 }) if size == limit + 1
    ));
    let small = Limits {
        max_frame_bytes: 200,
        ..Limits::default()
    };
    assert!(Envelope::parse_with(&frame_of_size(200), &small).is_ok());
    assert!(matches!(
        Envelope::parse_with(&frame_of_size(201), &small),
        Err(Error::TooLarge {
            size: 201,
            limit: 200
        })
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 10_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    for nested in [&arrays, &objects] {
        let in_payload = format!(
            r#"{{"type":"ACK","from":"{ALICE}","to":"{SERVER}","ts":{TS},"payload":{{"msg_ref":"r","x":{nested}}}}}"#
        );
        assert!(matches!(
            Envelope::parse(in_payload.as_bytes()),
            Err(Error::Json(_))
        ));
        assert!(matches!(
            Envelope::parse(nested.as_bytes()),
            Err(Error::Json(_))
        ));
    }
    // Unclosed nesting too.
    assert!(Envelope::parse("[".repeat(depth).as_bytes()).is_err());
}

#[test]
fn moderate_nesting_is_fine() {
    let depth = 100;
    let nested: Value =
        serde_json::from_str(&format!("{}{}", "[".repeat(depth), "]".repeat(depth))).unwrap();
    let bytes = frame("ACK", ALICE, SERVER, json!({"msg_ref": "r", "x": nested}));
    let env = Envelope::parse(&bytes).unwrap();
    env.message().unwrap();
    assert_eq!(
        env.signing_bytes().len(),
        r#"{"msg_ref":"r","x":}"#.len() + 2 * depth
    );
}

#[test]
fn envelope_strings_over_256_characters_are_refused() {
    let max = Limits::default().max_envelope_string;
    assert_eq!(max, 256);
    // `type` is only length-checked: 256 is fine, 257 is not.
    let ok = with("type", json!("T".repeat(256)));
    assert!(Envelope::parse(ok.to_string().as_bytes()).is_ok());
    assert_invalid_field(&with("type", json!("T".repeat(257))), "type");
    // Characters, not bytes.
    assert!(Envelope::parse(with("type", json!("é".repeat(256))).to_string().as_bytes()).is_ok());
    assert_invalid_field(&with("type", json!("é".repeat(257))), "type");
    assert_invalid_field(&with("from", json!("a".repeat(257))), "from");
    assert_invalid_field(&with("to", json!("a".repeat(257))), "to");
    assert_invalid_field(&with("to", json!(format!("{}:80", "h".repeat(300)))), "to");
    // Strings inside the payload are not limited by it.
    let long = "p".repeat(10_000);
    let env = Envelope::parse(&frame("ACK", ALICE, SERVER, json!({"msg_ref": long}))).unwrap();
    let Message::Ack(a) = env.message().unwrap() else {
        panic!()
    };
    assert_eq!(a.msg_ref.len(), 10_000);
}

#[test]
fn non_objects_and_bad_json_are_typed_errors() {
    for (input, want_not_object) in [
        (&b"[]"[..], true),
        (b"42", true),
        (b"\"frame\"", true),
        (b"null", true),
        (b"", false),
        (b"{", false),
        (b"{\"type\":", false),
        (b"\xff\xfe{}", false),
        (b"{} {}", false),
        (b"{'type': 'ACK'}", false),
    ] {
        let r = Envelope::parse(input);
        if want_not_object {
            assert!(matches!(r, Err(Error::NotAnObject)), "{input:?}: {r:?}");
        } else {
            assert!(matches!(r, Err(Error::Json(_))), "{input:?}: {r:?}");
        }
        assert_eq!(r.unwrap_err().code(), ErrorCode::BadRequest);
    }
}

// ---- deliveries by kind --------------------------------------------------------------

#[test]
fn deliveries_carry_every_kind() {
    let kinds = ["dm", "public", "file_start", "file_chunk", "file_end"];
    for (content, kind) in all_contents().into_iter().zip(kinds) {
        assert_eq!(content.kind(), kind);
        let sd = ServerDeliver {
            user_id: bob(),
            sender: alice(),
            orig_ts: Some(TS - 1),
            content: content.clone(),
            mail: None,
        };
        let payload = to_payload(&sd);
        assert_eq!(payload["kind"], kind);
        assert_eq!(payload["user_id"], BOB);
        assert_eq!(payload["sender"], ALICE);
        assert_eq!(payload["orig_ts"], TS - 1);
        let Message::ServerDeliver(back) = round_trip(&server(), To::from(&server_b()), &sd.into())
        else {
            panic!("not SERVER_DELIVER")
        };
        assert_eq!(back.content.kind(), kind);
        assert_eq!(back.user_id, bob());
        assert_eq!(back.orig_ts, Some(TS - 1));

        let ud = UserDeliver {
            sender: alice(),
            orig_ts: None,
            content,
            mail: None,
        };
        let payload = to_payload(&ud);
        assert_eq!(payload["kind"], kind);
        assert!(payload.get("orig_ts").is_none());
        let Message::UserDeliver(back) = round_trip(&server(), To::from(&bob()), &ud.into()) else {
            panic!("not USER_DELIVER")
        };
        assert_eq!(back.content.kind(), kind);
        assert_eq!(back.orig_ts, None);
    }
}

#[test]
fn server_deliver_dm_has_the_spec_fields() {
    // SPEC.md §5.4: {user_id, ciphertext, sender, sender_pub, content_sig, orig_ts} + kind.
    let sd = ServerDeliver {
        user_id: bob(),
        sender: alice(),
        orig_ts: Some(TS),
        content: DeliverContent::Dm(msg_direct()),
        mail: None,
    };
    assert_eq!(
        to_payload(&sd),
        json!({
            "user_id": BOB, "sender": ALICE, "orig_ts": TS, "kind": "dm",
            "ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
            "content_sig": sig().as_str()
        })
    );
}

#[test]
fn deliveries_without_kind_are_dm() {
    let dm = json!({"ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
                    "content_sig": sig().as_str(), "sender": ALICE, "orig_ts": TS});
    let mut server_payload = dm.clone();
    server_payload["user_id"] = json!(BOB);
    for kind in [None, Some(json!(null))] {
        let mut sp = server_payload.clone();
        let mut up = dm.clone();
        if let Some(k) = &kind {
            sp["kind"] = k.clone();
            up["kind"] = k.clone();
        }
        let Message::ServerDeliver(s) = parse_message("SERVER_DELIVER", sp).unwrap() else {
            panic!()
        };
        assert!(matches!(s.content, DeliverContent::Dm(_)), "{kind:?}");
        assert_eq!(s.orig_ts, Some(TS));
        let Message::UserDeliver(u) = parse_message("USER_DELIVER", up).unwrap() else {
            panic!()
        };
        assert!(matches!(u.content, DeliverContent::Dm(_)), "{kind:?}");
        assert_eq!(u.sender, alice());
    }
    // Without orig_ts (implementations that keep the envelope ts).
    let mut up = dm;
    up.as_object_mut().unwrap().remove("orig_ts");
    let Message::UserDeliver(u) = parse_message("USER_DELIVER", up).unwrap() else {
        panic!()
    };
    assert_eq!(u.orig_ts, None);
}

#[test]
fn unknown_or_mistyped_kind_is_an_error() {
    let base = json!({"ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
                      "content_sig": sig().as_str(), "sender": ALICE, "user_id": BOB});
    for kind in [
        json!("group"),
        json!("DM"),
        json!(""),
        json!(1),
        json!(["dm"]),
    ] {
        let mut p = base.clone();
        p["kind"] = kind.clone();
        assert_invalid_payload("SERVER_DELIVER", p.clone(), &format!("kind {kind}"));
        assert_invalid_payload("USER_DELIVER", p, &format!("kind {kind}"));
    }
    // A known kind without its fields.
    let mut p = base;
    p["kind"] = json!("file_start");
    assert_invalid_payload("USER_DELIVER", p, "file_start without its fields");
    // SERVER_DELIVER needs the recipient.
    let p = json!({"ciphertext": ct().as_str(), "sender_pub": pk(0).to_wire(),
                   "content_sig": sig().as_str(), "sender": ALICE});
    assert_invalid_payload("SERVER_DELIVER", p, "no user_id");
}

// ---- freshness ----------------------------------------------------------------------

#[test]
fn is_fresh_is_a_symmetric_inclusive_window() {
    assert_eq!(TS_WINDOW_MS, 10 * 60 * 1000);
    let env = Envelope::new(&server(), To::All, TS, &Heartbeat {});
    assert!(env.is_fresh(TS, TS_WINDOW_MS));
    assert!(env.is_fresh(TS + TS_WINDOW_MS, TS_WINDOW_MS));
    assert!(env.is_fresh(TS - TS_WINDOW_MS, TS_WINDOW_MS));
    assert!(!env.is_fresh(TS + TS_WINDOW_MS + 1, TS_WINDOW_MS));
    assert!(!env.is_fresh(TS - TS_WINDOW_MS - 1, TS_WINDOW_MS));
    assert!(!env.is_fresh(TS + 1, 0));
    assert!(env.is_fresh(TS, 0));
    // Extreme values neither overflow nor panic.
    let max = Envelope::new(&server(), To::All, i64::MAX, &Heartbeat {});
    let min = Envelope::new(&server(), To::All, i64::MIN, &Heartbeat {});
    assert!(!max.is_fresh(i64::MIN, i64::MAX));
    assert!(!min.is_fresh(i64::MAX, i64::MAX));
    assert!(min.is_fresh(i64::MIN, 0));
    assert!(!max.is_fresh(socp_protocol::now_ms(), TS_WINDOW_MS));
    assert!(!min.is_fresh(socp_protocol::now_ms(), TS_WINDOW_MS));
    // A negative window is read as its magnitude.
    assert!(env.is_fresh(TS + 5, -5));
    let now = Envelope::new(&server(), To::All, socp_protocol::now_ms(), &Heartbeat {});
    assert!(now.is_fresh(socp_protocol::now_ms(), TS_WINDOW_MS));
}

// ---- seen-ids key ---------------------------------------------------------------------

fn seen_frame(from: &str, to: &str, payload: Value) -> [u8; 32] {
    Envelope::parse(&frame("USER_REMOVE", from, to, payload))
        .unwrap()
        .seen_key()
}

#[test]
fn seen_key_differs_when_any_covered_field_differs() {
    let p = json!({"user_id": ALICE, "server_id": SERVER});
    let keys = [
        seen_frame(SERVER, "*", p.clone()),
        Envelope::parse(
            json!({"type": "USER_REMOVE", "from": SERVER, "to": "*", "ts": TS + 1, "payload": p})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .seen_key(),
        seen_frame(SERVER_B, "*", p.clone()),
        seen_frame(SERVER, "public", p.clone()),
        seen_frame(SERVER, "*", json!({"user_id": BOB, "server_id": SERVER})),
        seen_frame(
            SERVER,
            "*",
            json!({"user_id": ALICE, "server_id": SERVER, "x": 1}),
        ),
        // The boundary between `from` and `to` matters.
        seen_frame("ab", "c", p.clone()),
        seen_frame("a", "bc", p),
    ];
    let distinct: HashSet<[u8; 32]> = keys.iter().copied().collect();
    assert_eq!(distinct.len(), keys.len());
}

#[test]
fn seen_key_is_stable_for_the_same_frame() {
    let env = Envelope::new(
        &server(),
        To::All,
        TS,
        &UserRemove {
            user_id: alice(),
            server_id: server(),
            seq: None,
        },
    );
    let reparsed = Envelope::parse(env.to_json().as_bytes()).unwrap();
    assert_eq!(env.seen_key(), reparsed.seen_key());
    // Key order and whitespace of the text do not matter, nor unknown
    // envelope fields, nor the signature.
    let text = format!(
        r#"{{ "payload" : {{ "server_id" : "{SERVER}", "user_id" : "{ALICE}" }},
             "ts" : {TS}, "to" : "*", "from" : "{SERVER}", "type" : "USER_REMOVE",
             "hops": 2, "sig": "{}" }}"#,
        sig().as_str()
    );
    let other = Envelope::parse(text.as_bytes()).unwrap();
    assert_eq!(other.seen_key(), env.seen_key());
}

// ---- error codes ---------------------------------------------------------------------

#[test]
fn error_codes_parse_known_and_unknown() {
    for (text, code) in [
        ("USER_NOT_FOUND", ErrorCode::UserNotFound),
        ("INVALID_SIG", ErrorCode::InvalidSig),
        ("BAD_KEY", ErrorCode::BadKey),
        ("TIMEOUT", ErrorCode::Timeout),
        ("UNKNOWN_TYPE", ErrorCode::UnknownType),
        ("NAME_IN_USE", ErrorCode::NameInUse),
        ("BAD_REQUEST", ErrorCode::BadRequest),
        ("TOO_LARGE", ErrorCode::TooLarge),
        ("RATE_LIMITED", ErrorCode::RateLimited),
        ("AUTH_FAILED", ErrorCode::AuthFailed),
        ("SOMETHING_NEW", ErrorCode::Other("SOMETHING_NEW".into())),
        ("invalid_sig", ErrorCode::Other("invalid_sig".into())),
        ("", ErrorCode::Other(String::new())),
        ("Zoë ✓", ErrorCode::Other("Zoë ✓".into())),
    ] {
        let Message::Error(e) =
            parse_message("ERROR", json!({"code": text, "detail": "d"})).unwrap()
        else {
            panic!("not ERROR")
        };
        assert_eq!(e.code, code, "{text}");
        assert_eq!(e.code.as_str(), text);
        assert_eq!(e.detail, "d");
        assert_eq!(to_payload(&e)["code"], text, "kept as it arrived");
        // Unknown codes are shown as they are.
        if matches!(e.code, ErrorCode::Other(_)) {
            assert_eq!(e.code.describe(), text);
        } else {
            assert_ne!(e.code.describe(), text);
        }
    }
    // `detail` is optional.
    let Message::Error(e) = parse_message("ERROR", json!({"code": "TIMEOUT"})).unwrap() else {
        panic!()
    };
    assert_eq!((e.code, e.detail.as_str()), (ErrorCode::Timeout, ""));
}

#[test]
fn parse_errors_map_to_wire_codes() {
    let cases: Vec<(Error, ErrorCode)> = vec![
        (
            Envelope::parse(b"not json").unwrap_err(),
            ErrorCode::BadRequest,
        ),
        (Envelope::parse(b"[]").unwrap_err(), ErrorCode::BadRequest),
        (
            Envelope::parse(&vec![b' '; 2 << 20]).unwrap_err(),
            ErrorCode::TooLarge,
        ),
        (
            Envelope::parse(&frame("NOPE", ALICE, SERVER, json!({})))
                .unwrap()
                .message()
                .unwrap_err(),
            ErrorCode::UnknownType,
        ),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err}");
    }
}

#[test]
fn summary_has_no_payload_content() {
    let env = Envelope::new(&alice(), To::from(&bob()), TS, &msg_direct());
    let s = env.summary();
    assert!(
        s.contains("MSG_DIRECT") && s.contains(ALICE) && s.contains(BOB),
        "{s}"
    );
    assert!(!s.contains(ct().as_str()), "{s}");
    assert!(!s.contains(pk(0).to_wire()), "{s}");
}
