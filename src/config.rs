//! Command-line configuration (clap), with the seeds' environment variables as
//! fallbacks: HOST, PORT, DB_PATH, INTRODUCERS_JSON, BOOTSTRAP_HOST_n /
//! BOOTSTRAP_PORT_n / BOOTSTRAP_PUBKEY_n, HEARTBEAT_INTERVAL, TIMEOUT_THRESHOLD.
//! Also the TLS files (`--tls-cert`, `--tls-key`, `--ca`) behind `wss://`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use socp_actors::introducer::Bootstrap;
use socp_actors::Settings;
use socp_protocol::{PublicKey, ServerId};

use crate::server::{ServerConfig, ServerTls};

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
    pub fn to_config(&self) -> Result<crate::bench::BenchConfig, ConfigError> {
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
        Ok(crate::bench::BenchConfig {
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
            targets,
        })
    }
}

/// A configuration error, for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parse `ws://HOST:PORT` or `wss://HOST:PORT` (also `HOST:PORT`; a trailing
/// path is ignored). [`url_scheme`] tells which.
pub fn parse_ws_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    if rest.contains("://") {
        return Err(ConfigError(format!(
            "{url}: expected ws://HOST:PORT or wss://HOST:PORT"
        )));
    }
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

/// The scheme a server URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `ws://`: plain WebSocket.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
    /// No scheme (`HOST:PORT`): whatever the rest of the configuration says.
    Bare,
}

/// The scheme of `url` (see [`parse_ws_url`]).
pub fn url_scheme(url: &str) -> Scheme {
    if url.starts_with("wss://") {
        Scheme::Wss
    } else if url.starts_with("ws://") {
        Scheme::Ws
    } else {
        Scheme::Bare
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

/// Where the system keeps its CA bundle, tried in order after `SSL_CERT_FILE`:
/// Debian/Ubuntu/Arch, Fedora/RHEL, openSUSE, Alpine/macOS/BSD.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{what} {}: {e}", path.display())))
}

/// The certificates of a PEM file (a chain, or a CA bundle); at least one.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("{what} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "{what} {}: no CERTIFICATE in this PEM file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, RSA or EC; not encrypted).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_file(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError(format!(
            "--tls-key {}: no unencrypted private key (PEM PKCS#8, RSA or EC): {e}",
            path.display()
        ))
    })
}

/// The roots this side trusts: every certificate of `ca` (a private CA), or
/// else the system's CA bundle (`None` if there is none).
pub fn trust_roots(ca: Option<&Path>) -> Result<Option<rustls::RootCertStore>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        for cert in load_certs(path, "--ca")? {
            roots.add(cert).map_err(|e| {
                ConfigError(format!(
                    "--ca {}: not a usable CA certificate: {e}",
                    path.display()
                ))
            })?;
        }
        return Ok(Some(roots));
    }
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from));
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else {
            continue;
        };
        // A system bundle may hold a certificate webpki cannot use: skip it.
        let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added > 0 {
            log::debug!("trusting {added} CA certificates of {}", path.display());
            return Ok(Some(roots));
        }
    }
    Ok(None)
}

/// The rustls provider: ring (builds with a C compiler alone, no cmake/nasm).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client configuration trusting `roots`; ALPN `http/1.1` only (socp
/// never speaks HTTP/2).
pub fn client_tls(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server's TLS: `cert` (chain) and `key` for the listener, and the roots of
/// `ca` (default: the system's) for dialling other servers.
pub fn server_tls(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<ServerTls, ConfigError> {
    let chain = load_certs(cert, "--tls-cert")?;
    let key_der = load_key(key)?;
    // `with_single_cert` also checks that the key belongs to the certificate.
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the key is not the certificate's private key".to_owned()
                }
                e => e.to_string(),
            };
            ConfigError(format!(
                "--tls-cert {} / --tls-key {}: {why}",
                cert.display(),
                key.display()
            ))
        })?;
    // HTTP/1.1 only: WebSockets are HTTP/1.1 upgrades, and HTTP/2 stays off.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let roots = match trust_roots(ca)? {
        Some(roots) => roots,
        None => {
            log::warn!(
                "no system CA bundle found (SSL_CERT_FILE, {}): links to other servers over \
                 wss:// will fail until --ca names the CA that signed their certificates",
                SYSTEM_CA_FILES.join(", ")
            );
            rustls::RootCertStore::empty()
        }
    };
    Ok(ServerTls {
        server: Arc::new(server),
        client: client_tls(roots)?,
    })
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
        let settings = Settings {
            heartbeat_interval: seconds("--heartbeat-interval", self.heartbeat_interval)?,
            peer_timeout: seconds("--timeout", self.timeout)?,
            identify_timeout: seconds("--identify-timeout", self.identify_timeout)?,
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
            tls,
            ..ServerConfig::default()
        })
    }
}

/// `socp-client`: the SOCP v1.3 terminal client.
///
/// `socp-client --server ws://127.0.0.1:8765` (`wss://` for TLS), or the positional form
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
    /// Server to connect to, as ws://HOST:PORT, or wss://HOST:PORT for TLS.
    #[arg(long)]
    pub server: Option<String>,
    /// CA certificates (PEM) to trust for a wss:// server, instead of the
    /// system's CA bundle (for a private CA).
    #[arg(long, env = "SOCP_CA")]
    pub ca: Option<PathBuf>,
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
        let wss = self
            .server
            .as_deref()
            .is_some_and(|url| url_scheme(url) == Scheme::Wss);
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
        let tls = match (wss, &self.ca) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ConfigError(
                    "--ca (or SOCP_CA) is for a wss:// server: give --server wss://HOST:PORT"
                        .into(),
                ))
            }
            (true, ca) => match trust_roots(ca.as_deref())? {
                Some(roots) => Some(client_tls(roots)?),
                None => {
                    return Err(ConfigError(format!(
                        "wss://: no CA certificates to trust (looked at SSL_CERT_FILE, {}); give \
                         --ca FILE with the CA that signed the server's certificate",
                        SYSTEM_CA_FILES.join(", ")
                    )))
                }
            },
        };
        Ok(crate::client::ClientConfig {
            host,
            port,
            tls,
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
        assert_eq!(parse_ws_url("wss://h:443").unwrap(), ("h".into(), 443));
        assert!(parse_ws_url("https://h:443").is_err());
        assert_eq!(url_scheme("wss://h:1"), Scheme::Wss);
        assert_eq!(url_scheme("ws://h:1"), Scheme::Ws);
        assert_eq!(url_scheme("h:1"), Scheme::Bare);
    }

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
