//! End-to-end: who is who, as the `socp-client` binary shows it (scripting
//! mode, `--json`), against a real server and a scripted fake server that
//! advertises users a socp server would never host.
//!
//! - registered users shown by username, guests marked `(guest)`; `/tell bob`
//!   reaches the registered bob, never a guest calling itself bob (a guest
//!   only by its exact id); `/rename` frees the name;
//! - keys pinned on first use: a changed key warned about, the user's
//!   messages marked unverified and nothing encrypted to the new key until
//!   `/accept`; `/whois` and `/verify`, kept across restarts of the client,
//!   and a pinned key file that disagrees with the network warned about at
//!   start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod client_common;
mod common;

use std::path::Path;
use std::time::Duration;

use client_common::{event_where, is_event, Client, Options, WAIT};
use common::{config_with, eventually, fast_settings, FakeServer};
use serde_json::{json, Value};
use socp::server::{start, RunningServer};
use socp_actors::Settings;
use socp_protocol::crypto::sha256_hex;
use socp_protocol::message::{DeliverContent, MsgDirect, ServerDeliver, UserAdvertise};
use socp_protocol::{content, fixtures, now_ms, Base64Url, Envelope, Message, To, UserId};

/// A fake server sends no heartbeats: declare it dead only after long silence.
fn patient() -> Settings {
    Settings {
        peer_timeout: Duration::from_secs(120),
        ..fast_settings()
    }
}

/// The fingerprint the client shows for fixture key `n`: SHA-256 of the DER
/// SPKI in 16 groups of 4 hex digits.
fn fingerprint(n: usize) -> String {
    let hex = sha256_hex(fixtures::key(n).public_key().der());
    hex.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fake server linked to `server`, announced, ready to advertise users.
async fn fake_server(server: &RunningServer, key: usize) -> FakeServer {
    let mut fake = FakeServer::link(server.addr, key, &server.server_id).await;
    let fake_id = fake.id.to_string();
    eventually(WAIT, "the fake server is linked", || async {
        server.status().await["servers"]
            .as_array()
            .is_some_and(|l| {
                l.iter()
                    .any(|x| x["server_id"] == fake_id.as_str() && x["link"] == "up")
            })
    })
    .await;
    fake.announce().await;
    fake
}

/// The fake server advertises `user` with fixture key `key` and `meta`.
async fn advertise(fake: &mut FakeServer, user: &UserId, key: usize, meta: Option<Value>) {
    let advert = fake.signed(
        To::All,
        &Message::UserAdvertise(UserAdvertise {
            user_id: user.clone(),
            server_id: fake.id.clone(),
            pubkey: fixtures::key(key).public_key().clone(),
            meta,
            seq: None,
        }),
    );
    fake.peer.send(&advert).await;
}

/// The fake server registers `user` as `name` with fixture key `key`: its
/// DIRECTORY_RECORD (version `version`), which makes the user's registration
/// one the mesh holds (a server refuses an advert claiming a registration it
/// does not hold).
async fn publish(fake: &mut FakeServer, user: &UserId, name: &str, key: usize, version: u64) {
    let record = fake.signed(
        To::All,
        &Message::DirectoryRecord(socp_protocol::message::DirectoryRecord {
            user_id: user.clone(),
            username: socp_protocol::Username::parse(name).expect("a name"),
            pubkey: fixtures::key(key).public_key().clone(),
            home_server: fake.id.clone(),
            privkey_store: "a key store".into(),
            registered_at: now_ms() - 1_000,
            version,
        }),
    );
    fake.peer.send(&record).await;
}

/// The fake server delivers a genuine DM from its user `sender` (signed with
/// fixture key `key`, which it also gives as `sender_pub`) to `recipient`
/// (fixture key `recipient_key`) at `server`.
async fn dm_from_fake(
    fake: &mut FakeServer,
    server: &RunningServer,
    sender: &UserId,
    key: usize,
    recipient: &str,
    recipient_key: usize,
    text: &str,
) {
    let recipient = UserId::parse(recipient).expect("an id");
    let ts = now_ms();
    let ct = Base64Url::from_bytes(
        &fixtures::key(recipient_key)
            .public_key()
            .encrypt(text.as_bytes())
            .expect("fits"),
    );
    let sig = content::sign_dm(
        &fixtures::key(key),
        &ct,
        sender.as_str(),
        recipient.as_str(),
        ts,
    )
    .expect("signs");
    let env = fake.signed(
        To::from(&server.server_id),
        &Message::ServerDeliver(ServerDeliver {
            user_id: recipient,
            sender: sender.clone(),
            orig_ts: Some(ts),
            content: DeliverContent::Dm(MsgDirect {
                ciphertext: ct,
                sender_pub: fixtures::key(key).public_key().clone(),
                content_sig: sig,
            }),
            mail: None,
        }),
    );
    fake.peer.send(&env).await;
}

/// The DM text a SERVER_DELIVER carries for `user`, opened with fixture key
/// `key`; `None` for any other frame.
fn delivered_to(env: &Envelope, user: &UserId, key: usize) -> Option<String> {
    match env.message() {
        Ok(Message::ServerDeliver(ServerDeliver {
            user_id,
            content: DeliverContent::Dm(m),
            ..
        })) if user_id == *user => fixtures::key(key)
            .decrypt(m.ciphertext.bytes())
            .ok()
            .and_then(|p| String::from_utf8(p).ok()),
        _ => None,
    }
}

/// The `dm` event with exactly `text`.
fn dm(text: &str) -> impl Fn(&Value) -> bool {
    let text = text.to_owned();
    move |e| e["event"] == "dm" && e["text"] == text.as_str()
}

/// An `error` event with this code.
fn error(code: &'static str) -> impl Fn(&Value) -> bool {
    event_where("error", "code", code)
}

/// The first 8 characters of an id: how a guest without a name is shown.
fn short(id: &str) -> &str {
    &id[..8]
}

fn problems(client: &Client) -> Vec<&Value> {
    client.logged(|e| {
        matches!(
            e["event"].as_str(),
            Some("error" | "warning" | "key_changed" | "not-json")
        )
    })
}

#[actix_rt::test]
async fn guests_are_marked_and_never_reached_by_a_registered_users_name() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let a = start(config_with(5, None, &[], patient()))
        .await
        .expect("a starts");

    // bob registers and logs in: a registered user, by name.
    let mut bob = Client::start(
        "bob",
        a.addr,
        Options {
            register_key: Some(25),
            password: Some("bob's password".into()),
            ..Options::new(10, &tmp.path().join("bob"))
        },
    )
    .await;
    bob.send("/register bob");
    let registered = bob.expect("registered", is_event("registered")).await;
    let bob_id = registered["user_id"].as_str().expect("an id").to_owned();
    bob.send("/login bob");
    bob.expect("login", is_event("login")).await;
    bob.id = bob_id.clone();

    // Another implementation's server hosts a guest calling itself bob, and
    // a guest with no name.
    let mut fake = fake_server(&a, 7).await;
    let guest_bob = UserId::random();
    let nameless = UserId::random();
    advertise(&mut fake, &guest_bob, 22, Some(json!({ "name": "bob" }))).await;
    advertise(&mut fake, &nameless, 23, None).await;

    let mut alice =
        Client::start("alice", a.addr, Options::new(12, &tmp.path().join("alice"))).await;
    let seen = alice.sees_online(&bob_id).await;
    assert_eq!(seen["registered"], true, "{seen}");
    assert_eq!(seen["shown"], "bob", "{seen}");
    assert_eq!(seen["home"], a.server_id.as_str(), "{seen}");
    let seen = alice.sees_online(guest_bob.as_str()).await;
    assert_eq!(seen["registered"], false, "{seen}");
    assert_eq!(
        seen["shown"],
        format!("bob (guest {})", short(guest_bob.as_str())),
        "a guest using a registered user's name is marked, with its id: {seen}"
    );
    let seen = alice.sees_online(nameless.as_str()).await;
    assert_eq!(
        seen["shown"],
        format!("{} (guest)", short(nameless.as_str())),
        "{seen}"
    );

    // /list marks them the same way.
    alice.send("/list");
    let list = alice.expect("list", is_event("list")).await;
    let users = list["users"].as_array().expect("users").clone();
    let entry = |id: &str| {
        users
            .iter()
            .find(|u| u["user_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {list}"))
    };
    assert_eq!(entry(&bob_id)["shown"], "bob");
    assert_eq!(entry(&bob_id)["registered"], true);
    assert_eq!(entry(guest_bob.as_str())["registered"], false);
    assert_eq!(
        entry(guest_bob.as_str())["shown"],
        format!("bob (guest {})", short(guest_bob.as_str()))
    );
    assert_eq!(entry(&alice.id)["registered"], false, "{list}");

    // `/tell bob` (any case) is the registered bob, never the guest.
    alice.send("/tell bob hello registered bob");
    let sent = alice
        .expect("sent", event_where("sent", "text", "hello registered bob"))
        .await;
    assert_eq!(sent["to"], bob_id.as_str(), "{sent}");
    alice.send("/tell BOB again");
    let sent = alice
        .expect("sent", event_where("sent", "text", "again"))
        .await;
    assert_eq!(sent["to"], bob_id.as_str(), "{sent}");
    // bob sees alice marked as the guest she is.
    let got = bob.expect("alice's DM", dm("hello registered bob")).await;
    assert_eq!(got["from"], alice.id.as_str());
    assert_eq!(got["registered"], false);
    assert_eq!(got["shown"], format!("{} (guest)", short(&alice.id)));
    bob.expect("alice's second DM", dm("again")).await;

    // A guest is reached by its exact id only.
    alice.send(&format!("/tell {guest_bob} hello guest"));
    let sent = alice
        .expect("sent", event_where("sent", "text", "hello guest"))
        .await;
    assert_eq!(sent["to"], guest_bob.as_str());
    let frame = fake
        .peer
        .expect(WAIT, "the DM to the guest", |e| {
            delivered_to(e, &guest_bob, 22).is_some()
        })
        .await;
    assert_eq!(
        delivered_to(&frame, &guest_bob, 22).as_deref(),
        Some("hello guest")
    );
    alice.send(&format!("/tell {} by a short id", short(nameless.as_str())));
    let refused = alice.expect("an error", error("USER_NOT_FOUND")).await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains(short(nameless.as_str()))),
        "{refused}"
    );
    alice.send("/tell carol nobody");
    let refused = alice.expect("an error", error("USER_NOT_FOUND")).await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no registered user carol")),
        "{refused}"
    );

    // The guest's DM is shown as the guest's.
    dm_from_fake(
        &mut fake,
        &a,
        &guest_bob,
        22,
        &alice.id,
        12,
        "from the guest",
    )
    .await;
    let got = alice.expect("the guest's DM", dm("from the guest")).await;
    assert_eq!(got["from"], guest_bob.as_str());
    assert_eq!(got["registered"], false);
    assert_eq!(
        got["shown"],
        format!("bob (guest {})", short(guest_bob.as_str()))
    );

    // bob takes another name: the name bob is then only a guest's, which
    // `/tell bob` never reaches. (The server publishes the new name in the
    // directory; adverts carry it from bob's next login.)
    bob.send("/rename robert");
    let renamed = bob.expect("renamed", is_event("renamed")).await;
    assert_eq!(renamed["username"], "robert");
    assert_eq!(renamed["user_id"], bob_id.as_str());
    assert!(problems(&bob).is_empty(), "{:#?}", bob.log);
    let (status, _) = bob.quit().await;
    assert!(status.success(), "bob: {status}");
    let left = alice
        .expect("bob leaving", |e| {
            e["event"] == "presence" && e["user_id"] == bob_id.as_str() && e["online"] == false
        })
        .await;
    // Events read after bob left: the rename's advert, read before, also
    // shows bob online as robert.
    let left_at = left["_read_at_ms"].as_u64().unwrap_or(0);
    let mut bob = Client::start(
        "bob (as robert)",
        a.addr,
        Options {
            password: Some("bob's password".into()),
            ..Options::new(11, &tmp.path().join("bob"))
        },
    )
    .await;
    bob.send("/login robert");
    let login = bob.expect("login", is_event("login")).await;
    assert_eq!(login["user_id"], bob_id.as_str());
    let id = bob_id.clone();
    alice
        .expect("bob as robert", move |e| {
            e["event"] == "presence"
                && e["user_id"] == id.as_str()
                && e["online"] == true
                && e["shown"] == "robert"
                && e["_read_at_ms"].as_u64().unwrap_or(0) > left_at
        })
        .await;
    alice.send("/tell bob are you there");
    let refused = alice.expect("an error", error("USER_NOT_FOUND")).await;
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("guest") && detail.contains(guest_bob.as_str()),
        "says bob is a guest, reached by id: {refused}"
    );
    alice.send("/tell robert hello robert");
    let sent = alice
        .expect("sent", event_where("sent", "text", "hello robert"))
        .await;
    assert_eq!(sent["to"], bob_id.as_str());
    bob.expect("alice's DM to robert", dm("hello robert")).await;

    assert_eq!(
        alice.logged(is_event("sent")).len(),
        4,
        "nothing else was sent"
    );
    let errors = alice.logged(is_event("error"));
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        alice
            .logged(|e| matches!(
                e["event"].as_str(),
                Some("warning" | "key_changed" | "not-json")
            ))
            .is_empty(),
        "{:#?}",
        alice.log
    );
    assert!(problems(&bob).is_empty(), "{:#?}", bob.log);
    for c in [alice, bob] {
        let label = c.label.clone();
        let (status, _) = c.quit().await;
        assert!(status.success(), "{label}: {status}");
    }
}

#[actix_rt::test]
async fn a_changed_key_is_unverified_until_accepted_and_verification_is_kept() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().join("alice");
    let a = start(config_with(6, None, &[], patient()))
        .await
        .expect("a starts");
    let mut fake = fake_server(&a, 8).await;
    let dave = UserId::random();
    let dave_meta = json!({ "name": "dave", "registered": true, "home": fake.id.as_str() });
    publish(&mut fake, &dave, "dave", 20, 1).await;
    advertise(&mut fake, &dave, 20, Some(dave_meta.clone())).await;

    let mut alice = Client::start("alice", a.addr, Options::new(12, &home)).await;
    let seen = alice.sees_online(dave.as_str()).await;
    assert_eq!(seen["shown"], "dave");
    assert_eq!(seen["key_status"], "pinned", "pinned on first use: {seen}");

    alice.send("/whois dave");
    let whois = alice.expect("whois", is_event("whois")).await;
    assert_eq!(whois["user_id"], dave.as_str());
    assert_eq!(whois["name"], "dave");
    assert_eq!(whois["registered"], true);
    assert_eq!(whois["home"], fake.id.as_str());
    assert_eq!(whois["server_id"], fake.id.as_str());
    assert_eq!(whois["fingerprint"], fingerprint(20));
    assert_eq!(whois["key_status"], "pinned");
    assert_eq!(whois["verified"], false);

    dm_from_fake(&mut fake, &a, &dave, 20, &alice.id, 12, "before").await;
    let got = alice.expect("dave's DM", dm("before")).await;
    assert_eq!(got["unverified"], false, "{got}");

    // dave's home server gives dave another key (a new record version, which
    // a home server may do), and advertises it.
    publish(&mut fake, &dave, "dave", 24, 2).await;
    advertise(&mut fake, &dave, 24, Some(dave_meta.clone())).await;
    let changed = alice
        .expect("the key change", is_event("key_changed"))
        .await;
    assert_eq!(changed["user_id"], dave.as_str());
    assert_eq!(changed["pinned_fingerprint"], fingerprint(20));
    assert_eq!(changed["fingerprint"], fingerprint(24));

    // Messages signed with the new key are shown, marked unverified.
    dm_from_fake(&mut fake, &a, &dave, 24, &alice.id, 12, "after").await;
    let got = alice.expect("dave's DM", dm("after")).await;
    assert_eq!(got["unverified"], true, "{got}");
    assert_eq!(got["key_status"], "changed", "{got}");

    // Nothing is encrypted to the new key, nor verified, until accepted.
    alice.send("/tell dave secret for dave");
    let refused = alice.expect("an error", error("KEY_CHANGED")).await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/accept dave")),
        "{refused}"
    );
    alice.send("/verify dave");
    alice.expect("an error", error("KEY_CHANGED")).await;
    alice.send("/whois dave");
    let whois = alice.expect("whois", is_event("whois")).await;
    assert_eq!(whois["key_status"], "changed");
    assert_eq!(whois["fingerprint"], fingerprint(24));
    assert_eq!(whois["pinned_fingerprint"], fingerprint(20));

    alice.send("/accept dave");
    let accepted = alice.expect("accepted", is_event("key_accepted")).await;
    assert_eq!(accepted["fingerprint"], fingerprint(24));
    assert_eq!(accepted["previous_fingerprint"], fingerprint(20));
    assert_eq!(accepted["saved"], true);
    dm_from_fake(&mut fake, &a, &dave, 24, &alice.id, 12, "accepted").await;
    let got = alice.expect("dave's DM", dm("accepted")).await;
    assert_eq!(got["unverified"], false, "{got}");
    assert_eq!(got["key_status"], "pinned", "{got}");

    // Now a DM goes to the new key.
    alice.send("/tell dave to your new key");
    let sent = alice
        .expect("sent", event_where("sent", "text", "to your new key"))
        .await;
    assert_eq!(sent["to"], dave.as_str());
    let frame = fake
        .peer
        .expect(WAIT, "the DM to dave", |e| {
            delivered_to(e, &dave, 24).is_some()
        })
        .await;
    assert_eq!(
        delivered_to(&frame, &dave, 24).as_deref(),
        Some("to your new key")
    );

    // Verified after comparing the fingerprint out of band.
    alice.send("/verify dave");
    let verified = alice.expect("verified", is_event("verified")).await;
    assert_eq!(verified["fingerprint"], fingerprint(24));
    assert_eq!(verified["saved"], true);
    let verified_at = verified["verified_at"].as_i64().expect("a time");
    alice.send("/whois dave");
    let whois = alice.expect("whois", is_event("whois")).await;
    assert_eq!(whois["verified"], true);
    assert_eq!(whois["verified_at"], verified_at);
    assert_eq!(whois["key_status"], "verified");
    assert_eq!(alice.logged(is_event("key_changed")).len(), 1);
    assert_eq!(alice.logged(is_event("error")).len(), 2);
    assert!(alice.logged(is_event("warning")).is_empty());
    let (status, _) = alice.quit().await;
    assert!(status.success(), "{status}");

    // The pins: a file for its owner only.
    let file = home.join("known_keys.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("the pinned keys are kept")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // Restarted, the client still knows dave's key as verified.
    let mut alice = Client::start("alice (again)", a.addr, Options::new(13, &home)).await;
    let seen = alice.sees_online(dave.as_str()).await;
    assert_eq!(seen["key_status"], "verified", "{seen}");
    alice.send("/whois dave");
    let whois = alice.expect("whois", is_event("whois")).await;
    assert_eq!(whois["verified"], true);
    assert_eq!(whois["verified_at"], verified_at);
    assert_eq!(whois["fingerprint"], fingerprint(24));
    assert!(problems(&alice).is_empty(), "{:#?}", alice.log);
    let (status, _) = alice.quit().await;
    assert!(status.success(), "{status}");

    // A pinned key file that disagrees with the network: warned at start.
    pin_key(&file, &dave, 20);
    let mut alice = Client::start("alice (old pin)", a.addr, Options::new(14, &home)).await;
    let changed = alice
        .expect("the key change", is_event("key_changed"))
        .await;
    assert_eq!(changed["user_id"], dave.as_str());
    assert_eq!(changed["pinned_fingerprint"], fingerprint(20));
    assert_eq!(changed["fingerprint"], fingerprint(24));
    dm_from_fake(&mut fake, &a, &dave, 24, &alice.id, 14, "after restart").await;
    let got = alice.expect("dave's DM", dm("after restart")).await;
    assert_eq!(got["unverified"], true, "{got}");
    let (status, _) = alice.quit().await;
    assert!(status.success(), "{status}");
}

/// Rewrite the pinned key of `user` in the pin file to fixture key `key`
/// (as if pinned while the network showed that key).
fn pin_key(file: &Path, user: &UserId, key: usize) {
    let text = std::fs::read_to_string(file).expect("the pinned keys");
    let mut pins: Value = serde_json::from_str(&text).expect("JSON");
    let entry = &mut pins["users"][user.as_str()];
    assert!(entry.is_object(), "{user} is pinned: {pins}");
    entry["key"] = json!(fixtures::key(key).public_key().to_wire());
    entry["verified_at"] = Value::Null;
    std::fs::write(file, pins.to_string()).expect("writes the pins");
}

/// Alice's server goes away and comes back on the same address with its
/// database (bob's server stays up): alice's client says it lost the
/// connection, keeps what she types meanwhile, retries, logs in to her
/// account again without asking for the password, sends what was queued,
/// and says when it is back. Clients used to exit (status 1) when the
/// connection closed.
#[actix_rt::test]
async fn a_client_reconnects_logs_in_again_and_sends_what_was_typed_meanwhile() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let b = start(config_with(6, None, &[], patient()))
        .await
        .expect("b starts");
    let db = tmp.path().join("a.db");
    let addr = common::free_addr();
    let server_a = || socp::server::ServerConfig {
        bind: addr,
        ..config_with(5, Some(db.clone()), &[b.addr], patient())
    };
    let a = start(server_a()).await.expect("a starts");
    let mut alice = Client::start(
        "alice",
        a.addr,
        Options {
            register_key: Some(25),
            password: Some("alice's password".into()),
            ..Options::new(10, &tmp.path().join("alice"))
        },
    )
    .await;
    alice.send("/register alice");
    let registered = alice.expect("registered", is_event("registered")).await;
    let alice_id = registered["user_id"].as_str().expect("an id").to_owned();
    // Registering logs in: no /login, no second password.
    let login = alice.expect("login", is_event("login")).await;
    assert_eq!(login["user_id"], alice_id.as_str());
    alice.id = alice_id.clone();

    // The name is checked before anything else: a taken name is refused at
    // once, before a key is made (it used to be made first, for seconds).
    let mut late = Client::start(
        "late",
        b.addr,
        Options {
            password: Some("late's password".into()),
            ..Options::new(12, &tmp.path().join("late"))
        },
    )
    .await;
    late.send("/register alice");
    let refused = late.expect("an error", is_event("error")).await;
    assert_eq!(refused["code"], "NAME_IN_USE", "{refused}");
    assert!(
        late.logged(|e| e["event"] == "info"
            && e["text"].as_str().is_some_and(|t| t.contains("generating")))
            .is_empty(),
        "no key was made: {:#?}",
        late.log
    );
    assert!(late.logged(is_event("registered")).is_empty());
    let mut bob = Client::start("bob", b.addr, Options::new(11, &tmp.path().join("bob"))).await;
    alice.sees_online(&bob.id).await;

    a.shutdown().await;
    alice.expect("disconnected", is_event("disconnected")).await;
    alice.send(&format!("/tell {} typed while my server was down", bob.id));
    // A joins through B again before it serves: it knows bob when alice is back.
    let _a = start(server_a()).await.expect("a starts again");
    let back = alice.expect("reconnected", is_event("reconnected")).await;
    assert_eq!(back["user_id"], alice_id.as_str(), "her account again");
    let got = bob
        .expect("the queued DM", dm("typed while my server was down"))
        .await;
    assert_eq!(got["from"], alice_id.as_str());
    // She is her account again: bob reaches her by name.
    bob.send("/tell alice welcome back");
    alice.expect("bob's DM", dm("welcome back")).await;
    assert!(
        alice.logged(is_event("error")).is_empty(),
        "{:#?}",
        alice.log
    );
}

/// A second login of an account that is online elsewhere is refused with a
/// clear message, and the client that tried keeps running (it used to drop
/// to the shell with "Policy identification failed").
#[actix_rt::test]
async fn a_second_login_elsewhere_is_refused_and_the_client_goes_on() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let a = start(config_with(5, None, &[], patient()))
        .await
        .expect("a starts");
    let mut bob = Client::start(
        "bob",
        a.addr,
        Options {
            register_key: Some(25),
            password: Some("bob's password".into()),
            ..Options::new(10, &tmp.path().join("bob"))
        },
    )
    .await;
    bob.send("/register bob");
    bob.expect("login", is_event("login")).await;
    let mut other = Client::start(
        "bob elsewhere",
        a.addr,
        Options {
            password: Some("bob's password".into()),
            ..Options::new(11, &tmp.path().join("elsewhere"))
        },
    )
    .await;
    other.send("/login bob");
    let refused = other.expect("refused", is_event("error")).await;
    assert_eq!(refused["code"], "NAME_IN_USE");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("bob is logged in elsewhere"), "{refused}");
    // Still running, as its own guest identity.
    other.send("/list");
    other
        .expect_within(Duration::from_secs(60), "a list", is_event("list"))
        .await;
    assert!(other.logged(is_event("login")).is_empty());
    let (status, _) = other.quit().await;
    assert!(status.success(), "{status}");
}

/// With several `--server`s, a lost connection is retried with the next one
/// in turn: a logged-in user whose server is gone for good is back, logged in
/// again (no password), through the other server of the mesh.
#[actix_rt::test]
async fn a_client_given_several_servers_moves_to_the_next_when_one_is_gone() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b) = common::linked_pair(patient()).await;
    let mut alice = Client::start(
        "alice",
        a.addr,
        Options {
            register_key: Some(25),
            password: Some("alice's password".into()),
            more_servers: vec![b.addr],
            ..Options::new(10, &tmp.path().join("alice"))
        },
    )
    .await;
    alice.send("/register alice");
    let registered = alice.expect("registered", is_event("registered")).await;
    alice.expect("login", is_event("login")).await;
    alice.id = registered["user_id"].as_str().expect("an id").to_owned();
    let mut bob = Client::start("bob", b.addr, Options::new(11, &tmp.path().join("bob"))).await;
    alice.sees_online(&bob.id).await;

    a.shutdown().await;
    alice.expect("disconnected", is_event("disconnected")).await;
    let back = alice.expect("reconnected", is_event("reconnected")).await;
    assert_eq!(back["user_id"], alice.id.as_str(), "her account again");
    assert!(
        back["server"]
            .as_str()
            .is_some_and(|s| s.contains(&format!(":{}/", b.addr.port()))),
        "through the other server: {back}"
    );
    alice.send(&format!("/tell {} from the other server", bob.id));
    let got = bob.expect("alice's DM", dm("from the other server")).await;
    assert_eq!(got["from"], alice.id.as_str());
}
