//! Callbacks cannot hurt the dispatcher (API.md §5.4 "Callbacks"): panics in a
//! callback, in the drop of its panic payload or in the drop of its closure
//! are caught wherever they happen; removing a callback that is stuck returns
//! within about `request_timeout`; a channel that drains gets the latest state
//! even while a callback is stuck.
//!
//! Every wait is bounded; timing assertions have seconds of margin.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etcd_sd::channel::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use etcd_sd::{CallbackId, Client, Event, Instancer};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer};

/// The request timeout of the clients whose removals are timed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Slack on top of `request_timeout` for a shared, loaded machine.
const MARGIN: Duration = Duration::from_secs(3);

/// A value whose drop panics (unless the thread is already unwinding, which
/// would abort the test process). It counts its drops first.
struct PanicsWhenDropped {
    what: &'static str,
    drops: Arc<AtomicUsize>,
}

impl PanicsWhenDropped {
    fn new(what: &'static str) -> (PanicsWhenDropped, Arc<AtomicUsize>) {
        let drops = Arc::new(AtomicUsize::new(0));
        let value = PanicsWhenDropped {
            what,
            drops: drops.clone(),
        };
        (value, drops)
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        if !std::thread::panicking() {
            panic!("test: the drop of {} panics on purpose", self.what);
        }
    }
}

/// Another Instancer on the same client, whose callback forwards every event:
/// it shows that the client's dispatcher thread still runs callbacks.
struct Witness {
    prefix: String,
    _inst: Instancer,
    events: Receiver<Event>,
}

impl Witness {
    fn new(client: &Client, name: &str) -> Witness {
        let prefix = unique_prefix(name);
        let inst = Instancer::new(client, &prefix).expect("witness instancer");
        let (tx, events) = channel::unbounded();
        inst.on_update(move |ev: &Event| {
            let _ = tx.send(ev.clone());
        });
        recv_instances(&events, secs(5), &[]);
        Witness {
            prefix,
            _inst: inst,
            events,
        }
    }

    /// Puts a new key and asserts that the witness callback sees it.
    fn assert_alive(&self, etcd: &EtcdServer, value: &str, when: &str) {
        etcd.put(&format!("{}{value}", self.prefix), value);
        let seen = recv_until(&self.events, secs(10), |ev| ev.instances.contains(value));
        assert!(
            seen.is_ok(),
            "{when}: the dispatcher no longer runs callbacks: {}",
            seen.unwrap_err()
        );
    }
}

/// A callback that forwards every event to a channel.
fn forward(tx: Sender<Event>) -> impl Fn(&Event) + Send + 'static {
    move |ev: &Event| {
        let _ = tx.send(ev.clone());
    }
}

#[test]
fn a_panic_payload_whose_drop_panics_does_not_stop_other_callbacks() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("cb-payload");
    let inst = Instancer::new(&client, &p).unwrap();
    let witness = Witness::new(&client, "cb-payload-witness");

    let calls = Arc::new(AtomicUsize::new(0));
    let payload_drops = Arc::new(AtomicUsize::new(0));
    {
        let (calls, payload_drops) = (calls.clone(), payload_drops.clone());
        inst.on_update(move |ev: &Event| {
            if ev.instances.contains("boom") {
                calls.fetch_add(1, Ordering::SeqCst);
                std::panic::panic_any(PanicsWhenDropped {
                    what: "a panic payload",
                    drops: payload_drops.clone(),
                });
            }
        });
    }
    // Added after the bad one: called after it, for the same event.
    let (tx, same) = channel::unbounded();
    inst.on_update(forward(tx));
    recv_instances(&same, secs(5), &[]);

    etcd.put(&format!("{p}boom"), "boom");
    recv_instances(&same, secs(10), &["boom"]);
    assert!(
        wait_until(secs(5), || payload_drops.load(Ordering::SeqCst) == 1),
        "the panic payload was not dropped"
    );

    // Later changes still reach the other callback of the same Instancer and
    // the callback of another one; the panicking callback is gone.
    etcd.put(&format!("{p}after"), "after");
    recv_instances(&same, secs(10), &["after", "boom"]);
    witness.assert_alive(&etcd, "after-payload", "after a payload whose drop panics");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the panicking callback was called again"
    );
}

/// How a callback is removed.
#[derive(Clone, Copy, Debug)]
enum Removal {
    RemoveCallback,
    Stop,
    DropInstancer,
    /// `remove_callback` from inside its own call (on the dispatcher).
    FromItsOwnCall,
}

const REMOVALS: [Removal; 4] = [
    Removal::RemoveCallback,
    Removal::Stop,
    Removal::DropInstancer,
    Removal::FromItsOwnCall,
];

/// Removes callback `id` of `inst` the way `how` says, from the test thread
/// (`FromItsOwnCall` is done by the callback itself and needs nothing here).
fn remove(how: Removal, inst: Arc<Instancer>, id: CallbackId) {
    match how {
        Removal::RemoveCallback => inst.remove_callback(id),
        Removal::Stop => inst.stop(),
        Removal::DropInstancer => {
            let inst = Arc::into_inner(inst).expect("the test holds the only handle");
            drop(inst);
        }
        Removal::FromItsOwnCall => {}
    }
}

#[test]
fn a_closure_whose_drop_panics_is_removed_without_harm() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let witness = Witness::new(&client, "cb-closure-witness");
    for how in REMOVALS {
        let p = unique_prefix("cb-closure");
        let inst = Arc::new(Instancer::new(&client, &p).unwrap());
        let (guard, drops) = PanicsWhenDropped::new("a callback closure");
        let my_id: Arc<OnceLock<CallbackId>> = Arc::new(OnceLock::new());
        let (called_tx, called) = channel::unbounded();
        let id = {
            let (weak, my_id) = (Arc::downgrade(&inst), my_id.clone());
            inst.on_update(move |ev: &Event| {
                let _keep = &guard;
                let _ = called_tx.send(ev.clone());
                if ev.instances.contains("remove-me") {
                    if let (Some(inst), Some(id)) = (weak.upgrade(), my_id.get()) {
                        inst.remove_callback(*id);
                    }
                }
            })
        };
        my_id.set(id).unwrap();
        recv_instances(&called, secs(5), &[]);

        // Removing from its own call needs the instancer alive meanwhile; the
        // other removals take the test's only handle.
        let held = matches!(how, Removal::FromItsOwnCall).then(|| inst.clone());
        let removed = catch_unwind(AssertUnwindSafe(|| match how {
            Removal::FromItsOwnCall => etcd.put(&format!("{p}r"), "remove-me"),
            _ => remove(how, inst, id),
        }));
        assert!(removed.is_ok(), "{how:?}: the remover panicked");
        if !matches!(how, Removal::FromItsOwnCall) {
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "{how:?}: closure not dropped once"
            );
        }
        assert!(
            wait_until(secs(10), || drops.load(Ordering::SeqCst) == 1),
            "{how:?}: the closure was not dropped"
        );
        witness.assert_alive(&etcd, &format!("after-{how:?}"), &format!("{how:?}"));
        std::thread::sleep(ms(200));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "{how:?}: dropped twice");
        drop(held);
    }
}

/// A callback that, the first time it sees `trigger`, blocks until the test
/// lets it go (or at most `limit`), and a probe on its closure's drop. Only
/// the first call blocks: later snapshots hold the trigger too.
struct Stuck {
    entered: Receiver<()>,
    release: Sender<()>,
    running: Arc<AtomicBool>,
    drops: Arc<AtomicUsize>,
    dropped_while_running: Arc<AtomicBool>,
}

/// Counts the drops of the closure that holds it, and notes one that happens
/// while the closure's call is still running.
struct DropProbe {
    drops: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    dropped_while_running: Arc<AtomicBool>,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            self.dropped_while_running.store(true, Ordering::SeqCst);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Stuck {
    /// Adds the blocking callback to `inst`.
    fn on(inst: &Instancer, trigger: &'static str, limit: Duration) -> (Stuck, CallbackId) {
        let (entered_tx, entered) = channel::unbounded();
        let (release, release_rx) = channel::unbounded::<()>();
        let running = Arc::new(AtomicBool::new(false));
        let drops = Arc::new(AtomicUsize::new(0));
        let dropped_while_running = Arc::new(AtomicBool::new(false));
        let probe = DropProbe {
            drops: drops.clone(),
            running: running.clone(),
            dropped_while_running: dropped_while_running.clone(),
        };
        let flag = running.clone();
        let blocked = AtomicBool::new(false);
        let id = inst.on_update(move |ev: &Event| {
            let _keep = &probe;
            if ev.instances.contains(trigger) && !blocked.swap(true, Ordering::SeqCst) {
                flag.store(true, Ordering::SeqCst);
                let _ = entered_tx.send(());
                let _ = release_rx.recv_timeout(limit);
                flag.store(false, Ordering::SeqCst);
            }
        });
        let stuck = Stuck {
            entered,
            release,
            running,
            drops,
            dropped_while_running,
        };
        (stuck, id)
    }

    fn wait_entered(&self) {
        self.entered
            .recv_timeout(secs(10))
            .expect("the callback did not start");
    }

    /// Lets the call end.
    fn release(&self) {
        let _ = self.release.send(());
    }

    /// Lets the call end, then checks that the closure (already removed) is
    /// dropped once, after the call.
    fn release_and_check_drop(&self, what: &str) {
        self.release();
        self.assert_dropped_once(what);
    }

    fn assert_dropped_once(&self, what: &str) {
        assert!(
            wait_until(secs(5), || self.drops.load(Ordering::SeqCst) >= 1),
            "{what}: the closure was not dropped after its call ended"
        );
        std::thread::sleep(ms(200));
        assert_eq!(
            self.drops.load(Ordering::SeqCst),
            1,
            "{what}: closure dropped more than once"
        );
        assert!(
            !self.dropped_while_running.load(Ordering::SeqCst),
            "{what}: closure dropped during its call"
        );
    }
}

#[test]
fn removing_a_stuck_callback_returns_within_request_timeout() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST_TIMEOUT));
    let witness = Witness::new(&client, "cb-stuck-witness");
    let removals = [
        Removal::RemoveCallback,
        Removal::Stop,
        Removal::DropInstancer,
    ];
    for how in removals {
        let p = unique_prefix("cb-stuck");
        let inst = Arc::new(Instancer::new(&client, &p).unwrap());
        let (stuck, id) = Stuck::on(&inst, "block", secs(8));
        etcd.put(&format!("{p}b"), "block");
        stuck.wait_entered();

        let t0 = Instant::now();
        remove(how, inst, id);
        let took = t0.elapsed();
        eprintln!("{how:?} with a callback stuck returned after {took:?}");
        assert!(
            took < REQUEST_TIMEOUT + MARGIN,
            "{how:?} took {took:?} with request_timeout {REQUEST_TIMEOUT:?}"
        );
        assert!(
            stuck.running.load(Ordering::SeqCst),
            "{how:?}: the call ended before the removal returned; nothing was tested"
        );
        assert_eq!(
            stuck.drops.load(Ordering::SeqCst),
            0,
            "{how:?}: closure dropped during its call"
        );
        stuck.release_and_check_drop(&format!("{how:?}"));
        witness.assert_alive(&etcd, &format!("after-{how:?}"), &format!("{how:?}"));
    }
}

#[test]
fn dropping_the_last_handle_while_a_callback_is_stuck_is_bounded() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST_TIMEOUT));
    let p = unique_prefix("cb-stuck-last");
    let inst = Instancer::new(&client, &p).unwrap();
    let (stuck, _id) = Stuck::on(&inst, "block", secs(15));
    etcd.put(&format!("{p}b"), "block");
    stuck.wait_entered();

    // The instancer's stop waits up to one request_timeout for the call, and
    // the client's shutdown up to another for the dispatcher thread.
    let t0 = Instant::now();
    drop(inst);
    drop(client);
    let took = t0.elapsed();
    eprintln!("dropping the last handles with a callback stuck took {took:?}");
    let limit = REQUEST_TIMEOUT * 2 + MARGIN;
    assert!(took < limit, "dropping took {took:?} (limit {limit:?})");
    assert!(
        stuck.running.load(Ordering::SeqCst),
        "the call ended before the drop returned; nothing was tested"
    );
    stuck.release_and_check_drop("last handle dropped");
}

#[test]
fn a_drained_channel_gets_the_latest_state_while_a_callback_is_stuck() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("cb-stuck-channel");
    let inst = Instancer::new(&client, &p).unwrap();
    let sub = inst.subscribe();
    recv_instances(&sub, secs(5), &[]);
    // Blocks until released: stuck for the whole test, however slow the
    // machine (the bound only ends the test process's wait if it fails).
    let (stuck, _id) = Stuck::on(&inst, "block", secs(60));
    etcd.put(&format!("{p}b"), "block");
    stuck.wait_entered();

    // More changes than the channel holds (16): it fills up, and the latest
    // state waits for room.
    for i in 0..24 {
        etcd.put(&format!("{p}k{i:02}"), &format!("k{i:02}"));
    }
    assert!(
        wait_until(secs(10), || inst.current().instances.len() == 25),
        "the watch did not see every put: {}",
        describe(&inst.current())
    );
    let want = instances(&inst.current());

    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..1000 {
        match sub.try_recv() {
            Ok(ev) => last = Some(ev),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => panic!("subscription disconnected"),
        }
    }
    let drained = t0.elapsed();
    let mut latest = last.filter(|ev| instances(ev) == want);
    let deadline = Instant::now() + secs(2);
    while latest.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.recv_timeout(left) {
            Ok(ev) if instances(&ev) == want => latest = Some(ev),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => panic!("subscription disconnected"),
        }
    }
    let latency = t0.elapsed().saturating_sub(drained);
    eprintln!("latest state {latency:?} after the channel was drained (contract: 100 ms)");
    assert!(
        latest.is_some(),
        "the drained channel did not get the latest state within 2 s while a callback was stuck"
    );
    assert!(
        stuck.running.load(Ordering::SeqCst),
        "the callback was no longer stuck; nothing was tested"
    );
    stuck.release();
    drop(inst);
    stuck.assert_dropped_once("instancer dropped after the test");
}
