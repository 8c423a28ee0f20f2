//! TLS on the gRPC and HTTP listeners, with certificates made in the test
//! (rcgen): a client trusting the CA gets in, a plaintext client does not;
//! with a client CA, only clients with a certificate it signed get in, on
//! both listeners. `MANAGEMENT_ADDR` answers health and metrics in plain
//! HTTP and nothing else.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use translation_jobs::api::proto::translation_job_service_client::TranslationJobServiceClient;

use crate::support::{SHARED_REDIS_URL, TestApp, create_request, unique_queue};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key, both PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "translation-jobs test");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A TLS channel to the service trusting `ca`, with a client identity if
/// given.
async fn tls_channel(
    app: &TestApp,
    ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{}", app.grpc_addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// The service with TLS on, its certificate issued by `ca` for localhost
/// (files in `dir`), health on a plain management listener; ready.
async fn tls_app(database: PgConnectOptions, ca: &Ca, dir: &Path) -> TestApp {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let cert = write(dir, "server.crt", &cert);
    let key = write(dir, "server.key", &key);
    let app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[
            ("GRPC_TLS_CERT", &cert),
            ("GRPC_TLS_KEY", &key),
            ("MANAGEMENT_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    app.wait_ready().await;
    app
}

/// A rustls client's roots: `ca` alone.
fn client_roots(ca: &Ca) -> rustls::RootCertStore {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    roots
}

/// An HTTPS request to the HTTP listener trusting `ca` (name `localhost`),
/// with a client identity if given: (status, body), or why it failed.
async fn https_request(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<(String, String)>,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = client_roots(ca);
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Whether a create goes through on `channel`.
async fn create_over(channel: Channel) -> Result<(), tonic::Status> {
    TranslationJobServiceClient::new(channel)
        .create_translation_job(create_request())
        .await
        .map(drop)
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn tls_clients_that_trust_the_ca_get_in_and_plaintext_clients_do_not(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let mut app = tls_app(database, &ca, dir.path()).await;

    let channel = tls_channel(&app, &ca, None).await.expect("TLS handshake");
    create_over(channel.clone())
        .await
        .expect("a create over TLS");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    // The test app's own client speaks plaintext HTTP/2.
    let plaintext = app.client.create_translation_job(create_request()).await;
    assert!(plaintext.is_err(), "plaintext got in: {plaintext:?}");

    // A client that does not trust the CA refuses the server.
    let stranger = Ca::new("another CA");
    assert!(tls_channel(&app, &stranger, None).await.is_err());

    // The HTTP listener speaks TLS with the same certificate: the job API
    // and health over HTTPS, nothing over plain HTTP.
    let (status, _) = https_request(app.http_addr, &ca, None, "GET", "/readyz")
        .await
        .expect("HTTPS");
    assert_eq!(status, 200);
    let (status, body) = https_request(app.http_addr, &ca, None, "GET", "/api/v1/translation-jobs")
        .await
        .expect("HTTPS");
    assert_eq!(status, 200, "{body}");
    let plain = crate::support::http_get(&format!("http://{}/readyz", app.http_addr)).await;
    assert!(plain.is_none(), "plain HTTP got an answer: {plain:?}");
    assert!(
        https_request(app.http_addr, &stranger, None, "GET", "/readyz")
            .await
            .is_err()
    );

    // MANAGEMENT_ADDR: health and metrics in plain HTTP, never the job API
    // or the dashboard.
    let management = app.management_addr.expect("MANAGEMENT_ADDR is bound");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = crate::support::http_get(&format!("http://{management}{path}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}");
    }
    for path in ["/", "/api/v1/translation-jobs", "/api/v1/stats"] {
        let (status, _) = crate::support::http_get(&format!("http://{management}{path}"))
            .await
            .unwrap();
        assert_eq!(status, 404, "{path} on the management listener");
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = server_ca.issue(&["localhost"]);
    let cert = write(dir.path(), "server.crt", &cert);
    let key = write(dir.path(), "server.key", &key);
    let client_ca_path = write(dir.path(), "client-ca.crt", &client_ca.pem());
    let app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[
            ("GRPC_TLS_CERT", &cert),
            ("GRPC_TLS_KEY", &key),
            ("GRPC_TLS_CLIENT_CA", &client_ca_path),
            ("MANAGEMENT_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    app.wait_ready().await;

    // No certificate: the handshake or the first call fails.
    let anonymous = match tls_channel(&app, &server_ca, None).await {
        Ok(channel) => create_over(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate got in");

    // A certificate from another CA: refused the same way.
    let (rogue_cert, rogue_key) = server_ca.issue(&["rogue-client"]);
    let rogue = match tls_channel(&app, &server_ca, Some((rogue_cert, rogue_key))).await {
        Ok(channel) => create_over(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(rogue, "a client with a certificate of another CA got in");

    let identity = client_ca.issue(&["billing-service"]);
    let channel = tls_channel(&app, &server_ca, Some(identity.clone()))
        .await
        .expect("mutual TLS handshake");
    create_over(channel)
        .await
        .expect("a create over mutual TLS");

    // The HTTP listener keeps the same policy.
    let anonymous = https_request(
        app.http_addr,
        &server_ca,
        None,
        "GET",
        "/api/v1/translation-jobs",
    )
    .await;
    assert!(
        anonymous.is_err(),
        "HTTPS without a client certificate: {anonymous:?}"
    );
    let (rogue_cert, rogue_key) = server_ca.issue(&["rogue-client"]);
    let rogue = https_request(
        app.http_addr,
        &server_ca,
        Some((rogue_cert, rogue_key)),
        "GET",
        "/api/v1/translation-jobs",
    )
    .await;
    assert!(
        rogue.is_err(),
        "HTTPS with another CA's certificate: {rogue:?}"
    );
    let (status, body) = https_request(
        app.http_addr,
        &server_ca,
        Some(identity),
        "GET",
        "/api/v1/translation-jobs",
    )
    .await
    .expect("HTTPS with a client certificate");
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn unreadable_or_mismatched_certificates_stop_start_up_naming_the_variable() {
    use translation_jobs::{app::App, config::Settings};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, _) = ca.issue(&["localhost"]);
    let (_, other_key) = ca.issue(&["localhost"]);
    let cert = write(dir.path(), "server.crt", &cert);
    let other_key = write(dir.path(), "other.key", &other_key);
    let garbage = write(dir.path(), "garbage.key", "not a key, a secret: hunter2\n");
    let missing = dir.path().join("missing.crt").display().to_string();

    for (cert, key, expect) in [
        (missing.as_str(), other_key.as_str(), "GRPC_TLS_CERT"),
        (cert.as_str(), garbage.as_str(), "GRPC_TLS_KEY"),
        (cert.as_str(), other_key.as_str(), "GRPC_TLS_KEY"),
    ] {
        let vars = [
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_TLS_CERT", cert),
            ("GRPC_TLS_KEY", key),
        ];
        let settings = Settings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let error = match App::build(settings).await {
            Ok(_) => panic!("started with {cert} and {key}"),
            Err(error) => translation_jobs::telemetry::error_chain(&error),
        };
        assert!(error.contains(expect), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

/// The protocol the HTTPS listener agrees by ALPN when the client offers
/// `offered`.
async fn negotiated(addr: std::net::SocketAddr, ca: &Ca, offered: &[&[u8]]) -> Option<Vec<u8>> {
    use rustls::pki_types::ServerName;
    let roots = client_roots(ca);
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// Browsers offer HTTP/2 by ALPN and get it (their event streams then share
/// a connection); a client offering only HTTP/1.1 gets that.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn https_agrees_http2_with_clients_that_offer_it(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let app = tls_app(database, &ca, dir.path()).await;
    assert_eq!(
        negotiated(app.http_addr, &ca, &[b"h2", b"http/1.1"]).await,
        Some(b"h2".to_vec())
    );
    assert_eq!(
        negotiated(app.http_addr, &ca, &[b"http/1.1"]).await,
        Some(b"http/1.1".to_vec())
    );
    // HTTP/1.1 requests without ALPN still work (see the test above).
    let (status, _) = https_request(app.http_addr, &ca, None, "GET", "/readyz")
        .await
        .expect("HTTPS");
    assert_eq!(status, 200);
    app.stop().await;
}
