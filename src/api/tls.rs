//! TLS on the gRPC and HTTP listeners (rustls with ring), the same
//! certificate on both, and mutual TLS on both when a client CA is given.
//! `MANAGEMENT_ADDR` (health and metrics only) stays plaintext.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

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
    #[error("{variable}: not a usable PEM {what} for the HTTPS listener")]
    Pem {
        variable: &'static str,
        what: &'static str,
    },
    #[error(
        "GRPC_TLS_CERT, GRPC_TLS_KEY, GRPC_TLS_CLIENT_CA: the HTTPS listener cannot serve with them"
    )]
    Https(#[source] rustls::Error),
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

/// The HTTPS listener's acceptor: the same certificate and key as the gRPC
/// listener, and the same client-CA policy (a certificate signed by the CA
/// required when one is given); ALPN offers HTTP/2 and HTTP/1.1.
pub fn https_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("GRPC_TLS_CERT", &settings.cert)?)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|chain: &Vec<_>| !chain.is_empty())
            .ok_or(TlsError::Pem {
                variable: "GRPC_TLS_CERT",
                what: "certificate chain",
            })?;
    let key =
        PrivateKeyDer::from_pem_slice(&read("GRPC_TLS_KEY", &settings.key)?).map_err(|_| {
            TlsError::Pem {
                variable: "GRPC_TLS_KEY",
                what: "private key",
            }
        })?;
    let builder = ServerConfig::builder();
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(&read("GRPC_TLS_CLIENT_CA", path)?) {
                let ca = ca.map_err(|_| TlsError::Pem {
                    variable: "GRPC_TLS_CLIENT_CA",
                    what: "CA certificate",
                })?;
                roots.add(ca).map_err(TlsError::Https)?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|_| TlsError::Pem {
                    variable: "GRPC_TLS_CLIENT_CA",
                    what: "CA certificate",
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Https)?;
    // HTTP/2 first: browsers then share one connection among their event
    // streams (see `http_server`).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(variable: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        variable,
        path: path.display().to_string(),
        source,
    })
}
