//! Command-line configuration (clap), with the seeds' environment variables as
//! fallbacks: HOST, PORT, DB_PATH, INTRODUCERS_JSON, BOOTSTRAP_HOST_n /
//! BOOTSTRAP_PORT_n / BOOTSTRAP_PUBKEY_n, HEARTBEAT_INTERVAL, TIMEOUT_THRESHOLD.
//! Also the TLS files (`--tls-cert`, `--tls-key`, `--ca`) behind `wss://`.
//!
//! One module per binary, and one for what they share:
//! - `server`: [`ServerArgs`], the flags of `socp-server`;
//! - `client`: [`ClientArgs`], the flags of `socp-client`;
//! - `bench`: `BenchArgs`, the flags of `socp-bench`;
//! - `tls`: PEM files and CA bundles into rustls configurations
//!   ([`server_tls`], [`client_tls`], [`trust_roots`]).

mod bench;
mod client;
mod server;
mod tls;

pub(crate) use bench::BenchArgs;
pub use client::ClientArgs;
pub use server::ServerArgs;
pub use tls::{client_tls, server_tls, trust_roots};

/// A configuration error, for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
