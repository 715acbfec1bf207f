//! The flags of `socp-client` ([`ClientArgs`]) into a [`ClientConfig`].

use std::path::PathBuf;

use clap::Parser;

use super::tls::SYSTEM_CA_FILES;
use super::{client_tls, trust_roots, ConfigError};
use crate::client::ClientConfig;
use crate::url::{parse_ws_url, url_scheme, Scheme};

/// `socp-client`: the SOCP v1.3 terminal client.
///
/// `socp-client --server ws://127.0.0.1:8765` (`wss://` for TLS), or the positional form
/// `socp-client alice 127.0.0.1 8765` (user id, host, port).
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
    /// Repeatable: a lost connection is retried with the next one in turn.
    #[arg(long)]
    pub server: Vec<String>,
    /// CA certificates (PEM) to trust for a wss:// server, instead of the
    /// system's CA bundle (for a private CA).
    #[arg(long, env = "SOCP_CA")]
    pub ca: Option<PathBuf>,
    /// Directory for keys and settings (default: ~/.config/socp).
    #[arg(long, env = "SOCP_HOME")]
    pub home: Option<PathBuf>,
    /// Where received files are saved (default: the `downloads` directory in
    /// the --home directory, ~/.config/socp/downloads unless --home is given).
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
    /// Send files in the standard mode only (446-byte RSA chunks), also to
    /// clients that read socp's fast mode (AES-GCM chunks) [ext].
    #[arg(long)]
    pub standard_files: bool,
}

impl ClientArgs {
    /// Turn the arguments into a client configuration.
    pub fn to_config(&self) -> Result<ClientConfig, ConfigError> {
        use std::io::IsTerminal;
        let wss = self
            .server
            .first()
            .is_some_and(|url| url_scheme(url) == Scheme::Wss);
        if self
            .server
            .iter()
            .any(|url| (url_scheme(url) == Scheme::Wss) != wss)
        {
            return Err(ConfigError(
                "every --server must be ws:// or every one wss://".into(),
            ));
        }
        let alternates = self
            .server
            .iter()
            .skip(1)
            .map(|url| parse_ws_url(url))
            .collect::<Result<Vec<_>, _>>()?;
        let (host, port) = match (self.server.first(), &self.host, self.port) {
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
        Ok(ClientConfig {
            host,
            port,
            alternates,
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
            standard_files: self.standard_files,
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
}
