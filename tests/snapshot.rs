//! `Instancer::with_options` with a snapshot file: the file follows etcd,
//! a cold start with etcd down starts from it, damaged or foreign files are
//! ignored with one warning, a process killed while writing never leaves a
//! partial or mixed file, and an unwritable place does not stop discovery.
//!
//! The kill test re-runs this test binary as a child (`SNAP_CHILD=1`, test
//! `child_writer`), which writes the snapshot until it is SIGKILLed.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_sd::{Client, ErrorKind, Instancer, InstancerOptions};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer, RawEtcd};

// --- log capture -------------------------------------------------------------

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target() == "etcd_sd::snapshot" {
            let mut r = RECORDS.lock().unwrap();
            if r.len() < 100_000 {
                r.push((record.level(), record.args().to_string()));
            }
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        static CAPTURE: Capture = Capture;
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// `warn` records of the snapshot module that name `path`.
fn warnings_about(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, m)| *l == log::Level::Warn && m.contains(&needle))
        .map(|(_, m)| m.clone())
        .collect()
}

// --- files -------------------------------------------------------------------

/// A snapshot file as the library writes it (format version `version`).
fn file_bytes(prefix: &str, version: u32, written_unix_ms: u64, instances: &[&str]) -> Vec<u8> {
    let body = serde_json::json!({
        "format": "etcd-sd-snapshot",
        "version": version,
        "prefix": prefix,
        "revision": 1,
        "written_unix_ms": written_unix_ms,
        "instances": instances,
    });
    let mut bytes = serde_json::to_vec(&body).unwrap();
    bytes.push(b'\n');
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("crc32 {crc:08x}\n").as_bytes());
    bytes
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The instances in the file at `path`, checked as the library checks them
/// (checksum over everything before the last line); None when absent or bad.
fn read_file(path: &Path) -> Option<(String, Vec<String>)> {
    let bytes = std::fs::read(path).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let body_end = text.strip_suffix('\n')?.rfind('\n')? + 1;
    let (body, trailer) = text.split_at(body_end);
    let crc = u32::from_str_radix(trailer.strip_prefix("crc32 ")?.trim_end(), 16).ok()?;
    assert_eq!(
        crc32fast::hash(body.as_bytes()),
        crc,
        "checksum of {path:?}"
    );
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let prefix = v["prefix"].as_str()?.to_owned();
    let list = v["instances"]
        .as_array()?
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    Some((prefix, list))
}

fn with_snapshot(path: &Path) -> InstancerOptions {
    InstancerOptions::new().snapshot_file(path)
}

fn is_outage(kind: Option<ErrorKind>) -> bool {
    matches!(kind, Some(ErrorKind::Unavailable | ErrorKind::Timeout))
}

/// A client with a 2 s request timeout, connected while etcd runs.
fn client(etcd: &EtcdServer) -> Client {
    connect_with(etcd, options(secs(2)))
}

// --- tests -------------------------------------------------------------------

#[test]
fn file_follows_etcd_then_cold_start_from_it_converges() {
    let mut etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.snapshot");
    let prefix = unique_prefix("snap-cold");
    let c = client(&etcd);
    {
        let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
        assert!(inst.current().err.is_none());
        assert!(
            wait_until(secs(2), || read_file(&path)
                .is_some_and(|(_, l)| l.is_empty())),
            "the empty set is written"
        );
        for (i, v) in ["a", "b"].iter().enumerate() {
            etcd.put(&format!("{prefix}{i}"), v);
            let t = Instant::now();
            let want = strs(&["a", "b"][..=i]);
            assert!(
                wait_until(secs(3), || read_file(&path).is_some_and(|(_, l)| l == want)),
                "file holds {want:?}: {:?}",
                read_file(&path)
            );
            // Polled every 50 ms; the writer promises 1 s.
            assert!(t.elapsed() < ms(1300), "written after {:?}", t.elapsed());
        }
        let (p, _) = read_file(&path).unwrap();
        assert_eq!(p, prefix);
    }
    // A change nobody with a file sees: etcd's state now differs from the file's.
    etcd.put(&format!("{prefix}2"), "c");
    etcd.kill();
    let before = std::fs::read(&path).unwrap();
    let t = Instant::now();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
    let took = t.elapsed();
    assert!(took < secs(3), "with_options took {took:?} with etcd down");
    let now = inst.current();
    assert_eq!(instances(&now), strs(&["a", "b"]), "{}", describe(&now));
    assert!(is_outage(kind_of(&now)), "{}", describe(&now));
    let rx = inst.subscribe();
    let first = rx.recv_timeout(secs(1)).unwrap();
    assert_eq!(instances(&first), strs(&["a", "b"]));
    assert!(is_outage(kind_of(&first)));
    // Offline, the file it loaded is not rewritten.
    std::thread::sleep(ms(1500));
    assert_eq!(std::fs::read(&path).unwrap(), before, "offline rewrite");
    etcd.restart();
    recv_instances(&rx, secs(15), &["a", "b", "c"]);
    assert!(
        wait_until(secs(3), || read_file(&path)
            .is_some_and(|(_, l)| l == strs(&["a", "b", "c"]))),
        "etcd's state is written once it answers"
    );
    drop(inst);

    // With etcd up, a stale file is never seen: first Event and current()
    // are etcd's.
    etcd.put(&format!("{prefix}3"), "d");
    let stale = file_bytes(&prefix, 1, now_ms(), &["stale"]);
    std::fs::write(&path, stale).unwrap();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
    let now = inst.current();
    assert!(now.err.is_none(), "{}", describe(&now));
    assert_eq!(instances(&now), strs(&["a", "b", "c", "d"]));
    let first = inst.subscribe().recv_timeout(secs(1)).unwrap();
    assert_eq!(describe(&first), describe(&now));
}

#[test]
fn without_a_file_with_options_never_fails_for_etcd() {
    let mut etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-nofile");
    let c = client(&etcd);
    etcd.put(&format!("{prefix}k"), "v");
    let up = Instancer::with_options(&c, &prefix, InstancerOptions::new()).unwrap();
    assert_eq!(instances(&up.current()), strs(&["v"]));
    assert!(up.current().err.is_none());
    etcd.kill();
    let t = Instant::now();
    let down = Instancer::with_options(&c, &prefix, InstancerOptions::new()).unwrap();
    assert!(t.elapsed() < secs(3), "took {:?}", t.elapsed());
    let now = down.current();
    assert!(
        now.instances.is_empty() && is_outage(kind_of(&now)),
        "{}",
        describe(&now)
    );
    let rx = down.subscribe();
    etcd.restart();
    recv_instances(&rx, secs(15), &["v"]);
    assert_eq!(
        Instancer::with_options(&c, "", InstancerOptions::new())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn bad_files_are_ignored_with_one_warning_each() {
    capture_logs();
    let mut etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-bad");
    let c = client(&etcd);
    etcd.kill();
    let dir = tempfile::tempdir().unwrap();
    let good = file_bytes(&prefix, 1, now_ms(), &["x", "y"]);
    let mut corrupt = good.clone();
    let i = corrupt.iter().position(|&b| b == b'x').unwrap();
    corrupt[i] = b'z';
    let truncated = good[..good.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>, Duration)> = vec![
        ("corrupt", corrupt, secs(3600)),
        ("truncated", truncated, secs(3600)),
        (
            "missing-checksum",
            good[..good.len() - 15].to_vec(),
            secs(3600),
        ),
        ("garbage", b"\x00\xff not a snapshot\n".to_vec(), secs(3600)),
        (
            "other-prefix",
            file_bytes("/other/", 1, now_ms(), &["x"]),
            secs(3600),
        ),
        (
            "version-2",
            file_bytes(&prefix, 2, now_ms(), &["x"]),
            secs(3600),
        ),
        (
            "too-old",
            file_bytes(&prefix, 1, now_ms() - 7_200_000, &["x"]),
            secs(3600),
        ),
        (
            "unsorted",
            file_bytes(&prefix, 1, now_ms(), &["y", "x"]),
            secs(3600),
        ),
    ];
    for (name, bytes, max_age) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let opts = with_snapshot(&path).snapshot_max_age(max_age);
        let inst = Instancer::with_options(&c, &prefix, opts).unwrap();
        let now = inst.current();
        assert!(now.instances.is_empty(), "{name}: used: {}", describe(&now));
        assert!(is_outage(kind_of(&now)), "{name}: {}", describe(&now));
        let warns = warnings_about(&path);
        assert_eq!(warns.len(), 1, "{name}: {warns:?}");
        drop(inst);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: left as it is"
        );
    }
    // A directory where the file should be: unreadable, left as it is.
    let in_the_way = dir.path().join("a-directory");
    std::fs::create_dir(&in_the_way).unwrap();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&in_the_way)).unwrap();
    assert!(inst.current().instances.is_empty());
    assert_eq!(warnings_about(&in_the_way).len(), 1);
    assert!(in_the_way.is_dir());
    drop(inst);
    // The good file is used, and the same file as too old is not.
    let path = dir.path().join("good");
    std::fs::write(&path, &good).unwrap();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
    assert_eq!(instances(&inst.current()), strs(&["x", "y"]));
    assert!(warnings_about(&path).is_empty());
    drop(inst);
    let inst = Instancer::with_options(
        &c,
        &prefix,
        with_snapshot(&path).snapshot_max_age(Duration::ZERO),
    )
    .unwrap();
    assert!(inst.current().instances.is_empty());
    assert_eq!(warnings_about(&path).len(), 1);
}

#[test]
fn unwritable_place_is_one_warning_and_discovery_goes_on() {
    capture_logs();
    let etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-unwritable");
    let c = client(&etcd);
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be (running as root, permissions
    // would not stop a write), and a directory where the file should be.
    let file_as_dir = dir.path().join("plain-file");
    std::fs::write(&file_as_dir, b"keep me").unwrap();
    let dir_as_file = dir.path().join("dir");
    std::fs::create_dir(&dir_as_file).unwrap();
    for path in [file_as_dir.join("svc.snapshot"), dir_as_file.clone()] {
        let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
        let rx = inst.subscribe();
        for i in 0..3 {
            etcd.put(&format!("{prefix}w{i}"), &format!("w{i}"));
            recv_until(&rx, secs(5), |e| e.instances.contains(&format!("w{i}")))
                .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            std::thread::sleep(ms(300));
        }
        drop(inst);
        let warns = warnings_about(&path);
        assert_eq!(warns.len(), 1, "{path:?}: {warns:?}");
        for i in 0..3 {
            etcd.del(&format!("{prefix}w{i}"));
        }
    }
    assert_eq!(std::fs::read(&file_as_dir).unwrap(), b"keep me");
    assert!(dir_as_file.is_dir());
    assert_eq!(std::fs::read_dir(&dir_as_file).unwrap().count(), 0);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

#[test]
fn values_that_are_not_utf8_and_relative_paths() {
    let etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-bytes");
    let raw = RawEtcd::connect(&etcd.endpoint());
    raw.put(format!("{prefix}a"), b"caf\xe9");
    raw.put([prefix.as_bytes(), b"\xff"].concat(), b"one\nline\x00two");
    raw.put([prefix.as_bytes(), b"\xfe"].concat(), b"");
    let c = client(&etcd);
    let dir = tempfile::tempdir().unwrap();
    // Relative to the current directory at the call.
    let rel = pathdiff(dir.path());
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&rel)).unwrap();
    let want = instances(&inst.current());
    assert_eq!(want.len(), 3, "{want:?}");
    let abs = std::env::current_dir().unwrap().join(&rel);
    assert!(
        wait_until(secs(3), || read_file(&abs).is_some_and(|(_, l)| l == want)),
        "{:?}",
        read_file(&abs)
    );
    drop(inst);
    drop(c);
    let mut etcd = etcd;
    let c2 = client(&etcd);
    etcd.kill();
    let inst = Instancer::with_options(&c2, &prefix, with_snapshot(&abs)).unwrap();
    assert_eq!(instances(&inst.current()), want, "same list back");
}

/// `path` relative to the current directory, through `..` as needed.
fn pathdiff(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let ups = cwd.components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.push(path.strip_prefix("/").unwrap());
    rel.join("svc.snapshot")
}

/// The child of `kill_at_random_moments_leaves_a_set_that_existed`: writes
/// the snapshot of `SNAP_PREFIX` to `SNAP_PATH` until killed.
#[test]
fn child_writer() {
    let Ok(endpoint) = std::env::var("SNAP_ENDPOINT") else {
        return; // not a child run
    };
    let prefix = std::env::var("SNAP_PREFIX").unwrap();
    let path = std::env::var("SNAP_PATH").unwrap();
    let c = Client::connect(&[endpoint], options(secs(2))).unwrap();
    let _inst = Instancer::with_options(&c, &prefix, with_snapshot(Path::new(&path))).unwrap();
    println!("child ready");
    // Killed long before this ends.
    std::thread::sleep(secs(60));
}

#[test]
fn kill_at_random_moments_leaves_a_set_that_existed() {
    let mut etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-kill");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.snapshot");
    let c = client(&etcd);
    let mut raw = RawEtcd::connect(&etcd.endpoint());
    let mut rng = Rng::new(0x5eed_5a4b ^ u64::from(std::process::id()));
    let mut live: std::collections::BTreeSet<String> = Default::default();
    let mut existed: HashSet<Vec<String>> = HashSet::new();
    existed.insert(Vec::new());
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    // Rounds in which the file held something else than what the parent's
    // own Instancer wrote last: the child wrote it.
    let mut child_wrote = 0;
    let mut last_parent: Option<Vec<String>> = None;
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("SNAP_ENDPOINT", etcd.endpoint())
            .env("SNAP_PREFIX", &prefix)
            .env("SNAP_PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Churn (bigger sets make longer writes) and kill at a random moment.
        let kill_after = ms(150 + rng.below(500));
        let t = Instant::now();
        let mut ops = 0;
        while t.elapsed() < kill_after && ops < 1000 {
            ops += 1;
            let n = rng.below(200);
            let value = format!("instance-{n:03}-{}", "x".repeat(rng.below(64) as usize));
            if live.len() > 150 || (rng.below(3) == 0 && !live.is_empty()) {
                let victim = live
                    .iter()
                    .nth(rng.below(live.len() as u64) as usize)
                    .cloned();
                let victim = victim.unwrap();
                raw.delete(format!("{prefix}{victim}"));
                live.remove(&victim);
            } else {
                raw.put(format!("{prefix}{value}"), &value);
                live.insert(value);
            }
            existed.insert(live.iter().cloned().collect());
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever is on disk is whole and a set that existed.
        let on_disk = read_file(&path).map(|(_, l)| l);
        if let Some(l) = &on_disk {
            assert!(
                existed.contains(l),
                "round {round}: {} instances, never existed",
                l.len()
            );
            if last_parent.as_ref() != Some(l) {
                child_wrote += 1;
            }
        }
        // Cold start from it with etcd down, then converge.
        etcd.kill();
        let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
        let now = inst.current();
        assert!(
            is_outage(kind_of(&now)),
            "round {round}: {}",
            describe(&now)
        );
        let loaded = instances(&now);
        assert!(
            existed.contains(&loaded),
            "round {round}: loaded a set that never existed"
        );
        if let Some(l) = on_disk {
            assert_eq!(l, loaded, "round {round}");
        }
        let rx = inst.subscribe();
        etcd.restart();
        let want: Vec<String> = live.iter().cloned().collect();
        recv_until(&rx, secs(15), |e| e.err.is_none() && instances(e) == want)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(inst); // writes etcd's state, which is the last set that existed
        last_parent = read_file(&path).map(|(_, l)| l);
        raw = RawEtcd::connect(&etcd.endpoint());
    }
    let took = started.elapsed();
    eprintln!(
        "20 rounds in {took:?}; {} distinct sets; the child's file loaded in {child_wrote} rounds",
        existed.len()
    );
    assert!(
        child_wrote >= 10,
        "the child wrote in only {child_wrote} rounds"
    );
    assert!(took < secs(120), "took {took:?}");
}

/// Timings for the report: with_options to the first instance list, N = 10
/// and 10,000, etcd up and etcd down (snapshot). Run with
/// `cargo test --release --test snapshot -- --ignored --nocapture timings`.
#[test]
#[ignore]
fn timings() {
    let mut etcd = EtcdServer::start();
    let raw = RawEtcd::connect(&etcd.endpoint());
    let c = client(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut prefixes = Vec::new();
    for n in [10usize, 10_000] {
        let prefix = unique_prefix(&format!("snap-t{n}"));
        for i in 0..n {
            raw.put(
                format!("{prefix}{i:05}"),
                format!("10.0.{}.{}:8080", i / 256, i % 256),
            );
        }
        let path = dir.path().join(format!("n{n}"));
        let t = Instant::now();
        let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
        let up = t.elapsed();
        assert_eq!(inst.current().instances.len(), n);
        assert!(wait_until(secs(5), || read_file(&path)
            .is_some_and(|(_, l)| l.len() == n)));
        drop(inst);
        // From process start, etcd up: the child prints when it has the list.
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(["--exact", "timing_child", "--nocapture", "--test-threads=1"])
            .env("SNAP_T_ENDPOINT", etcd.endpoint())
            .env("SNAP_T_PREFIX", &prefix)
            .env("SNAP_T_PATH", &path)
            .env("SNAP_T_N", n.to_string())
            .output()
            .unwrap();
        let process = t.elapsed();
        assert!(out.status.success());
        eprintln!(
            "N={n}: etcd up: with_options {up:?}; child process start to first list {process:?} (exit included)"
        );
        prefixes.push((n, prefix, path));
    }
    etcd.kill();
    for (n, prefix, path) in prefixes {
        let t = Instant::now();
        let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
        let down = t.elapsed();
        assert_eq!(inst.current().instances.len(), n);
        // From process start, etcd down: a lazy client, the list from the file.
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(["--exact", "timing_child", "--nocapture", "--test-threads=1"])
            .env("SNAP_T_ENDPOINT", etcd.endpoint())
            .env("SNAP_T_PREFIX", &prefix)
            .env("SNAP_T_PATH", &path)
            .env("SNAP_T_N", n.to_string())
            .env("SNAP_T_DOWN", "1")
            .output()
            .unwrap();
        let process = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!(
            "N={n}: etcd down: with_options from the snapshot {down:?}; child process start to first list {process:?} (exit included)"
        );
    }
}

#[test]
fn timing_child() {
    let Ok(endpoint) = std::env::var("SNAP_T_ENDPOINT") else {
        return;
    };
    let prefix = std::env::var("SNAP_T_PREFIX").unwrap();
    let path = std::env::var("SNAP_T_PATH").unwrap();
    let n: usize = std::env::var("SNAP_T_N").unwrap().parse().unwrap();
    let down = std::env::var_os("SNAP_T_DOWN").is_some();
    // Lazy either way, as a service that must start whatever etcd does.
    let c = Client::connect_lazy(&[endpoint], options(secs(2))).unwrap();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(Path::new(&path))).unwrap();
    let now = inst.current();
    assert_eq!(now.instances.len(), n);
    assert_eq!(now.err.is_some(), down, "{:?}", now.err);
}

#[test]
fn two_instancers_on_one_file_leave_it_whole() {
    let etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-two");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.snapshot");
    let c1 = client(&etcd);
    let c2 = client(&etcd);
    let a = Instancer::with_options(&c1, &prefix, with_snapshot(&path)).unwrap();
    let b = Instancer::with_options(&c2, &prefix, with_snapshot(&path)).unwrap();
    let raw = RawEtcd::connect(&etcd.endpoint());
    let mut existed: HashSet<Vec<String>> = HashSet::new();
    existed.insert(Vec::new());
    let mut live = std::collections::BTreeSet::new();
    for i in 0..200 {
        let v = format!("v{:03}", i % 37);
        if live.contains(&v) {
            raw.delete(format!("{prefix}{v}"));
            live.remove(&v);
        } else {
            raw.put(format!("{prefix}{v}"), &v);
            live.insert(v);
        }
        existed.insert(live.iter().cloned().collect());
        if i % 10 == 0 {
            if let Some((_, l)) = read_file(&path) {
                assert!(existed.contains(&l), "a set that never existed");
            }
        }
        std::thread::sleep(ms(5));
    }
    let want: Vec<String> = live.iter().cloned().collect();
    assert!(
        wait_until(secs(3), || read_file(&path).is_some_and(|(_, l)| l == want)),
        "both end with etcd's state"
    );
    drop((a, b));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left");
}

#[test]
fn a_frozen_etcd_costs_one_request_timeout() {
    let mut etcd = EtcdServer::start();
    let prefix = unique_prefix("snap-frozen");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.snapshot");
    std::fs::write(&path, file_bytes(&prefix, 1, now_ms(), &["old"])).unwrap();
    etcd.put(&format!("{prefix}k"), "new");
    let c = connect_with(&etcd, options(secs(1)));
    etcd.pause(); // SIGSTOP: connections stay open, nothing answers
    let t = Instant::now();
    let inst = Instancer::with_options(&c, &prefix, with_snapshot(&path)).unwrap();
    let took = t.elapsed();
    assert!(took < ms(1500), "took {took:?} (request_timeout 1 s)");
    let now = inst.current();
    assert_eq!(instances(&now), strs(&["old"]), "{}", describe(&now));
    assert!(is_outage(kind_of(&now)), "{}", describe(&now));
    let rx = inst.subscribe();
    etcd.resume();
    recv_instances(&rx, secs(15), &["new"]);
}
