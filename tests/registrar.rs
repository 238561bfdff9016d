//! Registrar: registration, deregistration, state and events, and recovery
//! from a revoked lease or a deleted key.

mod support;

use std::time::{Duration, Instant};

use etcd_sd::channel::RecvTimeoutError;
use etcd_sd::{Instancer, Registrar, RegistrationState as S, Service};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdServer};

/// Bound for the registrar to put a lost key back (API: 2 s plus backoff).
const RECOVERY: Duration = Duration::from_secs(15);

#[test]
fn register_makes_the_key_visible_and_keeps_it_alive() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-visible");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "10.0.0.1:8080").with_ttl(short_ttl()),
    );
    assert_eq!(reg.state(), S::Unregistered);
    assert_eq!(reg.lease_id(), None);
    assert!(!etcd.exists(&key), "key written before register()");

    reg.register().unwrap();
    // register() blocks until the key is written.
    assert_eq!(etcd.get(&key).as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(reg.state(), S::Registered);
    let lease = reg.lease_id().expect("lease id after register");
    assert_ne!(lease, 0);
    assert_eq!(etcd.lease_of(&key), lease);

    // Kept alive well past the 2 s ttl, on the same lease.
    std::thread::sleep(secs(5));
    assert_eq!(etcd.get(&key).as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(etcd.lease_of(&key), lease);
    assert_eq!(reg.state(), S::Registered);
    assert_eq!(reg.lease_id(), Some(lease));
    let (_, remaining) = etcd.lease_ttl(lease).expect("lease alive");
    assert!(remaining >= 1, "remaining ttl {remaining}");
}

#[test]
fn deregister_removes_the_key_at_once_and_is_idempotent() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-dereg");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    let lease = reg.lease_id().unwrap();
    assert!(etcd.exists(&key));

    reg.deregister().unwrap();
    assert!(!etcd.exists(&key), "key still there right after deregister");
    assert_eq!(reg.state(), S::Deregistered);
    assert_eq!(etcd.lease_ttl(lease), None, "lease not revoked");

    reg.deregister().unwrap();
    assert_eq!(reg.state(), S::Deregistered);
    // It stays gone: keep-alive and re-registration have stopped.
    std::thread::sleep(secs(3));
    assert!(!etcd.exists(&key), "key came back after deregister");
    assert_eq!(reg.state(), S::Deregistered);
}

#[test]
fn deregister_without_register_is_fine() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-dereg-only");
    let reg = Registrar::new(&client, Service::new(format!("{p}svc"), "v"));
    reg.deregister().unwrap();
    reg.deregister().unwrap();
    assert!(!etcd.exists(&format!("{p}svc")));
}

#[test]
fn dropping_a_registrar_deregisters_it() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-drop");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    let lease = reg.lease_id().unwrap();
    // Another registrar on the same client must survive the drop.
    let other_key = format!("{p}other");
    let _other = registered(&client, other_key.clone(), "w"); // kept alive
    drop(reg);
    assert!(
        wait_until(secs(5), || !etcd.exists(&key)),
        "key still there 5 s after drop"
    );
    assert_eq!(etcd.lease_ttl(lease), None, "lease not revoked on drop");
    std::thread::sleep(secs(3));
    assert!(etcd.exists(&other_key), "other registration disturbed");
    assert!(!etcd.exists(&key), "dropped registration came back");
}

#[test]
fn events_follow_the_state_machine() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-events");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "v").with_ttl(short_ttl()),
    );
    let rx = reg.events();
    reg.register().unwrap();
    let (ok, seen) = recv_states_until(&rx, secs(5), |e, _| e.state == S::Registered);
    assert!(ok, "no Registered event: {seen:?}");
    assert!(
        has_subsequence(&states(&seen), &[S::Registering, S::Registered]),
        "expected Registering then Registered, got {seen:?}"
    );
    let registered = seen.last().unwrap();
    assert_eq!(registered.lease_id, reg.lease_id());
    assert!(registered.lease_id.is_some());
    assert!(registered.error.is_none(), "{registered:?}");

    // A second stream starts from now on: it has nothing old.
    let rx2 = reg.events();
    assert!(
        matches!(
            rx2.recv_timeout(Duration::from_millis(500)),
            Err(RecvTimeoutError::Timeout)
        ),
        "events() must be a new stream from now on"
    );

    reg.deregister().unwrap();
    let (ok, seen) = recv_states_until(&rx, secs(5), |e, _| e.state == S::Deregistered);
    assert!(ok, "no Deregistered event: {seen:?}");
    let (ok, seen2) = recv_states_until(&rx2, secs(5), |e, _| e.state == S::Deregistered);
    assert!(ok, "second stream: no Deregistered event: {seen2:?}");
    // Nothing after Deregistered but, possibly, the end of the stream.
    if let Ok(ev) = rx.recv_timeout(secs(1)) {
        panic!("event after Deregistered: {ev:?}");
    }
}

#[test]
fn revoked_lease_is_replaced_and_the_key_comes_back() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-revoke");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    let old = reg.lease_id().unwrap();
    let rx = reg.events();

    assert_eq!(etcd.revoke_lease_of(&key), old);
    let t = Instant::now();
    assert!(
        wait_until(RECOVERY, || etcd.exists(&key)),
        "key not back within {RECOVERY:?}"
    );
    eprintln!("key back after {:?}", t.elapsed());
    let seen = wait_lost_then_registered(&rx, RECOVERY);
    let new = reg.lease_id().expect("lease id");
    assert_ne!(new, old, "still the revoked lease; events {seen:?}");
    assert!(
        wait_until(secs(5), || etcd.lease_of(&key) == new),
        "key's lease {} != registrar's {new}",
        etcd.lease_of(&key)
    );
    assert_eq!(reg.state(), S::Registered);
    let lost = seen.iter().find(|e| e.state == S::Lost).unwrap();
    assert!(
        lost.lease_id.is_none() || lost.lease_id == Some(old),
        "{lost:?}"
    );
    // Stable afterwards.
    std::thread::sleep(secs(3));
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
}

#[test]
fn deleted_key_is_put_back() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-del");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    let rx = reg.events();

    assert_eq!(etcd.del(&key), 1);
    let t = Instant::now();
    assert!(
        wait_until(RECOVERY, || etcd.exists(&key)),
        "key not back within {RECOVERY:?}"
    );
    eprintln!("key back after {:?}", t.elapsed());
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
    wait_lost_then_registered(&rx, RECOVERY);
    assert_eq!(reg.state(), S::Registered);
    let lease = reg.lease_id().unwrap();
    assert!(wait_until(secs(5), || etcd.lease_of(&key) == lease));
    std::thread::sleep(secs(3));
    assert!(etcd.exists(&key), "key vanished again");
}

/// The registrar's watch on its own key is opened alongside the lease grant
/// and created by etcd before the write, so it is in place when `register()`
/// returns: a deregistration right after never races etcd setting it up.
#[test]
fn the_key_watch_is_in_place_when_register_returns() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-watch");
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let before = etcd.metric(WATCHERS, &[]);
    for i in 0..5 {
        let reg = registered(&client, format!("{p}svc{i}"), "v");
        // Read at once: nothing is waited for.
        assert_eq!(
            etcd.metric(WATCHERS, &[]),
            before + 1.0,
            "one watcher per registration, registration {i}"
        );
        reg.deregister().unwrap();
        assert!(
            wait_until(secs(5), || etcd.metric(WATCHERS, &[]) == before),
            "the key watch of registration {i} was not closed"
        );
    }
}

#[test]
fn registrars_and_an_instancer_share_one_client() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("reg-share");
    let k1 = format!("{p}one");
    let k2 = format!("{p}two");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);

    let r1 = Registrar::new(
        &client,
        Service::new(k1.clone(), "addr-1").with_ttl(short_ttl()),
    );
    let r2 = Registrar::new(
        &client,
        Service::new(k2.clone(), "addr-2").with_ttl(short_ttl()),
    );
    r1.register().unwrap();
    r2.register().unwrap();
    recv_instances(&rx, secs(10), &["addr-1", "addr-2"]);
    // One lease per registered service.
    let (l1, l2) = (r1.lease_id().unwrap(), r2.lease_id().unwrap());
    assert_ne!(l1, l2, "services share a lease");
    assert_eq!(etcd.lease_of(&k1), l1);
    assert_eq!(etcd.lease_of(&k2), l2);

    // Deregistering one disturbs neither the other nor the instancer.
    r1.deregister().unwrap();
    recv_instances(&rx, secs(10), &["addr-2"]);
    std::thread::sleep(secs(4)); // twice the ttl
    assert!(etcd.exists(&k2), "second registration lost");
    assert_eq!(etcd.lease_of(&k2), l2);
    assert_eq!(r2.state(), S::Registered);
    assert_eq!(inst.current().instances.to_vec(), strs(&["addr-2"]));
    assert!(inst.current().err.is_none());
    // The client's own seed methods still work alongside.
    assert_eq!(client.get_entries(&p).unwrap(), strs(&["addr-2"]));
}

#[test]
fn register_with_etcd_down_fails_in_time_then_recovers() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("reg-down");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "v").with_ttl(short_ttl()),
    );
    etcd.kill();
    let t = Instant::now();
    let e = reg.register().expect_err("register with etcd down");
    let took = t.elapsed();
    assert!(
        matches!(
            e.kind(),
            etcd_sd::ErrorKind::Timeout | etcd_sd::ErrorKind::Unavailable
        ),
        "kind {:?}: {e}",
        e.kind()
    );
    assert!(
        took < secs(5),
        "register took {took:?} with request_timeout 1 s"
    );
    // The registrar stays active: once etcd is back, the key appears.
    etcd.restart();
    assert!(
        wait_until(RECOVERY, || etcd.exists(&key)),
        "key not written within {RECOVERY:?} after restart; state {:?}",
        reg.state()
    );
    assert!(wait_until(secs(5), || reg.state() == S::Registered));
    assert_eq!(etcd.lease_of(&key), reg.lease_id().unwrap());
}
