//! TLS on the gRPC listener (`GRPC_TLS_CERT`, `GRPC_TLS_KEY`,
//! `GRPC_TLS_CLIENT_CA`); plaintext without them.

use super::ConfigError;
use crate::api::tls::TlsSettings;

/// `GRPC_TLS_CERT` and `GRPC_TLS_KEY` together, `GRPC_TLS_CLIENT_CA` only
/// with them. The files are read when the service starts.
pub(super) fn tls_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let path = |name: &str| get(name).map(|p| std::path::PathBuf::from(p.trim()));
    match (
        path("GRPC_TLS_CERT"),
        path("GRPC_TLS_KEY"),
        path("GRPC_TLS_CLIENT_CA"),
    ) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsSettings {
            cert,
            key,
            client_ca,
        })),
        (None, None, Some(_)) => Err(ConfigError::new(
            "GRPC_TLS_CLIENT_CA",
            "needs GRPC_TLS_CERT and GRPC_TLS_KEY (the server's own certificate)",
        )),
        (Some(_), None, _) => Err(ConfigError::new(
            "GRPC_TLS_KEY",
            "must be set with GRPC_TLS_CERT (the certificate's private key, a PEM file)",
        )),
        (None, Some(_), _) => Err(ConfigError::new(
            "GRPC_TLS_CERT",
            "must be set with GRPC_TLS_KEY (the certificate chain, a PEM file)",
        )),
    }
}
