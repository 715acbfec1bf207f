//! # socp
//!
//! A Rust implementation of the Secure Overlay Chat Protocol (SOCP v1.3):
//! a federated, end-to-end-encrypted chat network.
//!
//! Layout (ARCHITECTURE.md):
//! - `socp-protocol` (`protocol/`): envelopes, payloads, canonical JSON, RSA-4096 crypto.
//! - `socp-db` (`db/`): the server's SQLite storage.
//! - `socp-actors` (`actors/`): the server's actix actors.
//! - this crate: [`config`] (clap + environment), [`server`] (assembly of the
//!   actors and the actix-web App), [`client`] (the terminal client), [`bench`](mod@bench)
//!   (`socp-bench`'s measurements); the binaries in `bin/` are thin mains over
//!   [`server_main`], [`client_main`] and [`bench_main`].

#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod config;
pub mod server;
mod url;

use clap::Parser;

/// Entry point of `socp-server`; returns the process exit code.
pub fn server_main() -> i32 {
    ignore_file_size_signal();
    return_freed_memory();
    let args = config::ServerArgs::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let limit = raise_descriptor_limit();
    let mut config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socp-server: {e}");
            return 2;
        }
    };
    if let Some(limit) = limit {
        let high_water = socp_actors::transport::Connections::high_water_for(limit);
        log::info!(
            "open descriptors: up to {limit}; unidentified connections are shed past \
             {high_water} connections"
        );
        config.settings.max_connections = Some(high_water);
    }
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = match server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                // On stderr whatever RUST_LOG says: one line naming the cause
                // (for the database: the file and what is wrong with it), then
                // exit; nothing is retried and no file is changed.
                eprintln!("socp-server: cannot start: {e}");
                return 1;
            }
        };
        wait_for_signal().await;
        log::info!("shutting down: goodbye to every server and user");
        server.shutdown().await;
        0
    })
}

/// Ignore SIGXFSZ. Under a file-size limit (`ulimit -f`, `RLIMIT_FSIZE`) the
/// default action kills the process at the first write past the limit; ignored,
/// that write fails with `EFBIG` instead, SQLite rolls the transaction back, and
/// the server answers that one request with an ERROR and keeps serving.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    {
        // SAFETY: `signal` with `SIG_IGN` installs no handler code; it runs
        // first thing in main, before any other thread exists. Its result
        // (the previous disposition, or SIG_ERR) needs no action: without it
        // the server only keeps the default behaviour.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
    }
}

/// Raise this process's soft limit on open descriptors to its hard limit
/// (commonly 1,024 soft against 524,288 hard): every connection is a
/// descriptor, and at the soft default 1,500 idle connections would lock real
/// users out. Returns the limit in force, if it could be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct we
        // pass; a failure leaves the limit as it was, which is reported.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                } else {
                    log::warn!(
                        "cannot raise the descriptor limit from {} to {}",
                        lim.rlim_cur,
                        lim.rlim_max
                    );
                }
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// How often the server hands freed heap pages back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Times freed heap pages were handed back (`socp_heap_trims_total` in
/// `/metrics`): RSS read just after a trim is what an idle server keeps.
pub static HEAP_TRIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Hand freed heap pages back to the system every [`TRIM_EVERY`]. glibc's
/// allocator returns memory only from the top of its heaps, so after a burst
/// (thousands of frames queued and written) the pages of the freed frames,
/// lying between long-lived allocations, stay resident. `malloc_trim(0)`
/// releases every wholly free page; on 1,000 idle users it lowers RSS from
/// about 24 to 18 KiB per connection (README, Performance).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("socp-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: `malloc_trim` only releases pages no allocation
                // uses, under the allocator's own locks; it reads no memory
                // of ours.
                unsafe {
                    libc::malloc_trim(0);
                }
                HEAP_TRIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::warn!("freed memory will not be returned to the system: {e}");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = actix_web::rt::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = actix_web::rt::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_web::rt::signal::ctrl_c().await;
    }
}

/// Entry point of `socp-client`; returns the process exit code.
pub fn client_main() -> i32 {
    let args = config::ClientArgs::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socp-client: {e}");
            return 2;
        }
    };
    actix_web::rt::System::new().block_on(client::run(config))
}

/// Entry point of `socp-bench`; returns the process exit code.
pub fn bench_main() -> i32 {
    let args = config::BenchArgs::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socp-bench: {e}");
            return 2;
        }
    };
    let report = actix_web::rt::System::new().block_on(bench::run(config));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", bench::table(&report));
    }
    i32::from(!report.errors.is_empty())
}
