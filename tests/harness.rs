//! Checks the etcd test harness itself, using only etcdctl.

mod support;

use std::time::{Duration, Instant};
use support::{wait_until, EtcdServer};

#[test]
fn harness_start_put_get_kill_restart() {
    let t0 = Instant::now();
    let mut etcd = EtcdServer::start();
    eprintln!("etcd started in {:?} at {}", t0.elapsed(), etcd.endpoint());
    let p = support::unique_prefix("harness");
    etcd.put(&format!("{p}b"), "2");
    etcd.put(&format!("{p}a"), "1");
    etcd.put(&format!("{p}c"), "");
    assert_eq!(
        etcd.get_prefix(&p),
        vec![
            (format!("{p}a"), "1".to_string()),
            (format!("{p}b"), "2".to_string()),
            (format!("{p}c"), String::new()),
        ]
    );
    assert_eq!(etcd.get(&format!("{p}a")).as_deref(), Some("1"));
    assert_eq!(etcd.get(&format!("{p}c")).as_deref(), Some(""));
    assert_eq!(etcd.get(&format!("{p}zz")), None);
    assert_eq!(etcd.del(&format!("{p}c")), 1);
    assert!(!etcd.exists(&format!("{p}c")));

    let rev = etcd.compact_latest();
    assert!(rev > 1);

    etcd.kill();
    assert!(!etcd.is_running());
    assert!(etcd.try_etcdctl_timeout(&["get", "x"], "1s").is_err());
    let t1 = Instant::now();
    etcd.restart();
    eprintln!("etcd restarted in {:?}", t1.elapsed());
    assert_eq!(etcd.instances_under(&p), vec!["1", "2"]);

    let t2 = Instant::now();
    etcd.pause();
    assert!(etcd.try_etcdctl_timeout(&["get", "x"], "1s").is_err());
    etcd.resume();
    assert!(wait_until(Duration::from_secs(10), || etcd
        .try_etcdctl(&["get", "x"])
        .is_ok()));
    eprintln!("pause/resume took {:?}", t2.elapsed());
}

#[test]
fn harness_leases() {
    let etcd = EtcdServer::start();
    let out = etcd.etcdctl(&["lease", "grant", "2"]);
    let hex = out.split_whitespace().nth(1).unwrap();
    let id = i64::from_str_radix(hex, 16).unwrap();
    let p = support::unique_prefix("lease");
    let key = format!("{p}k");
    etcd.etcdctl(&["put", "--lease", hex, "--", &key, "v"]);
    assert_eq!(etcd.lease_of(&key), id);
    assert!(etcd.leases().contains(&id));
    let (granted, remaining) = etcd.lease_ttl(id).unwrap();
    assert_eq!(granted, 2);
    assert!(remaining <= 2);
    assert_eq!(etcd.revoke_lease_of(&key), id);
    assert!(!etcd.exists(&key));
    assert_eq!(etcd.lease_ttl(id), None);
}

#[test]
fn harness_threads_and_ports() {
    assert!(support::thread_count() >= 1);
    let a = support::free_port();
    let b = support::free_port();
    assert_ne!(a, b);
}

#[test]
fn harness_fault_proxy() {
    let etcd = EtcdServer::start();
    let proxy = support::FaultProxy::start(&etcd.endpoint());
    let via = |args: &[&str]| {
        let out = std::process::Command::new(
            std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into()),
        )
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", proxy.endpoint()))
        .arg("--dial-timeout=1s")
        .arg("--command-timeout=1s")
        .args(args)
        .output()
        .unwrap();
        out.status.success()
    };
    assert!(via(&["put", "/proxy/a", "1"]));
    assert_eq!(etcd.get("/proxy/a").as_deref(), Some("1"));
    proxy.cut();
    assert!(!via(&["get", "/proxy/a"]));
    // etcd itself is fine.
    etcd.put("/proxy/b", "2");
    proxy.restore();
    assert!(wait_until(Duration::from_secs(10), || via(&[
        "get", "/proxy/b"
    ])));
}

#[test]
fn harness_silent_port_raw_etcd_and_new_histories() {
    use std::io::{Read, Write};

    // A silent port accepts, takes bytes and never answers.
    let silent = support::SilentPort::start();
    let mut s = std::net::TcpStream::connect(silent.endpoint()).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = s.read(&mut buf);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the silent port answered: {read:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || silent.accepted() == 1));
    // Nothing listens on a closed endpoint.
    assert!(std::net::TcpStream::connect(support::closed_endpoint()).is_err());

    // Raw bytes in and out.
    let mut etcd = EtcdServer::start();
    let raw = support::RawEtcd::connect(&etcd.endpoint());
    let p = support::unique_prefix("raw");
    let k = [p.as_bytes(), b"\xff"].concat();
    let rev = raw.put(&k, b"\xfe");
    assert!(rev > 1);
    assert_eq!(raw.get_prefix(&p), vec![(k.clone(), b"\xfe".to_vec())]);
    assert_eq!(raw.revision(), rev);
    assert_eq!(raw.delete(&k), 1);
    let ids = raw.ids();
    drop(raw);

    // A wiped etcd keeps its cluster and member ids; another cluster on the
    // same port has others; both start their history again.
    etcd.restart_empty();
    let raw = support::RawEtcd::connect(&etcd.endpoint());
    assert_eq!(raw.ids(), ids);
    assert!(raw.revision() < rev);
    drop(raw);
    let port = etcd.client_port();
    etcd.restart_as_other_cluster();
    assert_eq!(etcd.client_port(), port);
    let raw = support::RawEtcd::connect(&etcd.endpoint());
    let other = raw.ids();
    assert_ne!(other.0, ids.0, "cluster id");
    assert_ne!(other.1, ids.1, "member id");
    assert!(raw.revision() < rev);
}
