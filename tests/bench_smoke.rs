//! socp-bench with tiny settings: every message delivered exactly once, and
//! every figure present in the JSON report, on servers it starts and on
//! servers given by address. No timing thresholds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, links_up, server};
use socp::bench::{run, BenchConfig};

fn tiny() -> BenchConfig {
    BenchConfig {
        crypto_secs: 0.2,
        pairs: 2,
        dm_secs: 1.0,
        window: 2,
        members: 4,
        file_bytes: 3 * 446 + 10,
        fast_file_bytes: 2 * 384 * 1024 + 10,
        idle_users: 5,
        mesh_servers: 2,
        mesh_users: 3,
        only: Vec::new(),
        server_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_socp-server"))),
        targets: Vec::new(),
    }
}

#[actix_rt::test]
async fn tiny_bench_delivers_everything_once_and_reports_every_figure() {
    let report = run(tiny()).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let c = &report.crypto;
    for (name, v) in [
        ("sign 1", c.sign_per_s_1),
        ("verify 1", c.verify_per_s_1),
        ("encrypt 1", c.encrypt_per_s_1),
        ("decrypt 1", c.decrypt_per_s_1),
        ("sign all", c.sign_per_s_all),
        ("verify all", c.verify_per_s_all),
        ("encrypt all", c.encrypt_per_s_all),
        ("decrypt all", c.decrypt_per_s_all),
    ] {
        assert!(v > 0.0, "{name} measured");
    }

    let dm = report.dm_relay.as_ref().expect("dm relay ran");
    assert!(dm.sent > 0);
    assert_eq!(dm.delivered, dm.sent, "every DM delivered");
    assert_eq!(dm.lost, 0);
    assert_eq!(dm.duplicated, 0);
    assert!(dm.ceiling_dms_per_s > 0.0 && dm.ratio_to_ceiling > 0.0);

    let f = report.fanout.as_ref().expect("fan-out ran");
    assert_eq!(f.delivered, 4, "every member got the public message");
    assert_eq!(f.duplicated, 0);

    let file = report.file.as_ref().expect("file ran");
    assert_eq!(file.chunks, 4);
    assert_eq!(file.delivered_chunks, 4, "every chunk delivered");

    let fast = report.fast_file.as_ref().expect("fast file ran");
    assert_eq!(fast.chunks, 3);
    assert_eq!(fast.delivered_chunks, 3, "every fast chunk delivered");
    assert!(fast.bytes_per_s > 0.0 && fast.ratio_to_pace > 0.0);

    let idle = report.idle.as_ref().expect("idle ran");
    assert_eq!(idle.attached, 5);
    assert!(idle.server_rss_after_kib > 0);
    // Each user received at least the roster: every advert, its own included.
    assert!(
        idle.frames_received >= 5 && idle.mb_received > 0.0,
        "{idle:?}"
    );

    let mesh = report.mesh.as_ref().expect("mesh ran");
    assert_eq!((mesh.servers, mesh.users), (2, 3));

    // The JSON report carries every section and figure.
    let json = serde_json::to_value(&report).expect("serialises");
    for key in [
        "machine",
        "crypto",
        "dm_relay",
        "fanout",
        "file",
        "fast_file",
        "idle",
        "mesh",
    ] {
        assert!(!json[key].is_null(), "{key} in the JSON");
    }
    for key in [
        "dms_per_s",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "lost",
        "duplicated",
        "ratio_to_ceiling",
    ] {
        assert!(json["dm_relay"][key].is_number(), "dm_relay.{key}");
    }
    assert!(json["idle"]["kib_per_connection"].is_number());
    assert!(json["file"]["bytes_per_s"].is_number());
    assert!(json["file"]["ratio_to_sign_ceiling"].is_number());
    assert!(json["fanout"]["seconds_to_last"].is_number());
    assert!(json["fanout"]["ratio_to_bound"].is_number());

    // Each ratio-bearing part carries the speed it was measured beside.
    for (part, fields) in [
        ("dm_relay", &["sign_per_s_all", "sign_per_s_1"][..]),
        ("fanout", &["sign_per_s_all", "sign_per_s_1"][..]),
        ("file", &["sign_per_s_all", "decrypt_per_s_all"][..]),
    ] {
        for field in fields {
            let v = json[part]["beside"][field].as_f64();
            assert!(v.is_some_and(|v| v > 0.0), "{part}.beside.{field}: {v:?}");
        }
    }
}

#[actix_rt::test]
async fn the_bench_runs_against_linked_servers_given_by_address() {
    let a = server(1, &[]).await;
    let b = server(2, &[a.addr]).await;
    let c = server(3, &[a.addr]).await;
    for s in [&a, &b, &c] {
        eventually(Duration::from_secs(30), "a mesh of three", || async {
            links_up(&s.status().await) == 2
        })
        .await;
    }
    let cfg = BenchConfig {
        targets: vec![a.addr, b.addr, c.addr],
        only: ["dm", "fanout", "file", "idle"].map(String::from).to_vec(),
        ..tiny()
    };
    let report = run(cfg).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let dm = report.dm_relay.as_ref().expect("dm relay ran");
    assert!(dm.sent > 0);
    assert_eq!((dm.delivered, dm.lost, dm.duplicated), (dm.sent, 0, 0));
    let f = report.fanout.as_ref().expect("fan-out ran");
    assert_eq!((f.delivered, f.duplicated), (4, 0));
    let file = report.file.as_ref().expect("file ran");
    assert_eq!(file.delivered_chunks, file.chunks);
    // Idle capacity on the first target, its RSS read from /metrics.
    let idle = report.idle.as_ref().expect("idle ran");
    assert_eq!(idle.attached, 5);
    assert!(idle.server_rss_before_kib > 0 && idle.server_rss_after_kib > 0);
    assert!(report.mesh.is_none(), "mesh formation was not asked for");

    // Too few targets for a part is an error, not a silent substitute.
    let cfg = BenchConfig {
        targets: vec![a.addr],
        only: vec!["fanout".into()],
        ..tiny()
    };
    let report = run(cfg).await;
    assert!(report.fanout.is_none());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("needs 3 linked servers")),
        "{:?}",
        report.errors
    );
}
