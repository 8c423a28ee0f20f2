//! TLS on the gRPC listener (rustls with ring), and mutual TLS when a
//! client CA is given. The HTTP listener stays plaintext: it serves probes,
//! `/metrics` and the old JSON endpoints inside the cluster.

use std::path::PathBuf;

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Longest a client may take to finish the TLS handshake, so half-open
/// handshakes cannot pile up.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the certificates are (`GRPC_TLS_CERT`, `GRPC_TLS_KEY`,
/// `GRPC_TLS_CLIENT_CA`): PEM files, read once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key. Read, never printed.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS cannot be served. Names the variable and the path, never what
/// the files hold.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{variable}: cannot read {path}")]
    Read {
        variable: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "GRPC_TLS_CERT, GRPC_TLS_KEY, GRPC_TLS_CLIENT_CA: not a usable certificate chain, \
         private key and CA in PEM (does the key belong to the certificate?)"
    )]
    Invalid(#[source] tonic::transport::Error),
}

/// Reads the files and checks that rustls can serve with them.
pub fn server_config(settings: &TlsSettings) -> Result<ServerTlsConfig, TlsError> {
    // A process-wide rustls provider: both ring and aws-lc may be compiled
    // into rustls by some dependency, and then rustls cannot pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = read("GRPC_TLS_CERT", &settings.cert)?;
    let key = read("GRPC_TLS_KEY", &settings.key)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(path) = &settings.client_ca {
        let ca = read("GRPC_TLS_CLIENT_CA", path)?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    // Builds the acceptor once now, so a bad file stops start-up.
    Server::builder()
        .tls_config(config.clone())
        .map_err(TlsError::Invalid)?;
    Ok(config)
}

fn read(variable: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        variable,
        path: path.display().to_string(),
        source,
    })
}
