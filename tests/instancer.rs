//! Instancer: snapshots, subscriptions of every kind, churn, compaction,
//! callbacks that call back into the instancer, stop.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use etcd_sd::channel::{self, RecvTimeoutError};
use etcd_sd::{CallbackId, ErrorKind, Event, Instancer, Instances, Registrar, Service};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer, FaultProxy};

/// Waits until the instancer's `current()` is error-free and equals etcd's
/// state under `prefix`; panics with both on timeout.
fn assert_converges(etcd: &EtcdServer, inst: &Instancer, prefix: &str, timeout: Duration) {
    let want = etcd.instances_under(prefix);
    let ok = wait_until(timeout, || {
        let c = inst.current();
        c.err.is_none() && instances(&c) == want
    });
    assert!(
        ok,
        "instancer did not converge within {timeout:?}\n etcd: {want:?}\n inst: {}",
        describe(&inst.current())
    );
}

/// Random puts and deletes under `prefix` via etcdctl: 20 keys, 7 values
/// (so values repeat), now and then a delete of the whole prefix.
fn churn(etcd: &EtcdServer, prefix: &str, ops: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..ops {
        let key = format!("{prefix}k{:02}", rng.below(20));
        match rng.below(20) {
            0 => {
                etcd.del_prefix(prefix);
            }
            1..=6 => {
                etcd.del(&key);
            }
            _ => etcd.put(&key, &format!("10.0.0.{}:80", rng.below(7))),
        }
    }
}

#[test]
fn current_is_populated_when_new_returns() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-new");
    etcd.put(&format!("{p}b"), "b:1");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    // go-kit's NewInstancer reads the prefix before returning.
    let cur = inst.current();
    assert!(cur.err.is_none(), "{}", describe(&cur));
    assert_eq!(instances(&cur), strs(&["a:1", "b:1"]));
}

#[test]
fn every_kind_of_new_subscriber_gets_the_current_state_at_once() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-initial");
    etcd.put(&format!("{p}1"), "x:1");
    etcd.put(&format!("{p}2"), "y:1");
    let inst = Instancer::new(&client, &p).unwrap();
    assert_converges(&etcd, &inst, &p, secs(5));

    let t = Instant::now();
    let rx = inst.subscribe();
    let ev = rx.recv_timeout(secs(2)).expect("initial event (subscribe)");
    assert!(ev.err.is_none(), "{}", describe(&ev));
    assert_eq!(instances(&ev), strs(&["x:1", "y:1"]));

    let (tx, rx2) = channel::unbounded();
    inst.register(tx);
    let ev = rx2.recv_timeout(secs(2)).expect("initial event (register)");
    assert_eq!(instances(&ev), strs(&["x:1", "y:1"]));

    let (ctx, crx) = channel::unbounded();
    let _id = inst.on_update(move |ev: &Event| {
        let _ = ctx.send(ev.clone());
    });
    let ev = crx.recv_timeout(secs(2)).expect("initial event (callback)");
    assert_eq!(instances(&ev), strs(&["x:1", "y:1"]));
    assert!(
        t.elapsed() < secs(3),
        "initial events took {:?}",
        t.elapsed()
    );

    // Exactly one initial event each, nothing more without a change.
    assert_no_event(&rx, ms(500), "subscribe");
    assert_no_event(&rx2, ms(10), "register");
    assert_no_event(&crx, ms(10), "callback");

    // Then every kind follows a change.
    etcd.put(&format!("{p}3"), "z:1");
    for (name, r) in [("subscribe", &rx), ("register", &rx2), ("callback", &crx)] {
        let ev = recv_until(r, secs(5), |_| true).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(instances(&ev), strs(&["x:1", "y:1", "z:1"]), "{name}");
    }
}

#[test]
fn instances_are_sorted_and_deduplicated() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-sorted");
    etcd.put(&format!("{p}a"), "zeta:1");
    etcd.put(&format!("{p}b"), "alpha:1");
    etcd.put(&format!("{p}c"), "zeta:1");
    etcd.put(&format!("{p}d"), "mid:1");
    let inst = Instancer::new(&client, &p).unwrap();
    assert_converges(&etcd, &inst, &p, secs(5));
    let ev = inst.current();
    let i: &Instances = &ev.instances;
    assert_eq!(i.len(), 3);
    assert!(!i.is_empty());
    assert_eq!(i.get(0), Some("alpha:1"));
    assert_eq!(i.get(1), Some("mid:1"));
    assert_eq!(i.get(2), Some("zeta:1"));
    assert_eq!(i.get(3), None);
    assert!(i.contains("mid:1"));
    assert!(!i.contains("mid"));
    assert!(!i.contains("zzz"));
    assert_eq!(
        i.iter().collect::<Vec<_>>(),
        vec!["alpha:1", "mid:1", "zeta:1"]
    );
    let mut via_into_iter = Vec::new();
    for s in i {
        via_into_iter.push(s.to_string());
    }
    assert_eq!(via_into_iter, i.to_vec());
    // Snapshots compare by content; clones are equal.
    assert_eq!(i.clone(), *i);
    assert_eq!(Instances::default().len(), 0);
    assert!(Instances::default().is_empty());

    // Deleting one of the two "zeta" keys changes nothing visible; deleting
    // both removes it.
    etcd.del(&format!("{p}a"));
    assert_converges(&etcd, &inst, &p, secs(5));
    assert_eq!(
        instances(&inst.current()),
        strs(&["alpha:1", "mid:1", "zeta:1"])
    );
    etcd.del(&format!("{p}c"));
    assert_converges(&etcd, &inst, &p, secs(5));
    assert_eq!(instances(&inst.current()), strs(&["alpha:1", "mid:1"]));
}

#[test]
fn an_identical_set_is_not_resent() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-identical");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);

    // Re-putting the same value: a watch event, but no visible change.
    etcd.put(&format!("{p}a"), "a:1");
    assert_no_event(&rx, ms(1500), "re-put of the same value");
    // A second key with an existing value: still the same set.
    etcd.put(&format!("{p}b"), "a:1");
    assert_no_event(&rx, ms(1500), "duplicate value under another key");
    // Removing one of the duplicates: same set.
    etcd.del(&format!("{p}a"));
    assert_no_event(&rx, ms(1500), "delete of one duplicate");
    // A key outside the prefix.
    etcd.put(&format!("{}x", &p[..p.len() - 1]), "other:1");
    assert_no_event(&rx, ms(1500), "key outside the prefix");

    // A real change: exactly one event.
    etcd.put(&format!("{p}c"), "c:1");
    recv_instances(&rx, secs(5), &["a:1", "c:1"]);
    assert_no_event(&rx, ms(1000), "after one real change");
}

#[test]
fn keys_written_right_after_new_are_seen() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    for round in 0..5 {
        let p = unique_prefix(&format!("inst-race{round}"));
        etcd.put(&format!("{p}before"), "before:1");
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for i in 0..5 {
                    etcd.put(&format!("{p}w{i}"), &format!("w:{i}"));
                }
            });
            let inst = Instancer::new(&client, &p).unwrap();
            // And one right after new() returned.
            etcd.put(&format!("{p}after"), "after:1");
            writer.join().unwrap();
            assert_converges(&etcd, &inst, &p, secs(10));
            assert_eq!(inst.current().instances.len(), 7, "round {round}");
        });
    }
}

#[test]
fn many_rapid_changes_end_in_etcds_exact_state() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let writer_client = connect(&etcd);
    let p = unique_prefix("inst-churn");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let _cb = inst.on_update(move |_| {
        seen2.fetch_add(1, Ordering::Relaxed);
    });
    let t = Instant::now();
    // The registrations left at the end stay alive until the test ends.
    let _regs = std::thread::scope(|s| {
        // 300 etcdctl puts/deletes...
        s.spawn(|| churn(&etcd, &p, 300, 7));
        // ...while a second client registers and drops services.
        let regs = s.spawn(|| {
            let mut rng = Rng::new(11);
            let mut regs: Vec<Option<Registrar>> = (0..10).map(|_| None).collect();
            for _ in 0..100 {
                let i = rng.below(10) as usize;
                regs[i] = match regs[i].take() {
                    Some(r) => {
                        drop(r);
                        None
                    }
                    None => {
                        let r = Registrar::new(
                            &writer_client,
                            Service::new(format!("{p}reg{i}"), format!("reg:{}", i % 4))
                                .with_ttl(short_ttl()),
                        );
                        r.register().unwrap();
                        Some(r)
                    }
                };
            }
            regs
        });
        regs.join().unwrap()
    });
    eprintln!("churn took {:?}", t.elapsed());
    assert_converges(&etcd, &inst, &p, secs(15));
    // The polled subscriber ends with the same state.
    let want = etcd.instances_under(&p);
    let last = drain(&rx, ms(1000)).pop();
    let cur = inst.current();
    let last_seen = last.as_ref().map(instances);
    // Either the last event it got is the final state, or (if it was never
    // behind) the initial state already equals it.
    assert!(
        last_seen.as_ref() == Some(&want) || (last.is_none() && instances(&cur) == want),
        "subscriber's last event {last_seen:?} != etcd {want:?}"
    );
    eprintln!("callback ran {} times", seen.load(Ordering::Relaxed));
    assert!(seen.load(Ordering::Relaxed) > 10);
}

#[test]
fn compaction_during_churn_keeps_the_state_exact() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-compact");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    std::thread::scope(|s| {
        let w = s.spawn(|| churn(&etcd, &p, 200, 3));
        for _ in 0..200 {
            if w.is_finished() {
                break;
            }
            etcd.compact_latest();
            std::thread::sleep(ms(150));
        }
    });
    etcd.compact_latest();
    assert_converges(&etcd, &inst, &p, secs(15));
    let want = etcd.instances_under(&p);
    // Still live after compactions.
    etcd.put(&format!("{p}final"), "final:1");
    let mut want2 = want.clone();
    want2.push("final:1".into());
    want2.sort();
    want2.dedup();
    let want2: Vec<&str> = want2.iter().map(|s| s.as_str()).collect();
    recv_instances(&rx, secs(10), &want2);
}

#[test]
fn changes_and_compaction_while_disconnected_are_not_lost() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("inst-compact-down");
    etcd.put(&format!("{p}a"), "a:1");
    etcd.put(&format!("{p}b"), "b:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1", "b:1"]);

    for round in 0..2 {
        etcd.kill();
        recv_until(&rx, secs(15), |ev| ev.err.is_some())
            .unwrap_or_else(|e| panic!("round {round}: no error event: {e}"));
        etcd.restart();
        // Right after the restart, before the watch is back (most likely):
        // changes, then a compaction past the watcher's last revision.
        etcd.del(&format!("{p}a"));
        etcd.put(&format!("{p}c{round}"), &format!("c:{round}"));
        etcd.put(&format!("{p}b"), &format!("b:{}", round + 2));
        etcd.compact_latest();
        assert_converges(&etcd, &inst, &p, secs(20));
        etcd.put(&format!("{p}a"), "a:1");
        assert_converges(&etcd, &inst, &p, secs(10));
    }
    let want = etcd.instances_under(&p);
    let want: Vec<&str> = want.iter().map(|s| s.as_str()).collect();
    recv_instances(&rx, secs(10), &want);
}

#[test]
fn an_undrained_subscriber_does_not_block_others() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-slow");
    let inst = Instancer::new(&client, &p).unwrap();
    let slow = inst.subscribe(); // never drained until the end
    let (gtx, stuck) = channel::bounded::<Event>(1); // go-kit sender that is full
    inst.register(gtx);
    let fast = inst.subscribe();
    let (ctx, crx) = channel::unbounded();
    let _id = inst.on_update(move |ev: &Event| {
        let _ = ctx.send(ev.clone());
    });
    recv_instances(&fast, secs(5), &[]);

    let n = 150;
    let received = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut got = 0usize;
            let deadline = Instant::now() + secs(60);
            while Instant::now() < deadline {
                match fast.recv_timeout(ms(200)) {
                    Ok(ev) => {
                        got += 1;
                        if ev.instances.len() == n {
                            return got;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            got
        });
        for i in 0..n {
            etcd.put(
                &format!("{p}k{i:04}"),
                &format!("10.1.{}.{}:80", i / 256, i % 256),
            );
        }
        reader.join().unwrap()
    });
    eprintln!("fast subscriber got {received} events for {n} changes");
    assert!(
        received >= n / 4,
        "fast subscriber got only {received} events"
    );
    assert_converges(&etcd, &inst, &p, secs(5));
    let last_cb = drain(&crx, ms(500)).pop().expect("callback events");
    assert_eq!(last_cb.instances.len(), n, "callback's last event");

    // Draining the slow one now ends with the latest state.
    let slow_events = drain(&slow, ms(1500));
    assert!(!slow_events.is_empty());
    assert_eq!(
        slow_events.last().unwrap().instances.len(),
        n,
        "slow subscriber's last event after draining ({} events)",
        slow_events.len()
    );
    let stuck_events = drain(&stuck, ms(1500));
    assert_eq!(
        stuck_events.last().map(|e| e.instances.len()),
        Some(n),
        "full go-kit sender's last event"
    );
}

#[test]
fn a_callback_can_remove_itself_and_deregister_a_sender() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-cb-remove");
    let inst = Arc::new(Instancer::new(&client, &p).unwrap());
    let weak: Weak<Instancer> = Arc::downgrade(&inst);
    let my_id: Arc<OnceLock<CallbackId>> = Arc::new(OnceLock::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = channel::unbounded::<&'static str>();
    let (gtx, grx) = channel::unbounded::<Event>();
    inst.register(gtx.clone());
    recv_instances(&grx, secs(5), &[]);

    let id = {
        let (my_id, calls, weak) = (my_id.clone(), calls.clone(), weak.clone());
        inst.on_update(move |ev: &Event| {
            calls.fetch_add(1, Ordering::SeqCst);
            if ev.instances.contains("trigger:1") {
                if let (Some(inst), Some(id)) = (weak.upgrade(), my_id.get()) {
                    inst.deregister(&gtx);
                    let _ = done_tx.send("deregistered");
                    inst.remove_callback(*id);
                    let _ = done_tx.send("removed");
                }
            }
        })
    };
    my_id.set(id).unwrap();
    // Another subscriber that must keep working.
    let other = inst.subscribe();
    recv_instances(&other, secs(5), &[]);

    etcd.put(&format!("{p}t"), "trigger:1");
    assert_eq!(
        done_rx.recv_timeout(secs(10)),
        Ok("deregistered"),
        "deadlock?"
    );
    assert_eq!(done_rx.recv_timeout(secs(10)), Ok("removed"), "deadlock?");
    recv_instances(&other, secs(5), &["trigger:1"]);
    let calls_then = calls.load(Ordering::SeqCst);

    etcd.put(&format!("{p}u"), "after:1");
    recv_instances(&other, secs(5), &["after:1", "trigger:1"]);
    std::thread::sleep(ms(500));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_then,
        "removed callback still called"
    );
    // The deregistered go-kit sender gets nothing after the trigger event.
    let after: Vec<Vec<String>> = drain(&grx, ms(300)).iter().map(instances).collect();
    assert!(
        !after.iter().any(|v| v.contains(&"after:1".to_string())),
        "deregistered sender still fed: {after:?}"
    );
    // Removing again (already gone) is harmless.
    inst.remove_callback(id);
    drop(inst);
}

#[test]
fn a_callback_can_stop_its_instancer() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-cb-stop");
    let inst = Arc::new(Instancer::new(&client, &p).unwrap());
    let weak = Arc::downgrade(&inst);
    let (done_tx, done_rx) = channel::unbounded::<()>();
    let sub = inst.subscribe();
    recv_instances(&sub, secs(5), &[]);
    let _id = inst.on_update(move |ev: &Event| {
        if ev.instances.contains("stop:1") {
            if let Some(inst) = weak.upgrade() {
                inst.stop();
                let _ = done_tx.send(());
            }
        }
    });
    etcd.put(&format!("{p}s"), "stop:1");
    assert!(
        done_rx.recv_timeout(secs(10)).is_ok(),
        "stop() from a callback deadlocked"
    );
    let cur = inst.current();
    assert_eq!(cur.err.as_ref().map(|e| e.kind()), Some(ErrorKind::Closed));
    // The subscription ends.
    let r = recv_until(&sub, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "{r}");
    inst.stop();
}

#[test]
fn a_panicking_callback_is_removed_and_others_go_on() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-cb-panic");
    let inst = Instancer::new(&client, &p).unwrap();
    let panics = Arc::new(AtomicUsize::new(0));
    let panics2 = panics.clone();
    let _bad = inst.on_update(move |ev: &Event| {
        if !ev.instances.is_empty() {
            panics2.fetch_add(1, Ordering::SeqCst);
            panic!("test callback panics on purpose");
        }
    });
    let (ctx, crx) = channel::unbounded();
    let _good = inst.on_update(move |ev: &Event| {
        let _ = ctx.send(ev.clone());
    });
    let sub = inst.subscribe();
    recv_instances(&sub, secs(5), &[]);
    recv_instances(&crx, secs(5), &[]);

    etcd.put(&format!("{p}1"), "one:1");
    recv_instances(&sub, secs(5), &["one:1"]);
    recv_instances(&crx, secs(5), &["one:1"]);
    etcd.put(&format!("{p}2"), "two:1");
    recv_instances(&sub, secs(5), &["one:1", "two:1"]);
    recv_instances(&crx, secs(5), &["one:1", "two:1"]);
    etcd.put(&format!("{p}3"), "three:1");
    recv_instances(&crx, secs(5), &["one:1", "three:1", "two:1"]);
    assert_eq!(
        panics.load(Ordering::SeqCst),
        1,
        "panicking callback called again"
    );
    // New subscribers still work.
    let late = inst.subscribe();
    recv_instances(&late, secs(5), &["one:1", "three:1", "two:1"]);
}

#[test]
fn stop_twice_then_closed_and_receivers_disconnect() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-stop");
    let inst = Instancer::new(&client, &p).unwrap();
    let lazy = inst.subscribe(); // not drained before stop
    let live = inst.subscribe();
    let (gtx, grx) = channel::unbounded();
    inst.register(gtx);
    recv_instances(&live, secs(5), &[]);
    for i in 0..3 {
        etcd.put(&format!("{p}{i}"), &format!("v:{i}"));
    }
    recv_instances(&live, secs(5), &["v:0", "v:1", "v:2"]);

    let t = Instant::now();
    inst.stop();
    inst.stop();
    assert!(t.elapsed() < secs(5), "stop took {:?}", t.elapsed());

    let cur = inst.current();
    assert_eq!(
        cur.err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Closed),
        "current() after stop: {}",
        describe(&cur)
    );
    // The lazy subscriber still gets what was sent, then the end.
    let mut got = Vec::new();
    let deadline = Instant::now() + secs(5);
    let end = loop {
        match lazy.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ev) => got.push(ev),
            Err(e) => break e,
        }
    };
    assert_eq!(
        end,
        RecvTimeoutError::Disconnected,
        "lazy receiver after stop"
    );
    let last_good = got.iter().rev().find(|e| e.err.is_none());
    assert_eq!(
        last_good.map(instances),
        Some(strs(&["v:0", "v:1", "v:2"])),
        "lazy receiver's last event: {:?}",
        got.iter().map(describe).collect::<Vec<_>>()
    );
    // The registered go-kit sender was dropped.
    let r = recv_until(&grx, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "go-kit receiver: {r}");
    let r = recv_until(&live, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "live receiver: {r}");

    // Every call on a stopped instancer returns at once.
    let t = Instant::now();
    let after = inst.subscribe();
    let r = recv_until(&after, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "subscribe() after stop: {r}");
    let (tx, rx) = channel::unbounded();
    inst.register(tx.clone());
    inst.deregister(&tx);
    drop(tx);
    let r = recv_until(&rx, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "register() after stop: {r}");
    let id = inst.on_update(|_: &Event| {});
    inst.remove_callback(id);
    assert_eq!(
        inst.current().err.map(|e| e.kind()),
        Some(ErrorKind::Closed)
    );
    assert!(
        t.elapsed() < secs(12),
        "calls after stop took {:?}",
        t.elapsed()
    );
    // Changes after stop reach nobody and hurt nothing.
    etcd.put(&format!("{p}late"), "late:1");
    drop(inst);
    // The client still works.
    assert_eq!(client.get_entries(&p).unwrap().len(), 4);
}

#[test]
fn dropping_an_instancer_stops_it() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-drop");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &[]);
    drop(inst);
    let r = recv_until(&rx, secs(5), |_| false).unwrap_err();
    assert!(r.starts_with("disconnected"), "{r}");
}

#[test]
fn gokit_style_register_and_deregister() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("inst-gokit");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let (tx, rx) = channel::unbounded::<Event>();
    inst.register(tx.clone());
    recv_instances(&rx, secs(5), &["a:1"]);
    etcd.put(&format!("{p}b"), "b:1");
    recv_instances(&rx, secs(5), &["a:1", "b:1"]);
    inst.deregister(&tx);
    etcd.put(&format!("{p}c"), "c:1");
    assert_no_event(&rx, ms(1500), "after deregister");
    // Deregistering an unknown sender is harmless.
    let (other, _orx) = channel::unbounded::<Event>();
    inst.deregister(&other);
    inst.deregister(&tx);
    // Register again: the current state at once.
    inst.register(tx.clone());
    recv_instances(&rx, secs(5), &["a:1", "b:1", "c:1"]);
    // A sender whose receiver is gone is dropped without trouble.
    let (dead_tx, dead_rx) = channel::unbounded::<Event>();
    drop(dead_rx);
    inst.register(dead_tx);
    etcd.put(&format!("{p}d"), "d:1");
    recv_instances(&rx, secs(5), &["a:1", "b:1", "c:1", "d:1"]);
}

#[test]
fn the_prefix_is_used_as_given() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let base = unique_prefix("inst-prefix");
    let p = format!("{base}barsvc"); // no trailing slash: a warning, and go-kit's matching
    etcd.put(&format!("{base}barsvc/1"), "bar:1");
    etcd.put(&format!("{base}barsvc2/1"), "bar2:1");
    etcd.put(&format!("{base}baz/1"), "baz:1");
    let inst = Instancer::new(&client, &p).unwrap();
    assert_converges(&etcd, &inst, &p, secs(5));
    assert_eq!(instances(&inst.current()), strs(&["bar2:1", "bar:1"]));
}

#[test]
fn callbacks_of_one_client_run_in_order_on_one_dispatcher_thread() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p1 = unique_prefix("inst-disp1");
    let p2 = unique_prefix("inst-disp2");
    let i1 = Instancer::new(&client, &p1).unwrap();
    let i2 = Instancer::new(&client, &p2).unwrap();
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let (tx, rx) = channel::unbounded::<(usize, usize)>();
    for (n, inst) in [&i1, &i2].into_iter().enumerate() {
        let (threads, tx) = (threads.clone(), tx.clone());
        let _ = inst.on_update(move |ev: &Event| {
            threads.lock().unwrap().insert(std::thread::current().id());
            let _ = tx.send((n, ev.instances.len()));
        });
    }
    for i in 0..10 {
        etcd.put(&format!("{p1}{i:02}"), &format!("a:{i}"));
        etcd.put(&format!("{p2}{i:02}"), &format!("b:{i}"));
    }
    assert_converges(&etcd, &i1, &p1, secs(10));
    assert_converges(&etcd, &i2, &p2, secs(10));
    std::thread::sleep(ms(300));
    let lens: Vec<(usize, usize)> = rx.try_iter().collect();
    assert!(!lens.is_empty());
    let threads = threads.lock().unwrap();
    assert_eq!(
        threads.len(),
        1,
        "callbacks ran on {} threads",
        threads.len()
    );
    assert!(!threads.contains(&std::thread::current().id()));
    // Per instancer, sizes only grow here: events arrive in order.
    for n in 0..2 {
        let seq: Vec<usize> = lens.iter().filter(|e| e.0 == n).map(|e| e.1).collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "instancer {n}: {seq:?}"
        );
        assert_eq!(seq.last(), Some(&10), "instancer {n}: {seq:?}");
    }
}

#[test]
fn a_broken_watch_resumes_and_a_compacted_one_reads_again() {
    // The client talks to etcd through a proxy; cutting the proxy breaks the
    // watch while etcdctl goes on changing (and compacting) etcd directly.
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = etcd_sd::Client::connect(&[proxy.endpoint()], options(secs(1))).unwrap();
    let p = unique_prefix("inst-cut");
    etcd.put(&format!("{p}a"), "a:1");
    etcd.put(&format!("{p}b"), "b:1");
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1", "b:1"]);

    // 1. Changes while the link is down, no compaction: resumed, not lost.
    proxy.cut();
    let ev = recv_until(&rx, secs(15), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event with the link cut: {e}"));
    assert_eq!(instances(&ev), strs(&["a:1", "b:1"]), "last good set");
    etcd.del(&format!("{p}a"));
    etcd.put(&format!("{p}c"), "c:1");
    etcd.put(&format!("{p}b"), "b:2");
    proxy.restore();
    recv_instances(&rx, secs(15), &["b:2", "c:1"]);

    // 2. Changes and a compaction past the watcher's revision: read again.
    proxy.cut();
    recv_until(&rx, secs(15), |ev| ev.err.is_some())
        .unwrap_or_else(|e| panic!("no error event with the link cut: {e}"));
    etcd.put(&format!("{p}d"), "d:1");
    etcd.del(&format!("{p}b"));
    etcd.put(&format!("{p}c"), "c:2");
    etcd.put(&format!("{p}e"), "c:2"); // a duplicate value
    etcd.compact_latest();
    proxy.restore();
    recv_instances(&rx, secs(15), &["c:2", "d:1"]);
    assert_converges(&etcd, &inst, &p, secs(5));

    // 3. And it is live afterwards.
    etcd.put(&format!("{p}f"), "f:1");
    recv_instances(&rx, secs(10), &["c:2", "d:1", "f:1"]);
    etcd.del(&format!("{p}c"));
    assert_no_event(&rx, ms(1000), "delete of one of two duplicates");
    etcd.del(&format!("{p}e"));
    recv_instances(&rx, secs(10), &["d:1", "f:1"]);
}

/// Sets a flag when dropped: tells when a callback's closure is gone.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn remove_and_stop_wait_for_a_running_call_and_drop_the_closure_before_returning() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("release");
    let inst = Instancer::new(&client, &prefix).expect("instancer");
    for use_stop in [false, true] {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = channel::bounded(1);
        let flag = DropFlag(dropped.clone());
        let counter = calls.clone();
        let id = inst.on_update(move |_| {
            let _keep = &flag;
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.try_send(());
            // A slow callback: removal must wait for it.
            std::thread::sleep(ms(300));
        });
        started_rx.recv_timeout(secs(10)).expect("first call");
        let t0 = Instant::now();
        if use_stop {
            inst.stop();
        } else {
            inst.remove_callback(id);
        }
        assert!(
            dropped.load(Ordering::SeqCst),
            "closure still alive after {} returned (stop: {use_stop})",
            if use_stop { "stop" } else { "remove_callback" }
        );
        assert!(t0.elapsed() < secs(5), "removal took {:?}", t0.elapsed());
        let n = calls.load(Ordering::SeqCst);
        if !use_stop {
            etcd.put(&format!("{prefix}a"), "after-removal");
        }
        std::thread::sleep(ms(300));
        assert_eq!(calls.load(Ordering::SeqCst), n, "called after removal");
    }
}

/// Values that add up to more than gRPC's default 4 MiB message limit: the
/// initial read returns every instance, and so does a watch that resumes
/// after a broken link and catches up on all of them in one batch.
#[test]
fn values_larger_than_a_grpc_message_in_all_are_read_and_watched() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = etcd_sd::Client::connect(&[proxy.endpoint()], options(secs(2))).unwrap();
    let prefix = unique_prefix("inst-big");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut kv = rt
        .block_on(etcd_client::Client::connect([etcd.endpoint()], None))
        .unwrap()
        .kv_client();
    // 120 values of 48 KiB: about 5.6 MiB in one page, or one catch-up batch.
    let mut put_all = |round: usize| -> Vec<String> {
        (0..120)
            .map(|i| {
                let value = format!("{round}:{i:03}:{}", "x".repeat(48 * 1024));
                rt.block_on(kv.put(format!("{prefix}{i:03}"), value.clone(), None))
                    .unwrap();
                value
            })
            .collect()
    };
    let first = put_all(0);
    let inst = Instancer::new(&client, &prefix).unwrap();
    let ev = inst.current();
    assert!(ev.err.is_none(), "initial read: {:?}", ev.err);
    assert!(
        ev.instances.iter().eq(first.iter().map(String::as_str)),
        "initial read"
    );

    let rx = inst.subscribe();
    proxy.cut();
    recv_until(&rx, secs(15), |ev| ev.err.is_some()).expect("an error event while cut");
    let second = put_all(1);
    proxy.restore();
    // (Not `recv_instances`: its message on failure would print 5 MiB.)
    let caught_up = recv_until(&rx, secs(20), |ev| {
        ev.err.is_none() && ev.instances.iter().eq(second.iter().map(String::as_str))
    });
    if caught_up.is_err() {
        let ev = inst.current();
        panic!(
            "the watch did not catch up: {} instances, error {:?}",
            ev.instances.len(),
            ev.err.map(|e| e.to_string())
        );
    }
}
