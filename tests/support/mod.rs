//! Integration-test harness: a real, single-member etcd process on 127.0.0.1.
//!
//! Binaries come from `ETCD_BIN` / `ETCDCTL_BIN` (default `etcd` / `etcdctl`
//! on `PATH`). Every server gets its own free client and peer ports on
//! 127.0.0.1, its own temporary data directory and a log file inside it. All
//! waits are bounded; `Drop` kills the process and removes the directory (also
//! while a test panics, in which case the tail of the etcd log is printed).
//! `FaultProxy` sits between a client and etcd to cut the link while etcd
//! keeps running. `SilentPort` accepts TCP and never answers; `RawEtcd` talks
//! to etcd directly with `etcd_client` (byte keys, many fast writes).
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
    config: EtcdConfig,
    /// `user:password` that etcdctl logs in with (once auth is enabled).
    ctl_user: Option<String>,
    /// `--initial-cluster` when this server is a member of an [`EtcdCluster`].
    initial_cluster: Option<String>,
    /// `--initial-cluster-token` of the cluster.
    cluster_token: Option<String>,
}

/// How to start an [`EtcdServer`] beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Extra command-line arguments, e.g. `--auth-token-ttl=2`.
    pub extra_args: Vec<String>,
    /// Serve clients over TLS (peers stay on plain http).
    pub tls: Option<ServerTls>,
}

/// TLS material for an etcd server's client URL.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// Server certificate (PEM), with 127.0.0.1 among its SANs.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA that signed `cert`: etcdctl verifies the server with it, and etcd
    /// trusts client certificates it signed (with `client_cert_auth`).
    pub ca: PathBuf,
    /// `--client-cert-auth`: require a client certificate signed by `ca`.
    pub client_cert_auth: bool,
    /// Client certificate and key etcdctl presents (needed with
    /// `client_cert_auth`).
    pub ctl_cert: Option<PathBuf>,
    pub ctl_key: Option<PathBuf>,
}

impl EtcdServer {
    /// Starts etcd on fresh ports and waits (bounded) until it answers.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(EtcdConfig::default())
    }

    /// A server that is not started yet, with its own temporary directory.
    fn unstarted(config: EtcdConfig) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("etcd-sd-it-")
            .tempdir()
            .expect("create temp dir");
        EtcdServer {
            dir,
            name: format!("it{}", UNIQUE.fetch_add(1, Ordering::Relaxed)),
            client_port: 0,
            peer_port: 0,
            child: None,
            paused: false,
            config,
            ctl_user: None,
            initial_cluster: None,
            cluster_token: None,
        }
    }

    /// Like [`start`](EtcdServer::start), with extra arguments and/or TLS.
    pub fn start_with(config: EtcdConfig) -> EtcdServer {
        let mut server = EtcdServer::unstarted(config);
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
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
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
            .arg(
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url())),
            )
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(self.cluster_token.as_deref().unwrap_or(&self.name));
        if let Some(tls) = &self.config.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            // etcd requires client certificates as soon as it has a trusted
            // CA file, so the file goes with --client-cert-auth only.
            if tls.client_cert_auth {
                cmd.arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
        }
        cmd.args(&self.config.extra_args)
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

    /// `http://127.0.0.1:PORT` of the client URL (`https://` with TLS).
    pub fn endpoint_url(&self) -> String {
        self.client_url()
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Makes etcdctl log in as `user:password` (after `auth enable`), or not.
    pub fn set_etcdctl_user(&mut self, user: Option<&str>) {
        self.ctl_user = user.map(str::to_string);
    }

    /// Directory of this server's files (data dir and log), for test files
    /// such as certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// Starts etcd again on the same ports with an empty data dir: every key,
    /// lease and revision is gone, as after losing the disk or rebuilding
    /// the cluster from scratch. Waits until it answers.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.restart();
    }

    /// Starts a different single-member cluster on the same ports: the data
    /// dir is wiped and the member gets a new `--name` and
    /// `--initial-cluster-token`, so etcd's cluster and member ids change
    /// (unlike [`restart_empty`](EtcdServer::restart_empty), which keeps
    /// them). Waits until it answers. Only for a server made by `start`.
    pub fn restart_as_other_cluster(&mut self) {
        assert!(
            self.initial_cluster.is_none(),
            "restart_as_other_cluster is for a single-member server"
        );
        self.kill();
        let _ = std::fs::remove_dir_all(self.data_dir());
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        self.name = format!("it{n}-other");
        self.cluster_token = Some(format!("it{n}-other-cluster"));
        self.restart();
    }

    /// Whether etcd is stopped by [`pause`](EtcdServer::pause).
    pub fn is_paused(&self) -> bool {
        self.paused
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
        // A signal is delivered asynchronously: wait until the kernel reports
        // the process stopped, so no request slips in after `pause` returns.
        let pid = self.pid().expect("etcd not running");
        let stat = format!("/proc/{pid}/stat");
        let stopped = wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        });
        assert!(
            stopped,
            "etcd (pid {pid}) did not stop within 5 s of SIGSTOP"
        );
    }

    /// Resumes a paused etcd (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn etcdctl_command(&self, args: &[&str], command_timeout: &str) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        clean_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3");
        match &self.config.tls {
            None => {
                cmd.arg(format!("--endpoints={}", self.endpoint()));
            }
            Some(tls) => {
                cmd.arg(format!("--endpoints={}", self.client_url()))
                    .arg(format!("--cacert={}", tls.ca.display()));
                if let (Some(c), Some(k)) = (&tls.ctl_cert, &tls.ctl_key) {
                    cmd.arg(format!("--cert={}", c.display()))
                        .arg(format!("--key={}", k.display()));
                }
            }
        }
        if let Some(user) = &self.ctl_user {
            cmd.arg(format!("--user={user}"));
        }
        cmd.arg("--dial-timeout=2s")
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

    /// Sums one metric of etcd's Prometheus `/metrics` over all label sets
    /// that contain every string in `labels` (0 when etcd does not answer).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = http_get(&self.endpoint(), "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|lab| l.contains(lab))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// How many keys are under `prefix` (0 when etcd does not answer).
    pub fn count_prefix(&self, prefix: &str) -> usize {
        // "Count" is that of the whole range, whatever the limit (etcdctl 3.4
        // has no --count-only).
        let args = [
            "get", "-w", "fields", "--prefix", "--limit", "1", "--", prefix,
        ];
        self.try_etcdctl(&args)
            .ok()
            .and_then(|out| field_u64(&out, "Count"))
            .unwrap_or(0) as usize
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

impl EtcdServer {
    /// (key, lease) of every key under `prefix`, in key order, from one
    /// etcdctl call (keys must be plain printable strings).
    pub fn get_prefix_leases(&self, prefix: &str) -> Vec<(String, i64)> {
        let out = self.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "-w",
            "fields",
            "--",
            prefix,
        ]);
        let mut pairs = Vec::new();
        let mut key: Option<String> = None;
        for line in out.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("\"Key\" : ") {
                key = Some(rest.trim_matches('"').to_string());
            } else if let Some(rest) = line.strip_prefix("\"Lease\" : ") {
                if let Some(k) = key.take() {
                    pairs.push((k, rest.trim().parse().unwrap_or(0)));
                }
            }
        }
        pairs
    }

    /// `(member_id, leader_id)` as this member reports them, or `None` when it
    /// does not answer.
    pub fn member_and_leader(&self) -> Option<(u64, u64)> {
        let out = self
            .try_etcdctl_timeout(&["endpoint", "status", "-w", "json"], "2s")
            .ok()?;
        let member = json_u64(&out, "member_id")?;
        let leader = json_u64(&out, "leader")?;
        Some((member, leader))
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

/// Parses `"name":123` (an unsigned 64-bit number) from JSON output.
fn json_u64(out: &str, name: &str) -> Option<u64> {
    let needle = format!("\"{name}\":");
    let start = out.find(&needle)? + needle.len();
    let rest = &out[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A cluster of etcd members on 127.0.0.1, each an [`EtcdServer`] with its
/// own ports and data directory, listed in each other's `--initial-cluster`.
/// Dropping it kills every member.
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members on fresh ports and waits (bounded) until every one
    /// serves a read (which needs an elected leader).
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1);
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let token = format!("itc{}", UNIQUE.fetch_add(1, Ordering::Relaxed));
            let mut members: Vec<EtcdServer> = (0..n)
                .map(|i| {
                    let mut m = EtcdServer::unstarted(EtcdConfig::default());
                    m.name = format!("{token}-m{i}");
                    m.client_port = free_port();
                    m.peer_port = free_port();
                    m.cluster_token = Some(token.clone());
                    m
                })
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.initial_cluster = Some(initial.clone());
                m.spawn();
            }
            let mut ok = true;
            for m in &mut members {
                if let Err(e) = m.wait_ready(START_TIMEOUT) {
                    last_err = format!("{}: {e}\n--- log tail ---\n{}", m.name, m.log_tail());
                    ok = false;
                    break;
                }
            }
            if ok {
                return EtcdCluster { members };
            }
            for m in &mut members {
                m.kill();
            }
        }
        panic!("etcd cluster did not start: {last_err}");
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `127.0.0.1:PORT` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdServer {
        &self.members[i]
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// SIGKILL member `i` (its data stays).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again with its data and waits until it serves a read.
    pub fn restart(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open, nothing answers.
    /// The cluster helpers below leave a paused member alone.
    pub fn pause(&mut self, i: usize) {
        self.members[i].pause();
    }

    /// Resumes member `i` after [`pause`](EtcdCluster::pause) (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.members[i].resume();
    }

    /// Whether member `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.members[i].is_paused()
    }

    /// Whether member `i` runs and is not paused, i.e. can answer.
    pub fn is_answering(&self, i: usize) -> bool {
        self.members[i].is_running() && !self.members[i].is_paused()
    }

    /// The first running (and not paused) member, for etcdctl work
    /// (linearizable through any member while the cluster has a quorum).
    pub fn any_live(&self) -> &EtcdServer {
        self.members
            .iter()
            .find(|m| m.is_running() && !m.is_paused())
            .expect("no member running")
    }

    /// Runs etcdctl against the running, not paused members, retrying (bounded by
    /// `timeout`) while they fail, e.g. during a leader election.
    pub fn etcdctl_retry(&self, args: &[&str], timeout: Duration) -> String {
        let mut last = String::new();
        let mut out = None;
        wait_until(timeout, || {
            for m in self
                .members
                .iter()
                .filter(|m| m.is_running() && !m.is_paused())
            {
                match m.try_etcdctl_timeout(args, "3s") {
                    Ok(o) => {
                        out = Some(o);
                        return true;
                    }
                    Err(e) => last = e,
                }
            }
            false
        });
        out.unwrap_or_else(|| {
            panic!("etcdctl {args:?} failed on every member for {timeout:?}: {last}")
        })
    }

    /// Puts `key` = `value` through a running member, retrying (bounded)
    /// while the cluster has no leader.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_retry(&["put", "--", key, value], Duration::from_secs(20));
    }

    /// Makes member `to` the leader (`etcdctl move-leader` through the
    /// current leader) and waits, bounded by `timeout`, until the answering
    /// members agree; returns whether `to` leads.
    pub fn move_leader_to(&self, to: usize, timeout: Duration) -> bool {
        let Some(leader) = self.leader_index(timeout) else {
            return false;
        };
        if leader == to {
            return true;
        }
        let Some((id, _)) = self.members[to].member_and_leader() else {
            return false;
        };
        let hex = format!("{id:x}");
        if let Err(e) = self.members[leader].try_etcdctl_timeout(&["move-leader", &hex], "5s") {
            eprintln!("move-leader to m{to} failed: {e}");
        }
        wait_until(timeout, || {
            self.leader_index(Duration::from_secs(2)) == Some(to)
        })
    }

    /// Index of the member whose client port is `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.members.iter().position(|m| m.client_port == port)
    }

    /// Index of the current leader among the running (not paused) members, waiting
    /// (bounded by `timeout`) until the running members agree on one.
    pub fn leader_index(&self, timeout: Duration) -> Option<usize> {
        let mut found = None;
        wait_until(timeout, || {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() || m.is_paused() {
                    continue;
                }
                if let Some((id, leader)) = m.member_and_leader() {
                    ids.push((i, id));
                    leaders.push(leader);
                }
            }
            let Some(&leader) = leaders.first() else {
                return false;
            };
            if leader == 0 || leaders.iter().any(|l| *l != leader) {
                return false;
            }
            found = ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i);
            found.is_some()
        });
        found
    }
}

/// Remote ports of this process's ESTABLISHED TCP connections to 127.0.0.1
/// (from /proc/self/fd and /proc/self/net/tcp), e.g. to see which etcd
/// members a client is connected to.
pub fn established_remote_ports() -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(n.to_string());
                }
            }
        }
    }
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let mut ports = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        // f[2] = remote "0100007F:PORT", f[3] = state (01 = ESTABLISHED), f[9] = inode.
        if f[3] != "01" || !inodes.contains(f[9]) {
            continue;
        }
        if let Some((ip, port)) = f[2].split_once(':') {
            if ip == "0100007F" {
                if let Ok(p) = u16::from_str_radix(port, 16) {
                    ports.push(p);
                }
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// Resident set size of this process in KiB (VmRSS of /proc/self/status).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

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

/// A minimal HTTP/1.0 GET on loopback (etcd's `/metrics`).
fn http_get(hostport: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
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

/// A direct `etcd_client` connection to one etcd on 127.0.0.1, on a private
/// current-thread tokio runtime: writes keys and values as raw bytes (which
/// etcdctl cannot), and many writes quickly (one etcdctl process each is
/// slow). Every call is bounded; a failure panics.
pub struct RawEtcd {
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
    endpoint: String,
}

/// Bound of each [`RawEtcd`] call (all attempts together).
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

impl RawEtcd {
    /// Connects to `endpoint` (`127.0.0.1:PORT`, plain http).
    pub fn connect(endpoint: &str) -> RawEtcd {
        assert!(
            endpoint.starts_with("127.0.0.1:"),
            "RawEtcd only talks to 127.0.0.1"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let url = format!("http://{endpoint}");
        let client = rt
            .block_on(async {
                tokio::time::timeout(RAW_TIMEOUT, etcd_client::Client::connect([url], None)).await
            })
            .unwrap_or_else(|_| panic!("connect to {endpoint}: timed out"))
            .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        RawEtcd {
            rt,
            client,
            endpoint: endpoint.to_string(),
        }
    }

    /// Runs one request, retrying (at most 20 times, within [`RAW_TIMEOUT`])
    /// while it fails, e.g. right after etcd started.
    fn run<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + RAW_TIMEOUT;
        let mut last = String::new();
        for _ in 0..20 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let fut = f(self.client.clone());
            match self
                .rt
                .block_on(async { tokio::time::timeout(left, fut).await })
            {
                Ok(Ok(v)) => return v,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} on {}: {last}", self.endpoint);
    }

    /// Puts `key` = `value` (bytes, no lease); returns the revision of the write.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> i64 {
        let (k, v) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        let resp = self.run("put", |mut c| {
            let (k, v) = (k.clone(), v.clone());
            async move { c.put(k, v, None).await }
        });
        resp.header().map(|h| h.revision()).unwrap_or(0)
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> i64 {
        let k = key.as_ref().to_vec();
        let resp = self.run("delete", |mut c| {
            let k = k.clone();
            async move { c.delete(k, None).await }
        });
        resp.deleted()
    }

    /// (key, value) of every key under `prefix`, as bytes, in key order.
    pub fn get_prefix(&self, prefix: impl AsRef<[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let p = prefix.as_ref().to_vec();
        let resp = self.run("get", |mut c| {
            let p = p.clone();
            async move {
                c.get(p, Some(etcd_client::GetOptions::new().with_prefix()))
                    .await
            }
        });
        resp.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let resp = self.run("get", |mut c| async move {
            c.get("/etcd-sd-it-revision", None).await
        });
        resp.header().map(|h| h.revision()).unwrap_or(0)
    }

    /// (cluster id, member id) from the header of a status call.
    pub fn ids(&self) -> (u64, u64) {
        let resp = self.run("status", |mut c| async move { c.status().await });
        resp.header()
            .map(|h| (h.cluster_id(), h.member_id()))
            .unwrap_or((0, 0))
    }
}
