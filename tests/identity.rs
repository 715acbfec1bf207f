//! Identity across the mesh: a registered user's id and name cannot be taken
//! over, on its home server or any other (SPEC.md §5.3, §6.1, §7). Each test
//! is an attack as an attacker runs it: changing the unsigned fields (`ts`,
//! `to`) of what it saw, or speaking to a server other than the user's home.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::time::Duration;

use common::*;
use socp::server::RunningServer;
use socp_protocol::message::UserHello;
use socp_protocol::{fixtures, now_ms, Envelope, Message, ServerId, To, UserId};

const WAIT: Duration = Duration::from_secs(20);

/// Two linked servers.
async fn mesh() -> (RunningServer, RunningServer) {
    mesh_with(fast_settings()).await
}

/// Two linked servers with `settings`.
async fn mesh_with(settings: socp_actors::Settings) -> (RunningServer, RunningServer) {
    let start = |key, boot: Vec<std::net::SocketAddr>, settings| async move {
        socp::server::start(config_with(key, None, &boot, settings))
            .await
            .expect("server starts")
    };
    let a = start(2, vec![], settings.clone()).await;
    let b = start(3, vec![a.addr], settings).await;
    for s in [&a, &b] {
        eventually(WAIT, "linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    (a, b)
}

/// Register `id` as `name` with key `REG_KEY` at `addr`; the registrar (an
/// ephemeral user with key `key`) stays connected.
async fn register(addr: std::net::SocketAddr, key: usize, id: &UserId, name: &str) -> User {
    let mut user = User::join(addr, key).await;
    let reg = register_frame(&user.id, id, name, REG_KEY, REG_KEY, key_store());
    user.peer.send(&reg).await;
    user.peer
        .expect(WAIT, "REGISTER_OK", |e| {
            e.msg_type() == "REGISTER_OK" || e.msg_type() == "ERROR"
        })
        .await;
    user
}

/// `env` with another `ts` (and `to`): the fields its signature does not cover.
fn restamp(env: &Envelope, ts: i64, to: Option<&str>) -> Envelope {
    let mut v: serde_json::Value = serde_json::from_str(&env.to_json()).expect("json");
    v["ts"] = ts.into();
    if let Some(to) = to {
        v["to"] = to.into();
    }
    Envelope::parse(v.to_string().as_bytes()).expect("parses")
}

/// A USER_HELLO for `id` with fixture key `key`, signed by it.
fn signed_hello(id: &UserId, key: usize, nonce: Option<&str>) -> Envelope {
    Envelope::new(
        id,
        server_to(),
        now_ms(),
        &UserHello {
            client: "attacker".into(),
            pubkey: fixtures::key(key).public_key().clone(),
            enc_pubkey: None,
            meta: None,
            nonce: nonce.map(str::to_owned),
        },
    )
    .signed(&fixtures::key(key))
    .expect("signs")
}

/// Log in as `who` through the server at `addr` (any server of the mesh):
/// LOGIN_REQUEST from a fresh ephemeral user, then the hello with the nonce.
/// Returns the session and the hello it sent.
async fn login(addr: std::net::SocketAddr, key: usize, who: &str) -> (User, Envelope) {
    let mut user = User::join(addr, key).await;
    user.peer.send(&login_frame(&user.id, who)).await;
    let challenge = user
        .peer
        .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
        .await;
    let id = UserId::parse(challenge.payload()["user_id"].as_str().expect("id")).expect("id");
    let nonce = challenge.payload()["nonce"].as_str().expect("nonce");
    let hello = signed_hello(&id, REG_KEY, Some(nonce));
    user.peer.send(&hello).await;
    user.peer.expect(WAIT, "ACK", is("ACK")).await;
    (user, hello)
}

/// Wait until `s` knows `name` as registered: an ephemeral hello with that
/// name as its id is refused there.
async fn known_as_registered(s: &RunningServer, name: &str) {
    eventually(WAIT, "the name is known as registered", || async {
        let mut probe = Peer::connect(s.addr).await;
        let id = UserId::parse(name).expect("id");
        let hello = User::connect(s.addr, 9, id.clone()).await.hello_frame(None);
        probe.send(&hello).await;
        probe
            .sees(Duration::from_secs(5), error_code("NAME_IN_USE"))
            .await
    })
    .await;
}

fn refusals(status: &serde_json::Value, reason: &str) -> u64 {
    status["refusals"][reason].as_u64().unwrap_or(0)
}

/// Attack 1: an ephemeral user calls itself by a registered user's name, on
/// the user's home server and on another, in any case.
#[actix_rt::test]
async fn an_ephemeral_id_cannot_be_a_registered_name_anywhere() {
    let (a, b) = mesh().await;
    let bob = UserId::random();
    let _r = register(a.addr, 30, &bob, "bob").await;
    for (s, id) in [(&a, "bob"), (&b, "bob"), (&b, "BoB"), (&a, bob.as_str())] {
        let id = UserId::parse(id).expect("id");
        let mut impostor = User::hello(s.addr, 31, id.clone()).await;
        let refused = impostor
            .peer
            .expect(WAIT, "refused", |e| {
                e.msg_type() == "ERROR" || e.msg_type() == "ACK"
            })
            .await;
        assert_eq!(refused.msg_type(), "ERROR", "{id} at {}", s.addr);
        let code = refused.payload()["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // The registered id itself needs its key (AUTH_FAILED); a name is in use.
        assert!(
            code == "NAME_IN_USE" || (id == bob && code == "AUTH_FAILED"),
            "{id}: {code}"
        );
        assert_eq!(impostor.peer.closed_within(WAIT).await, Some(1008));
    }
    let status = b.status().await;
    assert!(!local_users(&status)
        .iter()
        .any(|u| u.eq_ignore_ascii_case("bob")));
}

/// Attack 2: registering, on another server, a name a user registered first.
#[actix_rt::test]
async fn a_name_registered_on_one_server_is_taken_on_every_server() {
    let (a, b) = mesh().await;
    let alice = UserId::random();
    let _r = register(a.addr, 32, &alice, "alice").await;
    known_as_registered(&b, "alice").await;
    let mut thief = User::join(b.addr, 33).await;
    let reg = register_frame(&thief.id, &UserId::random(), "ALICE", 34, 34, key_store());
    thief.peer.send(&reg).await;
    thief
        .peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
}

/// Attack 3: a hello for a registered id, with the attacker's key, at a
/// server other than the user's home, while the user is offline.
#[actix_rt::test]
async fn a_registered_id_needs_its_key_on_every_server() {
    let (a, b) = mesh().await;
    let carol = UserId::random();
    let registrar = register(a.addr, 35, &carol, "carol").await;
    drop(registrar);
    known_as_registered(&b, "carol").await;
    let mut attacker = Peer::connect(b.addr).await;
    attacker.send(&signed_hello(&carol, 36, None)).await;
    attacker
        .expect(WAIT, "AUTH_FAILED", error_code("AUTH_FAILED"))
        .await;
    assert_eq!(attacker.closed_within(WAIT).await, Some(1008));
    // No one at either server was told carol has the attacker's key.
    for s in [&a, &b] {
        assert!(!local_users(&s.status().await).contains(&carol.to_string()));
    }
}

/// Attack 4: a registered user's hello, captured on the wire, sent again with
/// a new `ts` (and `to`), at once and 150 s "later".
#[actix_rt::test]
async fn a_captured_hello_with_a_new_ts_or_to_is_refused() {
    let (a, b) = mesh().await;
    let dora = UserId::random();
    let _r = register(a.addr, 37, &dora, "dora").await;
    let (session, captured) = login(a.addr, 38, "dora").await;
    drop(session);
    eventually(WAIT, "dora left", || async {
        !local_users(&a.status().await).contains(&dora.to_string())
    })
    .await;
    let variants = [
        restamp(&captured, now_ms(), None),
        restamp(&captured, now_ms() + 150_000, None),
        restamp(&captured, now_ms(), Some(a.server_id.as_str())),
    ];
    for s in [&a, &b] {
        for replay in &variants {
            let mut attacker = Peer::connect(s.addr).await;
            attacker.send(replay).await;
            attacker
                .expect(WAIT, "AUTH_FAILED", error_code("AUTH_FAILED"))
                .await;
        }
        assert!(!local_users(&s.status().await).contains(&dora.to_string()));
    }
}

/// Attack 5 (a failure, not an attack): `/login` through a server that is not
/// the user's home server.
#[actix_rt::test]
async fn login_works_through_any_server() {
    let (a, b) = mesh().await;
    let erin = UserId::random();
    let _r = register(a.addr, 39, &erin, "erin").await;
    known_as_registered(&b, "erin").await;
    let (_session, _) = login(b.addr, 40, "ERIN").await;
    eventually(WAIT, "erin attached at b", || async {
        local_users(&b.status().await).contains(&erin.to_string())
    })
    .await;
}

/// Attack 6: a linked server re-sends another server's signed USER_REMOVE
/// with a fresh envelope `ts`: every receiver would drop a user who is online.
#[actix_rt::test]
async fn a_replayed_user_remove_with_a_fresh_ts_changes_nothing() {
    // The attacker sends no heartbeats: servers that wait for them.
    let (a, b) = mesh_with(patient_settings()).await;
    // The attacker links to both servers and watches A's gossip.
    let id = ServerId::random();
    let mut spy = FakeServer::link_as(a.addr, 41, id.clone(), &a.server_id).await;
    let mut relay = FakeServer::link_as(b.addr, 41, id, &b.server_id).await;
    eventually(WAIT, "spy linked", || async {
        links_up(&a.status().await) == 2 && links_up(&b.status().await) == 2
    })
    .await;

    // frank comes and goes (A signs a USER_REMOVE), then comes back.
    let frank = UserId::random();
    let mut first = User::hello(a.addr, 42, frank.clone()).await;
    first.peer.expect(WAIT, "ACK", is("ACK")).await;
    drop(first);
    let removed = spy
        .peer
        .expect(WAIT, "A's USER_REMOVE of frank", |e| {
            e.msg_type() == "USER_REMOVE" && e.payload()["user_id"] == frank.as_str()
        })
        .await;
    eventually(WAIT, "frank gone from a", || async {
        !local_users(&a.status().await).contains(&frank.to_string())
    })
    .await;
    let mut back = User::hello(a.addr, 42, frank.clone()).await;
    back.peer.expect(WAIT, "ACK", is("ACK")).await;
    eventually(WAIT, "b knows frank again", || async {
        knows(&b.status().await, &frank)
    })
    .await;

    // The replay, with a fresh `ts`, over the attacker's link to B.
    relay.peer.send(&restamp(&removed, now_ms(), None)).await;
    eventually(WAIT, "b refused the replay", || async {
        refusals(&b.status().await, "presence_replay") >= 1
    })
    .await;
    assert!(
        knows(&b.status().await, &frank),
        "frank is still online at b"
    );

    // A user at B still reaches frank.
    let mut gina = User::join(b.addr, 43).await;
    let dm = gina.dm(&frank, fixtures::key(42).public_key(), "still there?");
    gina.peer.send(&dm).await;
    let got = back.peer.expect(WAIT, "the DM", is("USER_DELIVER")).await;
    assert_eq!(back.open(&got), "still there?");
    assert!(
        !gina
            .peer
            .sees(Duration::from_secs(1), error_code("USER_NOT_FOUND"))
            .await
    );
}

/// Two servers accept the same name at once (here: a linked server publishes
/// a user registered earlier under a name a user of A holds): every server
/// applies one rule (the earlier registration keeps it), and A's user is told
/// and keeps its account under a new name it picks.
#[actix_rt::test]
async fn a_name_registered_on_two_servers_at_once_goes_to_one_user_everywhere() {
    let (a, b) = mesh_with(patient_settings()).await;
    let late = UserId::random();
    let _r = register(a.addr, 44, &late, "hana").await;
    let (mut session, _) = login(a.addr, 45, "hana").await;

    // Another server registered "Hana" a minute earlier.
    let mut other = FakeServer::link(a.addr, 46, &a.server_id).await;
    other.announce().await;
    let early = UserId::random();
    let record = Message::DirectoryRecord(socp_protocol::message::DirectoryRecord {
        user_id: early.clone(),
        username: socp_protocol::Username::parse("Hana").expect("name"),
        pubkey: fixtures::key(47).public_key().clone(),
        home_server: other.id.clone(),
        privkey_store: key_store().to_owned(),
        registered_at: now_ms() - 60_000,
        version: 1,
    });
    let frame = other.signed(To::All, &record);
    other.peer.send(&frame).await;

    // A's user is told, and keeps its session.
    let told = session
        .peer
        .expect(WAIT, "NAME_IN_USE", error_code("NAME_IN_USE"))
        .await;
    assert!(told.payload()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("/rename")));
    // Both servers now give the name to the earlier user.
    for s in [&a, &b] {
        eventually(WAIT, "hana is the earlier user", || async {
            let mut probe = User::join(s.addr, 48).await;
            probe.peer.send(&login_frame(&probe.id, "HANA")).await;
            let ch = probe
                .peer
                .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
                .await;
            ch.payload()["user_id"] == early.as_str()
        })
        .await;
    }
    // A's user picks a new name, and it is known mesh-wide: a user at B hears
    // the new name at once (a new advert), without the user logging in again.
    let mut watcher = User::join(b.addr, 49).await;
    assert!(watcher.sees_user(&late, WAIT).await);
    let rename = Envelope::from_message(
        &late,
        server_to(),
        now_ms(),
        &Message::UserRename(socp_protocol::message::UserRename {
            username: socp_protocol::Username::parse("hana2").expect("name"),
        }),
    );
    session.peer.send(&rename).await;
    let ok = session
        .peer
        .expect(WAIT, "REGISTER_OK", is("REGISTER_OK"))
        .await;
    assert_eq!(ok.payload()["username"], "hana2");
    let late_id = late.to_string();
    watcher
        .peer
        .expect(WAIT, "the advert with the new name", move |e| {
            e.msg_type() == "USER_ADVERTISE"
                && e.payload()["user_id"] == late_id.as_str()
                && e.payload()["meta"]["name"] == "hana2"
        })
        .await;
    known_as_registered(&b, "hana2").await;
}

/// A linked server advertises a made-up user as registered under a
/// registered user's name (or any made-up user as registered): the
/// directory is the authority on who is registered and by which name.
#[actix_rt::test]
async fn an_advert_claiming_a_registration_the_directory_does_not_hold_is_refused() {
    let (a, _b) = mesh_with(patient_settings()).await;
    let ivy = UserId::random();
    let _r = register(a.addr, 53, &ivy, "ivy").await;
    let mut fake = FakeServer::link(a.addr, 54, &a.server_id).await;
    let mut carol = User::join(a.addr, 55).await;
    let impostor = UserId::random();
    let nobody = UserId::random();
    for (user, name) in [(&impostor, "ivy"), (&nobody, "nobody")] {
        let advert = Message::UserAdvertise(socp_protocol::message::UserAdvertise {
            user_id: user.clone(),
            server_id: fake.id.clone(),
            pubkey: fixtures::key(56).public_key().clone(),
            meta: Some(serde_json::json!({"name": name, "registered": true, "home": fake.id})),
            seq: None,
        });
        fake.peer.send(&fake.signed(To::All, &advert)).await;
    }
    // A guest of that server, as other implementations advertise them, is taken.
    let guest = UserId::random();
    fake.peer
        .send(&fake.signed(To::All, &advertise(&guest, &fake.id, 57)))
        .await;
    assert!(carol.sees_user(&guest, WAIT).await);
    let status = a.status().await;
    assert!(
        refusals(&status, "advert_claims_registered") >= 2,
        "{status}"
    );
    for u in [&impostor, &nobody] {
        assert!(!knows(&status, u), "{u} was taken: {status}");
        assert!(!carol
            .peer
            .inbox
            .iter()
            .any(|e| e.msg_type() == "USER_ADVERTISE" && e.payload()["user_id"] == u.as_str()));
    }
}

/// The directory converges: a server that joins later learns every
/// registered user (more than one page), and keeps them across a restart.
#[actix_rt::test]
async fn a_server_that_joins_later_and_restarts_knows_every_registered_user() {
    // One registrar makes all 40 accounts.
    let (a, b) = mesh_with(socp_actors::Settings {
        registrations_per_connection: 100,
        registrations_per_hour: 1_000,
        ..fast_settings()
    })
    .await;
    let mut registrar = User::join(a.addr, 50).await;
    let names: Vec<String> = (0..40).map(|i| format!("user{i:02}")).collect();
    for name in &names {
        let reg = register_frame(
            &registrar.id,
            &UserId::random(),
            name,
            REG_KEY,
            REG_KEY,
            key_store(),
        );
        registrar.peer.send(&reg).await;
        registrar
            .peer
            .expect(WAIT, "REGISTER_OK", is("REGISTER_OK"))
            .await;
    }
    let _ = register(b.addr, 51, &UserId::random(), "at-b").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let c = socp::server::start(config(4, Some(db.clone()), &[a.addr]))
        .await
        .expect("c starts");
    for name in ["user00", "user39", "at-b"] {
        known_as_registered(&c, name).await;
    }
    let c_id = c.server_id.clone();
    c.shutdown().await;

    // Restarted alone (no introducer reachable): the directory is on disk.
    let c = socp::server::start(config(4, Some(db), &[free_addr()]))
        .await
        .expect("c restarts");
    assert_eq!(c.server_id, c_id);
    for name in ["user17", "at-b"] {
        known_as_registered(&c, name).await;
    }
    let (_s, _) = login(c.addr, 52, "user31").await;
}

/// Two real servers accept the same name while they cannot see each other:
/// A registers "juno" first and stops; B, retrying to join A, registers
/// "Juno" and logs its user in. When A comes back, B joins it, the
/// directories meet, and both apply one rule: A's user (registered earlier)
/// keeps the name, B's user is told — and stays connected, with its account
/// and key, to pick a new name.
#[actix_rt::test]
async fn two_servers_that_registered_one_name_apart_agree_once_linked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_db = dir.path().join("a.db");
    let a_addr = free_addr();
    let a_config = || socp::server::ServerConfig {
        bind: a_addr,
        ..config_with(2, Some(a_db.clone()), &[], patient_settings())
    };
    let a = socp::server::start(a_config()).await.expect("a starts");
    let first = UserId::random();
    let _r = register(a.addr, 60, &first, "juno").await;
    a.shutdown().await;

    // B, with A down: standalone, retrying to join A.
    let b = socp::server::start(config_with(3, None, &[a_addr], patient_settings()))
        .await
        .expect("b starts");
    assert_eq!(links_up(&b.status().await), 0);
    let second = UserId::random();
    let _r2 = register(b.addr, 61, &second, "Juno").await;
    let (mut session, _) = login(b.addr, 62, "juno").await;

    // A is back: B's retry joins it.
    let a = socp::server::start(a_config()).await.expect("a restarts");
    for s in [&a, &b] {
        eventually(Duration::from_secs(90), "linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    let told = session
        .peer
        .expect(
            Duration::from_secs(30),
            "NAME_IN_USE",
            error_code("NAME_IN_USE"),
        )
        .await;
    assert!(told.payload()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("/rename")));
    assert!(session.peer.closed.is_none(), "still connected");
    for s in [&a, &b] {
        eventually(WAIT, "juno is the earlier user everywhere", || async {
            let mut probe = User::join(s.addr, 63).await;
            probe.peer.send(&login_frame(&probe.id, "JUNO")).await;
            let ch = probe
                .peer
                .expect(WAIT, "LOGIN_CHALLENGE", is("LOGIN_CHALLENGE"))
                .await;
            ch.payload()["user_id"] == first.as_str()
        })
        .await;
    }
    // B's user keeps its account: it leaves, and logs in by id on A.
    drop(session);
    eventually(WAIT, "b's user left", || async {
        !local_users(&b.status().await).contains(&second.to_string())
            && !knows(&a.status().await, &second)
    })
    .await;
    let (_again, _) = login(a.addr, 64, second.as_str()).await;
}
