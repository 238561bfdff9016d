//! etcd's history and keys as etcd has them (API.md §5.4 "A new history"
//! and "Keys are bytes"; issue 13 items 3 and 4).
//!
//! What these tests prove:
//!
//! * An Instancer notices a new etcd history even when the new history's
//!   revision is already past the last one it saw: after etcd's data dir is
//!   wiped and etcd restarted with the same flags (same cluster and member
//!   ids), and after another cluster takes over the same address, it
//!   publishes exactly etcd's new state (the old keys gone), never a mix of
//!   the two histories; a Registrar that was registered is registered again
//!   on the new etcd. The client reaches etcd through a proxy that is cut
//!   while the new history is written, so it is past the old revision
//!   before the client sees it.
//! * Keys are bytes: two keys that differ only in bytes that are not UTF-8
//!   (lossily the same string) are two instances, on the first read and on
//!   the watch, and deleting one removes only its value; values that are
//!   not UTF-8 are converted lossily but never merge keys.
//! * An empty value under the prefix is an instance `""`, as in go-kit.

mod support;

use std::time::{Duration, Instant};

use etcd_sd::channel::RecvTimeoutError;
use etcd_sd::{
    Instancer, Registrar, RegistrationEvent, RegistrationState as S, Service, TtlOption,
};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer, FaultProxy, RawEtcd};

// ---------------------------------------------------------------------------
// Item 3: a new history whose revision is higher.

#[derive(Clone, Copy, Debug)]
enum NewHistory {
    /// Data dir wiped, restarted with the same flags: same cluster and
    /// member ids, revisions start again at 1.
    Wiped,
    /// A different single-member cluster (new name and token) on the same
    /// ports.
    OtherCluster,
}

/// How long the Instancer and the Registrar get to catch up once the client
/// can reach the new etcd (its reconnect backoff is capped at 5 s).
const CATCH_UP: Duration = Duration::from_secs(15);

fn new_history_ahead(kind: NewHistory) {
    let mut etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = etcd_sd::Client::connect(&[proxy.endpoint()], options(secs(2)))
        .expect("connect through the proxy");
    let p = unique_prefix("history");
    let q = unique_prefix("history-reg");
    let reg_key = format!("{q}svc");

    // Some history, then A and B under the watched prefix.
    let raw = RawEtcd::connect(&etcd.endpoint());
    for i in 0..30 {
        raw.put(format!("/etcd-sd-it/filler-old/{i}"), "x");
    }
    raw.put(format!("{p}a"), "a:1");
    raw.put(format!("{p}b"), "b:1");
    let ids_before = raw.ids();
    drop(raw);

    let reg = Registrar::new(
        &client,
        Service::new(reg_key.clone(), "svc:1").with_ttl(TtlOption::new(secs(1), secs(5))),
    );
    let reg_events = reg.events();
    reg.register().expect("register");
    let old_lease = reg.lease_id().expect("lease");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let rx = inst.subscribe();
    recv_instances(&rx, secs(10), &["a:1", "b:1"]);
    let old_rev = etcd.revision();
    let _ = reg_events.try_iter().take(1000).count();

    // The client loses etcd; meanwhile etcd gets a new history that goes
    // well past the old revision, with C under the prefix at its end.
    proxy.cut();
    let cut_at = Instant::now();
    match kind {
        NewHistory::Wiped => etcd.restart_empty(),
        NewHistory::OtherCluster => etcd.restart_as_other_cluster(),
    }
    let raw = RawEtcd::connect(&etcd.endpoint());
    let ids_after = raw.ids();
    for i in 0..old_rev + 20 {
        raw.put(format!("/etcd-sd-it/filler-new/{i}"), "y");
    }
    raw.put(format!("{p}c"), "c:1");
    let new_rev = raw.revision();
    assert!(
        new_rev > old_rev + 20,
        "new revision {new_rev}, old {old_rev}"
    );
    assert_eq!(etcd.instances_under(&p), strs(&["c:1"]));
    eprintln!(
        "{kind:?}: old history at revision {old_rev} (cluster, member ids {ids_before:x?}); \
         new one at {new_rev} ({ids_after:x?}), written in {:.1?} with the link cut",
        cut_at.elapsed()
    );
    proxy.restore();
    let restored = Instant::now();

    // Exactly the new state, as one Event, never the old and new mixed; and
    // the Registrar registered again (a Registered event after the cut).
    let mut seen = Vec::new();
    let mut reached = None;
    let mut reg_seen: Vec<RegistrationEvent> = Vec::new();
    let mut reg_back = None;
    let deadline = restored + CATCH_UP;
    // 50 ms steps over CATCH_UP.
    for _ in 0..1_000 {
        if reached.is_none() {
            match rx.recv_timeout(ms(50)) {
                Ok(ev) => {
                    seen.push(format!("{:.2?} {}", restored.elapsed(), describe(&ev)));
                    if ev.err.is_none() && instances(&ev) == strs(&["c:1"]) {
                        reached = Some(restored.elapsed());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            std::thread::sleep(ms(50));
        }
        for ev in reg_events.try_iter().take(1000) {
            if ev.state == S::Registered && reg_back.is_none() {
                reg_back = Some(restored.elapsed());
            }
            reg_seen.push(ev);
        }
        if (reached.is_some() && reg_back.is_some()) || Instant::now() >= deadline {
            break;
        }
    }
    let mixed: Vec<&String> = seen
        .iter()
        .filter(|d| d.contains("c:1") && (d.contains("a:1") || d.contains("b:1")))
        .collect();
    let cur = inst.current();
    eprintln!(
        "{kind:?}: Instancer {}; events since the cut: {seen:?}",
        match reached {
            Some(t) => format!("published the new state after {t:.2?}"),
            None => format!("never published the new state in {CATCH_UP:?}"),
        },
    );
    let in_etcd = wait_until(secs(5), || {
        reg.lease_id().is_some_and(|l| etcd.lease_of(&reg_key) == l)
    });
    eprintln!(
        "{kind:?}: Registrar {}; state {:?}, lease {old_lease:x} -> {:x?}, key on the new etcd \
         on lease {:x}; events since the cut {:?}",
        match reg_back {
            Some(t) => format!("registered again after {t:.2?}"),
            None => format!("not registered again in {CATCH_UP:?}"),
        },
        reg.state(),
        reg.lease_id(),
        etcd.lease_of(&reg_key),
        states(&reg_seen)
    );

    assert!(
        reached.is_some(),
        "{kind:?}: the Instancer did not publish etcd's new state [\"c:1\"] within {CATCH_UP:?}; \
         current {}; events: {seen:#?}",
        describe(&cur)
    );
    assert!(
        mixed.is_empty(),
        "{kind:?}: the Instancer published a mix of the old and new histories: {mixed:?}"
    );
    assert!(
        reg_back.is_some() && in_etcd && reg.state() == S::Registered,
        "{kind:?}: the Registrar is not registered on the new etcd: state {:?}, lease {:?}, \
         key on lease {:x}; events {:?}",
        reg.state(),
        reg.lease_id(),
        etcd.lease_of(&reg_key),
        states(&reg_seen)
    );

    // And the watch follows the new history.
    etcd.put(&format!("{p}d"), "d:1");
    recv_instances(&rx, secs(10), &["c:1", "d:1"]);
}

#[test]
fn a_wiped_etcd_whose_new_history_is_ahead_is_read_again() {
    new_history_ahead(NewHistory::Wiped);
}

#[test]
fn another_cluster_on_the_same_address_ahead_is_read_again() {
    new_history_ahead(NewHistory::OtherCluster);
}

// ---------------------------------------------------------------------------
// Item 4: keys are bytes.

/// `prefix` followed by raw bytes.
fn key(prefix: &str, tail: &[u8]) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.extend_from_slice(tail);
    k
}

/// Waits (10 s) until the Instancer's `current()` is clean and equals
/// `want`; on failure records what it was instead.
fn expect_current(inst: &Instancer, want: &[&str], what: &str, problems: &mut Vec<String>) {
    // Instances come sorted by their bytes (U+FFFD sorts after ASCII).
    let mut want = strs(want);
    want.sort();
    let ok = wait_until(secs(10), || {
        let c = inst.current();
        c.err.is_none() && instances(&c) == want
    });
    let cur = describe(&inst.current());
    eprintln!("{what}: {cur}");
    if !ok {
        problems.push(format!("{what}: want {want:?}, have {cur}"));
    }
}

/// Puts a marker key and waits until the Instancer shows it, so that every
/// change written before has been applied.
fn sync_with_marker(raw: &RawEtcd, inst: &Instancer, p: &str, n: usize) {
    let value = format!("marker:{n}");
    raw.put(key(p, b"zz-marker"), value.as_bytes());
    assert!(
        wait_until(secs(10), || inst.current().instances.contains(&value)),
        "the Instancer did not see {value}: {}",
        describe(&inst.current())
    );
}

/// Two keys `P\xff` and `P\xfe` (both lossily `P\u{fffd}`) with different
/// values, written before the Instancer exists.
#[test]
fn keys_that_are_not_utf8_are_two_instances_on_the_first_read() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let raw = RawEtcd::connect(&etcd.endpoint());
    let p = unique_prefix("bytes-read");
    raw.put(key(&p, b"\xff"), "ff:1");
    raw.put(key(&p, b"\xfe"), "fe:1");
    let mut problems = Vec::new();

    // get_entries: both values, in key order (0xfe sorts before 0xff).
    let entries = client.get_entries(&p).expect("get_entries");
    eprintln!("get_entries: {entries:?}");
    if entries != strs(&["fe:1", "ff:1"]) {
        problems.push(format!("get_entries: want [fe:1, ff:1], have {entries:?}"));
    }

    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    expect_current(&inst, &["fe:1", "ff:1"], "first read", &mut problems);
    raw.delete(key(&p, b"\xff"));
    expect_current(&inst, &["fe:1"], "after deleting P\\xff", &mut problems);
    raw.put(key(&p, b"\xff"), "ff:2");
    expect_current(
        &inst,
        &["fe:1", "ff:2"],
        "after putting P\\xff again",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The same two keys written while the Instancer watches.
#[test]
fn keys_that_are_not_utf8_are_two_instances_on_the_watch() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let raw = RawEtcd::connect(&etcd.endpoint());
    let p = unique_prefix("bytes-watch");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    let mut problems = Vec::new();
    expect_current(&inst, &[], "empty prefix", &mut problems);

    raw.put(key(&p, b"\xff"), "ff:1");
    expect_current(&inst, &["ff:1"], "after putting P\\xff", &mut problems);
    raw.put(key(&p, b"\xfe"), "fe:1");
    expect_current(
        &inst,
        &["fe:1", "ff:1"],
        "after putting P\\xfe",
        &mut problems,
    );
    raw.delete(key(&p, b"\xff"));
    expect_current(&inst, &["fe:1"], "after deleting P\\xff", &mut problems);
    raw.delete(key(&p, b"\xfe"));
    expect_current(&inst, &[], "after deleting P\\xfe", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Values `\xff` and `\xfe` under keys that are themselves not UTF-8: both
/// values read as U+FFFD (one instance, as the set is de-duplicated), but
/// the keys stay two: deleting one key leaves the instance of the other.
#[test]
fn values_that_are_not_utf8_are_lossy_but_never_merge_keys() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let raw = RawEtcd::connect(&etcd.endpoint());
    let lossy = "\u{fffd}";
    let mut problems = Vec::new();

    // First read.
    let p = unique_prefix("bytes-values-read");
    raw.put(key(&p, b"\xff"), b"\xff");
    raw.put(key(&p, b"\xfe"), b"\xfe");
    let entries = client.get_entries(&p).expect("get_entries");
    eprintln!("get_entries: {entries:?}");
    if entries != strs(&[lossy, lossy]) {
        problems.push(format!("get_entries: want two U+FFFD, have {entries:?}"));
    }
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    expect_current(&inst, &[lossy], "first read", &mut problems);
    raw.delete(key(&p, b"\xff"));
    sync_with_marker(&raw, &inst, &p, 1);
    expect_current(
        &inst,
        &[lossy, "marker:1"],
        "read: after deleting P\\xff (P\\xfe still holds U+FFFD)",
        &mut problems,
    );
    raw.delete(key(&p, b"\xfe"));
    expect_current(
        &inst,
        &["marker:1"],
        "read: after deleting P\\xfe",
        &mut problems,
    );

    // Watch.
    let p = unique_prefix("bytes-values-watch");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    raw.put(key(&p, b"\xff"), b"\xff");
    raw.put(key(&p, b"\xfe"), b"\xfe");
    expect_current(&inst, &[lossy], "watch: both put", &mut problems);
    raw.delete(key(&p, b"\xfe"));
    sync_with_marker(&raw, &inst, &p, 2);
    expect_current(
        &inst,
        &[lossy, "marker:2"],
        "watch: after deleting P\\xfe (P\\xff still holds U+FFFD)",
        &mut problems,
    );
    raw.delete(key(&p, b"\xff"));
    expect_current(
        &inst,
        &["marker:2"],
        "watch: after deleting P\\xff",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// An empty value is an instance `""`: on the first read, on the watch,
/// and as long as one key holds it.
#[test]
fn an_empty_value_is_an_instance() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let raw = RawEtcd::connect(&etcd.endpoint());
    let mut problems = Vec::new();

    let p = unique_prefix("empty-read");
    etcd.put(&format!("{p}e"), "");
    etcd.put(&format!("{p}x"), "x:1");
    let entries = client.get_entries(&p).expect("get_entries");
    eprintln!("get_entries: {entries:?}");
    if entries != strs(&["", "x:1"]) {
        problems.push(format!("get_entries: want [\"\", x:1], have {entries:?}"));
    }
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    expect_current(&inst, &["", "x:1"], "first read", &mut problems);
    etcd.put(&format!("{p}f"), "");
    etcd.del(&format!("{p}e"));
    sync_with_marker(&raw, &inst, &p, 1);
    expect_current(
        &inst,
        &["", "marker:1", "x:1"],
        "read: after deleting e (f still holds \"\")",
        &mut problems,
    );
    etcd.del(&format!("{p}f"));
    expect_current(
        &inst,
        &["marker:1", "x:1"],
        "read: after deleting f",
        &mut problems,
    );

    let p = unique_prefix("empty-watch");
    let inst = Instancer::new(&client, &p).expect("Instancer::new");
    etcd.put(&format!("{p}e"), "");
    expect_current(&inst, &[""], "watch: after putting e = \"\"", &mut problems);
    etcd.put(&format!("{p}e"), "e:1");
    expect_current(&inst, &["e:1"], "watch: e = e:1", &mut problems);
    etcd.put(&format!("{p}e"), "");
    expect_current(&inst, &[""], "watch: e = \"\" again", &mut problems);
    etcd.del(&format!("{p}e"));
    expect_current(&inst, &[], "watch: after deleting e", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}
