//! The HTTP/2 limits of both listeners (gRPC, and the HTTP listener's
//! HTTP/2 connections, see `http_server`), fixed rather than left to
//! tonic's defaults (which advertise no bound on concurrent streams, and
//! with it lose hyper's protection against rapid resets).

use std::time::Duration;

use tonic::transport::Server;

/// Streams one connection may have open at once, advertised in the
/// server's SETTINGS frame (`SETTINGS_MAX_CONCURRENT_STREAMS`). Calls past
/// it wait in the client for a free stream; open them on more connections
/// to go wider. Watch streams count too.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Streams a client may open and reset before the server accepted them,
/// after which the connection is closed (GOAWAY): the HTTP/2 rapid-reset
/// attack (CVE-2023-44487) opens and cancels streams faster than a server
/// can drop them.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the server may reset because of a client's protocol errors
/// before it closes the connection.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// An idle connection is pinged this often; a peer that does not answer
/// within [`KEEPALIVE_TIMEOUT`] is dropped, so a vanished client (a node
/// gone, a NAT that forgot the flow) does not hold its streams and their
/// slots forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The server builder with the limits above.
pub fn limited(server: Server) -> Server {
    server
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}
