//! The `etcd-sd` command-line tool, driven as a user would, against a real
//! etcd. Needs `--features cli`.
#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{free_port, unique_prefix, EtcdServer};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-sd");

/// The tool, with no etcd settings inherited from the environment.
fn etcd_sd() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("ETCD_ENDPOINTS")
        .env_remove("ETCD_SD_PASSWORD")
        .stdin(Stdio::null());
    cmd
}

/// The tool pointed at `etcd`.
fn at(etcd: &EtcdServer) -> Command {
    let mut cmd = etcd_sd();
    cmd.arg("--endpoints").arg(etcd.endpoint());
    cmd
}

/// Runs to the end (bounded: every command here has its own short timeouts,
/// and the child is killed after 60 s).
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcd-sd");
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..1200 {
        if child.try_wait().expect("wait").is_some() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A long-running `etcd-sd` whose stdout lines arrive on a channel; killed
/// on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        Running::spawn_reading(cmd, false)
    }

    /// As `spawn`, with stderr's lines mixed into the ones read.
    fn spawn_with_stderr(cmd: &mut Command) -> Running {
        Running::spawn_reading(cmd, true)
    }

    fn spawn_reading(cmd: &mut Command, stderr_too: bool) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcd-sd");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        if stderr_too {
            let err = child.stderr.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line that contains `needle`, within `timeout`.
    fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {timeout:?}; seen so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (at most `timeout`) for the exit; returns the exit code and
    /// the rest of stdout.
    fn wait(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut rest = Vec::new();
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    rest.push(line);
                }
                return (status.code(), rest);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd-sd did not exit within {timeout:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn list_prints_values_in_key_order() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-list");
    etcd.put(&format!("{p}b"), "second");
    etcd.put(&format!("{p}a"), "first \"quoted\"");
    let o = run(at(&etcd).args(["list", &p]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "first \"quoted\"\nsecond\n");
    let o = run(at(&etcd).args(["list", &p, "--json"]));
    assert_eq!(stdout(&o), "[\"first \\\"quoted\\\"\",\"second\"]\n");
    let o = run(at(&etcd).args(["list", "/etcd-sd-it/nothing-here/"]));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
}

#[test]
fn endpoints_come_from_the_environment() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-env");
    etcd.put(&format!("{p}1"), "v1");
    let o = run(etcd_sd()
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .args(["list", &p]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "v1\n");
}

#[test]
fn pick_round_robin_random_and_empty() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-pick");
    for (k, v) in [("1", "a"), ("2", "b"), ("3", "c")] {
        etcd.put(&format!("{p}{k}"), v);
    }
    let o = run(at(&etcd).args(["pick", &p, "--n", "6"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "a\nb\nc\na\nb\nc\n");

    let random = |seed: &str| {
        let o = run(at(&etcd).args(["pick", &p, "--n", "20", "--random", "--seed", seed]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };
    let first = random("5");
    assert_eq!(first, random("5"), "same seed, same picks");
    assert_eq!(first.lines().count(), 20);
    assert!(
        first.lines().all(|l| ["a", "b", "c"].contains(&l)),
        "{first}"
    );

    let o = run(at(&etcd).args(["pick", "/etcd-sd-it/nothing-here/"]));
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("no instance under"), "{}", stderr(&o));
}

#[test]
fn register_stays_registered_and_deregisters_on_sigterm() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-register");
    let key = format!("{p}node-1");
    let mut reg = Running::spawn(at(&etcd).args([
        "register",
        &key,
        "http://127.0.0.1:9",
        "--ttl",
        "2s",
        "--heartbeat",
        "500ms",
    ]));
    reg.expect_line("Registered", Duration::from_secs(15));
    assert_eq!(etcd.get(&key).as_deref(), Some("http://127.0.0.1:9"));

    // Someone revokes the lease: the tool reports the loss and the recovery.
    etcd.revoke_lease_of(&key);
    reg.expect_line("Lost", Duration::from_secs(15));
    reg.expect_line("Registered", Duration::from_secs(15));
    assert!(support::wait_until(Duration::from_secs(10), || etcd.exists(&key)));

    reg.signal("TERM");
    let (code, rest) = reg.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0), "exit code after SIGTERM; output: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Deregistered")),
        "no Deregistered line in {rest:?}"
    );
    assert!(!etcd.exists(&key), "key still there after deregistration");
}

#[test]
fn watch_prints_every_event_as_json_and_stops_on_ctrl_c() {
    let mut etcd = EtcdServer::start();
    let p = unique_prefix("cli-watch");
    let mut watch = Running::spawn(at(&etcd).args([
        "watch",
        &p,
        "--json",
        "--dial-timeout",
        "2s",
        "--request-timeout",
        "2s",
    ]));
    let first = watch.expect_line("\"instances\":[]", Duration::from_secs(15));
    assert!(first.starts_with("{\"time\":\""), "{first}");
    assert!(first.ends_with("\"error\":null}"), "{first}");

    etcd.put(&format!("{p}1"), "http://a \"1\"");
    let line = watch.expect_line("http://a", Duration::from_secs(15));
    assert!(
        line.contains(r#""instances":["http://a \"1\""],"error":null"#),
        "{line}"
    );

    // An outage is an event with an error and the last good instances.
    etcd.kill();
    let line = watch.expect_line("\"error\":{\"kind\":", Duration::from_secs(30));
    assert!(line.contains(r#""instances":["http://a \"1\""]"#), "{line}");
    etcd.restart();
    watch.expect_line("\"error\":null", Duration::from_secs(30));

    watch.signal("INT");
    let (code, _) = watch.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0));
}

#[test]
fn watch_prints_text_with_timestamps() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-watch-text");
    etcd.put(&format!("{p}1"), "x");
    let mut watch = Running::spawn(at(&etcd).args(["watch", &p]));
    let line = watch.expect_line("1 instance", Duration::from_secs(15));
    // 2024-05-01T12:34:56.789Z  1 instance
    //   x
    let (time, rest) = line.split_once("  ").unwrap();
    assert_eq!(time.len(), 24, "{line}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
    assert_eq!(rest, "1 instance");
    let instance = watch.lines.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(instance, "  x");
    watch.signal("TERM");
    assert_eq!(watch.wait(Duration::from_secs(15)).0, Some(0));
}

#[test]
fn watch_stats_prints_the_counters_to_stderr() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-watch-stats");
    etcd.put(&format!("{p}1"), "x");
    for json in [false, true] {
        let mut args = vec!["watch", p.as_str(), "--stats"];
        if json {
            args.push("--json");
        }
        let mut watch = Running::spawn_with_stderr(at(&etcd).args(&args));
        let line = if json {
            watch.expect_line("\"stats\":{", Duration::from_secs(20))
        } else {
            watch.expect_line("  stats ", Duration::from_secs(20))
        };
        // One Instancer, its first Event published, etcd answering.
        for field in if json {
            ["\"connected\":true", "\"instancers\":1", "\"events\":1"]
        } else {
            ["connected=1", "instancers=1", "events=1"]
        } {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        watch.signal("TERM");
        assert_eq!(watch.wait(Duration::from_secs(15)).0, Some(0));
    }
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["list", "/p/", "--bogus"], "--bogus"),
        (&["pick", "/p/", "--n", "0"], "--n"),
        (&["pick", "/p/", "--seed", "1"], "--random"),
        (&["register", "/k", "v", "--ttl", "3x"], "--ttl"),
        (&["list"], "PREFIX"),
        (&["register", "", "v"], "key is empty"),
        (&["register", "/k", ""], "value is empty"),
        (
            &["list", "/p/", "--password", "secret"],
            "--password needs --user",
        ),
        (
            &["list", "/p/", "--endpoints", "http://"],
            "invalid argument",
        ),
        (&["nonsense"], "nonsense"),
    ];
    for (args, needle) in cases {
        let o = run(etcd_sd().args(*args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(
            !stderr(&o).contains("secret"),
            "password echoed: {}",
            stderr(&o)
        );
    }
}

#[test]
fn unreachable_etcd_exits_3() {
    let port = free_port(); // nothing listens there
    let started = Instant::now();
    let o = run(etcd_sd().args([
        "list",
        "/p/",
        "--endpoints",
        &format!("127.0.0.1:{port}"),
        "--dial-timeout",
        "1s",
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn bad_tls_files_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let g = garbage.to_str().unwrap();
    let m = missing.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["--cacert", m],
        &["--cacert", g],
        &["--cert", g, "--key", g],
        &["--cert", m, "--key", g],
    ];
    for flags in cases {
        let o = run(etcd_sd()
            .args([
                "list",
                "/p/",
                "--endpoints",
                "127.0.0.1:2",
                "--dial-timeout",
                "1s",
            ])
            .args(*flags));
        assert_eq!(o.status.code(), Some(4), "{flags:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot use --c"),
            "{flags:?}: {}",
            stderr(&o)
        );
    }
}

/// Runs `cmd` with stdout a pipe that is closed after the first line is
/// read, then calls `write_more` (to make the tool write again); returns the
/// exit code and stderr (bounded: the tool is killed after 15 s).
fn with_stdout_closed_after_one_line(
    cmd: &mut Command,
    write_more: impl FnOnce(),
) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcd-sd");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(!first.is_empty(), "no first line");
    drop(stdout); // the reader goes, as `head -1` does
    write_more();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut code = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            code = Some(status.code());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let code = code.unwrap_or_else(|| panic!("etcd-sd did not exit after its stdout closed"));
    (code, stderr(&out))
}

#[test]
fn a_closed_stdout_ends_watch_and_list_quietly() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-pipe");
    let (code, err) = with_stdout_closed_after_one_line(at(&etcd).args(["watch", &p]), || {
        etcd.put(&format!("{p}1"), "x")
    });
    assert_eq!(code, Some(0), "watch: {err}");
    assert!(!err.contains("panicked"), "watch: {err}");
    assert!(err.is_empty(), "watch: {err}");

    // More than a pipe holds, so that list is still writing when the
    // reader goes.
    let q = unique_prefix("cli-pipe-list");
    for i in 0..4 {
        etcd.put(&format!("{q}{i}"), &"v".repeat(40_000));
    }
    let (code, err) = with_stdout_closed_after_one_line(at(&etcd).args(["list", &q]), || {});
    assert_eq!(code, Some(0), "list: {err}");
    assert!(err.is_empty(), "list: {err}");
}

#[test]
fn control_characters_in_values_are_escaped_one_instance_per_line() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("cli-escape");
    let values = [
        "a\nb",
        "c\rd\te",
        "back\\slash",
        "\u{1b}[31mred\u{7f}",
        "plain",
    ];
    for (i, v) in values.iter().enumerate() {
        etcd.put(&format!("{p}{i}"), v);
    }
    let escaped = [
        r"a\nb",
        r"c\rd\te",
        r"back\\slash",
        r"\x1b[31mred\x7f",
        "plain",
    ];

    let o = run(at(&etcd).args(["list", &p]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), escaped);

    // --json stays JSON (its own escapes).
    let o = run(at(&etcd).args(["list", &p, "--json"]));
    assert_eq!(
        stdout(&o),
        "[\"a\\nb\",\"c\\rd\\te\",\"back\\\\slash\",\"\\u001b[31mred\u{7f}\",\"plain\"]\n"
    );

    // watch: a header line per event, then one line per instance (sorted).
    let mut watch = Running::spawn(at(&etcd).args(["watch", &p]));
    let header = watch.expect_line("5 instances", Duration::from_secs(15));
    assert!(header.ends_with("  5 instances"), "{header}");
    let mut sorted = values;
    sorted.sort();
    for v in sorted {
        let want = format!(
            "  {}",
            escaped[values.iter().position(|x| *x == v).unwrap()]
        );
        let line = watch
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("instance line");
        assert_eq!(line, want);
    }
    watch.signal("TERM");
    assert_eq!(watch.wait(Duration::from_secs(15)).0, Some(0));
}

#[test]
fn list_and_watch_with_a_snapshot_when_etcd_is_down() {
    let mut etcd = EtcdServer::start();
    let p = unique_prefix("cli-snapshot");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.snapshot");
    let file = file.to_str().unwrap();
    etcd.put(&format!("{p}1"), "http://a");
    etcd.put(&format!("{p}2"), "http://b");
    // etcd up: etcd's values, and the file is written.
    let o = run(at(&etcd).args(["list", &p, "--snapshot", file]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "http://a\nhttp://b\n");
    let text = std::fs::read_to_string(file).expect("snapshot written by list");
    assert!(
        text.contains("\"http://a\"") && text.contains("\"http://b\""),
        "{text}"
    );

    // etcd down: the file's instances, marked as such, status 6.
    etcd.kill();
    let down = ["--dial-timeout", "1s", "--request-timeout", "1s"];
    let o = run(at(&etcd).args(["list", &p, "--snapshot", file]).args(down));
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert_eq!(stdout(&o), "http://a\nhttp://b\n");
    assert!(stderr(&o).contains("snapshot"), "{}", stderr(&o));
    let o = run(at(&etcd)
        .args(["list", &p, "--json", "--snapshot", file])
        .args(down));
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert_eq!(stdout(&o), "[\"http://a\",\"http://b\"]\n");
    // Without a usable file: unreachable (3), nothing printed.
    let o = run(at(&etcd)
        .args(["list", "/other/", "--snapshot", file])
        .args(down));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("no usable snapshot"), "{}", stderr(&o));

    // watch: the snapshot as an error event, then etcd's state once it is back.
    let mut watch = Running::spawn(
        at(&etcd)
            .args(["watch", &p, "--json", "--snapshot", file])
            .args(down),
    );
    let line = watch.expect_line("\"error\":{\"kind\":", Duration::from_secs(15));
    assert!(
        line.contains(r#""instances":["http://a","http://b"]"#),
        "{line}"
    );
    assert!(line.contains("snapshot"), "{line}");
    etcd.restart();
    etcd.put(&format!("{p}3"), "http://c");
    let line = watch.expect_line("http://c", Duration::from_secs(30));
    assert!(line.ends_with("\"error\":null}"), "{line}");
    watch.signal("INT");
    let (code, _) = watch.wait(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains("\"http://c\""),
        "watch keeps the file: {text}"
    );
}
