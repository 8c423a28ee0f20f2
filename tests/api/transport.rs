//! The listeners' HTTP/2 limits, read from what the server sends; the HTTP
//! listener's choice of HTTP/1.1 or HTTP/2, and its timeout for silent clients.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestApp;

/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113, 6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Opens an HTTP/2 connection (prior knowledge, as gRPC clients do) and
/// returns the parameters of the server's first SETTINGS frame.
async fn server_settings(addr: std::net::SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The client preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.unwrap();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).await.unwrap();
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let (kind, flags) = (header[3], header[4]);
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).await.unwrap();
            if kind == 0x4 && flags & 0x1 == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                        )
                    })
                    .collect();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server sent its SETTINGS")
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_server_advertises_a_bound_on_concurrent_streams(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let settings = server_settings(app.grpc_addr).await;
    let streams = settings
        .iter()
        .find(|(id, _)| *id == MAX_CONCURRENT_STREAMS)
        .map(|(_, value)| *value);
    assert_eq!(
        streams,
        Some(translation_jobs::api::transport::MAX_CONCURRENT_STREAMS),
        "SETTINGS: {settings:?}"
    );
    assert!(streams.is_some_and(|n| n <= 1024));
    app.stop().await;
}

/// Whether the server closes `stream` within `limit` (reading and dropping
/// whatever it sends first: hyper may answer 408 before closing).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A client that sends its headers slowly is cut off after the header-read
/// timeout instead of holding the connection for ever.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_slow_http_client_is_cut_off(_: PgPoolOptions, database: PgConnectOptions) {
    use translation_jobs::api::http_server::HEADER_READ_TIMEOUT;
    let app = TestApp::ready(database).await;
    let mut stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = closed_within(&mut stream, HEADER_READ_TIMEOUT * 3).await;
    assert!(
        closed,
        "the connection was still open {:?} after the incomplete headers",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT / 2,
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    app.stop().await;
}

/// The HTTP port speaks HTTP/2 to a client that opens with its preface
/// (prior knowledge), with the gRPC listener's bound on concurrent streams.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_http_port_speaks_http2_with_prior_knowledge_and_bounds_its_streams(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let settings = server_settings(app.http_addr).await;
    assert!(
        settings.contains(&(
            MAX_CONCURRENT_STREAMS,
            translation_jobs::api::transport::MAX_CONCURRENT_STREAMS
        )),
        "SETTINGS: {settings:?}"
    );
    app.stop().await;
}

/// Server-sent event streams of several jobs share one HTTP/2 connection,
/// each starting with its job.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn event_streams_share_one_http2_connection(_: PgPoolOptions, database: PgConnectOptions) {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut app = TestApp::ready(database).await;
    let jobs = [app.create().await, app.create().await, app.create().await];
    let stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for job in &jobs {
        let request = hyper::Request::get(format!("/api/v1/translation-jobs/{}/events", job.id))
            .header("host", app.http_addr.to_string())
            .body(Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let response = sender.clone().send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        bodies.push(response.into_body());
    }
    // Every stream is open at once; each sends its own job first.
    for (job, body) in jobs.iter().zip(&mut bodies) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first event in time")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
        assert!(text.starts_with("event: job\nid: 1\n"), "{text}");
        assert!(text.contains(&job.id), "{text}");
    }
    app.stop().await;
}

/// A plain connection that sends nothing is closed after the header-read
/// timeout, whichever HTTP it would have spoken.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_silent_http_connection_is_closed(_: PgPoolOptions, database: PgConnectOptions) {
    use translation_jobs::api::http_server::HEADER_READ_TIMEOUT;
    let app = TestApp::ready(database).await;
    let mut stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    let started = std::time::Instant::now();
    let closed = closed_within(&mut stream, HEADER_READ_TIMEOUT * 3).await;
    assert!(
        closed,
        "the silent connection was still open {:?} later",
        started.elapsed()
    );
    assert!(started.elapsed() >= HEADER_READ_TIMEOUT / 2);
    app.stop().await;
}
