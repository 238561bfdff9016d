//! A real, single-member etcd process on 127.0.0.1 ([`EtcdServer`]) and its
//! etcdctl wrappers; [`RawEtcd`] talks to etcd directly with `etcd_client`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::probe::{field_u64, http_get, json_i64, json_u64};
use super::{free_port, wait_until, UNIQUE};

/// How long `start`/`restart` wait for the member to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string())
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
    pub(super) name: String,
    pub(super) client_port: u16,
    pub(super) peer_port: u16,
    child: Option<Child>,
    paused: bool,
    config: EtcdConfig,
    /// `user:password` that etcdctl logs in with (once auth is enabled).
    ctl_user: Option<String>,
    /// `--initial-cluster` when this server is a member of an [`EtcdCluster`].
    pub(super) initial_cluster: Option<String>,
    /// `--initial-cluster-token` of the cluster.
    pub(super) cluster_token: Option<String>,
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
    pub(super) fn unstarted(config: EtcdConfig) -> EtcdServer {
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

    pub(super) fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub(super) fn spawn(&mut self) {
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
    pub(super) fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
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
