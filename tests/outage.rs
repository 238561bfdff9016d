//! etcd going away: registrations and instancers across an outage longer
//! than the ttl, deregistering while etcd is down, a frozen etcd.

mod support;

use std::time::{Duration, Instant};

use etcd_sd::{ErrorKind, Instancer, Registrar, RegistrationState as S, Service};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdServer, FaultProxy};

const RECOVERY: Duration = Duration::from_secs(15);

#[test]
fn outage_longer_than_ttl_registration_and_discovery_recover() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("outage");
    let key = format!("{p}svc");
    etcd.put(&format!("{p}static"), "static:1");

    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let reg = registered(&client, key.clone(), "svc:1");
    recv_instances(&rx, secs(10), &["static:1", "svc:1"]);
    let old_lease = reg.lease_id().unwrap();
    let events = reg.events();

    // Dead for twice the ttl.
    etcd.kill();
    let down_at = Instant::now();
    let err_ev = recv_until(&rx, secs(15), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event while etcd is down: {e}"));
    eprintln!(
        "error event after {:?}: {}",
        down_at.elapsed(),
        describe(&err_ev)
    );
    assert!(
        matches!(
            kind_of(&err_ev),
            Some(ErrorKind::Unavailable | ErrorKind::Timeout)
        ),
        "error kind: {}",
        describe(&err_ev)
    );
    assert_eq!(
        instances(&err_ev),
        strs(&["static:1", "svc:1"]),
        "error event must carry the last good instances"
    );
    let cur = inst.current();
    assert!(
        cur.err.is_some(),
        "current() during outage: {}",
        describe(&cur)
    );
    assert_eq!(instances(&cur), strs(&["static:1", "svc:1"]));

    let dead_for = secs(4).saturating_sub(down_at.elapsed());
    std::thread::sleep(dead_for);
    etcd.restart();
    let up_at = Instant::now();

    // The registration comes back: etcd restores leases with a fresh ttl
    // when it restarts, so the registrar may keep the old lease (it puts under
    // it first) or get a new one; either way the key must sit on the lease
    // the registrar keeps alive.
    let seen = wait_lost_then_registered(&events, RECOVERY);
    eprintln!(
        "registered again {:?} after restart (old lease {old_lease:x}); events {seen:?}",
        up_at.elapsed()
    );
    assert!(wait_until(RECOVERY, || etcd.exists(&key)));
    let lease = reg.lease_id().expect("lease id");
    assert!(wait_until(secs(5), || etcd.lease_of(&key) == lease));
    assert_eq!(reg.state(), S::Registered);

    // ...and subscribers get a clean event.
    recv_instances(&rx, RECOVERY, &["static:1", "svc:1"]);
    eprintln!("clean event {:?} after restart", up_at.elapsed());

    // Well past the ttl: a restored lease that nobody keeps alive has
    // expired by now; the key must still be there.
    std::thread::sleep(secs(4));
    assert_eq!(etcd.get(&key).as_deref(), Some("svc:1"));
    let cur = inst.current();
    assert!(cur.err.is_none(), "{}", describe(&cur));
    assert_eq!(instances(&cur), strs(&["static:1", "svc:1"]));

    // And the instancer follows changes again.
    etcd.put(&format!("{p}later"), "later:1");
    recv_instances(&rx, secs(10), &["later:1", "static:1", "svc:1"]);
}

#[test]
fn deregister_while_etcd_is_down_fails_in_time_and_stops_the_registrar() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("outage-dereg");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    // Client::register'ed services as well.
    let ckey = format!("{p}client");
    let csvc = Service::new(ckey.clone(), "c").with_ttl(short_ttl());
    client.register(&csvc).unwrap();

    etcd.kill();
    let t = Instant::now();
    let res = reg.deregister();
    assert_unreachable(res, t.elapsed(), secs(5), "deregister with etcd down");
    assert_eq!(reg.state(), S::Deregistered);

    let t = Instant::now();
    let res = client.deregister(&csvc);
    assert_unreachable(res, t.elapsed(), secs(5), "Client::deregister, etcd down");

    // A second deregister is fine (no hang, no panic).
    let t = Instant::now();
    let _ = reg.deregister();
    assert!(t.elapsed() < secs(5));

    // Back up: the registrar does not re-register; the key goes with its
    // lease after the ttl (etcd restores leases with a fresh ttl).
    etcd.restart();
    assert!(
        wait_until(secs(15), || !etcd.exists(&key)),
        "key of a deregistered registrar still there"
    );
    std::thread::sleep(secs(3));
    assert!(
        !etcd.exists(&key),
        "deregistered registrar wrote the key again"
    );
    assert_eq!(reg.state(), S::Deregistered);
    drop(reg);
}

#[test]
fn frozen_etcd_is_detected_and_recovered() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("outage-pause");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["v"]);

    // SIGSTOP: connections stay open, nothing answers.
    etcd.pause();
    let t = Instant::now();
    let res = client.get_entries(&p);
    let took = t.elapsed();
    etcd.resume();
    assert_unreachable(res, took, secs(5), "get_entries on a frozen etcd");

    // After resuming, everything works; the key exists (possibly re-put).
    assert!(wait_until(RECOVERY, || client.get_entries(&p).is_ok()));
    assert!(wait_until(RECOVERY, || etcd.exists(&key)));
    assert!(wait_until(RECOVERY, || reg.state() == S::Registered));
    assert!(
        wait_until(RECOVERY, || {
            let c = inst.current();
            c.err.is_none() && instances(&c) == strs(&["v"])
        }),
        "instancer after resume: {}",
        describe(&inst.current())
    );
}

#[test]
fn link_cut_longer_than_ttl_lease_expires_and_registration_comes_back() {
    // etcd keeps running, so the lease really expires while the client is
    // cut off; after the link is back the registrar must grant a new one.
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = etcd_sd::Client::connect(&[proxy.endpoint()], options(secs(1))).unwrap();
    let p = unique_prefix("outage-cut");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "svc:1");
    let old_lease = reg.lease_id().unwrap();
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["svc:1"]);
    let events = reg.events();

    proxy.cut();
    // Seen from etcd, the key goes with its lease after the 2 s ttl.
    assert!(
        wait_until(secs(10), || !etcd.exists(&key)),
        "key did not expire while the client was cut off"
    );
    assert_eq!(etcd.lease_ttl(old_lease), None);
    // Seen from the client: an error event with the last good set.
    let ev = recv_until(&rx, secs(10), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event: {e}"));
    assert_eq!(instances(&ev), strs(&["svc:1"]));
    std::thread::sleep(secs(1));
    proxy.restore();
    let up_at = Instant::now();

    assert!(
        wait_until(RECOVERY, || etcd.exists(&key)),
        "key not back within {RECOVERY:?} after the link came back"
    );
    eprintln!("key back {:?} after the link came back", up_at.elapsed());
    wait_lost_then_registered(&events, RECOVERY);
    let new_lease = reg.lease_id().unwrap();
    assert_ne!(new_lease, old_lease);
    assert!(wait_until(secs(5), || etcd.lease_of(&key) == new_lease));
    // The instancer saw the key go and come back, or only the end state;
    // either way it ends clean and exact.
    let want = ["svc:1"];
    recv_instances(&rx, RECOVERY, &want);
    assert!(wait_until(secs(5), || {
        let c = inst.current();
        c.err.is_none() && instances(&c) == strs(&want)
    }));
    std::thread::sleep(secs(3));
    assert_eq!(etcd.get(&key).as_deref(), Some("svc:1"), "key lost again");
}

/// etcd comes back with nothing: its data dir was lost (or the cluster was
/// rebuilt from scratch), so every key and lease is gone and revisions start
/// over. Registrations are put back on new leases and the Instancer follows
/// the new history.
#[test]
fn etcd_restarted_empty_registrations_come_back_and_discovery_follows() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let p = unique_prefix("outage-empty");
    let registrars: Vec<Registrar> = (0..5)
        .map(|i| {
            let r = registered(&client, format!("{p}svc{i}"), format!("10.0.0.{i}:80"));
            r
        })
        .collect();
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let want: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:80")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    recv_instances(&rx, secs(5), &want);
    // Take the Instancer's revision well past what the new history will
    // reach: a watch resumed after it would wait for revisions that never
    // come.
    for i in 0..20 {
        etcd.put(&format!("{p}noise"), &format!("n{i}"));
    }
    etcd.del(&format!("{p}noise"));
    recv_instances(&rx, secs(5), &want);

    etcd.restart_empty();
    let t = Instant::now();
    assert!(
        wait_until(secs(30), || etcd.count_prefix(&p) == 5),
        "registrations not back after an empty restart: {:?}\n{}",
        etcd.get_prefix(&p),
        etcd.log_tail()
    );
    eprintln!("all keys back after {:?}", t.elapsed());
    for r in &registrars {
        assert!(wait_until(secs(10), || r.state() == S::Registered));
        assert_eq!(etcd.lease_of(&r.service().key), r.lease_id().unwrap());
    }
    // Discovery follows the new history: a change after the restart shows.
    etcd.put(&format!("{p}extra"), "10.0.0.9:80");
    let mut want2 = want.clone();
    want2.push("10.0.0.9:80");
    recv_instances(&rx, secs(20), &want2);
}
