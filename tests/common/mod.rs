//! Helpers shared by the test targets (`tests/api` and `tests/faults`
//! include this folder with `#[path]`): free ports, a Redis server and a
//! PostgreSQL server of the test's own, and a TCP proxy that turns into a
//! bad network on demand. Each target uses part of it.

pub mod http;
pub mod postgres;
pub mod proxy;
pub mod redis;

use std::net::TcpListener;

/// A free TCP port on loopback (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
