//! The flags of `socp-bench` ([`BenchArgs`]) into a [`BenchConfig`].

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use clap::Parser;

use super::ConfigError;
use crate::bench::BenchConfig;
use crate::url::{parse_ws_url, url_scheme, Scheme};

/// `socp-bench`: how close a socp mesh runs to the crypto limit.
#[derive(Debug, Parser)]
#[command(name = "socp-bench", version, about)]
pub(crate) struct BenchArgs {
    /// Seconds per crypto measurement.
    #[arg(long, default_value_t = 1.0)]
    pub crypto_secs: f64,
    /// K: sender/receiver pairs for the DM relay.
    #[arg(short = 'k', long, default_value_t = 4)]
    pub pairs: usize,
    /// T: seconds of DM relay.
    #[arg(short = 't', long, default_value_t = 10.0)]
    pub seconds: f64,
    /// DMs in flight per pair.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// N: public channel members (over 3 servers).
    #[arg(short = 'n', long, default_value_t = 100)]
    pub members: usize,
    /// File size in KiB.
    #[arg(long, default_value_t = 1024)]
    pub file_kib: usize,
    /// Fast-mode file size in MiB.
    #[arg(long, default_value_t = 100)]
    pub fast_file_mib: usize,
    /// C: idle users attached to one server.
    #[arg(short = 'c', long, default_value_t = 500)]
    pub idle_users: usize,
    /// S: servers joining one introducer.
    #[arg(short = 's', long, default_value_t = 4)]
    pub servers: usize,
    /// U: users in the mesh-formation test.
    #[arg(short = 'u', long, default_value_t = 40)]
    pub users: usize,
    /// Run only these parts (dm, fanout, file, idle, mesh); repeatable.
    #[arg(long)]
    pub only: Vec<String>,
    /// The socp-server binary for the idle test (default: next to socp-bench).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Run against these linked servers (`ws://HOST:PORT`, repeatable)
    /// instead of starting servers: DM relay and files use the first two,
    /// fan-out the first three, idle capacity the first (its RSS read from
    /// /metrics); mesh formation always starts its own.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The bench configuration.
    pub(crate) fn to_config(&self) -> Result<BenchConfig, ConfigError> {
        let targets = self
            .targets
            .iter()
            .map(|url| {
                if url_scheme(url) == Scheme::Wss {
                    return Err(ConfigError(format!(
                        "{url}: socp-bench drives plain ws:// servers only"
                    )));
                }
                let (host, port) = parse_ws_url(url)?;
                (host.as_str(), port)
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| ConfigError(format!("{url}: cannot resolve {host}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BenchConfig {
            crypto_secs: self.crypto_secs,
            pairs: self.pairs.max(1),
            dm_secs: self.seconds,
            window: self.window.max(1),
            members: self.members.max(1),
            file_bytes: self.file_kib * 1024,
            fast_file_bytes: self.fast_file_mib * 1024 * 1024,
            idle_users: self.idle_users,
            mesh_servers: self.servers.max(2),
            mesh_users: self.users,
            only: self.only.clone(),
            server_bin: self.server_bin.clone(),
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn bench_targets_are_plain_websocket_addresses() {
        let args = BenchArgs::parse_from([
            "socp-bench",
            "--target",
            "ws://127.0.0.1:9000/ws",
            "--target",
            "127.0.0.1:9001",
        ]);
        let config = args.to_config().unwrap();
        assert_eq!(
            config.targets,
            vec![
                SocketAddr::from(([127, 0, 0, 1], 9000)),
                SocketAddr::from(([127, 0, 0, 1], 9001))
            ]
        );
        assert!(BenchArgs::parse_from(["socp-bench"])
            .to_config()
            .unwrap()
            .targets
            .is_empty());
        for bad in ["wss://127.0.0.1:9000", "ws://127.0.0.1", "http://h:1"] {
            let args = BenchArgs::parse_from(["socp-bench", "--target", bad]);
            assert!(args.to_config().is_err(), "{bad}");
        }
    }
}
