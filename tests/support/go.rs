//! The Go side of the naming tests: `tests/go/naming_peer/main.go`, built
//! once per source version with Debian's Go 1.19 and etcd 3.4's Go packages
//! (`golang-go`, `golang-etcd-server-dev`, installed by
//! `scripts/install-deps.sh`) in GOPATH mode, without network.
//!
//! A missing Go or missing packages make the tests that need them **fail**,
//! with a message saying what to install: `make test` installs them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where Debian's Go packages live (a GOPATH).
const GOCODE: &str = "/usr/share/gocode";
/// A package of golang-etcd-server-dev the program imports.
const ETCD_NAMING: &str = "/usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/endpoints";
/// How long building the program may take (a cold build is ~10 s).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one short command (add, delete, list) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/naming_peer")
}

/// Where built programs and Go's build cache go: the target directory's
/// `tmp` (shared by test runs, so the build is reused).
fn build_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp"));
    base.join("go")
}

/// FNV-1a of the program's source: the key of the cached build.
fn source_hash(source: &[u8]) -> u64 {
    source.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The path of the built `naming_peer`, building it on first use (once per
/// test binary; a build with the same source hash is reused across runs).
pub fn naming_peer() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> PathBuf {
    let src = source_dir().join("main.go");
    let source = std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let dir = build_dir();
    std::fs::create_dir_all(&dir).expect("create the Go build directory");
    let exe = dir.join(format!("naming_peer-{:016x}", source_hash(&source)));
    if exe.exists() {
        return exe;
    }
    let go = Command::new("go").arg("version").output();
    match go {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "Go is missing (no `go` on PATH): the naming tests run etcd's own Go naming \
             packages. Install them with scripts/install-deps.sh (`make deps`), or \
             `apt-get install -y golang-go golang-etcd-server-dev`"
        ),
    }
    assert!(
        Path::new(ETCD_NAMING).is_dir(),
        "etcd's Go naming packages are missing ({ETCD_NAMING}): install them with \
         scripts/install-deps.sh (`make deps`), or `apt-get install -y golang-etcd-server-dev`"
    );
    // Build under a temporary name and rename: test binaries running at the
    // same time may build it too.
    let tmp = dir.join(format!(
        "naming_peer-{:016x}.{}.tmp",
        source_hash(&source),
        std::process::id()
    ));
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(source_dir())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOCODE)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0");
    let out = run_bounded(&mut cmd, None, BUILD_TIMEOUT);
    assert!(
        out.status.success(),
        "building tests/go/naming_peer failed (GO111MODULE=off GOPATH={GOCODE}):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe).expect("rename the built naming_peer");
    exe
}

/// Runs `cmd` (stdin `input` or nothing), killing it after `timeout`.
fn run_bounded(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(text) = input {
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes());
    }
    drop(child.stdin.take());
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} did not end within {timeout:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The Go program talking to one etcd.
pub struct GoPeer {
    endpoint: String,
}

impl GoPeer {
    /// A peer for the etcd at `endpoint` (`127.0.0.1:port`).
    pub fn new(endpoint: &str) -> GoPeer {
        GoPeer {
            endpoint: endpoint.to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(naming_peer());
        cmd.arg(&self.endpoint).args(args);
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("NO_PROXY", "127.0.0.1,localhost");
        cmd
    }

    /// Runs a short command and returns its stdout; panics with its output
    /// when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = run_bounded(&mut self.command(args), None, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "naming_peer {args:?} failed ({:?}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Go's `endpoints.Manager.AddEndpoint(key, {addr, metadata})`.
    pub fn add(&self, target: &str, key: &str, addr: &str, metadata: Option<&str>) {
        let mut args = vec!["add", target, key, addr];
        args.extend(metadata);
        self.run(&args);
    }

    /// Go's `endpoints.Manager.DeleteEndpoint(key)`.
    pub fn delete(&self, target: &str, key: &str) {
        self.run(&["delete", target, key]);
    }

    /// Go's `endpoints.Manager.List()`: key → `{"Addr":..,"Metadata":..}`.
    pub fn list(&self, target: &str) -> serde_json::Value {
        let out = self.run(&["list", target]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("list output {out:?}: {e}"))
    }

    /// Go's `endpoints.Manager.NewWatchChannel()`, running for at most
    /// `secs` seconds; returns once the channel is made.
    pub fn watch(&self, target: &str, secs: u64) -> Lines {
        let mut lines = Lines::spawn(self.command(&["watch", target, &secs.to_string()]));
        let first = lines.next(Duration::from_secs(20));
        assert_eq!(first.as_deref(), Some("ready"), "naming_peer watch");
        lines
    }

    /// A gRPC health server on 127.0.0.1; runs until dropped.
    pub fn serve_health(&self) -> HealthServer {
        let mut lines = Lines::spawn(self.command(&["serve-health"]));
        let addr = lines
            .next(Duration::from_secs(20))
            .expect("naming_peer serve-health prints its address");
        HealthServer { lines, addr }
    }

    /// A gRPC client dialing `etcd:///TARGET` with round robin.
    pub fn dial(&self, target: &str) -> Dialer {
        Dialer {
            lines: Lines::spawn(self.command(&["dial", target])),
        }
    }
}

/// A running `naming_peer` whose stdout lines arrive on a channel; killed
/// when dropped.
pub struct Lines {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    stderr: Receiver<String>,
}

impl Lines {
    /// Starts `cmd` with its stdin, stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            child,
            stdin,
            rx,
            stderr,
        }
    }

    /// The next line within `timeout`; None on timeout or when the program
    /// ended.
    pub fn next(&mut self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Writes one line to the program's stdin.
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Closes the program's stdin (the end-of-input some commands wait for).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the program wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Waits (bounded) for the program to end; its exit status, or None.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Go gRPC health server.
pub struct HealthServer {
    lines: Lines,
    /// Its address, `127.0.0.1:port`.
    pub addr: String,
}

impl HealthServer {
    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.lines.wait_exit(Duration::ZERO).is_none()
    }
}

/// A Go gRPC client of `etcd:///TARGET`.
pub struct Dialer {
    lines: Lines,
}

/// What one round of health checks saw.
#[derive(Debug)]
pub struct Checks {
    /// The address of the server that answered each successful check.
    pub peers: Vec<String>,
    /// How many checks failed.
    pub errors: u64,
}

impl Dialer {
    /// Makes `n` health checks (each bounded by 500 ms) and reports who
    /// answered; Err with the program's stderr when it died.
    pub fn check(&mut self, n: u32) -> Result<Checks, String> {
        let sent = self.lines.send(&format!("check {n}"));
        let line = match sent {
            Ok(()) => self
                .lines
                .next(Duration::from_millis(u64::from(n) * 600 + 10_000)),
            Err(_) => None,
        };
        let Some(line) = line else {
            let status = self.lines.wait_exit(Duration::from_secs(5));
            return Err(format!(
                "naming_peer dial gave no answer (exit {status:?}); stderr:\n{}",
                self.lines.stderr()
            ));
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("dial output {line:?}: {e}"));
        Ok(Checks {
            peers: v["peers"]
                .as_array()
                .expect("peers")
                .iter()
                .map(|p| p.as_str().expect("peer").to_string())
                .collect(),
            errors: v["errors"].as_u64().expect("errors"),
        })
    }

    /// Checks in rounds of `n` until `done` holds for a round, for at most
    /// `timeout`; returns the last round, or panics with the rounds seen.
    pub fn check_until(
        &mut self,
        n: u32,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Checks) -> bool,
    ) -> Checks {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        for _ in 0..200 {
            let round = self.check(n).unwrap_or_else(|e| panic!("{what}: {e}"));
            if done(&round) {
                return round;
            }
            seen.push(round);
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{what}: not within {timeout:?}; rounds seen: {seen:?}");
    }
}
