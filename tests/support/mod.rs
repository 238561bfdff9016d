//! Integration-test harness: a real, single-member etcd process on 127.0.0.1.
//!
//! Binaries come from `ETCD_BIN` / `ETCDCTL_BIN` (default `etcd` / `etcdctl`
//! on `PATH`). Every server gets its own free client and peer ports on
//! 127.0.0.1, its own temporary data directory and a log file inside it. All
//! waits are bounded; `Drop` kills the process and removes the directory (also
//! while a test panics, in which case the tail of the etcd log is printed).
//! `FaultProxy` sits between a client and etcd to cut the link while etcd
//! keeps running.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `start`/`restart` wait for the member to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports are picked in this range, which is below Linux's default ephemeral
/// range (32768-60999). A port handed out by `bind(0)` could otherwise be
/// taken, while a server is killed, by another test's etcd or by an outgoing
/// connection of a reconnecting client (TCP self-connect to the dead port).
/// It also stays clear of the 2379x/2380x ports people use for a local etcd.
const PORT_LOW: u16 = 24_000;
const PORT_HIGH: u16 = 32_000;

static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string())
}

/// Whether nothing listens on 127.0.0.1:`port` and it can be bound.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free TCP port on 127.0.0.1, outside the ephemeral range when possible,
/// never the same twice in this process.
pub fn free_port() -> u16 {
    let span = u32::from(PORT_HIGH - PORT_LOW);
    if PORT_CURSOR.load(Ordering::Relaxed) == 0 {
        // Spread concurrently running test binaries over the range.
        let seed = (std::process::id().wrapping_mul(7919)) % span + 1;
        let _ = PORT_CURSOR.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = PORT_CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = PORT_LOW + (n % span) as u16;
        if port_is_free(port) {
            return port;
        }
    }
    // Fallback: let the OS choose.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A unique key prefix ending with `/`, for one test.
pub fn unique_prefix(name: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("/etcd-sd-it/{}-{}-{}/", name, std::process::id(), n)
}

/// Polls `f` every ~50 ms until it returns true or `timeout` passes.
/// Returns whether `f` returned true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    // Bounded in count as well as in time.
    let max_iters = (timeout.as_millis() / 50 + 2) as usize;
    for _ in 0..max_iters {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Number of OS threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Names of this process's OS threads, for diagnostics.
pub fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            names.push(comm.trim().to_string());
        }
    }
    names.sort();
    names
}

/// Removes inherited etcd / proxy settings so that they cannot redirect the
/// child processes anywhere but 127.0.0.1.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("ETCD_")
            || upper.starts_with("ETCDCTL_")
            || upper == "HTTP_PROXY"
            || upper == "HTTPS_PROXY"
            || upper == "ALL_PROXY"
            || upper == "GRPC_PROXY"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost");
    cmd.env("no_proxy", "127.0.0.1,localhost");
}

/// The last `max` bytes of a file, lossily decoded.
fn tail(path: &Path, max: u64) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A running single-member etcd. Dropping it kills etcd and removes its data.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    paused: bool,
}

impl EtcdServer {
    /// Starts etcd on fresh ports and waits (bounded) until it answers.
    pub fn start() -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("etcd-sd-it-")
            .tempdir()
            .expect("create temp dir");
        let mut server = EtcdServer {
            dir,
            name: format!("it{}", UNIQUE.fetch_add(1, Ordering::Relaxed)),
            client_port: 0,
            peer_port: 0,
            child: None,
            paused: false,
        };
        // A port that looked free may be taken by the time etcd binds it; then
        // etcd exits at once and we try again with new ports.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            server.client_port = free_port();
            server.peer_port = free_port();
            let _ = std::fs::remove_dir_all(server.data_dir());
            server.spawn();
            match server.wait_ready(START_TIMEOUT) {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    server.kill();
                    let exited_early = last_err.contains("exited");
                    if !exited_early {
                        break;
                    }
                }
            }
        }
        panic!(
            "etcd did not start: {last_err}\n--- etcd log tail ---\n{}",
            server.log_tail()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of the file receiving etcd's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last few KiB of the etcd log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 8 * 1024)
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(etcd_bin());
        clean_env(&mut cmd);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer_url()))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); set ETCD_BIN", etcd_bin()));
        self.child = Some(child);
        self.paused = false;
    }

    /// Waits until the member accepts TCP and serves a read.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr: SocketAddr = self.endpoint().parse().unwrap();
        let mut last = String::from("no attempt");
        // At most 400 attempts of >= 50 ms each, and never past the deadline.
        for _ in 0..400 {
            if Instant::now() >= deadline {
                break;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited early with {status}"));
                }
            } else {
                return Err("etcd exited (no child)".into());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.try_etcdctl_timeout(&["get", "--", "/etcd-sd-it-health"], "2s") {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
            } else {
                last = "connection refused".into();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not ready after {timeout:?}: {last}"))
    }

    /// `127.0.0.1:PORT` of the client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` of the client URL.
    pub fn endpoint_url(&self) -> String {
        self.client_url()
    }

    /// Process id of the running etcd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether etcd is currently running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and wait for the process. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // kill() sends SIGKILL, which also ends a stopped process.
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts etcd again with the same ports and data dir (killing it first
    /// if it runs) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let mut last_err = String::new();
        for _ in 0..3 {
            self.spawn();
            match self.wait_ready(START_TIMEOUT) {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    self.kill();
                    // The port may still be held by a lingering socket; wait a bit.
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        panic!(
            "etcd did not restart: {last_err}\n--- etcd log tail ---\n{}",
            self.log_tail()
        );
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("etcd not running");
        let out = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -{sig} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// Resumes a paused etcd (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn etcdctl_command(&self, args: &[&str], command_timeout: &str) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        clean_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg(format!("--command-timeout={command_timeout}"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Like `try_etcdctl` with a given `--command-timeout` (e.g. "1s").
    pub fn try_etcdctl_timeout(
        &self,
        args: &[&str],
        command_timeout: &str,
    ) -> Result<String, String> {
        let out: Output = self
            .etcdctl_command(args, command_timeout)
            .output()
            .map_err(|e| format!("cannot run {} ({e}); set ETCDCTL_BIN", etcdctl_bin()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "etcdctl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs etcdctl against this server; `Err` holds the output on failure.
    pub fn try_etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.try_etcdctl_timeout(args, "10s")
    }

    /// Runs etcdctl against this server and returns stdout; panics with the
    /// output on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        match self.try_etcdctl(args) {
            Ok(s) => s,
            Err(e) => panic!("{e}\netcd process: {}", self.process_state()),
        }
    }

    /// "running", "stopped", "dead" etc. from /proc, for failure messages.
    pub fn process_state(&self) -> String {
        let Some(pid) = self.pid() else {
            return "not started / killed by the test".into();
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => format!("pid {pid} gone"),
            Ok(stat) => {
                // The state follows the parenthesised command name.
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .unwrap_or("?");
                let what = match state {
                    "Z" => "exited (zombie): killed or crashed outside the test",
                    "T" | "t" => "stopped",
                    _ => "running",
                };
                format!("pid {pid} state {state}: {what}")
            }
        }
    }

    /// Puts `key` = `value` (no lease).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key, value]);
    }

    /// Deletes `key`; returns the number of keys deleted.
    pub fn del(&self, key: &str) -> usize {
        let out = self.etcdctl(&["del", "--", key]);
        out.trim().parse().unwrap_or(0)
    }

    /// Deletes every key under `prefix`.
    pub fn del_prefix(&self, prefix: &str) -> usize {
        let out = self.etcdctl(&["del", "--prefix", "--", prefix]);
        out.trim().parse().unwrap_or(0)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "--print-value-only", "--", key]);
        // Absent: no output at all; present: the value and a newline.
        if out.is_empty() {
            return None;
        }
        Some(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    fn count_prefix_exact(&self, key: &str) -> u64 {
        let out = self.etcdctl(&["get", "-w", "fields", "--", key]);
        field_u64(&out, "Count").unwrap_or(0)
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> bool {
        self.count_prefix_exact(key) > 0
    }

    /// All (key, value) pairs under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", "--", prefix]);
        let mut lines = out.split('\n');
        let mut pairs = Vec::new();
        // etcdctl prints "key\nvalue\n" per entry; values are single-line.
        for _ in 0..1_000_000 {
            let Some(k) = lines.next() else { break };
            if k.is_empty() {
                break;
            }
            let v = lines.next().unwrap_or_default();
            pairs.push((k.to_string(), v.to_string()));
        }
        pairs
    }

    /// Values under `prefix`, sorted and de-duplicated (what an Instancer
    /// should report).
    pub fn instances_under(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .get_prefix(prefix)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "-w", "fields", "--", "/etcd-sd-it-revision"]);
        field_u64(&out, "Revision").expect("revision in etcdctl output") as i64
    }

    /// Compacts (physically) at the current revision; returns that revision.
    pub fn compact_latest(&self) -> i64 {
        let rev = self.revision();
        let r = rev.to_string();
        match self.try_etcdctl(&["compaction", "--physical", &r]) {
            Ok(_) => {}
            // Someone compacted at this revision already.
            Err(e) if e.contains("compacted") => {}
            Err(e) => panic!("{e}"),
        }
        rev
    }

    /// The lease attached to `key` (0 if none), as etcd's decimal id.
    pub fn lease_of(&self, key: &str) -> i64 {
        let out = self.etcdctl(&["get", "-w", "fields", "--", key]);
        field_u64(&out, "Lease").unwrap_or(0) as i64
    }

    /// Revokes the lease that `key` is attached to; returns the lease id.
    /// Panics if the key has no lease.
    pub fn revoke_lease_of(&self, key: &str) -> i64 {
        let id = self.lease_of(key);
        assert!(id != 0, "key {key} has no lease");
        self.revoke_lease(id);
        id
    }

    /// Revokes lease `id`.
    pub fn revoke_lease(&self, id: i64) {
        let hex = format!("{:x}", id);
        self.etcdctl(&["lease", "revoke", &hex]);
    }

    /// (granted TTL, remaining TTL) of lease `id` in seconds; None when the
    /// lease does not exist (any more).
    pub fn lease_ttl(&self, id: i64) -> Option<(i64, i64)> {
        let hex = format!("{:x}", id);
        let out = self.etcdctl(&["lease", "timetolive", &hex, "-w", "json"]);
        let granted = json_i64(&out, "granted-ttl")?;
        let remaining = json_i64(&out, "ttl")?;
        if remaining < 0 || granted == 0 {
            return None;
        }
        Some((granted, remaining))
    }

    /// Ids of all leases in the store.
    pub fn leases(&self) -> Vec<i64> {
        let out = self.etcdctl(&["lease", "list"]);
        out.lines()
            .skip(1)
            .filter_map(|l| i64::from_str_radix(l.trim(), 16).ok())
            .collect()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- etcd log tail ({}) ---\n{}\n--- end of etcd log ---",
                self.endpoint(),
                self.log_tail()
            );
        }
        self.kill();
        // The TempDir field removes the directory afterwards.
    }
}

/// Parses `"Name" : 123` from `etcdctl -w fields` output.
fn field_u64(out: &str, name: &str) -> Option<u64> {
    let needle = format!("\"{name}\" :");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Parses `"name":123` from flat JSON output.
fn json_i64(out: &str, name: &str) -> Option<i64> {
    let needle = format!("\"{name}\":");
    let start = out.find(&needle)? + needle.len();
    let rest = &out[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A TCP proxy on 127.0.0.1 in front of an etcd, to cut the link between a
/// client and etcd while etcd itself (and etcdctl, which talks to etcd
/// directly) goes on working.
pub struct FaultProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Clones of every live socket (both sides), to shut them down on `cut`.
    conns: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
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
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
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
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
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
                let Ok(upstream) = TcpStream::connect_timeout(&sh.target, Duration::from_secs(2))
                else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                    client.try_clone(),
                    upstream.try_clone(),
                    client.try_clone(),
                    upstream.try_clone(),
                ) else {
                    continue;
                };
                {
                    let mut conns = sh.conns.lock().unwrap();
                    conns.push(c3);
                    conns.push(u3);
                }
                let mut workers = sh.workers.lock().unwrap();
                workers.push(pump(client, upstream));
                workers.push(pump(u2, c2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies `from` to `to` until either side ends, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("it-proxy-pump".into())
        .spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
        .unwrap()
}
