//! Command-line configuration (clap), with the seeds' environment variables as
//! fallbacks: HOST, PORT, DB_PATH, INTRODUCERS_JSON, BOOTSTRAP_HOST_n /
//! BOOTSTRAP_PORT_n / BOOTSTRAP_PUBKEY_n, HEARTBEAT_INTERVAL, TIMEOUT_THRESHOLD.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use socp_actors::introducer::Bootstrap;
use socp_actors::Settings;
use socp_protocol::{PublicKey, ServerId};

use crate::server::ServerConfig;

/// `socp-server`: a SOCP v1.3 chat server. With no arguments: a standalone
/// server on ws://127.0.0.1:8765 with its database in chat.db.
#[derive(Debug, Parser)]
#[command(name = "socp-server", version, about)]
pub struct ServerArgs {
    /// Where to listen, as ws://HOST:PORT.
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
    /// An introducer to join through, as ws://HOST:PORT (repeatable; tried in order).
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
    /// Accept only registered users (no ephemeral identities).
    #[arg(long)]
    pub require_registration: bool,
    /// On first start, use this unencrypted PEM key instead of generating one.
    #[arg(long)]
    pub first_key: Option<PathBuf>,
}

/// `socp-bench`: how close a socp mesh runs to the crypto limit.
#[derive(Debug, Parser)]
#[command(name = "socp-bench", version, about)]
pub struct BenchArgs {
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
    /// C: idle users attached to one server.
    #[arg(short = 'c', long, default_value_t = 1000)]
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
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The bench configuration.
    pub fn to_config(&self) -> crate::bench::BenchConfig {
        crate::bench::BenchConfig {
            crypto_secs: self.crypto_secs,
            pairs: self.pairs.max(1),
            dm_secs: self.seconds,
            window: self.window.max(1),
            members: self.members.max(1),
            file_bytes: self.file_kib * 1024,
            idle_users: self.idle_users,
            mesh_servers: self.servers.max(2),
            mesh_users: self.users,
            only: self.only.clone(),
            server_bin: self.server_bin.clone(),
        }
    }
}

/// A configuration error, for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parse `ws://HOST:PORT` (also `HOST:PORT`; a trailing path is ignored).
pub fn parse_ws_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| ConfigError(format!("{url}: expected ws://HOST:PORT")))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| ConfigError(format!("{url}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ConfigError(format!("{url}: missing host")));
    }
    Ok((host.to_owned(), port))
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

fn pinned(key: Option<&str>, whose: &str) -> Result<Option<PublicKey>, ConfigError> {
    match key.map(str::trim) {
        None | Some("") => Ok(None),
        Some(k) => PublicKey::parse(k)
            .map(Some)
            .map_err(|e| ConfigError(format!("pinned key of {whose}: {e}"))),
    }
}

/// Read the introducers file of the first seed.
pub fn read_introducers(path: &PathBuf) -> Result<Vec<Bootstrap>, ConfigError> {
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

impl ServerArgs {
    /// Turn the arguments into a server configuration.
    pub fn to_config(&self) -> Result<ServerConfig, ConfigError> {
        let (host, port) = match (&self.bind, &self.host, self.port) {
            (Some(bind), _, _) => parse_ws_url(bind)?,
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
        let settings = Settings {
            heartbeat_interval: seconds("--heartbeat-interval", self.heartbeat_interval)?,
            peer_timeout: seconds("--timeout", self.timeout)?,
            require_registration: self.require_registration,
            introducer_only: self.introducer_only,
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
            ..ServerConfig::default()
        })
    }
}

/// `socp-client`: the SOCP v1.3 terminal client.
///
/// `socp-client --server ws://127.0.0.1:8765`, or the positional form
/// `socp-client alice 127.0.0.1 8080` (user id, host, port).
#[derive(Debug, Parser)]
#[command(name = "socp-client", version, about)]
pub struct ClientArgs {
    /// Ephemeral user id (positional form: USER HOST PORT).
    pub user: Option<String>,
    /// Server host (positional form).
    pub host: Option<String>,
    /// Server port (positional form).
    pub port: Option<u16>,
    /// Server to connect to, as ws://HOST:PORT.
    #[arg(long)]
    pub server: Option<String>,
    /// Directory for keys and settings (default: ~/.config/socp).
    #[arg(long, env = "SOCP_HOME")]
    pub home: Option<PathBuf>,
    /// Where received files are saved (default: HOME/downloads).
    #[arg(long)]
    pub download_dir: Option<PathBuf>,
    /// Print one JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Read the password for /register and /login from this file.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Use this unencrypted PEM key for the session instead of generating one.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Use this unencrypted PEM key for /register instead of generating one.
    #[arg(long)]
    pub register_key: Option<PathBuf>,
    /// Frames per second to send at most (the server's limit; default 50).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
}

impl ClientArgs {
    /// Turn the arguments into a client configuration.
    pub fn to_config(&self) -> Result<crate::client::ClientConfig, ConfigError> {
        use std::io::IsTerminal;
        let (host, port) = match (&self.server, &self.host, self.port) {
            (Some(url), _, _) => parse_ws_url(url)?,
            (None, Some(host), Some(port)) => (host.clone(), port),
            (None, Some(_), None) => {
                return Err(ConfigError(
                    "give HOST and PORT, or --server ws://HOST:PORT".into(),
                ))
            }
            (None, None, _) => ("127.0.0.1".to_owned(), 8765),
        };
        let user_id = match &self.user {
            Some(u) => Some(
                socp_protocol::UserId::parse(u)
                    .map_err(|e| ConfigError(format!("user id: {e}")))?,
            ),
            None => None,
        };
        let home = match &self.home {
            Some(h) => h.clone(),
            None => std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("socp"),
        };
        let password = match &self.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => std::env::var("SOCP_PASSWORD").ok(),
        };
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(ConfigError("--rate must be positive".into()));
        }
        Ok(crate::client::ClientConfig {
            host,
            port,
            user_id,
            download_dir: self
                .download_dir
                .clone()
                .unwrap_or_else(|| home.join("downloads")),
            home,
            json: self.json,
            key_file: self.key.clone(),
            register_key_file: self.register_key.clone(),
            password,
            send_rate: self.rate,
            terminal: std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal()
                && !self.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:8765").unwrap(),
            ("127.0.0.1".into(), 8765)
        );
        assert_eq!(parse_ws_url("ws://host:1/ws").unwrap(), ("host".into(), 1));
        assert_eq!(
            parse_ws_url("localhost:9").unwrap(),
            ("localhost".into(), 9)
        );
        assert_eq!(parse_ws_url("ws://[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(parse_ws_url("ws://host").is_err());
        assert!(parse_ws_url("ws://:80").is_err());
        assert!(parse_ws_url("ws://h:99999").is_err());
    }

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
    fn client_forms() {
        let seed1 = ClientArgs::parse_from(["socp-client", "alice", "127.0.0.1", "8080"])
            .to_config()
            .unwrap();
        assert_eq!((seed1.host.as_str(), seed1.port), ("127.0.0.1", 8080));
        assert_eq!(seed1.user_id.unwrap().as_str(), "alice");
        let seed2 = ClientArgs::parse_from(["socp-client", "--server", "ws://127.0.0.1:8766"])
            .to_config()
            .unwrap();
        assert_eq!(seed2.port, 8766);
        assert!(seed2.user_id.is_none());
        assert!(ClientArgs::parse_from(["socp-client", "al ice"])
            .to_config()
            .is_err());
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
}
