//! A private etcd for the examples (`demo`, `drain`): one member on
//! 127.0.0.1 with free ports and a temporary data directory, from `ETCD_BIN`
//! or `etcd` on `PATH`; stopped and removed on drop (and, if asked, on
//! Ctrl-C / SIGTERM).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_sd::{Client, ClientOptions};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// An etcd on 127.0.0.1 with its own ports and directory; stopped and removed
/// on drop (and on Ctrl-C, when started with `stop_on_ctrl_c`).
pub struct PrivateEtcd {
    /// `127.0.0.1:PORT`.
    pub endpoint: String,
    /// What `etcd --version` said.
    pub version: String,
    /// How long it took to answer.
    pub ready_in: Duration,
    child: Arc<Mutex<Option<Child>>>,
    dir: tempfile::TempDir,
}

impl PrivateEtcd {
    /// Starts etcd (named `name`) and waits until it answers. With
    /// `stop_on_ctrl_c`, Ctrl-C or SIGTERM stops it, removes its directory
    /// and exits the process (130); otherwise the caller handles signals and
    /// drops it.
    pub fn start(name: &str, stop_on_ctrl_c: bool) -> Fallible<PrivateEtcd> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let version = etcd_version(&bin)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("etcd-sd-{name}-"))
            .tempdir()?;
        let child: Arc<Mutex<Option<Child>>> = Arc::default();
        if stop_on_ctrl_c {
            stop_on_ctrl_c_signal(child.clone(), dir.path().to_path_buf(), name);
        }
        let t0 = Instant::now();
        let mut last_error = String::new();
        // A port that looked free can be taken before etcd binds it: try again.
        for _ in 0..3 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.path().join("etcd.log"))?;
            let mut cmd = Command::new(&bin);
            for (key, _) in std::env::vars_os() {
                // etcd reads ETCD_* variables as flags: keep the user's out.
                if key.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(key);
                }
            }
            cmd.args(["--name", name, "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("{name}={peer_url}")])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            *child.lock().unwrap() = Some(cmd.spawn()?);
            let endpoint = format!("127.0.0.1:{client_port}");
            match wait_ready(&endpoint, &child) {
                Ok(()) => {
                    return Ok(PrivateEtcd {
                        endpoint,
                        version,
                        ready_in: t0.elapsed(),
                        child,
                        dir,
                    });
                }
                Err(e) => {
                    last_error = e;
                    kill(&child);
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(format!("{last_error}; etcd log ends with:\n{}", tail.join("\n")).into())
    }

    /// Its data directory (and log file).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        kill(&self.child);
    }
}

fn kill(child: &Mutex<Option<Child>>) {
    if let Some(mut c) = child.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// On Ctrl-C (or SIGTERM): stop etcd, remove its directory, exit.
fn stop_on_ctrl_c_signal(child: Arc<Mutex<Option<Child>>>, dir: PathBuf, name: &str) {
    let name = name.to_owned();
    let result = ctrlc::set_handler(move || {
        kill(&child);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("\ninterrupted: etcd stopped, {} removed", dir.display());
        std::process::exit(130);
    });
    if let Err(e) = result {
        eprintln!("{name}: no Ctrl-C handler ({e}); etcd is still stopped at the end");
    }
}

fn etcd_version(bin: &str) -> Fallible<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {bin:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .unwrap_or("(unknown version)")
        .trim()
        .to_string())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (at most 15 s) until etcd answers a client, or exits.
fn wait_ready(endpoint: &str, child: &Mutex<Option<Child>>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let options = ClientOptions {
        dial_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let mut last = String::from("not started");
    for _ in 0..100 {
        if let Some(c) = child.lock().unwrap().as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("etcd exited with {status}"));
            }
        }
        match Client::connect(&[endpoint], options.clone()) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("etcd did not answer within 15 s: {last}"))
}
