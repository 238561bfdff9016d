//! Network faults on 127.0.0.1: [`FaultProxy`] cuts or blackholes the link
//! between a client and etcd, [`SilentPort`] accepts and never answers,
//! [`closed_endpoint`] refuses at once.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::free_port;

/// A TCP proxy on 127.0.0.1 in front of an etcd, to cut the link between a
/// client and etcd while etcd itself (and etcdctl, which talks to etcd
/// directly) goes on working.
///
/// Two faults: [`cut`](FaultProxy::cut) breaks every connection at once (the
/// peers see a reset or end of stream), and [`blackhole`](FaultProxy::blackhole)
/// keeps every socket open but stops moving bytes, like a network that drops
/// packets: nothing tells either side that the link is dead. New connections
/// during a blackhole are accepted and parked. [`restore`](FaultProxy::restore)
/// ends either: after a blackhole the held bytes flow again (on connections
/// the peers have not given up on) and parked connections are forwarded.
pub struct FaultProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    target: SocketAddr,
    cut: AtomicBool,
    blackhole: AtomicBool,
    stop: AtomicBool,
    /// Clones of every live socket (both sides), to shut them down on `cut`.
    conns: Mutex<Vec<TcpStream>>,
    /// Client sockets accepted during a blackhole, not yet forwarded.
    parked: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Connections accepted and forwarded so far.
    accepted: AtomicUsize,
}

/// The acceptor and pumps give up after this long whatever happens.
const PROXY_MAX_LIFETIME: Duration = Duration::from_secs(600);

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`
    /// (`127.0.0.1:PORT`).
    pub fn start(target: &str) -> FaultProxy {
        let target: SocketAddr = target.parse().expect("proxy target ip:port");
        assert!(
            target.ip().is_loopback(),
            "proxy only forwards to 127.0.0.1"
        );
        let mut listener = None;
        for _ in 0..20 {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", free_port())) {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.expect("bind proxy port");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(ProxyShared {
            target,
            cut: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            parked: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("it-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .unwrap();
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Breaks every proxied connection and drops new ones at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
        let parked = std::mem::take(&mut *self.shared.parked.lock().unwrap());
        for c in parked {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// A half-open link: every socket stays open, but no byte moves in either
    /// direction, and new connections are accepted but not forwarded.
    pub fn blackhole(&self) {
        self.shared.blackhole.store(true, Ordering::SeqCst);
    }

    /// Whether the proxy currently blackholes.
    pub fn is_blackholed(&self) -> bool {
        self.shared.blackhole.load(Ordering::SeqCst)
    }

    /// Forwards again, after `cut` or `blackhole`.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.blackhole.store(false, Ordering::SeqCst);
        let parked = std::mem::take(&mut *self.shared.parked.lock().unwrap());
        for client in parked {
            forward(client, &self.shared);
        }
    }

    /// Connections forwarded so far (a client reconnecting shows up here).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let workers = std::mem::take(&mut *self.shared.workers.lock().unwrap());
        for w in workers {
            let _ = w.join();
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<ProxyShared>) {
    let started = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) && started.elapsed() < PROXY_MAX_LIFETIME {
        match listener.accept() {
            Ok((client, _)) => {
                if sh.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                if sh.blackhole.load(Ordering::SeqCst) {
                    sh.parked.lock().unwrap().push(client);
                    continue;
                }
                forward(client, &sh);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Connects `client` to the target and starts the two pumps.
fn forward(client: TcpStream, sh: &Arc<ProxyShared>) {
    let Ok(upstream) = TcpStream::connect_timeout(&sh.target, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    sh.accepted.fetch_add(1, Ordering::SeqCst);
    {
        let mut conns = sh.conns.lock().unwrap();
        conns.push(c3);
        conns.push(u3);
    }
    let mut workers = sh.workers.lock().unwrap();
    workers.push(pump(client, upstream, sh.clone()));
    workers.push(pump(u2, c2, sh.clone()));
}

/// Copies `from` to `to` until either side ends, then shuts both down. While
/// the proxy blackholes it neither reads nor writes (the bytes wait in the
/// kernel's buffers), and goes on after `restore`.
fn pump(mut from: TcpStream, mut to: TcpStream, sh: Arc<ProxyShared>) -> JoinHandle<()> {
    use std::io::Write;
    std::thread::Builder::new()
        .name("it-proxy-pump".into())
        .spawn(move || {
            let started = Instant::now();
            let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buf = vec![0u8; 64 * 1024];
            while !sh.stop.load(Ordering::SeqCst) && started.elapsed() < PROXY_MAX_LIFETIME {
                if sh.blackhole.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
        .unwrap()
}

/// `127.0.0.1:PORT` of a port nothing listens on: connecting is refused at
/// once (a closed port, like a host whose etcd is down). The port is below
/// the ephemeral range and never handed out twice by [`free_port`].
pub fn closed_endpoint() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A port on 127.0.0.1 that accepts TCP connections and never reads from or
/// writes to them, like a hung process whose kernel still completes the
/// handshake: a client connects, sends, and waits forever. The connections
/// are held until the `SilentPort` is dropped.
pub struct SilentPort {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

/// The most connections a [`SilentPort`] holds; later ones are accepted and
/// dropped at once (never reached in practice).
const SILENT_MAX_CONNS: usize = 10_000;

impl SilentPort {
    /// Listens on a free 127.0.0.1 port.
    pub fn start() -> SilentPort {
        let mut listener = None;
        for _ in 0..20 {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", free_port())) {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.expect("bind silent port");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        let acceptor = std::thread::Builder::new()
            .name("it-silent-accept".into())
            .spawn(move || {
                let started = Instant::now();
                let mut held: Vec<TcpStream> = Vec::new();
                while !st.load(Ordering::SeqCst) && started.elapsed() < PROXY_MAX_LIFETIME {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            acc.fetch_add(1, Ordering::SeqCst);
                            if held.len() < SILENT_MAX_CONNS {
                                held.push(conn);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                // Dropping `held` closes every connection.
            })
            .unwrap();
        SilentPort {
            port,
            stop,
            accepted,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}
