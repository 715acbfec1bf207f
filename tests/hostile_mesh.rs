//! One hostile server against an honest mesh: what it makes the honest
//! servers hold, dial or close is bounded (SPEC.md §5 [ext] budgets). Each
//! test is the attack as a linked server runs it, using only the wire
//! protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use socp::server::RunningServer;
use socp_actors::routing::Budgets;
use socp_actors::Settings;
use socp_protocol::message::{ServerAddress, ServerAnnounce};
use socp_protocol::{fixtures, now_ms, Envelope, Message, ServerId, To, UserId};

const WAIT: Duration = Duration::from_secs(20);

/// Fake servers send no heartbeats: servers that wait for them, with `budgets`.
fn settings(budgets: Budgets) -> Settings {
    Settings {
        budgets,
        ..patient_settings()
    }
}

/// A fake server linked to `s` (and only to it), once `s` has the link up.
async fn fake_linked_to(s: &RunningServer, key: usize) -> FakeServer {
    let fake = FakeServer::link(s.addr, key, &s.server_id).await;
    let id = fake.id.clone();
    eventually(WAIT, "the fake server is linked", || async {
        link_state(&s.status().await, &id).as_deref() == Some("up")
    })
    .await;
    fake
}

fn users_at(status: &serde_json::Value, server: &ServerId) -> usize {
    status["remote_users"].as_array().map_or(0, |l| {
        l.iter()
            .filter(|u| u["server_id"] == server.as_str())
            .count()
    })
}

fn refusals(status: &serde_json::Value, reason: &str) -> u64 {
    status["refusals"][reason].as_u64().unwrap_or(0)
}

/// Alice at `a` and bob at `b` exchange `n` DMs each way: how many arrived.
async fn dms_delivered(a: &RunningServer, b: &RunningServer, n: usize) -> usize {
    let mut alice = User::join(a.addr, 12).await;
    let mut bob = User::join(b.addr, 13).await;
    assert!(alice.sees_user(&bob.id, WAIT).await, "alice sees bob");
    assert!(bob.sees_user(&alice.id, WAIT).await, "bob sees alice");
    for i in 0..n {
        let to_bob = alice.dm(&bob.id, bob.key.public_key(), &format!("a{i}"));
        alice.peer.send(&to_bob).await;
        let to_alice = bob.dm(&alice.id, alice.key.public_key(), &format!("b{i}"));
        bob.peer.send(&to_alice).await;
    }
    let mut got = 0;
    got += bob
        .peer
        .count(Duration::from_secs(5), is("USER_DELIVER"))
        .await;
    got += alice
        .peer
        .count(Duration::from_secs(5), is("USER_DELIVER"))
        .await;
    got
}

/// Finding 2, partition by relay: a server linked to A only (never announced
/// to B) sends adverts; A relays them, B cannot verify them. B used to close
/// its honest link to A ("1008 bad frames") and DMs between honest users
/// were lost. Now B drops and counts what it cannot verify.
#[actix_rt::test]
async fn frames_relayed_from_a_server_b_cannot_verify_never_close_the_honest_link() {
    let (a, b) = linked_pair(settings(Budgets::default())).await;
    let mut fake = fake_linked_to(&a, 7).await;
    let n = 120; // past the 50 strikes a link may have
    for i in 0..n {
        let user = UserId::parse(&format!("ghost-{i}")).expect("id");
        fake.peer
            .send(&fake.signed(To::All, &advertise(&user, &fake.id, 20)))
            .await;
    }
    eventually(WAIT, "b dropped what a relayed", || async {
        counter(
            &http_get(b.addr, "/metrics").await,
            "socp_relayed_unverifiable_total{type=\"USER_ADVERTISE\"}",
        ) >= n as u64
    })
    .await;
    // B never closed its link to A (it used to, "1008 bad frames", after 50
    // frames it could not verify), and neither side lost its link.
    let closed = counter(
        &http_get(b.addr, "/metrics").await,
        "socp_connections_closed_total{code=\"1008\"}",
    );
    assert_eq!(closed, 0, "b closed a link with 1008");
    for s in [&a, &b] {
        assert_eq!(
            links_up(&s.status().await),
            if s.addr == a.addr { 2 } else { 1 }
        );
    }
    assert_eq!(dms_delivered(&a, &b, 10).await, 20, "every DM arrives");
    assert_eq!(
        link_state(&b.status().await, &a.server_id).as_deref(),
        Some("up")
    );
}

/// Finding 1, roster bomb: a linked server advertises more users than one
/// server may have. The excess is refused and counted; when the server
/// leaves, its users are removed everywhere (B, which only heard of them
/// through A, forgets them once it has had no link to their server for the
/// grace period).
#[actix_rt::test]
async fn a_server_advertising_too_many_users_is_bounded_and_its_users_leave_with_it() {
    let budgets = Budgets {
        max_users_per_server: 20,
        unlinked_grace_ms: 500,
        ..Budgets::default()
    };
    let (a, b) = linked_pair(settings(budgets)).await;
    let mut fake = fake_linked_to(&a, 7).await;
    // Announced, so that B pins its key and takes A's relays of its adverts.
    fake.announce().await;
    for i in 0..30 {
        let user = UserId::parse(&format!("bomb-{i}")).expect("id");
        fake.peer
            .send(&fake.signed(To::All, &advertise(&user, &fake.id, 20)))
            .await;
    }
    eventually(WAIT, "a refused the excess", || async {
        refusals(&a.status().await, "users_over_cap") >= 10
    })
    .await;
    assert_eq!(users_at(&a.status().await, &fake.id), 20);
    // A new user at A hears of at most the 20.
    let mut carol = User::join(a.addr, 14).await;
    let heard = carol
        .peer
        .count(Duration::from_secs(2), |e| {
            e.msg_type() == "USER_ADVERTISE" && e.payload()["server_id"] == fake.id.as_str()
        })
        .await;
    assert!(heard <= 20, "{heard} adverts of the fake server's users");

    // The fake server leaves.
    drop(fake);
    for s in [&a, &b] {
        let id = s.server_id.clone();
        eventually(WAIT, "its users are gone", || async {
            let status = s.status().await;
            status["remote_users"].as_array().is_some_and(|l| {
                l.iter().all(|u| {
                    u["user_id"]
                        .as_str()
                        .is_some_and(|u| !u.starts_with("bomb-"))
                })
            })
        })
        .await;
        let _ = id;
    }
}

/// A listener that accepts connections and closes them at once, counting.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    actix_rt::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, count)
}

/// Finding 3, dial amplification: a linked server announces made-up servers
/// (each announcement correctly self-signed) at addresses it picks. Each used
/// to be dialled again and again (and remembered for after a restart). Now
/// one link may teach a bounded number of servers, each is dialled at most
/// once, and one that does not answer is forgotten.
#[actix_rt::test]
async fn announced_servers_are_dialled_at_most_once_each_and_bounded_per_link() {
    let (a, b) = linked_pair(settings(Budgets::default())).await;
    let mut fake = fake_linked_to(&a, 7).await;
    let per_link = Budgets::default().max_announced_per_link;
    let made_up = per_link + 8;
    let mut listeners = Vec::new();
    for i in 0..made_up {
        let (addr, count) = counting_listener().await;
        let key = fixtures::key(8 + i);
        let id = ServerId::random();
        let announce = Envelope::from_message(
            &id,
            To::All,
            now_ms(),
            &Message::ServerAnnounce(ServerAnnounce(ServerAddress {
                host: addr.ip().to_string(),
                port: addr.port(),
                pubkey: key.public_key().clone(),
            })),
        )
        .signed(&key)
        .expect("signs");
        fake.peer.send(&announce).await;
        listeners.push((id, count));
    }
    // Past the budgets (servers one link may teach, the dial rate) the rest
    // are refused, not kept.
    eventually(
        WAIT,
        "a refused the announcements past the budget",
        || async {
            let status = a.status().await;
            refusals(&status, "announces_over_cap") + refusals(&status, "dial_rate") >= 8
        },
    )
    .await;
    // Long enough for several rounds of reconnect backoff (1 s, 2 s, ...).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dials: Vec<usize> = listeners
        .iter()
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .collect();
    // A and B (which hears the announcements through A) dial each at most once.
    assert!(
        dials.iter().all(|d| *d <= 2),
        "dials per made-up server: {dials:?}"
    );
    assert!(
        dials.iter().sum::<usize>() <= 2 * per_link,
        "dials in all: {dials:?}"
    );
    // And forget them: no made-up server stays known.
    for s in [&a, &b] {
        let id = s.server_id.clone();
        eventually(WAIT, "made-up servers forgotten", || async {
            let status = s.status().await;
            listeners
                .iter()
                .all(|(made, _)| link_state(&status, made).is_none())
        })
        .await;
        let _ = id;
    }
}

/// `--federation closed`: A and B list each other (ids and pinned keys) and
/// link without an introducer; a stranger cannot link or join, a listed id
/// with another key cannot link, and the honest pair still carries DMs.
#[actix_rt::test]
async fn a_closed_federation_admits_only_its_allowlist() {
    use socp_actors::routing::Allowlist;
    let (a_id, b_id) = (ServerId::random(), ServerId::random());
    let key = |n: usize| fixtures::key(n).public_key().to_wire().to_owned();
    let closed = |list: String| Settings {
        allowlist: Some(Arc::new(Allowlist::parse(&list).expect("allowlist"))),
        ..patient_settings()
    };
    // B admits A (no address: A dials B); A admits B at its address.
    let b = socp::server::start(socp::server::ServerConfig {
        server_id: Some(b_id.clone()),
        ..config_with(3, None, &[], closed(format!("{a_id} {}", key(2))))
    })
    .await
    .expect("b starts");
    let a = socp::server::start(socp::server::ServerConfig {
        server_id: Some(a_id.clone()),
        ..config_with(
            2,
            None,
            &[],
            closed(format!("{b_id} {} {}", key(3), b.addr)),
        )
    })
    .await
    .expect("a starts");
    for s in [&a, &b] {
        eventually(WAIT, "a and b linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }

    // A stranger, and B's id with another key: closed before any welcome.
    let mut stranger = FakeServer::link(a.addr, 7, &a_id).await;
    assert_eq!(stranger.peer.closed_within(WAIT).await, Some(1008));
    assert!(!stranger
        .peer
        .inbox
        .iter()
        .any(|e| e.msg_type() == "SERVER_WELCOME"));
    let mut impostor = FakeServer::link_as(a.addr, 8, b_id.clone(), &a_id).await;
    assert_eq!(impostor.peer.closed_within(WAIT).await, Some(1008));
    let mut joiner = FakeServer::connect_as(b.addr, 9, ServerId::random()).await;
    let join = joiner.signed(
        To::parse(&b.addr.to_string()).expect("host:port"),
        &Message::ServerHelloJoin(socp_protocol::message::ServerHelloJoin(ServerAddress {
            host: "127.0.0.1".into(),
            port: 9,
            pubkey: fixtures::key(9).public_key().clone(),
        })),
    );
    joiner.peer.send(&join).await;
    assert_eq!(joiner.peer.closed_within(WAIT).await, Some(1008));
    assert!(!joiner
        .peer
        .inbox
        .iter()
        .any(|e| e.msg_type() == "SERVER_WELCOME"));

    // A knows B and nobody else: the strangers were never learnt.
    let status = a.status().await;
    assert_eq!(
        status["servers"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(dms_delivered(&a, &b, 5).await, 10, "every DM arrives");
}
