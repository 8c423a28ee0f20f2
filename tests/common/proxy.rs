//! A TCP proxy between the service and PostgreSQL or Redis that a test can
//! turn into a bad network: pass traffic, hold it (a black hole: accepted,
//! never answered; held bytes flow again when the path is back), add
//! latency, cut every connection, or strand the open connections (they stay
//! open and never carry another byte, as when a NAT or firewall forgets
//! them, while new connections pass).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Accept, read, forward nothing until the mode changes.
    BlackHole,
    /// Forward each chunk after this delay.
    Latency(Duration),
    /// Close every connection, refuse new ones until the mode changes.
    Cut,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections opened in an earlier epoch than this are stranded.
    epoch: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (mode, watching) = watch::channel(Mode::Pass);
        let epoch = Arc::new(AtomicU64::new(0));
        let current = epoch.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watching.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let stranded = Stranded {
                    opened_in: current.load(Ordering::SeqCst),
                    epoch: current.clone(),
                };
                tokio::spawn(connection(client, upstream, watching.clone(), stranded));
            }
        });
        Self {
            addr,
            mode,
            epoch,
            task,
        }
    }

    /// Every connection open now stays open and never carries another byte
    /// (whatever the mode, until a `Cut` closes it); new ones are unaffected.
    pub fn strand_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

/// Tells whether a connection was stranded after it opened.
#[derive(Clone)]
struct Stranded {
    opened_in: u64,
    epoch: Arc<AtomicU64>,
}

impl Stranded {
    fn now(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) > self.opened_in
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stranded: Stranded,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, mode.clone(), stranded.clone()) => {}
        () = pump(server_read, client_write, mode, stranded) => {}
    }
}

/// Copies one direction chunk by chunk, obeying the mode before each.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    stranded: Stranded,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = cut(&mut mode) => return,
        };
        let Ok(count @ 1..) = read else {
            return;
        };
        if stranded.now() {
            // Swallowed: the peer waits for an answer that never comes.
            continue;
        }
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Cut => return,
                Mode::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::BlackHole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if stranded.now() {
            continue;
        }
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

/// Resolves when the mode becomes `Cut`.
async fn cut(mode: &mut watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Cut {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}
