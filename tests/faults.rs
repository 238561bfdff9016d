//! Faults on one etcd: outages shorter and longer than the ttl (kill and
//! restart with the data dir, SIGSTOP/SIGCONT), a half-open link (the proxy
//! blackholes), and a flapping link while a known sequence of changes is
//! written, checked against etcd's history.
//!
//! The promise under test: a registration is never lost for longer than etcd
//! itself is unreachable, no update is missed, and no call hangs.
//!
//! Every client here uses `dial_keep_alive` = 1 s, so a dead link must be
//! noticed within a few seconds.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_sd::{
    Client, ClientOptions, ErrorKind, Event, Instancer, Registrar, RegistrationEvent,
    RegistrationState as S, Service, TtlOption,
};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer, FaultProxy};

/// Keep-alive pings every second, short dial and request timeouts.
fn fault_options() -> ClientOptions {
    ClientOptions {
        dial_timeout: secs(2),
        dial_keep_alive: secs(1),
        request_timeout: secs(2),
        ..Default::default()
    }
}

/// Heartbeat 1 s, ttl `ttl_secs`: long enough to ride out a short outage.
fn ttl(ttl_secs: u64) -> TtlOption {
    TtlOption::new(secs(1), secs(ttl_secs))
}

/// Everything waiting on a registration event stream, without blocking.
fn drain_states(rx: &etcd_sd::channel::Receiver<RegistrationEvent>) -> Vec<RegistrationEvent> {
    rx.try_iter().take(100_000).collect()
}

fn is_unreachable(kind: Option<ErrorKind>) -> bool {
    matches!(kind, Some(ErrorKind::Unavailable | ErrorKind::Timeout))
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// SIGKILL, then start again on the same data dir.
    Kill,
    /// SIGSTOP, then SIGCONT: sockets stay open, nothing answers.
    Freeze,
}

/// etcd goes away for about 3 s, well under the 12 s ttl: the registration
/// must stay `Registered` on its lease (no `Lost`), subscribers get one error
/// event with the last good set and then a clean one.
fn outage_shorter_than_the_ttl(outage: Outage) {
    let mut etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], fault_options()).unwrap();
    let p = unique_prefix("short-outage");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(ttl(12)),
    );
    let events = reg.events();
    reg.register().unwrap();
    let lease = reg.lease_id().expect("lease");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["svc:1"]);

    let down_at = Instant::now();
    match outage {
        Outage::Kill => etcd.kill(),
        Outage::Freeze => etcd.pause(),
    }
    let err_ev = recv_until(&rx, secs(10), |ev| ev.err.is_some());
    let detected = down_at.elapsed();
    // Down for at least 3 s in all.
    std::thread::sleep(secs(3).saturating_sub(down_at.elapsed()));
    match outage {
        Outage::Kill => etcd.restart(),
        Outage::Freeze => etcd.resume(),
    }
    let up_at = Instant::now();
    eprintln!(
        "{outage:?}: error event after {detected:?}, etcd back after {:?}",
        down_at.elapsed()
    );
    let err_ev = err_ev.unwrap_or_else(|e| panic!("{outage:?}: no error event: {e}"));
    assert!(is_unreachable(kind_of(&err_ev)), "{}", describe(&err_ev));
    assert_eq!(instances(&err_ev), strs(&["svc:1"]), "last good set");

    recv_instances(&rx, secs(15), &["svc:1"]);
    eprintln!(
        "{outage:?}: clean event {:?} after etcd came back",
        up_at.elapsed()
    );
    assert!(
        wait_until(secs(5), || etcd.exists(&key)),
        "{outage:?}: key gone"
    );
    assert_eq!(
        etcd.lease_of(&key),
        lease,
        "{outage:?}: key on another lease"
    );
    // A few heartbeats on the same lease after the outage.
    std::thread::sleep(secs(3));
    assert_eq!(reg.state(), S::Registered);
    assert_eq!(reg.lease_id(), Some(lease));
    assert_eq!(etcd.lease_of(&key), lease);
    let (granted, remaining) = etcd.lease_ttl(lease).expect("lease alive");
    assert!(
        remaining >= granted - 4,
        "{outage:?}: lease not kept alive after the outage: {remaining}/{granted} s left"
    );
    let seen = drain_states(&events);
    assert!(
        seen.iter().all(|e| e.state != S::Lost),
        "{outage:?}: registration reported Lost during an outage shorter than the ttl: {seen:?}"
    );
    // And the instancer is live.
    etcd.put(&format!("{p}other"), "other:1");
    recv_instances(&rx, secs(10), &["other:1", "svc:1"]);
}

#[test]
fn killed_and_restarted_within_the_ttl_the_registration_stays() {
    outage_shorter_than_the_ttl(Outage::Kill);
}

#[test]
fn frozen_within_the_ttl_the_registration_stays() {
    outage_shorter_than_the_ttl(Outage::Freeze);
}

#[test]
fn frozen_longer_than_the_ttl_the_registration_comes_back() {
    let mut etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], fault_options()).unwrap();
    let p = unique_prefix("long-freeze");
    let key = format!("{p}svc");
    etcd.put(&format!("{p}static"), "static:1");
    // Heartbeat 500 ms, ttl 2 s.
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(short_ttl()),
    );
    let events = reg.events();
    reg.register().unwrap();
    let old_lease = reg.lease_id().unwrap();
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["static:1", "svc:1"]);

    etcd.pause();
    let err = recv_until(&rx, secs(10), |ev| ev.err.is_some());
    std::thread::sleep(secs(5));
    etcd.resume();
    let up_at = Instant::now();
    let err = err.unwrap_or_else(|e| panic!("no error event while frozen: {e}"));
    assert_eq!(instances(&err), strs(&["static:1", "svc:1"]));

    // No keep-alive answered for a whole ttl: the registrar must call it
    // lost and register again, on a new lease.
    wait_lost_then_registered(&events, secs(15));
    assert!(
        wait_until(secs(10), || etcd.exists(&key)),
        "key not back {:?} after resume",
        up_at.elapsed()
    );
    let new_lease = reg.lease_id().expect("lease");
    assert_ne!(new_lease, old_lease);
    assert!(wait_until(secs(5), || etcd.lease_of(&key) == new_lease));
    recv_instances(&rx, secs(15), &["static:1", "svc:1"]);
    // The old lease's expiry must not take the key with it.
    std::thread::sleep(secs(3));
    assert_eq!(etcd.get(&key).as_deref(), Some("svc:1"));
    assert_eq!(reg.state(), S::Registered);
    let cur = inst.current();
    assert!(cur.err.is_none(), "{}", describe(&cur));
    assert_eq!(instances(&cur), etcd.instances_under(&p));
}

/// Runs `f` on its own thread; fails the test if it takes longer than
/// `limit` (instead of hanging) or panics.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = etcd_sd::channel::bounded(1);
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, t.elapsed()),
        Err(_) => panic!("{what}: no answer within {limit:?} (hung or panicked)"),
    }
}

#[test]
fn a_blackholed_link_is_detected_reported_and_recovered() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], fault_options()).unwrap();
    let p = unique_prefix("blackhole");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(ttl(15)),
    );
    let events = reg.events();
    reg.register().unwrap();
    let lease = reg.lease_id().unwrap();
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["svc:1"]);
    // A registration that is dropped during the outage, while it still
    // counts as registered (its 4 s ttl has not run out yet).
    let dropped = Registrar::new(
        &client,
        Service::new(format!("{p}dropped"), "dropped:1").with_ttl(ttl(4)),
    );
    dropped.register().unwrap();
    recv_instances(&rx, secs(5), &["dropped:1", "svc:1"]);

    proxy.blackhole();
    let t0 = Instant::now();
    // Nothing tells the client the link is dead but its keep-alive pings.
    let ev = recv_until(&rx, secs(10), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("dead link not reported within 10 s: {e}"));
    let detected = t0.elapsed();
    eprintln!("blackhole reported after {detected:?}: {}", describe(&ev));
    assert!(is_unreachable(kind_of(&ev)), "{}", describe(&ev));
    assert_eq!(
        instances(&ev),
        strs(&["dropped:1", "svc:1"]),
        "last good set"
    );
    let cur = inst.current();
    assert!(cur.err.is_some());
    assert_eq!(instances(&cur), strs(&["dropped:1", "svc:1"]));
    // Dropping a registered registrar waits for its revoke at most
    // request_timeout; the key then goes by its ttl.
    let limit = secs(6);
    let state = dropped.state();
    let (_, took) = bounded("drop(Registrar)", limit, move || drop(dropped));
    eprintln!("drop of a registrar in state {state:?} took {took:?}");

    // No call hangs on the half-open link: each gives up within its timeout
    // (2 s) plus a margin.
    let c = client.clone();
    let pp = p.clone();
    let (r, took) = bounded("get_entries", limit, move || c.get_entries(&pp));
    let e = r.expect_err("get_entries over a blackholed link");
    assert!(is_unreachable(Some(e.kind())), "get_entries: {e}");
    eprintln!("get_entries failed after {took:?}: {e}");
    let c = client.clone();
    let pp = p.clone();
    let (r, took) = bounded("Instancer::new", limit, move || {
        Instancer::new(&c, &pp).map(|_| ())
    });
    let e = r.expect_err("Instancer::new over a blackholed link");
    assert!(is_unreachable(Some(e.kind())), "Instancer::new: {e}");
    eprintln!("Instancer::new failed after {took:?}");
    let c = client.clone();
    let k2 = format!("{p}late");
    let (late, took) = bounded("Registrar::register", limit, move || {
        let r = Registrar::new(&c, Service::new(k2, "late:1").with_ttl(ttl(15)));
        let res = r.register();
        (r, res)
    });
    let (late, res) = late;
    let e = res.expect_err("register over a blackholed link");
    assert!(is_unreachable(Some(e.kind())), "register: {e}");
    eprintln!("register failed after {took:?} (retrying)");
    let c = client.clone();
    let k3 = format!("{p}never");
    let (r, _) = bounded("Client::deregister", limit, move || {
        c.deregister(&Service::new(k3, ""))
    });
    assert!(is_unreachable(r.err().map(|e| e.kind())));

    // Meanwhile etcd goes on: a change the client must catch up with.
    etcd.put(&format!("{p}other"), "other:1");
    // Down ~5 s in all, well under the 15 s ttl.
    std::thread::sleep(secs(5).saturating_sub(t0.elapsed()));
    proxy.restore();
    let up_at = Instant::now();

    // The dropped registrar's key expired by its ttl (its revoke could not
    // get through); "late" is registered by its retries.
    let want = ["late:1", "other:1", "svc:1"];
    recv_instances(&rx, secs(20), &want);
    eprintln!("caught up {:?} after the link came back", up_at.elapsed());
    assert!(wait_until(secs(10), || late.state() == S::Registered));
    assert_eq!(reg.state(), S::Registered);
    assert_eq!(reg.lease_id(), Some(lease), "lease changed");
    assert_eq!(etcd.lease_of(&key), lease);
    let seen = drain_states(&events);
    assert!(
        seen.iter().all(|e| e.state != S::Lost),
        "Lost during a 5 s blackhole with a 15 s ttl: {seen:?}"
    );
    assert_eq!(etcd.instances_under(&p), strs(&want));
    let c = client.clone();
    let pp = p.clone();
    let (r, _) = bounded("get_entries after restore", limit, move || {
        c.get_entries(&pp)
    });
    let mut got = r.expect("get_entries after restore");
    got.sort();
    assert_eq!(got, strs(&want));
}

/// One write of the known sequence: `Some(value)` puts, `None` deletes.
type Op = (String, Option<String>);

/// The ops of the flapping test and, for each prefix of them, the set of
/// values etcd holds (index 0: before any op).
fn known_sequence(prefix: &str, n: usize, seed: u64) -> (Vec<Op>, Vec<Vec<String>>) {
    let mut rng = Rng::new(seed);
    let mut model = std::collections::BTreeMap::<String, String>::new();
    let mut ops = Vec::new();
    let mut states = vec![Vec::new()];
    for i in 0..n {
        let key = format!("{prefix}k{}", rng.below(6));
        let op = match rng.below(10) {
            0..=2 => None,
            // A value shared by several keys (de-duplication).
            3 => Some("shared".to_string()),
            _ => Some(format!("v{i:03}")),
        };
        match &op {
            Some(v) => {
                model.insert(key.clone(), v.clone());
            }
            None => {
                model.remove(&key);
            }
        }
        let mut vals: Vec<String> = model.values().cloned().collect();
        vals.sort();
        vals.dedup();
        states.push(vals);
        ops.push((key, op));
    }
    (ops, states)
}

/// Checks a subscriber's events against the states etcd went through:
/// every clean event is one of them, in order (coalescing allowed, going
/// back not); every error event carries a set etcd had, not older than the
/// last one seen; no clean event repeats the previous one unless an error
/// came between; the last clean event is etcd's final state.
fn check_history(events: &[Event], states: &[Vec<String>]) -> Result<(), String> {
    let show = |upto: usize| -> String {
        events[..=upto.min(events.len().saturating_sub(1))]
            .iter()
            .rev()
            .take(6)
            .map(describe)
            .collect::<Vec<_>>()
            .join(" <- ")
    };
    let mut at = 0usize;
    let mut last_clean: Option<Vec<String>> = None;
    let mut err_since_last_clean = false;
    for (n, ev) in events.iter().enumerate() {
        let set = instances(ev);
        let Some(j) = (at..states.len()).find(|&j| states[j] == set) else {
            let earlier = states[..at].iter().rposition(|s| *s == set);
            return Err(format!(
                "event #{n} {} is not a state etcd passed through at or after state #{at} \
                 (an earlier state: {earlier:?}); latest events: {}",
                describe(ev),
                show(n)
            ));
        };
        at = j;
        if ev.err.is_some() {
            err_since_last_clean = true;
            continue;
        }
        if !err_since_last_clean && last_clean.as_ref() == Some(&set) {
            return Err(format!(
                "event #{n} repeats the previous set without an error between: {}",
                show(n)
            ));
        }
        last_clean = Some(set);
        err_since_last_clean = false;
    }
    match last_clean {
        Some(last) if Some(&last) == states.last() => Ok(()),
        other => Err(format!(
            "last clean event {other:?} is not etcd's final state {:?}",
            states.last()
        )),
    }
}

#[test]
fn a_flapping_link_misses_and_repeats_no_change() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], fault_options()).unwrap();
    let p = unique_prefix("flap");
    // A registration on the same flapping client, outside the watched
    // prefix: every outage is shorter than its ttl, so it is never lost.
    let reg_key = format!("{}svc", unique_prefix("flap-reg"));
    let reg = Registrar::new(
        &client,
        Service::new(reg_key.clone(), "reg:1").with_ttl(ttl(15)),
    );
    let reg_events = reg.events();
    reg.register().unwrap();
    let lease = reg.lease_id().unwrap();

    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let from_callback = Arc::new(Mutex::new(Vec::<Event>::new()));
    let sink = from_callback.clone();
    inst.on_update(move |ev| sink.lock().unwrap().push(ev.clone()));
    let (ops, states) = known_sequence(&p, 250, 0x5EED);

    let done = AtomicBool::new(false);
    let mut flaps = Vec::new();
    let from_channel = std::thread::scope(|s| {
        // Collects the subscription, draining it as fast as it fills.
        let collector = s.spawn(|| {
            let mut got = Vec::new();
            let started = Instant::now();
            while started.elapsed() < secs(120) {
                match rx.recv_timeout(ms(100)) {
                    Ok(ev) => got.push(ev),
                    Err(_) if done.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            got
        });
        // Writes the known sequence straight to etcd, paced.
        let writer = s.spawn(|| {
            for (key, op) in &ops {
                match op {
                    Some(v) => etcd.put(key, v),
                    None => {
                        etcd.del(key);
                    }
                }
                std::thread::sleep(ms(50));
            }
        });
        // Flaps the client's link meanwhile: cuts and blackholes, some with a
        // compaction past everything the watcher has seen.
        for round in 0..30u32 {
            if writer.is_finished() {
                break;
            }
            std::thread::sleep(ms(1200));
            let (mode, down) = if round.is_multiple_of(2) {
                proxy.cut();
                ("cut", ms(1500))
            } else {
                proxy.blackhole();
                ("blackhole", ms(3000))
            };
            std::thread::sleep(down);
            let compacted = round % 3 == 2;
            if compacted {
                etcd.compact_latest();
            }
            proxy.restore();
            flaps.push(format!("{mode}{}", if compacted { "+compact" } else { "" }));
        }
        writer.join().unwrap();
        proxy.restore();
        // Converges to etcd's final state.
        let want = etcd.instances_under(&p);
        assert_eq!(
            Some(&want),
            states.last(),
            "the model of the writes is wrong"
        );
        let ok = wait_until(secs(20), || {
            let c = inst.current();
            c.err.is_none() && instances(&c) == want
        });
        std::thread::sleep(ms(500));
        done.store(true, Ordering::SeqCst);
        let got = collector.join().unwrap();
        assert!(
            ok,
            "instancer did not converge: etcd {want:?}, instancer {}",
            describe(&inst.current())
        );
        got
    });
    eprintln!(
        "flaps: {flaps:?}; {} states, {} channel events ({} errors), {} callback events",
        states.len(),
        from_channel.len(),
        from_channel.iter().filter(|e| e.err.is_some()).count(),
        from_callback.lock().unwrap().len()
    );
    assert!(flaps.len() >= 3, "too few flaps: {flaps:?}");
    assert!(
        from_channel.iter().any(|e| e.err.is_some()),
        "no outage was ever reported"
    );
    if let Err(e) = check_history(&from_channel, &states) {
        panic!("subscribe() history: {e}");
    }
    let cb = from_callback.lock().unwrap().clone();
    if let Err(e) = check_history(&cb, &states) {
        panic!("on_update() history: {e}");
    }

    // The registration rode it all out on its first lease.
    let seen = drain_states(&reg_events);
    assert!(
        seen.iter().all(|e| e.state != S::Lost),
        "registration lost while every outage was shorter than its ttl: {seen:?}"
    );
    assert_eq!(reg.state(), S::Registered);
    assert_eq!(etcd.lease_of(&reg_key), lease);
}

/// The fault injection itself: a blackhole keeps the sockets open (no reset,
/// no end of stream) but moves no byte, and after `restore` the held bytes
/// flow; `cut` ends the connection.
#[test]
fn the_proxy_blackhole_holds_bytes_and_keeps_sockets_open() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    // An echo server on 127.0.0.1 as the proxy's target.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let started = Instant::now();
            while started.elapsed() < secs(60) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    let proxy = FaultProxy::start(&target);
    let mut c = TcpStream::connect(proxy.endpoint()).unwrap();
    c.set_read_timeout(Some(ms(2000))).unwrap();
    let mut buf = [0u8; 16];
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"ping");

    proxy.blackhole();
    std::thread::sleep(ms(100));
    c.write_all(b"held").unwrap();
    c.set_read_timeout(Some(ms(700))).unwrap();
    match c.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("blackhole let something through or closed the socket: {other:?}"),
    }
    proxy.restore();
    c.set_read_timeout(Some(ms(3000))).unwrap();
    c.read_exact(&mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"held", "held bytes delivered after restore");

    proxy.cut();
    match c.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes after cut"),
    }
}
