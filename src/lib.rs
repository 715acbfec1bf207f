//! # socp
//!
//! A Rust implementation of the Secure Overlay Chat Protocol (SOCP v1.3):
//! a federated, end-to-end-encrypted chat network.
//!
//! Layout (see `ARCHITECTURE.md` of the project):
//! - `socp-protocol` (`protocol/`): envelopes, payloads, canonical JSON, RSA-4096 crypto.
//! - `socp-db` (`db/`): the server's SQLite storage.
//! - `socp-actors` (`actors/`): the server's actix actors.
//! - this crate: configuration, server assembly and the client; the binaries in
//!   `bin/` are thin mains over [`server_main`] and [`client_main`].

pub mod config;

use clap::Parser;

/// Entry point of `socp-server`; returns the process exit code.
pub fn server_main() -> i32 {
    let args = config::ServerArgs::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    log::error!(
        "socp-server is not implemented yet (would listen on {}); see README.md, Status",
        args.bind
    );
    2
}

/// Entry point of `socp-client`; returns the process exit code.
pub fn client_main() -> i32 {
    let args = config::ClientArgs::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    log::error!(
        "socp-client is not implemented yet (would connect to {}); see README.md, Status",
        args.server
    );
    2
}
