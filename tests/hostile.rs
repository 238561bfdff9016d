//! Hostile probes of the promises in API.md §3 and §5.4, with real etcd
//! processes on 127.0.0.1 (issue 13, "hostile user" pass).
//!
//! Every test says in its doc comment whether it began as a FINDING (a
//! broken promise, found on the code of the day and fixed since: the test is
//! its regression test) or HELD (a probe that the library survived). Each
//! prints its measurements with `--nocapture`.
//!
//! Run: `cargo test --features cli --test hostile -- --nocapture`
//!
//! What the review found (2 shared cores, etcd 3.4.23), and the fix:
//!
//! | test | kind | before the fix | fix |
//! |------|------|----------------|-----|
//! | `finding_a_wiped_etcd_replaying_the_same_writes_is_not_read_again` | FINDING | failed 3 of 3 runs | after a break, discovery reads the prefix at the revision it resumes from and compares it with what it holds |
//! | `finding_an_endpoint_of_another_cluster_takes_over_when_a_member_hangs` | FINDING | failed 3 of 3 runs | a member answering for another cluster is foreign and not used |
//! | `finding_a_stale_hedged_delete_removes_a_later_registration` | FINDING | 4 of 12 rounds | the delete is a transaction guarded by the revision read first |
//! | `finding_stale_hedged_grants_recreate_revoked_leases` | FINDING (minor) | 2 of 2 runs (4, 5 of 20 leases) | a revoked lease whose grant went unanswered somewhere is revoked again once that member is back |
//! | `two_hundred_instancers_and_registrars_survive_a_stopped_member` | HELD | |
//! | `two_of_three_dead_then_quorum_back` | HELD | |
//! | `duplicates_and_a_flapping_single_member` | HELD | |
//! | `a_one_millisecond_dial_keep_alive_on_a_busy_etcd` | HELD | |
//! | `watch_prefix_notifies_across_a_wiped_etcd` | HELD | |

mod support;

use std::time::{Duration, Instant};

use etcd_sd::channel::Receiver;
use etcd_sd::{
    Client, ClientOptions, ErrorKind, Event, Instancer, Registrar, RegistrationState as S, Service,
    TtlOption,
};
use support::api::*;
use support::{
    closed_endpoint, ms, secs, unique_prefix, wait_until, EtcdCluster, EtcdServer, FaultProxy,
    RawEtcd,
};

/// Puts filler keys (outside any watched prefix) until the next write gets
/// revision `next`.
fn fill_until(raw: &RawEtcd, tag: &str, next: i64) {
    for i in 0..10_000 {
        if raw.revision() + 1 >= next {
            break;
        }
        raw.put(format!("/etcd-sd-it/hostile-filler-{tag}/{i}"), "f");
    }
    assert_eq!(raw.revision() + 1, next, "filler overshot");
}

/// Receives `()` notifications waiting on `rx`; returns how many.
fn count_notes(rx: &Receiver<()>, wait: Duration) -> usize {
    let mut n = 0;
    let deadline = Instant::now() + wait;
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(()) => n += 1,
            Err(_) => break,
        }
    }
    n
}

/// FINDING (item 3, "a new history"). An etcd wiped and restarted with the
/// same flags, whose new history replays the same first writes under the
/// prefix (as a deployment script or re-registering services in a fixed
/// order do), passes the anchor check: the anchor compares only key,
/// create/mod revision and version, never the value, and the same writes in
/// the same order give the same numbers. The Instancer then resumes after
/// the old revision and never learns of the changes made at or below it:
/// it keeps publishing the old value of `a` and never shows `c`, while
/// `get_entries` shows etcd's real state. `Client::watch_prefix` does not
/// notify either. The promise (API.md §5.4 "A new history": re-read and
/// publish etcd's state as one Event, whatever the revision) is broken.
#[test]
fn finding_a_wiped_etcd_replaying_the_same_writes_is_not_read_again() {
    let mut etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let p = unique_prefix("hostile-replay");
    let (ka, kb, kc) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));

    // Old history: a (at r_a), 3 fillers, then, once both watchers run, b.
    let raw = RawEtcd::connect(&etcd.endpoint());
    let r_a = raw.put(&ka, "a:old");
    let client = Client::connect(&[proxy.endpoint()], options(secs(2))).expect("connect");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:old"]);
    let notes = client.watch_prefix(&p).expect("watch_prefix");
    let _ = count_notes(&notes, ms(300));
    fill_until(&raw, "old", r_a + 4);
    let r_b = raw.put(&kb, "b:1");
    recv_instances(&rx, secs(5), &["a:old", "b:1"]);
    assert!(count_notes(&notes, secs(2)) >= 1, "no notification for b");
    let (cluster_before, member_before) = raw.ids();
    drop(raw);

    // The client loses etcd; etcd is wiped and gets a new history that
    // replays a (with another value) at r_a and b at r_b, with c in between,
    // then goes past the old revision.
    proxy.cut();
    etcd.restart_empty();
    let raw = RawEtcd::connect(&etcd.endpoint());
    fill_until(&raw, "new", r_a);
    assert_eq!(raw.put(&ka, "a:NEW"), r_a);
    assert_eq!(raw.put(&kc, "c:1"), r_a + 1);
    fill_until(&raw, "new2", r_b);
    assert_eq!(raw.put(&kb, "b:1"), r_b);
    fill_until(&raw, "new3", r_b + 10);
    let ids_after = raw.ids();
    eprintln!(
        "old history: a@{r_a} b@{r_b} (cluster {cluster_before:x} member {member_before:x}); \
         new history: a@{r_a} (new value) c@{} b@{r_b}, now at {} ({ids_after:x?})",
        r_a + 1,
        raw.revision()
    );
    assert_eq!(
        etcd.instances_under(&p),
        strs(&["a:NEW", "b:1", "c:1"]),
        "etcd's real state"
    );
    let _ = count_notes(&notes, ms(1));
    proxy.restore();
    let restored = Instant::now();

    // The direct read sees the real state: the link works.
    let entries = wait_until(secs(10), || {
        client.get_entries(&p).ok() == Some(strs(&["a:NEW", "b:1", "c:1"]))
    });
    let seen = recv_until(&rx, secs(15), |ev| {
        ev.err.is_none() && instances(ev) == strs(&["a:NEW", "b:1", "c:1"])
    });
    // The notifier resumes on its own backoff (at most 5 s after the link
    // is back), which may come after the Instancer's.
    let notified = match notes.recv_timeout(secs(10)) {
        Ok(()) => 1 + count_notes(&notes, ms(200)),
        Err(_) => 0,
    };
    let current = describe(&inst.current());
    eprintln!(
        "{:.1?} after the link came back: get_entries saw the new state: {entries}; \
         Instancer current {current}; Instancer got it: {}; watch_prefix notifications: {notified}",
        restored.elapsed(),
        seen.as_ref()
            .map(|_| "yes".to_string())
            .unwrap_or_else(|e| e.clone())
    );
    assert!(entries, "get_entries never showed the new state");
    assert!(
        seen.is_ok() && notified >= 1,
        "the Instancer / watch_prefix missed the new history: Instancer {current} \
         ({seen:?}); {notified} notifications"
    );
}

/// FINDING (item 1, "an endpoint that is etcd of another cluster"). The
/// endpoint list is a 3-member cluster A with one endpoint of another etcd B
/// in it. While A's quorum answers, a hung A member makes calls hedge to the
/// next endpoint in the list, B, which then becomes the preferred member:
/// `get_entries` returns B's data, and the Instancer (its resumed watch sees
/// "another cluster" and re-reads through the preferred member) publishes
/// B's state; the change written to A never reaches the subscriber. No
/// member's cluster id is checked against the others'.
#[test]
fn finding_an_endpoint_of_another_cluster_takes_over_when_a_member_hangs() {
    let mut a = EtcdCluster::start(3);
    let b = EtcdServer::start();
    let p = unique_prefix("hostile-foreign");
    a.put(&format!("{p}x"), "A:x");
    b.put(&format!("{p}y"), "B:y");
    // Member 0 must be a follower so that A keeps its leader.
    let leader = a.leader_index(secs(20));
    if leader == Some(0) {
        assert!(a.move_leader_to(1, secs(20)), "move leader");
    }
    let ae = a.endpoints();
    let endpoints = vec![ae[0].clone(), b.endpoint(), ae[1].clone(), ae[2].clone()];
    let client = Client::connect(&endpoints, ClientOptions::default()).expect("connect");
    assert_eq!(client.get_entries(&p).expect("get"), strs(&["A:x"]));
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["A:x"]);

    a.pause(0);
    let paused = Instant::now();
    a.put(&format!("{p}z"), "A:z");
    let written = Instant::now();
    let mut foreign = Vec::new();
    let seen = recv_until(&rx, secs(8), |ev| {
        if ev.instances.iter().any(|i| i.starts_with("B:")) {
            foreign.push(format!("{:.2?} {}", paused.elapsed(), describe(ev)));
        }
        ev.err.is_none() && instances(ev) == strs(&["A:x", "A:z"])
    });
    let entries: Vec<_> = (0..5).map(|_| client.get_entries(&p)).collect();
    let entries: Vec<String> = entries
        .iter()
        .map(|r| match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("{:?}: {e}", e.kind()),
        })
        .collect();
    let current = describe(&inst.current());
    a.resume(0);
    eprintln!(
        "A member 0 paused; change written {:.2?} later; subscriber got it: {}; \
         events with B's data: {foreign:?}; current {current}; get_entries x5: {entries:?}",
        written - paused,
        seen.as_ref()
            .map(|_| format!("after {:.2?}", written.elapsed()))
            .unwrap_or_else(|e| e.clone())
    );
    assert!(
        foreign.is_empty() && seen.is_ok() && entries.iter().all(|e| e.contains("A:z")),
        "another cluster's data was served while A's quorum answered: events {foreign:?}; \
         subscriber: {seen:?}; get_entries: {entries:?}"
    );
}

/// FINDING (item 1, "calls fail over; hedged requests"). `Client::deregister`
/// of a key this client did not register deletes it; with the preferred
/// member SIGSTOPped the delete is hedged onto the next member and succeeds.
/// The copy sent to the stopped member is still in its socket; the client
/// then registers the key again (through the live member), and when the
/// stopped member resumes, its stale copy of the delete may be applied
/// after the registration: the freshly registered key disappears (until the
/// Registrar notices and puts it back). Counted over 8 rounds, one new
/// client each (so member 0 is preferred).
#[test]
fn finding_a_stale_hedged_delete_removes_a_later_registration() {
    let mut cluster = EtcdCluster::start(3);
    if cluster.leader_index(secs(20)) == Some(0) {
        assert!(cluster.move_leader_to(2, secs(20)), "move leader");
    }
    let p = unique_prefix("hostile-stale-del");
    // A watcher on a client that only knows the live members.
    let eps = cluster.endpoints();
    let watcher = Client::connect(&eps[1..], ClientOptions::default()).expect("watcher");
    let inst = Instancer::new(&watcher, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    let _ = drain(&rx, ms(200));
    let mut vanished = Vec::new();
    let rounds = 8;
    for round in 0..rounds {
        let key = format!("{p}k{round}");
        let new_value = format!("new:{round}");
        cluster.put(&key, "old");
        let client = Client::connect(&eps, ClientOptions::default()).expect("connect");
        cluster.pause(0);
        let t0 = Instant::now();
        let d = client.deregister(&Service::new(key.clone(), "old"));
        let t_del = t0.elapsed();
        let r =
            client.register(&Service::new(key.clone(), new_value.clone()).with_ttl(short_ttl()));
        let t_reg = t0.elapsed();
        assert!(d.is_ok() && r.is_ok(), "round {round}: {d:?} {r:?}");
        let _ = recv_until(&rx, secs(5), |ev| ev.instances.contains(&new_value));
        cluster.resume(0);
        let resumed = Instant::now();
        // Watch for 4 s: does the key go?
        let mut gone_at = None;
        let mut back_at = None;
        for _ in 0..400 {
            if resumed.elapsed() > secs(4) {
                break;
            }
            if let Ok(ev) = rx.recv_timeout(ms(50)) {
                let has = ev.instances.contains(&new_value);
                if !has && gone_at.is_none() {
                    gone_at = Some(resumed.elapsed());
                }
                if has && gone_at.is_some() && back_at.is_none() {
                    back_at = Some(resumed.elapsed());
                }
            }
        }
        let there = cluster.any_live().exists(&key);
        eprintln!(
            "round {round}: deregister {t_del:.2?}, register done at {t_reg:.2?}; after resume \
             the key vanished at {gone_at:.2?}, back at {back_at:.2?}; present at the end: {there}"
        );
        if gone_at.is_some() {
            vanished.push(format!(
                "round {round}: gone {gone_at:.2?} after resume, back {back_at:.2?}"
            ));
        }
        client.deregister(&Service::new(key, "")).ok();
        drop(client);
        // Let member 0 catch up before the next round.
        assert!(wait_until(secs(20), || cluster
            .member(0)
            .try_etcdctl_timeout(&["get", "/x"], "2s")
            .is_ok()));
    }
    eprintln!(
        "the registered key vanished in {} of {rounds} rounds",
        vanished.len()
    );
    assert!(vanished.is_empty(), "{vanished:#?}");
}

/// Leases of the cluster (through a live member).
fn lease_count(cluster: &EtcdCluster) -> usize {
    let out = cluster.etcdctl_retry(&["lease", "list"], secs(20));
    out.lines()
        .skip(1)
        .filter(|l| i64::from_str_radix(l.trim(), 16).is_ok())
        .count()
}

/// FINDING (minor; item 1, "registrations during failover", "leases
/// leaked"). 20 Registrars register
/// at once, from 20 threads, with the preferred member SIGSTOPped; then all
/// are dropped while it is still stopped; then it resumes (its socket holds
/// stale grants, puts and revokes). Checks: every register succeeds, one
/// lease per Registrar, drops cost at most one request_timeout in total,
/// no key and no lease left behind (also after the stale requests land).
/// Observed: all of that holds until member 0 resumes; then the grants
/// still queued in its socket (hedged: the same client-chosen id went to
/// member 1 and succeeded there; the Registrars were then dropped and their
/// leases revoked) are applied and re-create revoked leases, which live
/// (keyless) for their full ttl. "A duplicated grant is harmless" only holds
/// while the lease still exists.
#[test]
fn finding_stale_hedged_grants_recreate_revoked_leases() {
    let mut cluster = EtcdCluster::start(3);
    if cluster.leader_index(secs(20)) == Some(0) {
        assert!(cluster.move_leader_to(1, secs(20)), "move leader");
    }
    let p = unique_prefix("hostile-failover-reg");
    let base = lease_count(&cluster);
    let client = Client::connect(&cluster.endpoints(), ClientOptions::default()).expect("connect");
    cluster.pause(0);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            let key = format!("{p}k{i:02}");
            std::thread::spawn(move || {
                let reg = Registrar::new(
                    &client,
                    Service::new(key, format!("v{i}")).with_ttl(TtlOption::new(secs(1), secs(10))),
                );
                let t = Instant::now();
                let r = reg.register();
                (
                    reg,
                    r.map_err(|e| format!("{:?}: {e}", e.kind())),
                    t.elapsed(),
                )
            })
        })
        .collect();
    let regs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let slowest = regs.iter().map(|r| r.2).max().unwrap();
    let failed: Vec<_> = regs.iter().filter_map(|r| r.1.clone().err()).collect();
    let keys = cluster.any_live().count_prefix(&p);
    let leases = lease_count(&cluster) - base;
    eprintln!(
        "20 registers with m0 stopped: {} failed, slowest {slowest:.2?}, all done in {:.2?}; \
         keys {keys}, leases {leases}",
        failed.len(),
        t0.elapsed()
    );
    let t = Instant::now();
    drop(regs);
    let drop_took = t.elapsed();
    let keys_gone = wait_until(secs(5), || cluster.any_live().count_prefix(&p) == 0);
    let leases_after_drop = lease_count(&cluster) - base;
    cluster.resume(0);
    let resumed = Instant::now();
    // Leases re-created by stale grants would carry the 10 s ttl: gone
    // within 6 s of the resume means the client revoked them again.
    std::thread::sleep(secs(1));
    let leases_gone = wait_until(secs(5), || lease_count(&cluster) <= base);
    let leases_after_resume = lease_count(&cluster).saturating_sub(base);
    let keys_after_resume = cluster.any_live().count_prefix(&p);
    eprintln!(
        "drop of 20: {drop_took:.2?}; keys gone: {keys_gone}; leases left {leases_after_drop}; \
         after m0 resumed: leases {leases_after_resume} ({leases_gone} after {:.2?}), keys {keys_after_resume}",
        resumed.elapsed()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(keys, 20);
    assert_eq!(leases, 20, "one lease per Registrar");
    assert!(drop_took < secs(5) + ms(500), "drops took {drop_took:?}");
    assert!(keys_gone, "keys left after the drops");
    assert_eq!(leases_after_drop, 0, "leases left after the drops");
    assert_eq!(keys_after_resume, 0, "stale puts brought keys back");
    assert_eq!(leases_after_resume, 0, "stale grants brought leases back");
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ')'.
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// HELD (item 1, "many Instancers and Registrars while a member is
/// SIGSTOPped"). 200 Instancers and 200 Registrars on one client (default
/// options); the member carrying them is stopped for 12 s (past the
/// Registrars' 10 s ttl). Measured: CPU used during the stop, how long a
/// change written through the live members takes to reach all 200
/// Instancers, Registrars still Registered on their leases, thread count,
/// and drop time and leftovers.
#[test]
fn two_hundred_instancers_and_registrars_survive_a_stopped_member() {
    const N: usize = 200;
    let mut cluster = EtcdCluster::start(3);
    if cluster.leader_index(secs(20)) == Some(0) {
        assert!(cluster.move_leader_to(1, secs(20)), "move leader");
    }
    let p = unique_prefix("hostile-storm");
    let q = unique_prefix("hostile-storm-reg");
    let client = Client::connect(&cluster.endpoints(), ClientOptions::default()).expect("connect");
    let threads_before = support::thread_count();
    let insts: Vec<(Instancer, Receiver<Event>)> = (0..N)
        .map(|_| {
            let inst = Instancer::new(&client, &p).expect("Instancer::new");
            let rx = inst.subscribe();
            (inst, rx)
        })
        .collect();
    let regs: Vec<Registrar> = (0..N)
        .map(|i| {
            let r = Registrar::new(&client, Service::new(format!("{q}k{i:03}"), "v"));
            r.register().expect("register");
            r
        })
        .collect();
    let leases: Vec<Option<i64>> = regs.iter().map(|r| r.lease_id()).collect();
    for (_, rx) in &insts {
        let _ = drain(rx, ms(1));
    }
    let cpu0 = cpu_time();
    cluster.pause(0);
    let paused = Instant::now();
    cluster.put(&format!("{p}new"), "new:1");
    let written = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut missed = 0;
    for (_, rx) in &insts {
        let left = secs(10).saturating_sub(written.elapsed());
        match recv_until(rx, left, |ev| {
            ev.err.is_none() && ev.instances.contains("new:1")
        }) {
            Ok(_) => slowest = slowest.max(written.elapsed()),
            Err(_) => missed += 1,
        }
    }
    std::thread::sleep(secs(12).saturating_sub(paused.elapsed()));
    let cpu_during = cpu_time().saturating_sub(cpu0);
    let paused_for = paused.elapsed();
    let threads_during = support::thread_count();
    let not_registered = regs
        .iter()
        .zip(&leases)
        .filter(|(r, l)| r.state() != S::Registered || r.lease_id() != **l)
        .count();
    let keys = cluster.any_live().count_prefix(&q);
    cluster.resume(0);
    let t = Instant::now();
    drop(regs);
    let drop_took = t.elapsed();
    let keys_gone = wait_until(secs(10), || cluster.any_live().count_prefix(&q) == 0);
    drop(insts);
    eprintln!(
        "{N} Instancers + {N} Registrars, m0 stopped {paused_for:.1?}: CPU {cpu_during:.2?}; \
         change reached all but {missed} Instancers, the last after {slowest:.2?}; \
         Registrars not Registered on their lease: {not_registered}; keys {keys}; \
         threads {threads_before} -> {threads_during}; drop of {N} Registrars {drop_took:.2?}; \
         keys gone: {keys_gone}"
    );
    assert_eq!(missed, 0);
    assert!(slowest < secs(4), "slowest delivery {slowest:?}");
    assert_eq!(not_registered, 0);
    assert_eq!(keys, N);
    assert!(
        cpu_during < paused_for / 2,
        "CPU {cpu_during:?} in {paused_for:?}"
    );
    assert!(drop_took < secs(5) + ms(500), "drop {drop_took:?}");
    assert!(keys_gone);
}

/// HELD (item 1, "two of three dead, then a quorum back"). With members 0
/// (the preferred one) and 1 killed, the survivor answers status calls but
/// has no quorum: calls fail fast (Unavailable/Timeout within
/// request_timeout, 2 s). Once member 1 is back (a quorum, member 0 still
/// dead), calls succeed again, a change reaches the subscriber and the
/// Registrar (whose lease expired meanwhile) is Registered again.
#[test]
fn two_of_three_dead_then_quorum_back() {
    let mut cluster = EtcdCluster::start(3);
    let p = unique_prefix("hostile-quorum");
    let q = unique_prefix("hostile-quorum-reg");
    let client = Client::connect(&cluster.endpoints(), options(secs(2))).expect("connect");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    let reg = Registrar::new(
        &client,
        Service::new(format!("{q}svc"), "svc").with_ttl(TtlOption::new(secs(1), secs(3))),
    );
    reg.register().expect("register");

    cluster.kill(0);
    cluster.kill(1);
    let mut worst = Duration::ZERO;
    let mut ok_without_quorum = 0;
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = client.get_entries(&p);
        worst = worst.max(t.elapsed());
        match r {
            Ok(_) => ok_without_quorum += 1,
            Err(e) => kinds.push(e.kind()),
        }
    }
    std::thread::sleep(secs(5));
    cluster.restart(1);
    let back = Instant::now();
    let calls_ok = wait_until(secs(15), || client.get_entries(&p).is_ok());
    let calls_after = back.elapsed();
    cluster.put(&format!("{p}k"), "after:1");
    let written = Instant::now();
    let seen = recv_until(&rx, secs(15), |ev| {
        ev.err.is_none() && ev.instances.contains("after:1")
    });
    let seen_after = written.elapsed();
    let registered = wait_until(secs(15), || {
        reg.state() == S::Registered && cluster.any_live().exists(&format!("{q}svc"))
    });
    eprintln!(
        "without quorum: {ok_without_quorum}/5 get_entries ok (errors {kinds:?}), slowest \
         {worst:.2?}; after quorum back: calls ok {calls_ok} after {calls_after:.2?}, change \
         seen {} after {seen_after:.2?}, registered {registered} ({:?})",
        seen.is_ok(),
        reg.state()
    );
    assert!(kinds
        .iter()
        .all(|k| matches!(k, ErrorKind::Timeout | ErrorKind::Unavailable)));
    assert!(worst < secs(3), "a call without quorum took {worst:?}");
    assert!(calls_ok && seen.is_ok() && registered);
}

/// HELD (item 1, "endpoint lists with duplicates", "members that flap").
/// The same member three times plus a closed port, with the member flapping
/// (cut / restored through a proxy, which the client sees as the same
/// endpoint): every call made while it is up succeeds.
#[test]
fn duplicates_and_a_flapping_single_member() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let direct = etcd.endpoint();
    let endpoints = vec![
        proxy.endpoint(),
        proxy.endpoint(),
        closed_endpoint(),
        direct.clone(),
        direct,
    ];
    let p = unique_prefix("hostile-dup");
    etcd.put(&format!("{p}a"), "a:1");
    let client = Client::connect(&endpoints, options(secs(2))).expect("connect");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..6 {
        if round % 2 == 0 {
            proxy.cut();
        } else {
            proxy.restore();
        }
        for _ in 0..5 {
            let t = Instant::now();
            let r = client.get_entries(&p);
            slowest = slowest.max(t.elapsed());
            if let Err(e) = r {
                failures.push(format!("round {round}: {:?}: {e}", e.kind()));
            }
        }
        etcd.put(&format!("{p}r{round}"), "x");
        let v = format!("r{round}");
        etcd.put(&format!("{p}{v}"), &v);
        if recv_until(&rx, secs(4), |ev| {
            ev.err.is_none() && ev.instances.contains(&v)
        })
        .is_err()
        {
            failures.push(format!("round {round}: change {v} not seen within 4 s"));
        }
    }
    eprintln!(
        "flapping duplicates: {} failures, slowest get {slowest:.2?}: {failures:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// HELD (item 2, "small dial_keep_alive"). `dial_keep_alive` is also the
/// time an HTTP/2 ping must be answered in; with 1 ms and etcd busy with
/// writes, a ping answered late would close a healthy connection. An idle
/// Instancer and a Registrar for 35 s (three ping rounds) while another
/// client writes: no error Event, no Lost.
#[test]
fn a_one_millisecond_dial_keep_alive_on_a_busy_etcd() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("hostile-ka");
    let q = unique_prefix("hostile-ka-reg");
    etcd.put(&format!("{p}a"), "a:1");
    let opts = ClientOptions {
        dial_keep_alive: ms(1),
        ..Default::default()
    };
    let client = Client::connect(&[etcd.endpoint()], opts).expect("connect");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["a:1"]);
    let reg = Registrar::new(&client, Service::new(format!("{q}svc"), "v"));
    let reg_events = reg.events();
    reg.register().expect("register");
    // Load: many writes to other keys from another connection.
    let raw = RawEtcd::connect(&etcd.endpoint());
    let start = Instant::now();
    let mut writes = 0;
    for i in 0..1_000_000 {
        if start.elapsed() > secs(35) {
            break;
        }
        raw.put(
            format!("/etcd-sd-it/hostile-ka-load/{}", i % 100),
            "x".repeat(1000),
        );
        writes += 1;
    }
    let events = drain(&rx, ms(100));
    let errors: Vec<String> = events
        .iter()
        .filter(|e| e.err.is_some())
        .map(describe)
        .collect();
    let lost: Vec<_> = reg_events
        .try_iter()
        .take(1000)
        .filter(|e| e.state == S::Lost)
        .collect();
    eprintln!(
        "{writes} writes in {:.1?}; error events {errors:?}; Lost {lost:?}",
        start.elapsed()
    );
    assert!(errors.is_empty() && lost.is_empty());
}

/// HELD (item 3, "a watch_prefix notifier across a new history"). etcd is
/// wiped while the link is cut and its new history (other writes) goes past
/// the old revision, with a change under the prefix below it: the notifier
/// must send at least one `()` once the link is back.
#[test]
fn watch_prefix_notifies_across_a_wiped_etcd() {
    let mut etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let p = unique_prefix("hostile-wp");
    let raw = RawEtcd::connect(&etcd.endpoint());
    for i in 0..10 {
        raw.put(format!("/etcd-sd-it/hostile-wp-old/{i}"), "x");
    }
    let client = Client::connect(&[proxy.endpoint()], options(secs(2))).expect("connect");
    let notes = client.watch_prefix(&p).expect("watch_prefix");
    let _ = count_notes(&notes, ms(300));
    let r = raw.put(format!("{p}a"), "a:1");
    assert!(count_notes(&notes, secs(2)) >= 1, "no notification for a");
    drop(raw);
    proxy.cut();
    etcd.restart_empty();
    let raw = RawEtcd::connect(&etcd.endpoint());
    raw.put(format!("{p}z"), "z:1");
    fill_until(&raw, "wp-new", r + 10);
    let _ = count_notes(&notes, ms(1));
    proxy.restore();
    let restored = Instant::now();
    let n = count_notes(&notes, secs(10));
    eprintln!(
        "watch_prefix after a wipe: {n} notifications within {:.1?}",
        restored.elapsed()
    );
    assert!(n >= 1, "no notification across the new history");
}
