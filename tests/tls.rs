//! wss://: servers with `--tls-cert`/`--tls-key` on loopback, using the test CA
//! of `tests/fixtures/tls` (see its README).
//!
//! - three TLS servers form a mesh through a wss:// introducer, and presence
//!   and a DM cross it; a server whose introducer comes up late joins over
//!   wss:// too;
//! - a raw user over wss:// gets through USER_HELLO; ALPN is HTTP/1.1 only
//!   (a client asking only for h2 is refused);
//! - a client that does not trust the CA gets a clear error, and so does a
//!   plain ws:// client;
//! - the `socp-client` binary connects over wss:// with `--ca`, and explains
//!   what to do when the server's certificate is not trusted;
//! - configuration errors: a certificate without its key (and the other
//!   way), an unreadable or mismatched file, wss:// peers on a plain server.
//!
//! Plain ws:// stays the default: every other test file runs without TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::*;
use serde_json::Value;
use socp::config::{client_tls, server_tls, trust_roots, ClientArgs, ServerArgs};
use socp::server::{start, ServerConfig, ServerTls};

const WAIT: Duration = Duration::from_secs(15);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn fixture_str(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

/// The servers' TLS: the fixture certificate, trusting the test CA.
fn tls() -> ServerTls {
    server_tls(
        &fixture("server.pem"),
        &fixture("server.key"),
        Some(&fixture("ca.pem")),
    )
    .expect("the fixture TLS files load")
}

/// [`config`] with TLS.
fn tls_config(key: usize, bootstrap: &[SocketAddr]) -> ServerConfig {
    ServerConfig {
        tls: Some(tls()),
        ..config(key, None, bootstrap)
    }
}

/// A rustls client configuration trusting the CA in fixture `ca`.
fn trusting(ca: &str) -> Arc<rustls::ClientConfig> {
    let roots = trust_roots(Some(&fixture(ca)))
        .expect("the CA file loads")
        .expect("a CA file gives roots");
    client_tls(roots).expect("a client configuration")
}

/// An awc client trusting the CA in fixture `ca`.
fn client_trusting(ca: &str) -> awc::Client {
    socp_actors::ws_client(Some(&trusting(ca)), Duration::from_secs(10))
}

fn wss(addr: SocketAddr) -> String {
    format!("wss://{addr}/ws")
}

#[actix_rt::test]
async fn three_tls_servers_mesh_through_a_wss_introducer_and_a_dm_crosses_it() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let b = start(tls_config(1, &[a.addr])).await.expect("b starts");
    let c = start(tls_config(2, &[a.addr])).await.expect("c starts");
    for (name, s) in [("a", &a), ("b", &b), ("c", &c)] {
        eventually(WAIT, &format!("{name} links to both others"), || async {
            links_up(&s.status().await) == 2
        })
        .await;
    }

    let client = client_trusting("ca.pem");
    let mut alice = User::join_with(&client, &wss(a.addr), 10).await;
    let mut bob = User::join_with(&client, &wss(c.addr), 11).await;
    assert!(alice.sees_user(&bob.id, WAIT).await, "alice sees bob");
    assert!(bob.sees_user(&alice.id, WAIT).await, "bob sees alice");

    let dm = alice.dm(&bob.id, bob.key.public_key(), "hello bob, over wss");
    alice.peer.send(&dm).await;
    let got = bob
        .peer
        .expect(WAIT, "USER_DELIVER", is("USER_DELIVER"))
        .await;
    assert_eq!(got.payload()["sender"], alice.id.as_str());
    assert_eq!(
        got.from(),
        c.server_id.as_str(),
        "delivered by bob's server"
    );
    assert_eq!(bob.open(&got), "hello bob, over wss");
}

#[actix_rt::test]
async fn a_tls_server_started_before_its_introducer_joins_over_wss_once_it_is_up() {
    // The background IntroducerLink, not the join at start, makes this link.
    let a_addr = free_addr();
    let b = start(tls_config(1, &[a_addr])).await.expect("b starts");
    assert_eq!(links_up(&b.status().await), 0, "standalone at first");
    let a = start(ServerConfig {
        bind: a_addr,
        ..tls_config(0, &[])
    })
    .await
    .expect("the introducer starts late");
    for (name, s) in [("a", &a), ("b", &b)] {
        eventually(WAIT, &format!("{name} is linked"), || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
}

#[actix_rt::test]
async fn a_user_over_wss_gets_through_user_hello_and_http_is_served_over_tls() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let client = client_trusting("ca.pem");
    // By IP address and by name: the certificate names both.
    let user = User::join_with(&client, &wss(a.addr), 10).await;
    let by_name = format!("wss://localhost:{}/ws", a.addr.port());
    let _other = User::join_with(&client, &by_name, 11).await;
    eventually(WAIT, "the server lists both users", || async {
        users_known(&a.status().await) == 2
    })
    .await;
    assert!(a.status().await.to_string().contains(user.id.as_str()));

    let mut health = client
        .get(format!("https://{}/health", a.addr))
        .send()
        .await
        .expect("GET /health over TLS");
    assert!(health.status().is_success());
    assert_eq!(health.body().await.expect("a body").as_ref(), b"ok\n");
}

#[actix_rt::test]
async fn a_tls_server_shuts_down_gracefully() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let b = start(tls_config(1, &[a.addr])).await.expect("b starts");
    for s in [&a, &b] {
        eventually(WAIT, "a and b linked", || async {
            links_up(&s.status().await) == 1
        })
        .await;
    }
    let client = client_trusting("ca.pem");
    let mut user = User::join_with(&client, &wss(b.addr), 10).await;
    b.shutdown().await;
    assert_eq!(user.peer.closed_within(WAIT).await, Some(1000));
    eventually(WAIT, "a sees b leave", || async {
        links_up(&a.status().await) == 0
    })
    .await;
}

/// The ALPN protocol the server picks for a client offering `offer`, or the
/// handshake error.
fn alpn(addr: SocketAddr, offer: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
    let mut config = rustls::ClientConfig::clone(&trusting("ca.pem"));
    config.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(conn.alpn_protocol().map(<[u8]>::to_vec))
}

#[actix_rt::test]
async fn http2_stays_off_alpn_is_http_1_1_only() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let addr = a.addr;
    let (both, h2_only, none) = actix_web::rt::task::spawn_blocking(move || {
        (
            alpn(addr, &[b"h2", b"http/1.1"]),
            alpn(addr, &[b"h2"]),
            alpn(addr, &[]),
        )
    })
    .await
    .expect("the handshakes ran");
    assert_eq!(both, Ok(Some(b"http/1.1".to_vec())), "h2 is never chosen");
    let refused = h2_only.expect_err("a client that speaks only h2 is refused");
    assert!(
        refused.contains("NoApplicationProtocol") || refused.contains("application protocol"),
        "{refused}"
    );
    assert_eq!(none, Ok(None), "a client without ALPN is served");
}

#[actix_rt::test]
async fn a_client_that_does_not_trust_the_ca_gets_a_clear_error() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let untrusting = client_trusting("other-ca.pem");
    let err = Peer::connect_with(&untrusting, &wss(a.addr))
        .await
        .err()
        .expect("a certificate from an unknown CA is refused");
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // The server still serves those that trust it.
    let client = client_trusting("ca.pem");
    let _user = User::join_with(&client, &wss(a.addr), 10).await;
    // A plain ws:// client cannot speak to a TLS server.
    let plain = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    assert!(Peer::connect_with(&plain, &format!("ws://{}/ws", a.addr))
        .await
        .is_err());
}

/// Run `socp-client --json --server URL ARGS` with fixture key 10, send
/// `/quit`; its exit code and JSON events.
async fn run_client(url: String, args: Vec<String>) -> (Option<i32>, Vec<Value>) {
    let home = tempfile::tempdir().expect("a temp dir");
    let key = home.path().join("key.pem");
    std::fs::write(&key, socp_protocol::fixtures::key_pem(10)).expect("writes the key");
    let mut child = Command::new(env!("CARGO_BIN_EXE_socp-client"))
        .arg("--json")
        .arg("--server")
        .arg(url)
        .arg("--home")
        .arg(home.path())
        .arg("--key")
        .arg(&key)
        .args(args)
        .env_remove("SOCP_CA")
        .env_remove("SOCP_HOME")
        .env_remove("SOCP_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts socp-client");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Commands are read once connected; a client that fails exits first.
    let _ = stdin.write_all(b"/quit\n");
    drop(stdin);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polls the client") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("socp-client did not exit");
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    let text = reader.join().expect("the reader ends");
    let events = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    (status.code(), events)
}

#[actix_rt::test]
async fn socp_client_connects_over_wss_with_ca_and_explains_an_untrusted_certificate() {
    let a = start(tls_config(0, &[])).await.expect("a starts");
    let url = format!("wss://localhost:{}", a.addr.port());

    let (code, events) = run_client(url.clone(), vec!["--ca".into(), fixture_str("ca.pem")]).await;
    assert!(
        events.iter().any(|e| e["event"] == "connected"),
        "{events:#?}"
    );
    assert_eq!(code, Some(0), "{events:#?}");

    let (code, events) = run_client(url, vec!["--ca".into(), fixture_str("other-ca.pem")]).await;
    let detail = connect_error(code, &events);
    assert!(
        detail.contains("UnknownIssuer") && detail.contains("--ca"),
        "{detail}"
    );

    // Plain ws:// to a TLS server: a hint at wss://.
    let (code, events) = run_client(format!("ws://{}", a.addr), vec![]).await;
    let detail = connect_error(code, &events);
    assert!(detail.contains("wss://"), "{detail}");
}

/// The detail of the CONNECT error a client that exited with 1 reported.
fn connect_error(code: Option<i32>, events: &[Value]) -> String {
    assert_eq!(code, Some(1), "{events:#?}");
    let error = events
        .iter()
        .find(|e| e["event"] == "error" && e["code"] == "CONNECT")
        .unwrap_or_else(|| panic!("a CONNECT error: {events:#?}"));
    error["detail"].as_str().expect("a detail").to_owned()
}

fn server_args(args: &[&str]) -> ServerArgs {
    ServerArgs::try_parse_from(std::iter::once("socp-server").chain(args.iter().copied()))
        .expect("the arguments parse")
}

fn server_error(args: &[&str]) -> String {
    match server_args(args).to_config() {
        Ok(_) => panic!("{args:?} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_configuration_errors_are_clear() {
    let (cert, key, ca) = (
        fixture_str("server.pem"),
        fixture_str("server.key"),
        fixture_str("ca.pem"),
    );
    let e = server_error(&["--tls-cert", &cert]);
    assert!(e.contains("--tls-cert needs --tls-key"), "{e}");
    let e = server_error(&["--tls-key", &key]);
    assert!(e.contains("--tls-key needs --tls-cert"), "{e}");
    let e = server_error(&["--ca", &ca]);
    assert!(e.contains("--tls-cert"), "{e}");

    let e = server_error(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", &key]);
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    // A key where the certificate should be, and the other way round.
    let e = server_error(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(e.contains("no CERTIFICATE"), "{e}");
    let e = server_error(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(e.contains("no unencrypted private key"), "{e}");
    // A key that is not the certificate's.
    let other = fixture_str("other-ca.key");
    let e = server_error(&["--tls-cert", &cert, "--tls-key", &other]);
    assert!(e.contains("not the certificate's private key"), "{e}");
    let dir = tempfile::tempdir().expect("a temp dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a PEM file\n").expect("writes");
    let junk = junk.to_string_lossy().into_owned();
    let e = server_error(&["--tls-cert", &cert, "--tls-key", &key, "--ca", &junk]);
    assert!(e.contains("--ca") && e.contains("no CERTIFICATE"), "{e}");

    // A mesh is all-TLS or all-plain.
    let e = server_error(&["--peer", "wss://127.0.0.1:8765"]);
    assert!(e.contains("needs --tls-cert"), "{e}");
    let e = server_error(&["--bind", "wss://127.0.0.1:0"]);
    assert!(e.contains("needs --tls-cert"), "{e}");
    let tls = ["--tls-cert", &cert, "--tls-key", &key, "--ca", &ca];
    let e = server_error(&[&tls[..], &["--peer", "ws://127.0.0.1:8765"]].concat());
    assert!(e.contains("wss://"), "{e}");

    // The good forms.
    let config = server_args(&[&tls[..], &["--bind", "wss://127.0.0.1:0"]].concat())
        .to_config()
        .expect("TLS configuration");
    assert!(config.tls.is_some());
    let config = server_args(&[&tls[..], &["--peer", "wss://127.0.0.1:8765"]].concat())
        .to_config()
        .expect("TLS configuration");
    assert_eq!(config.bootstrap[0].port, 8765);
    let plain = server_args(&[]).to_config().expect("the default");
    assert!(plain.tls.is_none() && plain.settings.tls.is_none());
}

#[test]
fn client_tls_options() {
    let client = |args: &[&str]| {
        ClientArgs::try_parse_from(std::iter::once("socp-client").chain(args.iter().copied()))
            .expect("the arguments parse")
            .to_config()
    };
    let ca = fixture_str("ca.pem");
    let config = client(&["--server", "wss://127.0.0.1:8765", "--ca", &ca]).expect("wss");
    assert!(config.tls.is_some());
    assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 8765));
    let config = client(&["--server", "ws://127.0.0.1:8765"]).expect("ws");
    assert!(config.tls.is_none(), "plain ws:// by default");
    let e = client(&["--server", "ws://127.0.0.1:8765", "--ca", &ca])
        .expect_err("--ca with ws:// is refused")
        .to_string();
    assert!(e.contains("wss://"), "{e}");
    let e = client(&[
        "--server",
        "wss://127.0.0.1:8765",
        "--ca",
        "/nonexistent/ca.pem",
    ])
    .expect_err("a missing CA file is refused")
    .to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    assert!(client(&["--server", "https://127.0.0.1:8765"]).is_err());
}
