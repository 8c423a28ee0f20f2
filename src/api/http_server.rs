//! Serving the HTTP listeners with hyper directly rather than through
//! `axum::serve`: HTTP/1.1 with a header-read timeout (a client that sends
//! its headers slowly is cut off instead of holding a connection for ever),
//! HTTP/2 with the gRPC listener's limits (see `transport`), TLS with the
//! gRPC listener's certificate and client-CA policy when TLS is on (plain
//! HTTP on that port then gets nothing), and a graceful drain.
//!
//! Which HTTP a connection speaks: with TLS, what ALPN agreed (browsers
//! offer `h2`, so their event streams share one connection instead of one
//! each); without, HTTP/2 when the client opens with HTTP/2's preface
//! (prior knowledge, `curl --http2-prior-knowledge`), else HTTP/1.1. A
//! client that sends nothing is closed after the header-read timeout either
//! way.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{tls::TLS_HANDSHAKE_TIMEOUT, transport};

/// Longest a client may take to send a request's headers (the first, or
/// the next one on a kept-alive connection) before the connection is
/// closed; also how long a new plain connection may stay silent before it
/// is known which HTTP it speaks.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How HTTP/2's client preface begins (RFC 9113, 3.4); no HTTP/1.1 method
/// does.
const HTTP2_PREFACE_START: &[u8; 4] = b"PRI ";

/// Pause between two looks at a connection that has sent part of
/// [`HTTP2_PREFACE_START`] so far.
const PREFACE_PAUSE: Duration = Duration::from_millis(5);

/// The HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

type Service = TowerToHyperService<Router>;

/// Serves `router` on `listener` until `shutdown`, then lets the requests
/// in flight finish (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    if let Some(protocol) = sniff(&stream).await {
                        serve_connection(protocol, TokioIo::new(stream), service, watcher).await;
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that is not speaking TLS, or too slowly, gets
                    // nothing and its connection is closed.
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Protocol::Http2
                    } else {
                        Protocol::Http1
                    };
                    serve_connection(protocol, TokioIo::new(stream), service, watcher).await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection in `protocol` until it ends or the drain ends it.
async fn serve_connection<I>(protocol: Protocol, io: I, service: Service, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = watcher.watch(builder.serve_connection(io, service)).await;
        }
        Protocol::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(transport::MAX_CONCURRENT_STREAMS)
                .max_pending_accept_reset_streams(transport::MAX_PENDING_ACCEPT_RESET_STREAMS)
                .max_local_error_reset_streams(transport::MAX_LOCAL_ERROR_RESET_STREAMS)
                .keep_alive_interval(transport::KEEPALIVE_INTERVAL)
                .keep_alive_timeout(transport::KEEPALIVE_TIMEOUT);
            let _ = watcher.watch(builder.serve_connection(io, service)).await;
        }
    }
}

/// Which HTTP a plain connection speaks, from its first bytes, without
/// taking them; `None` when it closes, fails or sends nothing within
/// [`HEADER_READ_TIMEOUT`].
async fn sniff(stream: &TcpStream) -> Option<Protocol> {
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let mut first = [0u8; HTTP2_PREFACE_START.len()];
    loop {
        let seen = tokio::time::timeout_at(deadline, stream.peek(&mut first))
            .await
            .ok()?
            .ok()?;
        if seen == 0 {
            return None;
        }
        if first[..seen] != HTTP2_PREFACE_START[..seen] {
            return Some(Protocol::Http1);
        }
        if seen == first.len() {
            return Some(Protocol::Http2);
        }
        // Part of the preface so far: peek returns at once while bytes
        // wait, so look again after a pause.
        if Instant::now() + PREFACE_PAUSE >= deadline {
            return None;
        }
        tokio::time::sleep(PREFACE_PAUSE).await;
    }
}
