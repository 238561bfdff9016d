//! Hostile probes of `Client::stats` (API.md §5.3). Every wait is bounded.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use etcd_sd::{Instancer, Registrar, RegistrationState, Service, Stats};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer};

#[test]
fn hostile_register_twice_counts_once_and_again_after_deregister() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-twice");
    let reg = Registrar::new(
        &client,
        Service::new(format!("{p}a"), "a:1").with_ttl(short_ttl()),
    );
    reg.register().unwrap();
    reg.register().unwrap();
    let s = client.stats();
    eprintln!("twice: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (1, 1, 1));
    reg.deregister().unwrap();
    reg.deregister().unwrap();
    let s = wait_stats(&client, secs(5), "dereg", |s| s.registered == 0);
    assert_eq!(s.registrars, 1);
    reg.register().unwrap();
    let s = client.stats();
    eprintln!("again: {s:?}");
    assert_eq!(
        (
            s.registrars,
            s.registered,
            s.registrations,
            s.reregistrations
        ),
        (1, 1, 2, 0)
    );
    drop(reg);
    let s = wait_stats(&client, secs(5), "dropped", |s| {
        s.registrars == 0 && s.registered == 0
    });
    eprintln!("dropped: {s:?}");
}

#[test]
fn hostile_client_register_replacing_a_key() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-replace");
    let k = format!("{p}b");
    client
        .register(&Service::new(&k, "b:1").with_ttl(short_ttl()))
        .unwrap();
    client
        .register(&Service::new(&k, "b:2").with_ttl(short_ttl()))
        .unwrap();
    let s = wait_stats(&client, secs(5), "replaced", |s| s.registrars == 1);
    eprintln!("replaced: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (1, 1, 2));
    assert_eq!(etcd.get(&k).as_deref(), Some("b:2"));
    // Replace by a value refused for good: the old one stays, gauges unchanged.
    let big = "x".repeat(1_600_000);
    let r = client.register(&Service::new(&k, big).with_ttl(short_ttl()));
    eprintln!("refused: {:?}", r.as_ref().err().map(|e| e.kind()));
    assert!(r.is_err());
    std::thread::sleep(ms(300));
    let s = client.stats();
    eprintln!("after refused replace: {s:?}");
    assert_eq!((s.registrars, s.registered), (1, 1));
    client.deregister(&Service::new(&k, "")).unwrap();
    let s = wait_stats(&client, secs(5), "all gone", |s| {
        s.registrars == 0 && s.registered == 0
    });
    eprintln!("gone: {s:?}");
}

#[test]
fn hostile_refused_for_good_leaves_no_gauge_up() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-big");
    let big = "y".repeat(1_600_000);
    let r = client.register(&Service::new(format!("{p}c"), big.clone()).with_ttl(short_ttl()));
    assert!(r.is_err());
    let s = client.stats();
    eprintln!("Client::register refused: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (0, 0, 0));
    {
        let reg = Registrar::new(
            &client,
            Service::new(format!("{p}d"), big).with_ttl(short_ttl()),
        );
        assert!(reg.register().is_err());
        assert!(reg.register().is_err());
        let s = client.stats();
        eprintln!("Registrar refused (alive): {s:?}");
        assert_eq!((s.registrars, s.registered, s.registrations), (1, 0, 0));
    }
    let s = wait_stats(&client, secs(5), "dropped", |s| s.registrars == 0);
    assert_eq!(s.registered, 0);
}

#[test]
fn hostile_registrar_dropped_while_etcd_down_and_lost() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("hs-down");
    let a = registered(&client, format!("{p}a"), "a:1");
    let b = registered(&client, format!("{p}b"), "b:1");
    assert_eq!(client.stats().registered, 2);
    etcd.kill();
    // Wait (bounded) for at least one to be seen lost.
    let lost = wait_until(secs(8), || a.state() != RegistrationState::Registered);
    eprintln!(
        "a lost: {lost}, a {:?}, b {:?}, stats {:?}",
        a.state(),
        b.state(),
        client.stats()
    );
    let s = client.stats();
    if a.state() != RegistrationState::Registered && b.state() != RegistrationState::Registered {
        assert_eq!(s.registered, 0, "registered while both are {:?}", a.state());
    }
    let t0 = std::time::Instant::now();
    drop(a);
    drop(b);
    eprintln!("drops took {:?}", t0.elapsed());
    let s = wait_stats(&client, secs(5), "dropped while down", |s| {
        s.registrars == 0 && s.registered == 0
    });
    eprintln!("after drops, down: {s:?}");
    // connected goes false after a failed call
    let _ = client.get_entries(&p);
    let s = client.stats();
    assert!(!s.connected, "connected with etcd killed: {s:?}");
    etcd.restart();
    let ok = wait_until(secs(10), || client.get_entries(&p).is_ok());
    assert!(ok);
    let s = client.stats();
    eprintln!("after restart: {s:?}");
    assert!(s.connected);
    assert_eq!((s.registrars, s.registered), (0, 0));
}

#[test]
fn hostile_instancer_stop_then_drop() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-inst");
    let a = Instancer::new(&client, &p).unwrap();
    let b = Instancer::new(&client.clone(), &p).unwrap();
    assert_eq!(client.stats().instancers, 2);
    a.stop();
    a.stop();
    assert_eq!(client.stats().instancers, 2, "stopped is still alive");
    drop(a);
    assert_eq!(client.stats().instancers, 1);
    b.stop();
    drop(b);
    assert_eq!(client.stats().instancers, 0);
    // A failed new (bad prefix) counts nothing.
    assert!(Instancer::new(&client, "").is_err());
    assert_eq!(client.stats().instancers, 0);
}

#[test]
fn hostile_events_identical_sets_not_counted() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-ident");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let rx2 = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);
    let e0 = client.stats().events;
    etcd.put(&format!("{p}a"), "a:1");
    recv_instances(&rx, secs(5), &["a:1"]);
    let e1 = client.stats().events;
    // Same key, same value: a watch event but the same set.
    etcd.put(&format!("{p}a"), "a:1");
    // A key with the same value: set as instances? go-kit keeps a list of values.
    assert_no_event(&rx, ms(700), "identical put");
    let e2 = client.stats().events;
    eprintln!("events: e0 {e0} e1 {e1} e2 {e2}");
    assert_eq!(e1, e0 + 1);
    assert_eq!(e2, e1, "identical set counted");
    let n2 = drain(&rx2, ms(200)).len();
    eprintln!("second subscriber got {n2}");
}

#[test]
fn hostile_events_match_callback_calls_through_an_outage() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("hs-outage");
    let inst = Instancer::new(&client, &p).unwrap();
    let inst2 = Instancer::new(&client, &p).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);
    let base = client.stats().events; // two initial events (one per instancer)
    eprintln!("base {base} {:?}", client.stats());
    // Slow callback so Events are never coalesced? Keep it fast; count.
    inst2.on_update(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    wait_until(secs(3), || calls.load(Ordering::SeqCst) >= 1);
    let c0 = calls.load(Ordering::SeqCst);
    etcd.put(&format!("{p}a"), "a:1");
    recv_instances(&rx, secs(5), &["a:1"]);
    etcd.kill();
    std::thread::sleep(secs(3));
    let errs = drain(&rx, ms(300));
    eprintln!(
        "during outage rx got: {:?}",
        errs.iter().map(describe).collect::<Vec<_>>()
    );
    etcd.restart();
    etcd.put(&format!("{p}b"), "b:1");
    let _ = recv_until(&rx, secs(10), |e| instances(e).len() == 2);
    std::thread::sleep(ms(500));
    let s = client.stats();
    let cb = calls.load(Ordering::SeqCst) - c0;
    eprintln!("after outage: {s:?}; callback calls since base {cb}");
    // Two instancers see the same changes: events since base should be even-ish
    // and at least 2*callback calls of inst2 (callbacks may coalesce).
    assert!(
        s.events - base >= cb,
        "events {} < callback calls {cb}",
        s.events - base
    );
    assert!(
        s.watch_resumes >= 1 || s.rereads >= 1,
        "no resume counted: {s:?}"
    );
}

#[test]
fn hostile_stats_from_inside_a_callback() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-cbstats");
    let inst = Instancer::new(&client, &p).unwrap();
    let seen: Arc<Mutex<Vec<Stats>>> = Arc::default();
    let s2 = seen.clone();
    let c2 = client.clone();
    inst.on_update(move |_| {
        let st = c2.stats();
        s2.lock().unwrap().push(st);
    });
    etcd.put(&format!("{p}a"), "a:1");
    let ok = wait_until(secs(5), || seen.lock().unwrap().len() >= 2);
    eprintln!("stats seen in callbacks: {:?}", seen.lock().unwrap());
    assert!(ok, "callback calling stats() stalled");
    let v = seen.lock().unwrap().clone();
    assert!(v.last().unwrap().events >= 2);
    // Dropping the instancer whose callback captured the last client clone
    drop(client);
    drop(inst);
}

#[test]
fn hostile_registrar_outlives_client_handles() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-outlive");
    let reg = registered(&client, format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);
    let watcher = connect(&etcd);
    drop(client);
    // Still registered and still watched.
    std::thread::sleep(secs(3));
    assert_eq!(reg.state(), RegistrationState::Registered);
    assert!(etcd.exists(&format!("{p}a")));
    drop(reg);
    let ok = wait_until(secs(5), || !etcd.exists(&format!("{p}a")));
    assert!(ok, "key left after drop of registrar that outlived client");
    recv_instances(&rx, secs(5), &[]);
    drop(inst);
    drop(watcher);
}

struct PanicOnDrop(Arc<AtomicUsize>);
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("test: closure drop panics on purpose");
    }
}

#[test]
fn hostile_callback_panicking_drop_is_counted_once() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-pdrop");
    let inst = Instancer::new(&client, &p).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = PanicOnDrop(drops.clone());
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    let id = inst.on_update(move |_| {
        let _ = &guard;
        c.fetch_add(1, Ordering::SeqCst);
    });
    assert!(wait_until(secs(5), || called.load(Ordering::SeqCst) >= 1));
    assert_eq!(client.stats().callback_panics, 0);
    inst.remove_callback(id);
    let s = wait_stats(&client, secs(5), "drop panic counted", |s| {
        s.callback_panics >= 1
    });
    std::thread::sleep(ms(300));
    let s2 = client.stats();
    eprintln!(
        "after panicking drop: {s:?} then {s2:?}, drops {}",
        drops.load(Ordering::SeqCst)
    );
    assert_eq!(s2.callback_panics, 1);
    // A callback that panics AND whose drop panics: 2 panics.
    let guard = PanicOnDrop(drops.clone());
    inst.on_update(move |_| {
        let _ = &guard;
        panic!("test: callback panics on purpose");
    });
    let s = wait_stats(&client, secs(5), "both panics", |s| s.callback_panics >= 3);
    eprintln!("callback + its drop: {s:?}");
    assert_eq!(s.callback_panics, 3);
    // Dispatch goes on.
    let rx = inst.subscribe();
    etcd.put(&format!("{p}z"), "z:1");
    recv_instances(&rx, secs(5), &["z:1"]);
}

#[test]
fn hostile_lost_lease_gauge_tracks_state() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("hs-lost");
    let reg = registered(&client, format!("{p}a"), "a:1");
    let events = reg.events();
    let mut mismatches = 0;
    for round in 0..3 {
        etcd.revoke_lease_of(&format!("{p}a"));
        // Sample state and gauge repeatedly while it recovers.
        let ok = wait_until(secs(15), || {
            let st = reg.state();
            let s = client.stats();
            let st2 = reg.state();
            if st == st2 {
                let want = u64::from(st == RegistrationState::Registered);
                if s.registered != want {
                    mismatches += 1;
                }
            }
            s.leases_lost > round && st2 == RegistrationState::Registered
        });
        assert!(ok, "round {round}: not recovered; {:?}", client.stats());
    }
    let s = client.stats();
    eprintln!(
        "after 3 revokes: {s:?}; mismatches {mismatches}; events {:?}",
        drain_states(&events)
    );
    assert_eq!(s.leases_lost, 3);
    assert_eq!(s.reregistrations, 3);
    assert_eq!(s.registrations, 4);
    assert_eq!(mismatches, 0);
}

fn drain_states(
    rx: &etcd_sd::channel::Receiver<etcd_sd::RegistrationEvent>,
) -> Vec<RegistrationState> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e.state);
    }
    v
}
