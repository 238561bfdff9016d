//! Unit tests of the Endpointer rules, fed by hand through a [`Feed`] (what
//! the Instancer's callback does) with a fake clock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Records factory calls and closer runs, by instance.
#[derive(Default)]
struct Log {
    made: Mutex<Vec<String>>,
    closed: Mutex<Vec<String>>,
}

impl Log {
    fn made(&self) -> Vec<String> {
        self.made.lock().unwrap().clone()
    }
    fn closed(&self) -> Vec<String> {
        let mut v = self.closed.lock().unwrap().clone();
        v.sort();
        v
    }
}

/// A clock that only moves when told to.
fn fake_clock() -> (Clock, Arc<AtomicU64>) {
    let base = Instant::now();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let o = offset_ms.clone();
    let clock: Clock = Arc::new(move || base + Duration::from_millis(o.load(Ordering::SeqCst)));
    (clock, offset_ms)
}

/// An endpointer whose endpoints are `"ep:" + instance`; instances starting
/// with `bad` make the factory fail, `panic` make it panic.
fn endpointer(
    options: EndpointerOptions,
) -> (Endpointer<String>, Feed<String>, Arc<Log>, Arc<AtomicU64>) {
    let log = Arc::new(Log::default());
    let l = log.clone();
    let (clock, time) = fake_clock();
    let factory: Box<Factory<String>> = Box::new(move |instance: &str| {
        if instance.starts_with("bad") {
            return Err(format!("cannot dial {instance}").into());
        }
        if instance.starts_with("panic") {
            panic!("factory panic for {instance}");
        }
        l.made.lock().unwrap().push(instance.to_owned());
        let l2 = l.clone();
        let name = instance.to_owned();
        let closer: Closer = Box::new(move || l2.closed.lock().unwrap().push(name));
        Ok((format!("ep:{instance}"), Some(closer)))
    });
    let (e, feed) = Endpointer::detached("/test/".into(), factory, options, clock);
    (e, feed, log, time)
}

fn good(instances: &[&str]) -> Event {
    Event {
        instances: instances.iter().collect(),
        err: None,
    }
}

fn failing(instances: &[&str]) -> Event {
    Event {
        instances: instances.iter().collect(),
        err: Some(Error::new(ErrorKind::Unavailable, "etcd is down")),
    }
}

fn invalidate_after(ms: u64) -> EndpointerOptions {
    EndpointerOptions {
        invalidate_on_error: Some(Duration::from_millis(ms)),
    }
}

#[test]
fn endpoints_follow_instances_in_order() {
    let (e, feed, _, _) = endpointer(Default::default());
    assert_eq!(e.endpoints().unwrap(), Vec::<String>::new());
    feed.send(&good(&["c", "a", "b"]));
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:b", "ep:c"]);
    feed.send(&good(&["b"]));
    assert_eq!(e.endpoints().unwrap(), ["ep:b"]);
}

#[test]
fn an_instance_that_stays_keeps_its_endpoint() {
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a", "b"]));
    feed.send(&good(&["a", "b", "c"]));
    feed.send(&good(&["b", "c"]));
    feed.send(&good(&["b", "c"])); // identical set: nothing to do
    assert_eq!(log.made(), ["a", "b", "c"], "one factory call per instance");
    assert_eq!(log.closed(), ["a"]);
    assert_eq!(e.endpoints().unwrap(), ["ep:b", "ep:c"]);
}

#[test]
fn an_instance_that_comes_back_gets_a_new_endpoint() {
    let (_e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a"]));
    feed.send(&good(&[]));
    feed.send(&good(&["a"]));
    assert_eq!(log.made(), ["a", "a"]);
    assert_eq!(log.closed(), ["a"]);
}

#[test]
fn failing_or_panicking_factory_skips_the_instance_and_retries_later() {
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a", "bad1", "panic1", "z"]));
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:z"]);
    assert_eq!(log.made(), ["a", "z"]);
    // Next update: the skipped ones are tried again (and fail again); the
    // others are reused.
    feed.send(&good(&["a", "bad1", "m", "panic1", "z"]));
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:m", "ep:z"]);
    assert_eq!(log.made(), ["a", "z", "m"]);
}

#[test]
fn close_runs_every_closer_once_and_is_idempotent() {
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a", "b"]));
    let clone = e.clone();
    e.close();
    assert_eq!(log.closed(), ["a", "b"]);
    assert_eq!(clone.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    e.close();
    clone.close();
    feed.send(&good(&["c"])); // ignored after close
    drop(feed);
    assert_eq!(log.closed(), ["a", "b"]);
    assert_eq!(log.made(), ["a", "b"]);
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn dropping_the_last_clone_closes() {
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a"]));
    let clone = e.clone();
    drop(e);
    assert!(log.closed().is_empty(), "a clone is still alive");
    assert_eq!(clone.endpoints().unwrap(), ["ep:a"]);
    drop(clone);
    assert_eq!(log.closed(), ["a"]);
    feed.send(&good(&["b"]));
    assert_eq!(log.made(), ["a"], "no factory call after close");
}

#[test]
fn losing_the_instancer_callback_closes() {
    // The instancer drops its callback (and so the Feed) when it stops.
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a", "b"]));
    drop(feed);
    assert_eq!(log.closed(), ["a", "b"]);
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn errors_are_ignored_without_invalidate_on_error() {
    let (e, feed, log, time) = endpointer(Default::default());
    feed.send(&good(&["a"]));
    feed.send(&failing(&["a"]));
    time.store(3_600_000, Ordering::SeqCst);
    assert_eq!(e.endpoints().unwrap(), ["ep:a"]);
    assert!(log.closed().is_empty());
}

#[test]
fn invalidate_on_error_keeps_endpoints_for_t_then_fails_and_closes() {
    let (e, feed, log, time) = endpointer(invalidate_after(1_000));
    feed.send(&good(&["a", "b"]));
    feed.send(&failing(&["a", "b"]));
    time.store(999, Ordering::SeqCst);
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:b"], "within t");
    assert!(log.closed().is_empty());
    // A second error does not push the deadline back.
    feed.send(&failing(&["a", "b"]));
    time.store(1_000, Ordering::SeqCst);
    let err = e.endpoints().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("etcd is down"), "{err}");
    assert_eq!(log.closed(), ["a", "b"], "closers ran at invalidation");
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(log.closed(), ["a", "b"], "and only once");
    // Recovery builds the endpoints again.
    feed.send(&good(&["a", "b"]));
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:b"]);
    assert_eq!(log.made(), ["a", "b", "a", "b"]);
    e.close();
    assert_eq!(log.closed(), ["a", "a", "b", "b"]);
}

#[test]
fn recovery_before_t_keeps_the_endpoints() {
    let (e, feed, log, time) = endpointer(invalidate_after(1_000));
    feed.send(&good(&["a"]));
    feed.send(&failing(&["a"]));
    time.store(500, Ordering::SeqCst);
    feed.send(&good(&["a"]));
    time.store(10_000, Ordering::SeqCst);
    assert_eq!(e.endpoints().unwrap(), ["ep:a"]);
    assert_eq!(log.made(), ["a"], "endpoint reused");
    assert!(log.closed().is_empty());
    // A new error starts a new countdown.
    feed.send(&failing(&["a"]));
    time.store(10_999, Ordering::SeqCst);
    assert!(e.endpoints().is_ok());
    time.store(11_000, Ordering::SeqCst);
    assert!(e.endpoints().is_err());
}

#[test]
fn zero_invalidation_delay_fails_at_once() {
    let (e, feed, log, _) = endpointer(invalidate_after(0));
    feed.send(&good(&["a"]));
    feed.send(&failing(&["a"]));
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(log.closed(), ["a"]);
}

#[test]
fn close_after_invalidation_runs_no_closer_twice() {
    let (e, feed, log, time) = endpointer(invalidate_after(10));
    feed.send(&good(&["a"]));
    feed.send(&failing(&["a"]));
    time.store(10, Ordering::SeqCst);
    assert!(e.endpoints().is_err());
    e.close();
    assert_eq!(log.closed(), ["a"]);
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Closed);
}

/// A factory that blocks on "slow" until released, to catch an update in
/// the middle.
/// An endpointer, its feed, its log, the sender that releases the "slow"
/// factory call and the receiver told when that call started.
type Blocking = (
    Endpointer<String>,
    Feed<String>,
    Arc<Log>,
    crossbeam_channel::Sender<()>,
    crossbeam_channel::Receiver<()>,
);

fn blocking_endpointer() -> Blocking {
    let log = Arc::new(Log::default());
    let l = log.clone();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let (entered_tx, entered_rx) = crossbeam_channel::bounded::<()>(1);
    let factory: Box<Factory<String>> = Box::new(move |instance: &str| {
        if instance == "slow" {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }
        l.made.lock().unwrap().push(instance.to_owned());
        let l2 = l.clone();
        let name = instance.to_owned();
        let closer: Closer = Box::new(move || l2.closed.lock().unwrap().push(name));
        Ok((format!("ep:{instance}"), Some(closer)))
    });
    let (e, feed) = Endpointer::detached(
        "/test/".into(),
        factory,
        Default::default(),
        Arc::new(Instant::now),
    );
    (e, feed, log, release_tx, entered_rx)
}

#[test]
fn readers_do_not_wait_for_a_factory() {
    let (e, feed, _log, release, entered) = blocking_endpointer();
    feed.send(&good(&["a"]));
    let updater = std::thread::spawn(move || {
        feed.send(&good(&["a", "slow"]));
        feed
    });
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    // The update is stuck in the factory; readers still get the old set.
    assert_eq!(e.endpoints().unwrap(), ["ep:a"]);
    release.send(()).unwrap();
    let _feed = updater.join().unwrap();
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:slow"]);
}

#[test]
fn close_during_an_update_still_runs_every_closer_once() {
    let (e, feed, log, release, entered) = blocking_endpointer();
    feed.send(&good(&["a"]));
    let updater = std::thread::spawn(move || {
        feed.send(&good(&["a", "slow"]));
        feed
    });
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    e.close(); // the update holds the entries; it runs their closers
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    release.send(()).unwrap();
    let feed = updater.join().unwrap();
    assert_eq!(log.closed(), ["a", "slow"]);
    assert_eq!(e.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    drop(feed);
    assert_eq!(log.closed(), ["a", "slow"]);
}

#[test]
fn a_panicking_closer_does_not_stop_the_others() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let factory: Box<Factory<u32>> = Box::new(move |instance: &str| {
        let c = c.clone();
        let boom = instance == "boom";
        let closer: Closer = Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            if boom {
                panic!("closer panic");
            }
        });
        Ok((1, Some(closer)))
    });
    let (e, feed) = Endpointer::detached(
        "/test/".into(),
        factory,
        Default::default(),
        Arc::new(Instant::now),
    );
    feed.send(&good(&["a", "boom", "c"]));
    e.close();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn endpointer_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Endpointer<String>>();
    check::<Endpointer<crate::lb::Endpoint<String, String>>>();
}

/// Many updates, both as the Instancer makes them (one set changed in place,
/// so consecutive snapshots share chunks) and as fresh sets (sharing
/// nothing): the endpoints always match the instances, each arrival makes
/// exactly one endpoint and each departure runs exactly one closer.
#[test]
fn incremental_updates_match_a_model() {
    use crate::backoff::SplitMix64;
    use crate::chunks::SortedChunks;
    use crate::name::Name;
    use std::collections::BTreeSet;

    let (e, feed, log, _) = endpointer(Default::default());
    let mut rng = SplitMix64::new(7);
    let mut set: SortedChunks<Name> = SortedChunks::default();
    let mut model: BTreeSet<String> = BTreeSet::new();
    let (mut arrivals, mut departures) = (0, 0);
    for round in 0..3000 {
        // A few changes per update, among up to 2,000 instances.
        let before = model.clone();
        for _ in 0..=rng.below(3) {
            let v = format!("10.0.{}.{}:80", rng.below(8), rng.below(250));
            if rng.below(2) == 0 {
                if model.remove(&v) {
                    set.remove(&v);
                }
            } else if model.insert(v.clone()) {
                set.insert(Name::new(&v));
            }
        }
        arrivals += model.difference(&before).count();
        departures += before.difference(&model).count();
        let instances = if round % 97 == 0 {
            // A fresh set, as after a re-read: no chunk shared.
            model.iter().collect::<Instances>()
        } else {
            Instances::from_set(set.clone())
        };
        feed.send(&Event {
            instances,
            err: None,
        });
        if round % 50 == 0 {
            let want: Vec<String> = model.iter().map(|i| format!("ep:{i}")).collect();
            assert_eq!(e.endpoints().unwrap(), want, "round {round}");
        }
    }
    let want: Vec<String> = model.iter().map(|i| format!("ep:{i}")).collect();
    assert_eq!(e.endpoints().unwrap(), want);
    assert_eq!(log.made().len(), arrivals);
    assert_eq!(log.closed.lock().unwrap().len(), departures);
    e.close();
    assert_eq!(log.closed.lock().unwrap().len(), arrivals);
}

#[test]
fn a_failed_instance_that_goes_is_not_retried() {
    let (e, feed, log, _) = endpointer(Default::default());
    feed.send(&good(&["a", "bad1"]));
    feed.send(&good(&["a", "b"])); // bad1 left: not tried again
    feed.send(&good(&["a", "b", "bad1"])); // back: tried as new
    assert_eq!(e.endpoints().unwrap(), ["ep:a", "ep:b"]);
    assert_eq!(log.made(), ["a", "b"]);
    assert_eq!(log.closed(), Vec::<String>::new());
}
