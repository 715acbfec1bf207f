//! Server URLs: `ws://HOST:PORT` and `wss://HOST:PORT` read from flags, and
//! the WebSocket endpoint's URL written for dialling and for logs. The server,
//! the client and the bench all use these.

use crate::config::ConfigError;

/// The URL of a server's WebSocket endpoint: `wss://HOST:PORT/ws` when `tls`,
/// `ws://HOST:PORT/ws` otherwise (an IPv6 host in brackets).
pub(crate) fn ws_url(tls: bool, host: &str, port: u16) -> String {
    let scheme = if tls { "wss" } else { "ws" };
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}/ws")
    } else {
        format!("{scheme}://{host}:{port}/ws")
    }
}

/// Parse `ws://HOST:PORT` or `wss://HOST:PORT` (also `HOST:PORT`; a trailing
/// path is ignored). [`url_scheme`] tells which.
pub(crate) fn parse_ws_url(url: &str) -> Result<(String, u16), ConfigError> {
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
pub(crate) enum Scheme {
    /// `ws://`: plain WebSocket.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
    /// No scheme (`HOST:PORT`): whatever the rest of the configuration says.
    Bare,
}

/// The scheme of `url` (see [`parse_ws_url`]).
pub(crate) fn url_scheme(url: &str) -> Scheme {
    if url.starts_with("wss://") {
        Scheme::Wss
    } else if url.starts_with("ws://") {
        Scheme::Ws
    } else {
        Scheme::Bare
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
    fn endpoint_urls() {
        assert_eq!(ws_url(false, "127.0.0.1", 8765), "ws://127.0.0.1:8765/ws");
        assert_eq!(ws_url(true, "example.org", 443), "wss://example.org:443/ws");
        assert_eq!(ws_url(false, "::1", 80), "ws://[::1]:80/ws");
        assert_eq!(ws_url(false, "[::1]", 80), "ws://[::1]:80/ws");
    }
}
