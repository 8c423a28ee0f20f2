//! A TCP proxy between the service and PostgreSQL or Redis that a test can
//! turn into a bad network: pass traffic, hold it (a black hole: accepted,
//! never answered; held bytes flow again when the path is back), add
//! latency, cut every connection, or strand the open connections (they stay
//! open and never carry another byte, as when a NAT or firewall forgets
//! them, while new connections pass). It can also cut one connection at a
//! chosen point of a conversation ([`Proxy::cut_once`]): just before a
//! request reaches the server, or just after, losing the server's reply.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
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

/// Where [`Proxy::cut_once`] cuts the connection that sent the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// Close it instead of forwarding the client's bytes that complete the
    /// sequence: the server never sees the request.
    Request,
    /// Forward them, then close it instead of forwarding the server's next
    /// bytes: the server acts on the request and its reply is lost.
    Reply,
    /// Forward them, then keep the connection open but forward nothing more
    /// from the server: the reply never comes, as on a path that went dark.
    HoldReply,
}

/// A cut waiting for the connection that sends its sequence.
#[derive(Debug, Clone)]
struct Armed {
    /// Tells one arming from the next, so a connection's progress through
    /// an older sequence does not count towards a newer one.
    id: u64,
    sequence: Vec<Vec<u8>>,
    at: CutAt,
}

/// The cut shared by every connection: armed or not, and how many fired.
#[derive(Default)]
struct Trigger {
    armed: Mutex<Option<Armed>>,
    next_id: AtomicU64,
    fired: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections opened in an earlier epoch than this are stranded.
    epoch: Arc<AtomicU64>,
    trigger: Arc<Trigger>,
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
        let trigger = Arc::new(Trigger::default());
        let triggers = trigger.clone();
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
                tokio::spawn(connection(
                    client,
                    upstream,
                    watching.clone(),
                    stranded,
                    triggers.clone(),
                ));
            }
        });
        Self {
            addr,
            mode,
            epoch,
            trigger,
            task,
        }
    }

    /// Cuts, once, the first connection whose client sends every byte
    /// string of `sequence` in order (each within one read of the proxy,
    /// which holds for the short messages of a PostgreSQL client), at the
    /// point `at` of the last one. Replaces a cut armed before that has not
    /// fired. Other connections are unaffected.
    pub fn cut_once(&self, sequence: &[&[u8]], at: CutAt) {
        let id = self.trigger.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let armed = Armed {
            id,
            sequence: sequence.iter().map(|bytes| bytes.to_vec()).collect(),
            at,
        };
        *self.trigger.armed.lock().expect("trigger lock") = Some(armed);
    }

    /// Whether a cut is armed and has not fired yet.
    pub fn cut_armed(&self) -> bool {
        self.trigger.armed.lock().expect("trigger lock").is_some()
    }

    /// How many cuts of [`Proxy::cut_once`] fired so far.
    pub fn cuts_fired(&self) -> u64 {
        self.trigger.fired.load(Ordering::SeqCst)
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

/// One connection's progress through the armed sequence.
struct Watch {
    trigger: Arc<Trigger>,
    /// The arming followed, and how many of its byte strings were seen.
    following: Option<(u64, usize)>,
    /// What becomes of the server's bytes from now on (see [`Replies`]).
    replies: Arc<AtomicU8>,
}

/// What the server-to-client pump does with what it reads.
struct Replies;

impl Replies {
    const FORWARD: u8 = 0;
    const CUT: u8 = 1;
    const HOLD: u8 = 2;
}

impl Watch {
    /// Reads a chunk the client sent; the cut to make now, if it completes
    /// the armed sequence (the cut is then disarmed).
    fn client_sent(&mut self, chunk: &[u8]) -> Option<CutAt> {
        let mut armed = self.trigger.armed.lock().expect("trigger lock");
        let current = armed.as_ref()?;
        let mut seen = match self.following {
            Some((id, seen)) if id == current.id => seen,
            _ => 0,
        };
        let mut rest = chunk;
        while let Some(wanted) = current.sequence.get(seen) {
            let Some(at) = find(rest, wanted) else {
                break;
            };
            rest = &rest[at + wanted.len()..];
            seen += 1;
        }
        self.following = Some((current.id, seen));
        if seen < current.sequence.len() {
            return None;
        }
        let at = current.at;
        *armed = None;
        self.trigger.fired.fetch_add(1, Ordering::SeqCst);
        match at {
            CutAt::Request => {}
            CutAt::Reply => self.replies.store(Replies::CUT, Ordering::SeqCst),
            CutAt::HoldReply => self.replies.store(Replies::HOLD, Ordering::SeqCst),
        }
        Some(at)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stranded: Stranded,
    trigger: Arc<Trigger>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let replies = Arc::new(AtomicU8::new(Replies::FORWARD));
    let requests = Side::Client(Watch {
        trigger,
        following: None,
        replies: replies.clone(),
    });
    let replies = Side::Server(replies);
    // Whichever direction ends first closes both.
    tokio::select! {
        () = pump(client_read, server_write, mode.clone(), stranded.clone(), requests) => {}
        () = pump(server_read, client_write, mode, stranded, replies) => {}
    }
}

/// Which way a pump copies, with what it needs for [`Proxy::cut_once`].
enum Side {
    /// Client to server: watches for the armed sequence.
    Client(Watch),
    /// Server to client: stops or goes dark when told to.
    Server(Arc<AtomicU8>),
}

/// What a pump does with a chunk it read.
enum Fate {
    Forward,
    /// Swallowed: the connection stays open.
    Hold,
    /// The connection ends.
    Cut,
}

impl Side {
    fn fate(&mut self, chunk: &[u8]) -> Fate {
        match self {
            Side::Client(watch) => match watch.client_sent(chunk) {
                Some(CutAt::Request) => Fate::Cut,
                _ => Fate::Forward,
            },
            Side::Server(replies) => match replies.load(Ordering::SeqCst) {
                Replies::CUT => Fate::Cut,
                Replies::HOLD => Fate::Hold,
                _ => Fate::Forward,
            },
        }
    }
}

/// Copies one direction chunk by chunk, obeying the mode before each.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    stranded: Stranded,
    mut side: Side,
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
        match side.fate(&buffer[..count]) {
            Fate::Forward => {}
            Fate::Hold => continue,
            Fate::Cut => return,
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
