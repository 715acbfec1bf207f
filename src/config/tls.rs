//! TLS loading, shared by the server and the client: PEM certificate chains
//! and keys, CA bundles (a private CA's, or the system's), and the rustls
//! configurations built from them (ring provider, ALPN `http/1.1` only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;
use crate::server::ServerTls;

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

/// Where the system keeps its CA bundle, tried in order after `SSL_CERT_FILE`:
/// Debian/Ubuntu/Arch, Fedora/RHEL, openSUSE, Alpine/macOS/BSD.
pub(crate) const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The certificates of a PEM file (a chain, or a CA bundle); at least one.
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
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
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_file(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError(format!(
            "--tls-key {}: no unencrypted private key (PEM PKCS#8, RSA or EC): {e}",
            path.display()
        ))
    })
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{what} {}: {e}", path.display())))
}

/// The rustls provider: ring (builds with a C compiler alone, no cmake/nasm).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
