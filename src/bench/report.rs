//! The report as a table for people (`--json` prints the [`Report`] itself).

use super::{Beside, Report};

/// The report as a table for people.
pub(crate) fn table(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.crypto;
    s += &format!("machine: {}\n\n", r.machine);
    s += &format!(
        "crypto ceiling (same code as the server; in use: {}){}\n",
        c.backend,
        r.crypto_backends
            .iter()
            .map(|b| format!("  {:>11} 1 core  all cores", b.backend))
            .collect::<String>()
    );
    type Pick = fn(&super::Crypto) -> (f64, f64);
    let rows: [(&str, Pick); 4] = [
        ("PSS-SHA256 sign/s", |c| (c.sign_per_s_1, c.sign_per_s_all)),
        ("PSS-SHA256 verify/s", |c| {
            (c.verify_per_s_1, c.verify_per_s_all)
        }),
        ("OAEP-SHA256 encrypt/s", |c| {
            (c.encrypt_per_s_1, c.encrypt_per_s_all)
        }),
        ("OAEP-SHA256 decrypt/s", |c| {
            (c.decrypt_per_s_1, c.decrypt_per_s_all)
        }),
    ];
    for (name, pick) in rows {
        s += &format!("  {name:<49}");
        for b in &r.crypto_backends {
            let (one, all) = pick(b);
            s += &format!("  {one:>18.1}  {all:>9.1}");
        }
        s += "\n";
    }
    s += &format!("  one signature ({}): {:.2} ms\n", c.backend, c.sign_ms);
    if r.crypto_backends.len() > 1 {
        s += &format!(
            "  ratios below are against {} (in use); times {:.2} they are against the fastest backend\n",
            c.backend, r.in_use_vs_fastest
        );
    }
    s += "\n";
    if let Some(d) = &r.dm_relay {
        s += &format!(
            "DM relay, 2 servers, {} pairs, {:.1} s\n",
            d.pairs, d.seconds
        );
        s += &format!(
            "  delivered {} of {} sent; lost {}, duplicated {}\n",
            d.delivered, d.sent, d.lost, d.duplicated
        );
        s += &format!(
            "  {:.1} DMs/s; ceiling {:.1} DMs/s ({} signatures per DM); ratio {:.2}\n",
            d.dms_per_s, d.ceiling_dms_per_s, d.signatures_per_dm, d.ratio_to_ceiling
        );
        s += &format!(
            "  latency under load: p50 {:.1} ms ({:.2} signature times), p95 {:.1} ms, p99 {:.1} ms\n",
            d.latency_ms_p50, d.p50_in_signatures, d.latency_ms_p95, d.latency_ms_p99
        );
        s += &format!(
            "  latency one DM at a time: p50 {:.1} ms ({:.2} signature times; goal <= 3)\n",
            d.light_latency_ms_p50, d.light_p50_in_signatures
        );
        s += &beside_line(&d.beside);
    }
    if let Some(f) = &r.fanout {
        s += &format!(
            "public fan-out: {} members on {} servers\n",
            f.members, f.servers
        );
        s += &format!("  delivered {} (duplicated {}); last after {:.2} s; bound {:.2} s; ratio {:.2} (goal <= 2); {:.2} x the time all cores take for {} signatures ({:.2} s)\n", f.delivered, f.duplicated, f.seconds_to_last, f.bound_seconds, f.ratio_to_bound, f.ratio_to_all_cores_bound, f.members, f.all_cores_bound_seconds);
        s += &beside_line(&f.beside);
    }
    if let Some(f) = &r.file {
        s += &format!(
            "file transfer across servers: {} bytes in {} chunks\n",
            f.bytes, f.chunks
        );
        s += &format!(
            "  {} chunks delivered in {:.2} s: {:.0} B/s; decrypt ceiling {:.0} B/s; ratio {:.2}\n",
            f.delivered_chunks,
            f.seconds,
            f.bytes_per_s,
            f.decrypt_ceiling_bytes_per_s,
            f.ratio_to_decrypt_ceiling
        );
        s += &format!("  {:.1} chunks/s; servers' signing ceiling {:.1} chunks/s (2 signatures per chunk); ratio {:.2}\n", f.chunks_per_s, f.sign_ceiling_chunks_per_s, f.ratio_to_sign_ceiling);
        s += &beside_line(&f.beside);
    }
    if let Some(f) = &r.fast_file {
        s += &format!(
            "fast-mode file across servers [ext]: {} bytes in {} AES-GCM chunks\n",
            f.bytes, f.chunks
        );
        s += &format!(
            "  {} chunks delivered in {:.2} s: {:.1} MB/s (goal >= 10); the sender's pace {:.1} MB/s; ratio {:.2}\n\n",
            f.delivered_chunks,
            f.seconds,
            f.bytes_per_s / 1e6,
            f.pace_bytes_per_s / 1e6,
            f.ratio_to_pace
        );
    }
    if let Some(i) = &r.idle {
        s += &format!("idle capacity: {} users on one server process\n", i.users);
        s += &format!("  attached {} in {:.2} s (settled {:.2} s later, {} frames received, {:.0} MB); RSS {} -> {} KiB: {:.1} KiB per connection; 10,000 users ≈ {:.0} MiB by linear projection, an upper bound: bounded caches count per connection here (goal <= 200; measure with -c 10000)\n\n", i.attached, i.seconds_to_attach, i.seconds_to_settle, i.frames_received, i.mb_received, i.server_rss_before_kib, i.server_rss_after_kib, i.kib_per_connection, i.projected_mib_for_10000);
    }
    if let Some(m) = &r.mesh {
        s += &format!("mesh formation: {} servers, {} users\n", m.servers, m.users);
        s += &format!("  mesh formed in {:.2} s; every server knew every user {:.2} s after the users joined\n\n", m.seconds_to_mesh, m.seconds_to_presence);
    }
    let parts: Vec<String> = r
        .part_seconds
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.0} s"))
        .collect();
    let total: f64 = r.part_seconds.iter().map(|(_, secs)| secs).sum();
    s += &format!("wall clock: {total:.0} s ({})\n", parts.join(", "));
    for e in &r.errors {
        s += &format!("error: {e}\n");
    }
    s
}

/// The speed a part's ratios use.
fn beside_line(b: &Beside) -> String {
    let mut parts = vec![format!("{:.1} signatures/s on all cores", b.sign_per_s_all)];
    if b.sign_per_s_1 > 0.0 {
        parts.push(format!("one signature {:.2} ms", b.sign_ms));
    }
    if b.decrypt_per_s_all > 0.0 {
        parts.push(format!(
            "{:.1} decryptions/s on all cores",
            b.decrypt_per_s_all
        ));
    }
    format!("  speed beside this part: {}\n\n", parts.join(", "))
}
