//! `Client::stats` (API.md §5.3): gauges that follow Registrars and
//! Instancers, counters that follow registrations, lost leases, resumed and
//! re-read watches, published Events and callback panics; counters only
//! grow, clones share them, and reading them never blocks (not even while
//! etcd is stopped).
//!
//! Every wait is bounded; measured values are printed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::{Client, Instancer, Registrar, RegistrationState, Service, Stats};
use support::api::*;
use support::{ms, secs, unique_prefix, EtcdServer, FaultProxy};

/// Bound for the Registrar to put a lost key back (2 s plus backoff).
const RECOVERY: Duration = Duration::from_secs(15);

/// The counter fields (those that only grow), by name.
fn counters(s: &Stats) -> [(&'static str, u64); 7] {
    [
        ("registrations", s.registrations),
        ("reregistrations", s.reregistrations),
        ("leases_lost", s.leases_lost),
        ("watch_resumes", s.watch_resumes),
        ("rereads", s.rereads),
        ("events", s.events),
        ("callback_panics", s.callback_panics),
    ]
}

#[test]
fn a_fresh_client_is_connected_and_counts_nothing() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let s = client.stats();
    eprintln!("fresh: {s:?}");
    let mut want = Stats::default();
    want.connected = true;
    assert_eq!(s, want);
    // A clone reads the same.
    assert_eq!(client.clone().stats(), want);
}

#[test]
fn registrars_are_counted_shared_by_clones_and_uncounted_when_dropped() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let clone = client.clone();
    let p = unique_prefix("stats-reg");

    let reg = Registrar::new(
        &client,
        Service::new(format!("{p}a"), "a:1").with_ttl(short_ttl()),
    );
    let s = clone.stats();
    eprintln!("after Registrar::new: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (1, 0, 0));

    reg.register().unwrap();
    let s = clone.stats();
    eprintln!("after register: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (1, 1, 1));

    // Client::register makes a Registrar of its own; a clone's register
    // counts on the same client.
    let b = Service::new(format!("{p}b"), "b:1").with_ttl(short_ttl());
    clone.register(&b).unwrap();
    let s = client.stats();
    eprintln!("after Client::register: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (2, 2, 2));
    // Registering the same service again writes nothing new.
    client.register(&b).unwrap();
    let s = client.stats();
    eprintln!("after the same Client::register: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (2, 2, 2));

    // Deregistered but alive: still a registrar, no longer registered.
    reg.deregister().unwrap();
    assert_eq!(reg.state(), RegistrationState::Deregistered);
    let s = wait_stats(&client, secs(5), "deregistered", |s| s.registered == 1);
    eprintln!("after deregister: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (2, 1, 2));

    drop(reg);
    let s = wait_stats(&client, secs(5), "dropped", |s| s.registrars == 1);
    eprintln!("after drop: {s:?}");
    assert_eq!((s.registrars, s.registered, s.registrations), (1, 1, 2));

    client.deregister(&b).unwrap();
    let s = wait_stats(&clone, secs(5), "Client::deregister", |s| {
        s.registrars == 0 && s.registered == 0
    });
    eprintln!("after Client::deregister: {s:?}");
    assert_eq!(s.registrations, 2, "counters do not go down");
    assert_eq!((s.reregistrations, s.leases_lost), (0, 0));
    assert!(s.connected);
}

#[test]
fn a_revoked_lease_is_counted_lost_and_registered_again() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("stats-revoke");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(short_ttl()),
    );
    let events = reg.events();
    reg.register().unwrap();
    let before = client.stats();
    eprintln!("before revoke: {before:?}");
    assert_eq!(
        (
            before.registrations,
            before.reregistrations,
            before.leases_lost
        ),
        (1, 0, 0)
    );

    let t0 = Instant::now();
    etcd.revoke_lease_of(&key);
    let seen = wait_lost_then_registered(&events, RECOVERY);
    eprintln!("back after {:?}: {:?}", t0.elapsed(), states(&seen));
    let s = wait_stats(&client, secs(5), "re-registration counted", |s| {
        s.reregistrations >= 1 && s.registrations >= 2 && s.leases_lost >= 1
    });
    eprintln!("after re-registration: {s:?}");
    assert_eq!(s.leases_lost, 1, "one lost lease");
    assert_eq!(s.reregistrations, 1);
    assert_eq!(s.registrations, 2);
    assert_eq!((s.registrars, s.registered), (1, 1));
    assert_eq!(reg.state(), RegistrationState::Registered);
    assert!(etcd.exists(&key));
    // And it stays so (the new lease is kept alive).
    std::thread::sleep(secs(3));
    let s = client.stats();
    eprintln!("3 s later: {s:?}");
    assert_eq!(
        (
            s.leases_lost,
            s.reregistrations,
            s.registrations,
            s.registered
        ),
        (1, 1, 2, 1)
    );
}

#[test]
fn instancers_are_counted_up_and_down_and_a_failed_one_is_not() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("stats-inst");
    let a = Instancer::new(&client, &p).unwrap();
    assert_eq!(client.stats().instancers, 1);
    let b = Instancer::new(&client.clone(), &format!("{p}b/")).unwrap();
    let s = client.stats();
    eprintln!("two instancers: {s:?}");
    assert_eq!(s.instancers, 2);
    // Stopped but alive still counts.
    b.stop();
    assert_eq!(client.stats().instancers, 2);
    drop(b);
    wait_stats(&client, secs(5), "one dropped", |s| s.instancers == 1);
    drop(a);
    let s = wait_stats(&client, secs(5), "both dropped", |s| s.instancers == 0);
    eprintln!("none: {s:?}");

    etcd.kill();
    let t0 = Instant::now();
    let r = Instancer::new(&client, &p);
    let took = t0.elapsed();
    assert!(r.is_err(), "Instancer::new with etcd killed succeeded");
    let s = client.stats();
    eprintln!(
        "failed Instancer::new after {took:?} ({}): {s:?}",
        r.err().unwrap()
    );
    assert_eq!(s.instancers, 0, "a failed Instancer::new left the gauge up");
    assert!(!s.connected, "connected after a failed call");
    // Still 0 a bit later (nothing in the background).
    std::thread::sleep(secs(1));
    assert_eq!(client.stats().instancers, 0);
}

/// `n_subscribers` receivers (a channel, a go-kit style sender and a
/// callback, as many as asked) on one Instancer; `changes` distinct puts,
/// each waited for. `events` grows by one per change, whatever the number
/// of subscribers, and equals what one subscriber received.
fn events_match_one_subscriber(n_subscribers: usize) {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("stats-events");
    etcd.put(&format!("{p}k0"), "v0");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let (gtx, grx) = etcd_sd::channel::unbounded();
    if n_subscribers >= 2 {
        inst.register(gtx);
    }
    let called = Arc::new(AtomicUsize::new(0));
    if n_subscribers >= 3 {
        let c = called.clone();
        inst.on_update(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
    }
    let mut received = 0u64;
    let mut want = vec!["v0".to_string()];
    recv_instances(&rx, secs(5), &["v0"]);
    received += 1;
    let s0 = client.stats();
    eprintln!("{n_subscribers} subscriber(s), after the first snapshot: {s0:?}");
    assert_eq!(s0.events, 1, "the first snapshot is one published Event");

    let changes = 5;
    for i in 1..=changes {
        etcd.put(&format!("{p}k{i}"), &format!("v{i}"));
        want.push(format!("v{i}"));
        let w: Vec<&str> = want.iter().map(|s| s.as_str()).collect();
        recv_instances(&rx, secs(5), &w);
        received += 1;
    }
    // The same value again changes nothing visible: no new Event.
    etcd.put(&format!("{p}k1"), "v1");
    assert_no_event(&rx, secs(1), "an identical set re-published");
    // Anything left over (there should be none) counts too.
    received += drain(&rx, ms(300)).len() as u64;
    let s = client.stats();
    eprintln!(
        "{n_subscribers} subscriber(s): received {received}, stats {s:?}, \
         go-kit channel {}, callback calls {}",
        grx.try_iter().count(),
        called.load(Ordering::SeqCst)
    );
    assert_eq!(s.events, received, "events vs what a subscriber received");
    assert_eq!(s.events, 1 + changes);
    assert_eq!(s.instancers, 1);
    assert_eq!(s.callback_panics, 0);
    assert_eq!((s.watch_resumes, s.rereads), (0, 0));
}

#[test]
fn events_count_changes_with_one_subscriber() {
    events_match_one_subscriber(1);
}

#[test]
fn events_count_changes_not_subscribers() {
    events_match_one_subscriber(3);
}

#[test]
fn an_etcd_restart_resumes_the_watch_without_a_reread() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("stats-resume");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);
    let s0 = client.stats();
    eprintln!("before kill: {s0:?}");
    assert_eq!((s0.watch_resumes, s0.rereads), (0, 0));

    etcd.kill();
    let ev = recv_until(&rx, secs(15), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event after kill: {e}"));
    eprintln!("error event: {}", describe(&ev));
    etcd.restart();
    let t0 = Instant::now();
    let ev = recv_until(&rx, secs(20), |ev| ev.err.is_none())
        .unwrap_or_else(|e| panic!("no clean event after restart: {e}"));
    eprintln!("clean event after {:?}: {}", t0.elapsed(), describe(&ev));
    assert_eq!(instances(&ev), strs(&["a:1"]));
    let s = wait_stats(&client, secs(10), "watch resumed", |s| {
        s.watch_resumes > s0.watch_resumes
    });
    eprintln!("after restart: {s:?}");
    assert!(s.watch_resumes >= 1);
    assert_eq!(s.rereads, s0.rereads, "a restart with data kept re-read");
    assert!(s.events >= s0.events + 2, "error and clean Events counted");

    // The resumed watch works.
    etcd.put(&format!("{p}b"), "b:1");
    recv_instances(&rx, secs(10), &["a:1", "b:1"]);
    let s = client.stats();
    eprintln!("after a change: {s:?}");
    assert_eq!(s.rereads, s0.rereads);
}

#[test]
fn a_compaction_while_disconnected_makes_a_reread() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], options(secs(1))).expect("connect via proxy");
    let p = unique_prefix("stats-reread");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);
    let s0 = client.stats();
    eprintln!("before cut: {s0:?}");
    assert_eq!(s0.rereads, 0, "the first read is not a re-read");

    proxy.cut();
    let ev = recv_until(&rx, secs(15), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event after cut: {e}"));
    eprintln!("error event: {}", describe(&ev));
    // While the client cannot reach etcd: changes, then a compaction past
    // the watch's revision.
    etcd.del(&format!("{p}a"));
    etcd.put(&format!("{p}b"), "b:1");
    etcd.put(&format!("{p}c"), "c:1");
    let compacted = etcd.compact_latest();
    eprintln!("compacted at {compacted}");
    proxy.restore();
    let t0 = Instant::now();
    recv_instances(&rx, secs(20), &["b:1", "c:1"]);
    eprintln!("caught up after {:?}", t0.elapsed());
    let s = wait_stats(&client, secs(10), "re-read counted", |s| {
        s.rereads > s0.rereads
    });
    eprintln!("after the compaction: {s:?}");
    assert!(s.rereads >= 1);
    assert!(s.connected);

    // The watch that follows works, without more re-reads.
    etcd.put(&format!("{p}d"), "d:1");
    recv_instances(&rx, secs(10), &["b:1", "c:1", "d:1"]);
    let s2 = client.stats();
    eprintln!("after a change: {s2:?}");
    assert_eq!(s2.rereads, s.rereads);
}

#[test]
fn panicking_callbacks_are_counted() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("stats-panic");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);
    assert_eq!(client.stats().callback_panics, 0);

    // Called with the current state at once: panics, is removed.
    inst.on_update(|_| panic!("test: callback panics on purpose (1)"));
    let s = wait_stats(&client, secs(5), "first panic", |s| s.callback_panics >= 1);
    eprintln!("one panic: {s:?}");
    assert_eq!(s.callback_panics, 1);

    // A change: the first callback was removed, so no new panic.
    etcd.put(&format!("{p}a"), "a:1");
    recv_instances(&rx, secs(5), &["a:1"]);
    std::thread::sleep(ms(300));
    assert_eq!(client.stats().callback_panics, 1);

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    inst.on_update(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        panic!("test: callback panics on purpose (2)");
    });
    let s = wait_stats(&client.clone(), secs(5), "second panic", |s| {
        s.callback_panics >= 2
    });
    eprintln!("two panics: {s:?}");
    assert_eq!(s.callback_panics, 2);
    etcd.put(&format!("{p}b"), "b:1");
    recv_instances(&rx, secs(5), &["a:1", "b:1"]);
    std::thread::sleep(ms(300));
    assert_eq!(client.stats().callback_panics, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn counters_never_go_down_under_churn() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("stats-churn");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);
    let stop = AtomicBool::new(false);
    let cycles = 50;

    let (polls, last) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut prev = client.stats();
            let mut polls = 0u64;
            let deadline = Instant::now() + secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let now = client.stats();
                for ((name, a), (_, b)) in counters(&prev).iter().zip(counters(&now).iter()) {
                    assert!(b >= a, "{name} went down: {a} -> {b} ({prev:?} -> {now:?})");
                }
                prev = now;
                polls += 1;
                if polls.is_multiple_of(64) {
                    std::thread::sleep(ms(1));
                }
            }
            (polls, prev)
        });
        for i in 0..cycles {
            let key = format!("{p}k{}", i % 5);
            if i % 2 == 0 {
                let reg = registered(&client, key, format!("v{i}"));
                reg.deregister().unwrap();
                drop(reg);
            } else {
                let svc = Service::new(key, format!("v{i}")).with_ttl(short_ttl());
                client.register(&svc).unwrap();
                client.deregister(&svc).unwrap();
            }
        }
        stop.store(true, Ordering::SeqCst);
        poller.join().expect("poller")
    });
    let s = wait_stats(&client, secs(5), "all gone", |s| {
        s.registrars == 0 && s.registered == 0
    });
    eprintln!("{cycles} cycles, {polls} polls; last polled {last:?}; now {s:?}");
    assert!(polls > 0);
    assert_eq!(s.registrations, cycles);
    assert_eq!((s.reregistrations, s.leases_lost), (0, 0));
    assert!(s.events >= 1);
    assert_eq!(s.instancers, 1);
}

#[test]
fn stats_do_not_block_while_etcd_is_stopped() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("stats-paused");
    let _reg = registered(&client, format!("{p}svc"), "svc:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["svc:1"]);
    assert!(client.stats().connected);

    etcd.pause();
    let s = client.stats();
    eprintln!("paused: {s:?}");
    let n = 100_000;
    let t0 = Instant::now();
    let mut registered_sum = 0u64;
    for _ in 0..n {
        registered_sum += std::hint::black_box(client.stats()).registered;
    }
    let took = t0.elapsed();
    eprintln!(
        "{n} stats() calls while etcd is stopped: {took:?} ({:?} each; sum {registered_sum})",
        took / n
    );
    assert!(took < secs(5), "{n} stats() took {took:?}");

    let t0 = Instant::now();
    let r = client.get_entries(&p);
    let took = t0.elapsed();
    assert!(r.is_err(), "get_entries with etcd stopped: {r:?}");
    let s = client.stats();
    eprintln!("after a failed get_entries ({took:?}): {s:?}");
    assert!(!s.connected, "connected after a failed call");

    etcd.resume();
    let mut ok = false;
    for _ in 0..20 {
        if client.get_entries(&p).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(ms(250));
    }
    assert!(ok, "get_entries never succeeded after resume");
    let s = client.stats();
    eprintln!("after resume and a good get_entries: {s:?}");
    assert!(s.connected, "not connected after a successful call");
}
