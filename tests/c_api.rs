//! Drives the C and C++ tests: starts etcd, compiles the programs under
//! `tests/c/`, `tests/cpp/` and `examples/` against the freshly built cdylib
//! and the committed header, and runs them (the rustls-ffi
//! `client_server.rs` approach).
//!
//! * `c_suite_as_c11` / `c_suite_as_cxx17`: `tests/c/api_test.c`, built with
//!   `-Wall -Wextra -Werror -pedantic` as C11 and again as C++17, which also
//!   proves the header's `extern "C"` guards.
//! * `cpp_wrapper`: `tests/cpp/wrapper_test.cpp` over `bindings/cpp/etcd_sd.hpp`.
//! * `examples_build_and_run`: the C and C++ examples, run briefly, and the
//!   Rust example `grpc_naming` (on its own private etcd).
//! * `c_scenario_etcd_outage` / `c_scenario_authentication`:
//!   `tests/c/scenario_test.c`, told by this driver when etcd was killed and
//!   restarted (every blocking call fails in time, events carry the error and
//!   the last good set, recovery), or run against etcd with auth enabled.
//! * `c_scenario_cold_start_from_a_snapshot`: the same program, an
//!   instancer with a snapshot file started while etcd is killed starts
//!   from the file, then follows etcd once it is restarted.
//! * `c_suite_under_valgrind` (ignored by default; `make test-c` runs it):
//!   the C suite under valgrind; definite leaks and memory errors fail.
//!
//! `CC` and `CXX` choose the compilers (default `cc`, `c++`). Every child
//! process runs under a deadline and is killed when it passes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{unique_prefix, EtcdServer};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib built with this test binary: `cargo test` puts it next to the
/// test executables (`target/<profile>/deps`), not in `target/<profile>`.
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps, deps.parent().expect("profile dir")] {
        let lib = dir.join("libetcd_sd.so");
        if lib.exists() {
            return lib;
        }
    }
    panic!("libetcd_sd.so not found next to {}", exe.display());
}

/// A temporary directory holding `libetcd_sd.so.0` (the soname programs
/// record) pointing at the fresh cdylib, for the programs' rpath.
struct LibDir {
    dir: tempfile::TempDir,
}

impl LibDir {
    fn new() -> LibDir {
        let dir = tempfile::Builder::new()
            .prefix("etcd-sd-c-")
            .tempdir()
            .expect("temp dir");
        let lib = cdylib();
        std::os::unix::fs::symlink(&lib, dir.path().join("libetcd_sd.so.0"))
            .expect("symlink libetcd_sd.so.0");
        std::os::unix::fs::symlink(&lib, dir.path().join("libetcd_sd.so"))
            .expect("symlink libetcd_sd.so");
        LibDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Compiles `sources` into `name` in this directory with `compiler` and
    /// `flags`, linked against the cdylib; panics with the compiler's output
    /// on failure.
    fn build(&self, compiler: &str, flags: &[&str], sources: &[PathBuf], name: &str) -> PathBuf {
        let root = manifest_dir();
        let out = self.path().join(name);
        let mut cmd = Command::new(compiler);
        cmd.args(flags)
            .arg(format!("-I{}", root.join("include").display()))
            .arg(format!("-I{}", root.join("bindings/cpp").display()))
            .arg(format!("-I{}", root.join("tests/c").display()))
            .args(sources)
            // After `-x c++`, tell the driver the library is not a source.
            .args(["-x", "none"])
            .arg("-o")
            .arg(&out)
            .arg(format!("-L{}", self.path().display()))
            .arg("-letcd_sd")
            .arg("-lpthread")
            .arg(format!("-Wl,-rpath,{}", self.path().display()));
        let output = run_bounded(&mut cmd, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "{compiler} {flags:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        out
    }
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-g",
];

/// Runs `cmd` to completion, killing it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_child(child, timeout, &format!("{cmd:?}"))
}

/// Runs a test program against `etcd` and checks that it passed.
fn run_suite(program: &Path, wrapper: &[&str], etcd: &EtcdServer, slow: u32, timeout: Duration) {
    let (exe, args): (&std::ffi::OsStr, Vec<&std::ffi::OsStr>) = match wrapper.split_first() {
        Some((first, rest)) => (
            first.as_ref(),
            rest.iter()
                .map(|s| s.as_ref())
                .chain(std::iter::once(program.as_os_str()))
                .collect(),
        ),
        None => (program.as_os_str(), Vec::new()),
    };
    let started = Instant::now();
    let output = run_bounded(
        Command::new(exe)
            .args(args)
            .env("ETCD_SD_TEST_ENDPOINT", etcd.endpoint())
            .env("ETCD_SD_TEST_PREFIX", unique_prefix("c"))
            .env("ETCD_SD_TEST_SLOW", slow.to_string()),
        timeout,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "{} finished in {:?}:\n{stdout}",
        program.display(),
        started.elapsed()
    );
    if !wrapper.is_empty() {
        // The tool's summary (valgrind's heap, leak and error summaries).
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = &lines[lines.len().saturating_sub(16)..];
        eprintln!("{} summary:\n{}", wrapper[0], tail.join("\n"));
    }
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "{} failed ({:?}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        program.display(),
        output.status
    );
}

/// Builds one C or C++ test program from `source` and runs it against a
/// fresh etcd.
fn build_and_run_suite(compiler: &str, flags: &[&str], source: &str, name: &str) {
    let etcd = EtcdServer::start();
    let libs = LibDir::new();
    let exe = libs.build(compiler, flags, &[manifest_dir().join(source)], name);
    run_suite(&exe, &[], &etcd, 1, Duration::from_secs(180));
}

#[test]
fn c_suite_as_c11() {
    build_and_run_suite(&cc(), C_FLAGS, "tests/c/api_test.c", "api_test_c");
}

#[test]
fn c_suite_as_cxx17() {
    let mut flags = vec!["-x", "c++"];
    flags.extend_from_slice(CXX_FLAGS);
    build_and_run_suite(&cxx(), &flags, "tests/c/api_test.c", "api_test_cxx");
}

#[test]
fn cpp_wrapper() {
    build_and_run_suite(
        &cxx(),
        CXX_FLAGS,
        "tests/cpp/wrapper_test.cpp",
        "wrapper_test",
    );
}

#[test]
#[ignore = "slow: run by `make test-c` (valgrind)"]
fn c_suite_under_valgrind() {
    let etcd = EtcdServer::start();
    let libs = LibDir::new();
    let exe = libs.build(
        &cc(),
        C_FLAGS,
        &[manifest_dir().join("tests/c/api_test.c")],
        "api_test_vg",
    );
    // Only definite leaks and memory errors fail: Rust's runtime keeps a few
    // thread-local allocations that valgrind calls "possibly lost".
    run_suite(
        &exe,
        &[
            "valgrind",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
        ],
        &etcd,
        10,
        Duration::from_secs(600),
    );
    let wrapper = libs.build(
        &cxx(),
        CXX_FLAGS,
        &[manifest_dir().join("tests/cpp/wrapper_test.cpp")],
        "wrapper_test_vg",
    );
    run_suite(
        &wrapper,
        &[
            "valgrind",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
        ],
        &etcd,
        10,
        Duration::from_secs(600),
    );
}

#[test]
fn examples_build_and_run() {
    let etcd = EtcdServer::start();
    let libs = LibDir::new();
    let root = manifest_dir();
    let (c, cpp) = ((cc(), C_FLAGS), (cxx(), CXX_FLAGS));
    let [registrar, callback, poll, service, hello, hello_cpp] = [
        (&c, "examples/c/registrar.c", "registrar"),
        (&c, "examples/c/watcher_callback.c", "watcher_callback"),
        (&c, "examples/c/watcher_poll.c", "watcher_poll"),
        (&cpp, "examples/cpp/service.cpp", "service"),
        (&c, "examples/cmake/hello.c", "hello"),
        (&cpp, "examples/cmake/hello.cpp", "hello_cpp"),
    ]
    .map(|((compiler, flags), source, name)| {
        libs.build(compiler, flags, &[root.join(source)], name)
    });

    let prefix = unique_prefix("examples");
    let key = format!("{prefix}10.0.0.1:8080");
    let spawn = |exe: &Path, args: &[&str]| {
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn example")
    };
    let ep = etcd.endpoint();
    // The watchers run 4 s; the registrar joins after 1 s for 1 s.
    let watch_cb = spawn(&callback, &[&ep, &prefix, "4"]);
    let watch_poll = spawn(&poll, &[&ep, &prefix, "4"]);
    std::thread::sleep(Duration::from_secs(1));
    let reg = run_bounded(
        Command::new(&registrar).args([ep.as_str(), key.as_str(), "http://10.0.0.1:8080", "1"]),
        Duration::from_secs(60),
    );
    let reg_out = succeeded("registrar", &reg);
    assert!(
        reg_out.contains("registered") && reg_out.contains("deregistered"),
        "{reg_out}"
    );
    for (name, child) in [("watcher_callback", watch_cb), ("watcher_poll", watch_poll)] {
        let text = succeeded(name, &wait_child(child, Duration::from_secs(60), name));
        assert!(text.contains("0 instance(s)"), "{name}: {text}");
        assert!(
            text.contains("1 instance(s) http://10.0.0.1:8080"),
            "{name}: {text}"
        );
        eprintln!("{name}:\n{text}");
    }
    let svc = run_bounded(
        Command::new(&service).args([ep.as_str(), prefix.as_str(), "http://10.0.0.2:9090", "1"]),
        Duration::from_secs(60),
    );
    let svc_out = succeeded("service", &svc);
    assert!(
        svc_out.contains("calling http://10.0.0.2:9090"),
        "{svc_out}"
    );
    for exe in [&hello, &hello_cpp] {
        let out = run_bounded(
            Command::new(exe).args([ep.as_str(), prefix.as_str()]),
            Duration::from_secs(60),
        );
        assert!(succeeded("hello", &out).contains(env!("CARGO_PKG_VERSION")));
    }

    // The Rust example of etcd's naming format, on its own private etcd.
    let out = run_bounded(&mut rust_example("grpc_naming"), Duration::from_secs(120));
    let text = succeeded("grpc_naming", &out);
    assert!(
        text.contains(r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":"zone-a"}"#)
            && text.contains("dialing etcd:///services/greeter connects to:")
            && text.contains("done: instances deregistered, etcd stopped"),
        "{text}"
    );
}

/// A Rust example, built by cargo (`cargo test --all-targets` has built it
/// already; `cargo test --test c_api` has not, and cargo's lock is free while
/// tests run) and ready to run.
fn rust_example(name: &str) -> Command {
    let build = run_bounded(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", name, "--manifest-path"])
            .arg(manifest_dir().join("Cargo.toml")),
        Duration::from_secs(600),
    );
    succeeded(&format!("cargo build --example {name}"), &build);
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe.parent().and_then(Path::parent).expect("profile dir");
    Command::new(profile.join("examples").join(name))
}

/// Asserts that a program exited with success (showing its output if not)
/// and returns its stdout.
fn succeeded(name: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({:?}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits for a child started by this test and collects its output. After
/// `timeout` it kills the child (only it, by its id) and panics, naming it
/// `what`, with the stdout it wrote if that comes within 10 s of the kill.
fn wait_child(child: std::process::Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("wait for {what}: {e:?}")),
        Err(_) => {
            // Kill only the child we started, by its id.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let output = rx.recv_timeout(Duration::from_secs(10));
            panic!(
                "{what} (pid {pid}) did not finish within {timeout:?}; output so far: {:?}",
                output
                    .ok()
                    .and_then(|o| o.ok())
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            );
        }
    }
}

/// Runs `tests/c/scenario_test.c` in `mode`, doing what it asks for at each
/// "WAIT <what>" line (`kill`, `restart`), and checks that it passed.
fn run_scenario(mode: &str, etcd: &mut EtcdServer, env: &[(&str, &str)]) {
    use std::io::{BufRead, BufReader, Write};
    let libs = LibDir::new();
    let exe = libs.build(
        &cc(),
        C_FLAGS,
        &[manifest_dir().join("tests/c/scenario_test.c")],
        "scenario_test",
    );
    let mut child = Command::new(&exe)
        .arg(mode)
        .env("ETCD_SD_TEST_ENDPOINT", etcd.endpoint())
        .env("ETCD_SD_TEST_PREFIX", unique_prefix(mode))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scenario_test");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut transcript = Vec::new();
    // At most a few dozen lines; each must come within a minute.
    for _ in 0..100 {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("scenario {mode} hangs; so far: {transcript:#?}");
            }
        };
        match line.as_str() {
            "WAIT kill" => etcd.kill(),
            "WAIT restart" => etcd.restart(),
            _ => {}
        }
        if line.starts_with("WAIT ") {
            writeln!(stdin, "go").expect("answer the scenario");
        }
        transcript.push(line);
    }
    let out = wait_child(child, Duration::from_secs(60), &format!("scenario {mode}"));
    let text = transcript.join("\n");
    eprintln!("scenario {mode}:\n{text}");
    assert!(
        out.status.success() && text.contains("1 passed, 0 failed"),
        "scenario {mode} failed ({:?}):\n{text}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn c_scenario_etcd_outage() {
    let mut etcd = EtcdServer::start();
    run_scenario("outage", &mut etcd, &[]);
}

#[test]
fn c_scenario_cold_start_from_a_snapshot() {
    let mut etcd = EtcdServer::start();
    run_scenario("snapshot", &mut etcd, &[]);
}

/// A C host keeps SIGPIPE's default action; the library's writes to a
/// socket that etcd reset (HTTP/2 uses `writev`, which raises SIGPIPE) must
/// not kill it. CI once lost `c_scenario_etcd_outage` that way.
#[test]
fn c_scenario_sigpipe_on_the_runtime_thread_does_not_kill_the_host() {
    let mut etcd = EtcdServer::start();
    run_scenario("sigpipe", &mut etcd, &[]);
}

#[test]
fn c_scenario_authentication() {
    let password = "c-root-pw-7Jd2";
    let mut etcd = EtcdServer::start();
    etcd.etcdctl(&["user", "add", &format!("root:{password}")]);
    etcd.etcdctl(&["auth", "enable"]);
    etcd.set_etcdctl_user(Some(&format!("root:{password}")));
    run_scenario(
        "auth",
        &mut etcd,
        &[
            ("ETCD_SD_TEST_USER", "root"),
            ("ETCD_SD_TEST_PASSWORD", password),
        ],
    );
}
