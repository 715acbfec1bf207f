//! The flags of `socp-server` ([`ServerArgs`]) and the seeds' environment
//! variables, into a [`ServerConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use socp_actors::introducer::Bootstrap;
use socp_actors::routing::Allowlist;
use socp_actors::Settings;
use socp_protocol::{PublicKey, ServerId};

use super::{server_tls, ConfigError};
use crate::server::{ServerConfig, ServerTls};
use crate::url::{parse_ws_url, url_scheme, Scheme};

/// `socp-server`: a SOCP v1.3 chat server. With no arguments: a standalone
/// server on ws://127.0.0.1:8765 with its database in chat.db.
#[derive(Debug, Parser)]
#[command(name = "socp-server", version, about)]
pub struct ServerArgs {
    /// Where to listen, as ws://HOST:PORT (wss://HOST:PORT with --tls-cert).
    #[arg(long)]
    pub bind: Option<String>,
    /// Host to listen on (instead of --bind).
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (instead of --bind).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Host other servers use to reach this one (default: the bind host).
    #[arg(long)]
    pub public_host: Option<String>,
    /// This server's id: `auto` (the persisted one, or a new UUID v4) or a UUID.
    #[arg(long, default_value = "auto")]
    pub server_id: String,
    /// An introducer to join through, as ws://HOST:PORT, or wss://HOST:PORT
    /// with --tls-cert (repeatable; tried in order).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// JSON file listing introducers: {"bootstrap_servers": [{"host", "port", "pubkey"}]}.
    #[arg(long, env = "INTRODUCERS_JSON")]
    pub introducers: Option<PathBuf>,
    /// Run as a directory-only introducer: admit servers and track presence,
    /// host no users, relay no chat.
    #[arg(long)]
    pub introducer_only: bool,
    /// SQLite database file.
    #[arg(long, env = "DB_PATH", default_value = "chat.db")]
    pub db: PathBuf,
    /// Seconds between HEARTBEATs to each linked server.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = 15.0)]
    pub heartbeat_interval: f64,
    /// Seconds without a frame after which a server is dead.
    #[arg(long, env = "TIMEOUT_THRESHOLD", default_value_t = 45.0)]
    pub timeout: f64,
    /// Seconds a new connection has to send its HTTP request and identify
    /// (USER_HELLO or a server hello) before it is closed.
    #[arg(long, env = "IDENTIFY_TIMEOUT", default_value_t = 10.0)]
    pub identify_timeout: f64,
    /// Accept only registered users (no ephemeral identities).
    #[arg(long)]
    pub require_registration: bool,
    /// Registrations the server accepts in any hour, over every connection.
    #[arg(long, default_value_t = 100)]
    pub registrations_per_hour: usize,
    /// Registrations one connection may make.
    #[arg(long, default_value_t = 3)]
    pub registrations_per_connection: u32,
    /// Login challenges the server hands out a minute, over every connection.
    #[arg(long, default_value_t = 600.0)]
    pub logins_per_minute: f64,
    /// Users one linked server may have here (its adverts past this are refused).
    #[arg(long, default_value_t = 5_000)]
    pub max_users_per_server: usize,
    /// Servers this server will know in all.
    #[arg(long, default_value_t = 256)]
    pub max_servers: usize,
    /// Frames per second one linked server may send (twice that in a burst).
    #[arg(long, default_value_t = 2_000.0)]
    pub link_frames_per_second: f64,
    /// Bytes per second one linked server may send (twice that in a burst).
    #[arg(long, default_value_t = 64.0 * 1024.0 * 1024.0)]
    pub link_bytes_per_second: f64,
    /// MiB of a user's frames the server holds at once (waiting to be signed
    /// or written); past it the user is told RATE_LIMITED.
    #[arg(long, default_value_t = 8)]
    pub user_memory_mib: usize,
    /// MiB of a linked server's frames the server holds at once; past it its
    /// frames are dropped and counted.
    #[arg(long, default_value_t = 64)]
    pub link_memory_mib: usize,
    /// MiB of frames the server holds for every connection together.
    #[arg(long, default_value_t = 512)]
    pub server_memory_mib: usize,
    /// `open` (any server may join, SPEC.md §5.1) or `closed`: only the
    /// servers of --allowlist, each with its pinned key, may link or join.
    #[arg(long, value_enum, default_value_t = Federation::Open)]
    pub federation: Federation,
    /// The allowlist of a closed federation: one server a line,
    /// `SERVER_ID PUBKEY [HOST:PORT]` (those with an address are dialled at start).
    #[arg(long)]
    pub allowlist: Option<PathBuf>,
    /// Directory records (registered users) kept per other server.
    #[arg(long, default_value_t = 10_000)]
    pub directory_cap: usize,
    /// DMs kept for one registered user while it is offline (one sender
    /// may fill a quarter of it, one other server half).
    #[arg(long, default_value_t = 200)]
    pub mailbox_size: usize,
    /// Days a DM is kept for an offline user before it expires unread.
    #[arg(long, default_value_t = 7.0)]
    pub mailbox_days: f64,
    /// On first start, use this unencrypted PEM key instead of generating one.
    #[arg(long)]
    pub first_key: Option<PathBuf>,
    /// Serve wss:// with this certificate chain (PEM, the server's certificate
    /// first); needs --tls-key. Links to other servers and introducers are then
    /// wss:// too: a mesh is all-TLS or all-plain.
    #[arg(long, env = "SOCP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (unencrypted PEM: PKCS#8, RSA or EC).
    #[arg(long, env = "SOCP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted when dialling other servers and
    /// introducers over wss:// (default: the system's CA bundle).
    #[arg(long, env = "SOCP_CA")]
    pub ca: Option<PathBuf>,
}

impl ServerArgs {
    /// Turn the arguments into a server configuration.
    pub fn to_config(&self) -> Result<ServerConfig, ConfigError> {
        let tls = self.tls()?;
        let (host, port) = match (&self.bind, &self.host, self.port) {
            (Some(bind), _, _) => {
                check_scheme("--bind", bind, tls.is_some())?;
                parse_ws_url(bind)?
            }
            (None, host, port) => (
                host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
                port.unwrap_or(8765),
            ),
        };
        let bind: SocketAddr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| ConfigError(format!("{host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| ConfigError(format!("{host}:{port}: no address")))?;
        let server_id = match self.server_id.as_str() {
            "auto" | "" => None,
            id => Some(ServerId::parse(id).map_err(|e| ConfigError(format!("--server-id: {e}")))?),
        };
        let mut bootstrap = Vec::new();
        for peer in &self.peers {
            check_scheme("--peer", peer, tls.is_some())?;
            let (host, port) = parse_ws_url(peer)?;
            bootstrap.push(Bootstrap {
                host,
                port,
                pubkey: None,
            });
        }
        match &self.introducers {
            Some(path) => match read_introducers(path) {
                Ok(list) => bootstrap.extend(list),
                // The first seed falls back to the environment when the file
                // cannot be read.
                Err(e) => {
                    let env = bootstrap_from_env()?;
                    if env.is_empty() {
                        return Err(e);
                    }
                    log::warn!("{e}; using BOOTSTRAP_* variables");
                    bootstrap.extend(env);
                }
            },
            None => bootstrap.extend(bootstrap_from_env()?),
        }
        let allowlist = match (self.federation, &self.allowlist) {
            (Federation::Open, None) => None,
            (Federation::Open, Some(_)) => {
                return Err(ConfigError(
                    "--allowlist is for a closed mesh: add --federation closed".into(),
                ))
            }
            (Federation::Closed, None) => {
                return Err(ConfigError(
                    "--federation closed needs --allowlist FILE (the servers it admits)".into(),
                ))
            }
            (Federation::Closed, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                let list = Allowlist::parse(&text)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
                Some(std::sync::Arc::new(list))
            }
        };
        let mib = |flag: &str, v: usize| match v.checked_mul(1 << 20) {
            Some(bytes) if v > 0 => Ok(bytes),
            _ => Err(ConfigError(format!(
                "{flag} must be a positive number of MiB"
            ))),
        };
        let settings = Settings {
            allowlist,
            conn_memory_budget: mib("--user-memory-mib", self.user_memory_mib)?,
            link_memory_budget: mib("--link-memory-mib", self.link_memory_mib)?,
            server_memory_budget: mib("--server-memory-mib", self.server_memory_mib)?,
            heartbeat_interval: seconds("--heartbeat-interval", self.heartbeat_interval)?,
            peer_timeout: seconds("--timeout", self.timeout)?,
            user_ping_interval: seconds("--heartbeat-interval", self.heartbeat_interval)?,
            user_timeout: seconds("--timeout", self.timeout)?,
            identify_timeout: seconds("--identify-timeout", self.identify_timeout)?,
            require_registration: self.require_registration,
            introducer_only: self.introducer_only,
            registrations_per_hour: self.registrations_per_hour,
            registrations_per_connection: self.registrations_per_connection,
            logins_per_minute: self.logins_per_minute,
            directory_cap: self.directory_cap,
            link_frames_per_second: self.link_frames_per_second,
            link_bytes_per_second: self.link_bytes_per_second,
            budgets: socp_actors::routing::Budgets {
                max_users_per_server: self.max_users_per_server,
                max_servers: self.max_servers,
                mail: socp_actors::routing::MailBounds {
                    per_user: self.mailbox_size,
                    expiry_ms: days_ms("--mailbox-days", self.mailbox_days)?,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Settings::default()
        };
        let first_key_pem = match &self.first_key {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        Ok(ServerConfig {
            bind,
            first_key_pem,
            public_host: self.public_host.clone(),
            server_id,
            bootstrap,
            db_path: Some(self.db.clone()),
            settings,
            tls,
            ..ServerConfig::default()
        })
    }

    /// The TLS of `--tls-cert`, `--tls-key` and `--ca` (`None`: plain ws://).
    fn tls(&self) -> Result<Option<ServerTls>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => server_tls(cert, key, self.ca.as_deref()).map(Some),
            (Some(_), None) => Err(ConfigError(
                "--tls-cert needs --tls-key (the certificate's private key)".into(),
            )),
            (None, Some(_)) => Err(ConfigError(
                "--tls-key needs --tls-cert (the certificate chain)".into(),
            )),
            (None, None) if self.ca.is_some() => Err(ConfigError(
                "--ca is for dialling other servers over wss://: give --tls-cert and --tls-key \
                 too (a mesh is all-TLS or all-plain)"
                    .into(),
            )),
            (None, None) => Ok(None),
        }
    }
}

/// Who may join the mesh (`--federation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Federation {
    /// Any server may join (SPEC.md §5.1).
    Open,
    /// Only the servers of `--allowlist`.
    Closed,
}

/// Read the introducers file of the first seed.
fn read_introducers(path: &PathBuf) -> Result<Vec<Bootstrap>, ConfigError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        host: String,
        port: u16,
        #[serde(default)]
        pubkey: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        bootstrap_servers: Vec<Entry>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    let file: File =
        serde_json::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    file.bootstrap_servers
        .into_iter()
        .map(|e| {
            let whose = format!("{}:{}", e.host, e.port);
            Ok(Bootstrap {
                pubkey: pinned(e.pubkey.as_deref(), &whose)?,
                host: e.host,
                port: e.port,
            })
        })
        .collect()
}

/// BOOTSTRAP_HOST_n / BOOTSTRAP_PORT_n / BOOTSTRAP_PUBKEY_n for n = 1, 2, 3, ...
fn bootstrap_from_env() -> Result<Vec<Bootstrap>, ConfigError> {
    let mut list = Vec::new();
    for n in 1.. {
        let Ok(host) = std::env::var(format!("BOOTSTRAP_HOST_{n}")) else {
            break;
        };
        let port = std::env::var(format!("BOOTSTRAP_PORT_{n}"))
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| ConfigError(format!("BOOTSTRAP_PORT_{n} missing or bad")))?;
        let key = std::env::var(format!("BOOTSTRAP_PUBKEY_{n}")).ok();
        list.push(Bootstrap {
            pubkey: pinned(key.as_deref(), &format!("{host}:{port}"))?,
            host,
            port,
        });
    }
    Ok(list)
}

fn pinned(key: Option<&str>, whose: &str) -> Result<Option<PublicKey>, ConfigError> {
    match key.map(str::trim) {
        None | Some("") => Ok(None),
        Some(k) => PublicKey::parse(k)
            .map(Some)
            .map_err(|e| ConfigError(format!("pinned key of {whose}: {e}"))),
    }
}

fn seconds(name: &str, v: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v > 0.0 && v < 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(ConfigError(format!(
            "{name} must be a positive number of seconds"
        )))
    }
}

fn days_ms(name: &str, v: f64) -> Result<i64, ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 3650.0 {
        Ok((v * 86_400_000.0) as i64)
    } else {
        Err(ConfigError(format!(
            "{name} must be a positive number of days, at most 3650"
        )))
    }
}

/// A server URL of `what` must agree with whether this server runs TLS: a
/// mesh is all-TLS or all-plain, since server addresses carry no scheme.
fn check_scheme(what: &str, url: &str, tls: bool) -> Result<(), ConfigError> {
    match (url_scheme(url), tls) {
        (Scheme::Wss, false) => Err(ConfigError(format!(
            "{what} {url}: wss:// needs --tls-cert and --tls-key (a mesh is all-TLS or all-plain)"
        ))),
        (Scheme::Ws, true) => Err(ConfigError(format!(
            "{what} {url}: with --tls-cert this server serves and dials wss:// only (a mesh is \
             all-TLS or all-plain); write wss://"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_standalone_server_on_8765() {
        let args = ServerArgs::parse_from(["socp-server"]);
        let config = args.to_config().unwrap();
        assert_eq!(config.bind.port(), 8765);
        assert!(config.bootstrap.is_empty() || std::env::var("BOOTSTRAP_HOST_1").is_ok());
        assert_eq!(config.db_path, Some(PathBuf::from("chat.db")));
        assert_eq!(config.settings.heartbeat_interval, Duration::from_secs(15));
    }

    #[test]
    fn flags() {
        let args = ServerArgs::parse_from([
            "socp-server",
            "--bind",
            "ws://127.0.0.1:9000",
            "--peer",
            "ws://127.0.0.1:8765",
            "--heartbeat-interval",
            "0.5",
            "--timeout",
            "2",
            "--introducer-only",
        ]);
        let config = args.to_config().unwrap();
        assert_eq!(config.bind.port(), 9000);
        assert_eq!(config.bootstrap[0].port, 8765);
        assert_eq!(
            config.settings.heartbeat_interval,
            Duration::from_millis(500)
        );
        assert!(config.settings.introducer_only);
        let bad = ServerArgs::parse_from(["socp-server", "--timeout=-1"]);
        assert!(bad.to_config().is_err());
    }

    #[test]
    fn introducers_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("introducers.json");
        std::fs::write(
            &path,
            r#"{"bootstrap_servers":[{"host":"127.0.0.1","port":8000,"pubkey":""},{"host":"h","port":8001}]}"#,
        )
        .unwrap();
        let list = read_introducers(&path).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].host, "h");
        assert!(list[0].pubkey.is_none());
        std::fs::write(
            &path,
            r#"{"bootstrap_servers":[{"host":"h","port":1,"pubkey":"bad"}]}"#,
        )
        .unwrap();
        assert!(read_introducers(&path).is_err());
    }

    #[test]
    fn a_closed_federation_needs_its_allowlist_and_only_then() {
        let closed = ServerArgs::parse_from(["socp-server", "--federation", "closed"]);
        let err = closed.to_config().unwrap_err().to_string();
        assert!(err.contains("--allowlist"), "{err}");
        let stray = ServerArgs::parse_from(["socp-server", "--allowlist", "list.txt"]);
        let err = stray.to_config().unwrap_err().to_string();
        assert!(err.contains("--federation closed"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist");
        let id = ServerId::random();
        let key = socp_protocol::fixtures::key(1)
            .public_key()
            .to_wire()
            .to_owned();
        std::fs::write(&path, format!("{id} {key} 127.0.0.1:9001\n")).unwrap();
        let args = ServerArgs::parse_from([
            "socp-server",
            "--federation",
            "closed",
            "--allowlist",
            path.to_str().unwrap(),
        ]);
        let list = args.to_config().unwrap().settings.allowlist.unwrap();
        assert_eq!(list.peers()[0].server_id, id);
    }
}
