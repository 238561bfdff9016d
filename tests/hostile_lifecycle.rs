//! Hostile probes of the second release's lifecycle features (issue 15):
//! lazy clients, pause/resume and snapshot files, each a regression test of
//! a promise of API.md §5.1 that was found broken.

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use etcd_sd::{Instancer, InstancerOptions};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdServer};

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo failed");
}

/// Unblocks anything stuck opening `fifo` for reading (bounded: one open).
fn unblock_fifo(fifo: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(fifo);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(0o4000) // O_NONBLOCK on Linux
    }
}

/// A snapshot path that is a FIFO (nobody writing it): `with_options` must
/// still return within `request_timeout` (it used to block for ever opening
/// the FIFO), discovery goes on, and the FIFO is left as it is.
#[test]
fn a_fifo_as_snapshot_file_neither_blocks_nor_is_replaced() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("fifo");
    let _r = registered(&client, format!("{prefix}a"), "a");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("snap");
    mkfifo(&fifo);

    let (tx, rx) = mpsc::channel();
    let (c, p, f) = (client.clone(), prefix.clone(), fifo.clone());
    let t = std::thread::spawn(move || {
        let i = Instancer::with_options(&c, &p, InstancerOptions::new().snapshot_file(f));
        let _ = tx.send(i.map(|i| i.current()));
    });
    // The contract: within request_timeout (2 s); allow a noisy machine.
    let got = rx.recv_timeout(secs(10));
    if got.is_err() {
        unblock_fifo(&fifo);
    }
    let ev = got
        .expect("with_options blocked on a FIFO snapshot path")
        .expect("with_options failed because of the snapshot file");
    t.join().unwrap();
    assert_eq!(instances(&ev), strs(&["a"]), "{}", describe(&ev));

    // Keep an Instancer alive past the writer's debounce: the FIFO stays.
    let i = Instancer::with_options(
        &client,
        &prefix,
        InstancerOptions::new().snapshot_file(&fifo),
    )
    .unwrap();
    let _r2 = registered(&client, format!("{prefix}b"), "b");
    std::thread::sleep(secs(2));
    drop(i);
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(
        meta.file_type().is_fifo(),
        "the FIFO in the way was replaced"
    );
}

/// A snapshot path that is a character device that never ends (/dev/zero):
/// `with_options` must not read it for ever (it used to read until memory
/// ran out); it is ignored.
#[test]
fn an_endless_device_as_snapshot_file_is_ignored() {
    // read_snapshot uses the same reader and writes nothing.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let o = InstancerOptions::new().snapshot_file("/dev/zero");
        let _ = tx.send(o.read_snapshot("/x/").is_none());
    });
    assert_eq!(
        rx.recv_timeout(secs(10)).ok(),
        Some(true),
        "reading /dev/zero as a snapshot did not end (or was used)"
    );
}

/// A symlink to the real snapshot file (a common deployment layout): the
/// writer must write the file it points to, not replace the link.
#[test]
fn a_symlinked_snapshot_file_is_written_through() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("symlink");
    let _r = registered(&client, format!("{prefix}a"), "a");
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.snapshot");
    let link = dir.path().join("link.snapshot");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let i = Instancer::with_options(
        &client,
        &prefix,
        InstancerOptions::new().snapshot_file(&link),
    )
    .unwrap();
    assert!(
        wait_until(secs(10), || real.exists()),
        "the file the link points to was never written"
    );
    drop(i);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was replaced by a file"
    );
    let again = InstancerOptions::new()
        .snapshot_file(&link)
        .read_snapshot(&prefix)
        .expect("the snapshot is readable through the link");
    assert_eq!(again.iter().collect::<Vec<_>>(), vec!["a"]);
}

fn task_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Every snapshot Instancer has a writer thread: after many create/drop
/// cycles none are left behind.
#[test]
fn snapshot_instancers_leave_no_threads_behind() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("threads");
    let _r = registered(&client, format!("{prefix}a"), "a");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    // Warm up (lazy runtime threads, pools).
    drop(
        Instancer::with_options(
            &client,
            &prefix,
            InstancerOptions::new().snapshot_file(&path),
        )
        .unwrap(),
    );
    std::thread::sleep(secs(1));
    let before = task_count();
    for _ in 0..100 {
        let i = Instancer::with_options(
            &client,
            &prefix,
            InstancerOptions::new().snapshot_file(&path),
        )
        .unwrap();
        drop(i);
    }
    assert!(
        wait_until(secs(10), || task_count() <= before + 2),
        "threads before {before}, after {}",
        task_count()
    );
}

/// resume() called 100 times in a row, and pause/resume alternated, hold
/// one lease at most: no lease leaks.
#[test]
fn resume_spam_leaks_no_lease() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("spam");
    let key = format!("{prefix}a");
    let r = registered(&client, key.clone(), "a");
    for _ in 0..100 {
        r.resume().unwrap();
    }
    assert_eq!(etcd.leases().len(), 1, "leases after 100 resume()");
    for _ in 0..20 {
        r.pause().unwrap();
        r.resume().unwrap();
    }
    assert!(
        wait_until(secs(10), || etcd.leases().len() == 1),
        "leases after 20 pause/resume: {:?}",
        etcd.leases()
    );
    assert!(etcd.exists(&key));
    r.pause().unwrap();
    assert!(
        wait_until(secs(10), || etcd.leases().is_empty()),
        "a lease outlived the pause: {:?}",
        etcd.leases()
    );
    assert!(!etcd.exists(&key));
}

/// pause() from the thread that consumes the registration events, and then
/// from many threads at once: no deadlock, Paused, key gone.
#[test]
fn pause_from_the_events_consumer_and_many_threads() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("consumer");
    let key = format!("{prefix}a");
    let r = std::sync::Arc::new(registered(&client, key.clone(), "a"));
    let events = r.events();
    let (tx, rx) = mpsc::channel();
    let r2 = r.clone();
    std::thread::spawn(move || {
        // The first event after the revoke below: pause from here.
        if events.recv_timeout(secs(20)).is_ok() {
            let _ = tx.send(r2.pause());
        }
    });
    etcd.revoke_lease_of(&key);
    let got = rx
        .recv_timeout(secs(20))
        .expect("pause from the consumer hung");
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(r.state(), etcd_sd::RegistrationState::Paused);
    std::thread::sleep(secs(2));
    assert_eq!(r.state(), etcd_sd::RegistrationState::Paused);
    assert!(!etcd.exists(&key), "re-registered after pause");
    r.resume().unwrap();
    let ts: Vec<_> = (0..8)
        .map(|n| {
            let r = r.clone();
            std::thread::spawn(move || if n % 2 == 0 { r.pause() } else { r.resume() })
        })
        .collect();
    for t in ts {
        let _ = t.join().unwrap();
    }
    r.pause().unwrap();
    assert!(wait_until(secs(10), || !etcd.exists(&key)));
    assert!(
        wait_until(secs(10), || etcd.leases().is_empty()),
        "leases left: {:?}",
        etcd.leases()
    );
}

/// Writes a valid snapshot file of `instances` for `prefix`, as the
/// library does (written now).
fn write_snapshot(path: &Path, prefix: &str, instances: &[&str]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = serde_json::json!({
        "format": "etcd-sd-snapshot", "version": 1, "prefix": prefix,
        "revision": 1, "written_unix_ms": now, "instances": instances,
    });
    let mut bytes = serde_json::to_vec(&body).unwrap();
    bytes.push(b'\n');
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("crc32 {crc:08x}\n").as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Offline start from a snapshot on a lazy client that never connected,
/// then etcd answers: with an empty prefix (a clean, empty Event) and with
/// the very set of the snapshot (a clean Event still follows: err cleared).
#[test]
fn offline_snapshot_then_etcd_answers_clean() {
    let mut etcd = EtcdServer::start();
    let empty = unique_prefix("empty");
    let same = unique_prefix("same");
    etcd.put(&format!("{same}a"), "a");
    etcd.kill();
    let dir = tempfile::tempdir().unwrap();
    let (pe, ps) = (dir.path().join("e"), dir.path().join("s"));
    write_snapshot(&pe, &empty, &["x"]);
    write_snapshot(&ps, &same, &["a"]);
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (me, msame) = (mtime(&pe), mtime(&ps));
    let client = etcd_sd::Client::connect_lazy(&[etcd.endpoint()], options(secs(2))).unwrap();
    let t0 = std::time::Instant::now();
    let ie = Instancer::with_options(&client, &empty, InstancerOptions::new().snapshot_file(&pe))
        .unwrap();
    let is = Instancer::with_options(&client, &same, InstancerOptions::new().snapshot_file(&ps))
        .unwrap();
    // "at once when the client has never connected": generous for CI.
    assert!(t0.elapsed() < secs(2), "took {:?}", t0.elapsed());
    let (ce, cs) = (ie.current(), is.current());
    assert_eq!(instances(&ce), strs(&["x"]), "{}", describe(&ce));
    assert!(ce.err.is_some());
    assert_eq!(instances(&cs), strs(&["a"]), "{}", describe(&cs));
    assert!(cs.err.is_some());
    let (re, rs) = (ie.subscribe(), is.subscribe());
    std::thread::sleep(secs(2));
    assert_eq!(mtime(&pe), me, "an offline Instancer rewrote its snapshot");
    assert_eq!(
        mtime(&ps),
        msame,
        "an offline Instancer rewrote its snapshot"
    );
    etcd.restart();
    let ev = recv_until(&re, secs(20), |e| e.err.is_none()).unwrap_or_else(|e| {
        panic!(
            "no clean Event for the empty prefix: {e}; now {}",
            describe(&ie.current())
        )
    });
    assert!(instances(&ev).is_empty(), "{}", describe(&ev));
    let ev = recv_until(&rs, secs(20), |e| e.err.is_none()).unwrap_or_else(|e| {
        panic!(
            "no clean Event for the same set: {e}; now {}",
            describe(&is.current())
        )
    });
    assert_eq!(instances(&ev), strs(&["a"]), "{}", describe(&ev));
    assert!(is.current().err.is_none());
    assert!(ie.current().err.is_none() && instances(&ie.current()).is_empty());
}

/// pause() while register() is stuck on a frozen (SIGSTOPped) etcd: once
/// etcd thaws, the key must not appear (nothing registers a paused key).
#[test]
fn pause_while_registering_on_a_frozen_etcd_then_it_thaws() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("frozen");
    let key = format!("{prefix}a");
    let r = etcd_sd::Registrar::new(
        &client,
        etcd_sd::Service::new(key.clone(), "a").with_ttl(short_ttl()),
    );
    etcd.pause();
    assert!(r.register().is_err());
    let t0 = std::time::Instant::now();
    let p = r.pause();
    assert!(t0.elapsed() < secs(6), "pause took {:?}", t0.elapsed());
    assert!(
        p.is_ok()
            || matches!(
                p.as_ref().unwrap_err().kind(),
                etcd_sd::ErrorKind::Timeout | etcd_sd::ErrorKind::Unavailable
            ),
        "{p:?}"
    );
    assert_eq!(r.state(), etcd_sd::RegistrationState::Paused);
    etcd.resume();
    for _ in 0..16 {
        assert!(!etcd.exists(&key), "the key appeared after pause");
        assert_eq!(r.state(), etcd_sd::RegistrationState::Paused);
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    eprintln!("leases after thaw: {:?}", etcd.leases());
}

/// Dropping an Instancer right after an Event, within the writer's
/// debounce: the file holds that Event's set (the pending write is done,
/// whole), not the previous one.
#[test]
fn drop_with_a_pending_write_writes_it() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let dir = tempfile::tempdir().unwrap();
    for n in 0..5 {
        let prefix = unique_prefix("pending");
        let path = dir.path().join(format!("snap{n}"));
        let i = Instancer::with_options(
            &client,
            &prefix,
            InstancerOptions::new().snapshot_file(&path),
        )
        .unwrap();
        let rx = i.subscribe();
        etcd.put(&format!("{prefix}k"), "v");
        let _ = recv_instances(&rx, secs(10), &["v"]);
        drop(i);
        let got = InstancerOptions::new()
            .snapshot_file(&path)
            .read_snapshot(&prefix)
            .expect("no usable file after drop");
        assert_eq!(got.iter().collect::<Vec<_>>(), vec!["v"], "round {n}");
    }
}

/// Lazy clients that never reach etcd (a closed port, a silent one), with
/// a snapshot Instancer and a Registrar each, made and dropped 30 times:
/// every drop is bounded and no thread is left behind.
#[test]
fn lazy_clients_that_never_connect_leave_no_threads() {
    let silent = support::SilentPort::start();
    let closed = support::closed_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    write_snapshot(&path, "/lazy/", &["a"]);
    let cycle = |ep: &str| {
        let c = etcd_sd::Client::connect_lazy(&[ep], options(secs(1))).unwrap();
        let i = Instancer::with_options(&c, "/lazy/", InstancerOptions::new().snapshot_file(&path))
            .unwrap();
        assert_eq!(instances(&i.current()), strs(&["a"]));
        let r = etcd_sd::Registrar::new(&c, etcd_sd::Service::new("/lazy/k", "v"));
        let _ = r.pause();
        drop(r);
        drop(i);
        drop(c);
    };
    let silent_ep = silent.endpoint();
    cycle(&closed);
    cycle(&silent_ep);
    std::thread::sleep(secs(1));
    let before = task_count();
    let t0 = std::time::Instant::now();
    for n in 0..30 {
        cycle(if n % 2 == 0 { &closed } else { &silent_ep });
    }
    assert!(t0.elapsed() < secs(60), "30 cycles took {:?}", t0.elapsed());
    assert!(
        wait_until(secs(15), || task_count() <= before + 2),
        "threads before {before}, after {}",
        task_count()
    );
    let after = InstancerOptions::new()
        .snapshot_file(&path)
        .read_snapshot("/lazy/");
    assert_eq!(
        after.map(|s| s.len()),
        Some(1),
        "an offline Instancer changed the file"
    );
}

/// A write that failed (the place unusable for a while: here a file where
/// the directory should be) is tried again once the place is usable, with
/// no further change in etcd: the file does not stay behind etcd for ever.
#[test]
fn a_failed_write_is_retried_when_the_place_comes_back() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("retry");
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::write(&sub, b"a file in the way of the directory").unwrap();
    let path = sub.join("snap");
    let i = Instancer::with_options(
        &client,
        &prefix,
        InstancerOptions::new().snapshot_file(&path),
    )
    .unwrap();
    let rx = i.subscribe();
    etcd.put(&format!("{prefix}k"), "v");
    let _ = recv_instances(&rx, secs(10), &["v"]);
    std::thread::sleep(secs(2)); // the write has been tried and failed
    std::fs::remove_file(&sub).unwrap();
    std::fs::create_dir(&sub).unwrap();
    let read = || {
        InstancerOptions::new()
            .snapshot_file(&path)
            .read_snapshot(&prefix)
            .map(|s| s.iter().map(str::to_owned).collect::<Vec<_>>())
    };
    assert!(
        wait_until(secs(30), || read() == Some(strs(&["v"]))),
        "the snapshot was never written once the place came back: {:?}",
        read()
    );
    drop(i);
}

/// A lazy client made while its only etcd is frozen (SIGSTOP: the port
/// accepts, nothing answers): calls fail within request_timeout, and once
/// etcd thaws a Registrar made before becomes Registered by itself and a
/// snapshot Instancer publishes etcd's state.
#[test]
fn lazy_client_on_a_frozen_etcd_converges_when_it_thaws() {
    let mut etcd = EtcdServer::start();
    let prefix = unique_prefix("thaw");
    etcd.put(&format!("{prefix}x"), "x");
    etcd.pause();
    let client = etcd_sd::Client::connect_lazy(&[etcd.endpoint()], options(secs(2))).unwrap();
    let t0 = std::time::Instant::now();
    let i = Instancer::with_options(&client, &prefix, InstancerOptions::new()).unwrap();
    assert!(
        t0.elapsed() < secs(5),
        "with_options took {:?}",
        t0.elapsed()
    );
    assert!(i.current().err.is_some(), "{}", describe(&i.current()));
    let key = format!("{prefix}a");
    let r = etcd_sd::Registrar::new(
        &client,
        etcd_sd::Service::new(key.clone(), "a").with_ttl(short_ttl()),
    );
    let t0 = std::time::Instant::now();
    assert!(r.register().is_err());
    assert!(t0.elapsed() < secs(5), "register took {:?}", t0.elapsed());
    let rx = i.subscribe();
    etcd.resume();
    assert!(
        wait_until(secs(20), || r.state()
            == etcd_sd::RegistrationState::Registered),
        "never registered after the thaw: {:?}",
        r.state()
    );
    let ev = recv_instances(&rx, secs(20), &["a", "x"]);
    assert!(ev.err.is_none());
}

/// With etcd up, a snapshot Instancer made right after `connect_lazy`
/// (before the client's first answer): its first `current()` is etcd's
/// state, never the snapshot's.
#[test]
fn with_etcd_up_a_fresh_lazy_client_never_shows_the_snapshot() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    for n in 0..5 {
        let prefix = unique_prefix("fresh");
        etcd.put(&format!("{prefix}x"), "x");
        let path = dir.path().join(format!("snap{n}"));
        write_snapshot(&path, &prefix, &["stale"]);
        let client = etcd_sd::Client::connect_lazy(&[etcd.endpoint()], options(secs(2))).unwrap();
        let i = Instancer::with_options(
            &client,
            &prefix,
            InstancerOptions::new().snapshot_file(&path),
        )
        .unwrap();
        let ev = i.current();
        assert_eq!(instances(&ev), strs(&["x"]), "round {n}: {}", describe(&ev));
        assert!(ev.err.is_none(), "round {n}: {}", describe(&ev));
    }
}

/// A huge snapshot file (here a sparse 1 GiB one) is not read into memory:
/// it is ignored at once (no snapshot of a real prefix comes near the cap).
#[test]
fn a_huge_snapshot_file_is_ignored_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let got = InstancerOptions::new()
            .snapshot_file(p)
            .read_snapshot("/x/");
        let _ = tx.send((got.is_none(), t0.elapsed()));
    });
    let (ignored, took) = rx.recv_timeout(secs(60)).expect("reading never ended");
    assert!(ignored);
    assert!(took < secs(2), "reading a huge file took {took:?}");
}
