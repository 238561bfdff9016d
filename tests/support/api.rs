//! Helpers on top of the `etcd_sd` API shared by the integration tests:
//! clients with short timeouts, registrations, and bounded waits for
//! instancer and registration events. Test files take them all with
//! `use support::api::*;`.

use std::time::{Duration, Instant};

use etcd_sd::channel::{Receiver, RecvTimeoutError};
use etcd_sd::{
    Client, ClientOptions, ErrorKind, Event, Registrar, RegistrationEvent, RegistrationState,
    Service, Stats, TtlOption,
};

use super::{wait_until, EtcdServer};

/// Options with short, explicit timeouts.
pub fn options(request_timeout: Duration) -> ClientOptions {
    ClientOptions {
        dial_timeout: Duration::from_secs(3),
        request_timeout,
        ..Default::default()
    }
}

/// A client on `etcd` with a 5 s request timeout.
pub fn connect(etcd: &EtcdServer) -> Client {
    connect_with(etcd, options(Duration::from_secs(5)))
}

/// A client on `etcd` with the given options.
pub fn connect_with(etcd: &EtcdServer, options: ClientOptions) -> Client {
    Client::connect(&[etcd.endpoint()], options)
        .unwrap_or_else(|e| panic!("connect to {}: {e} ({:?})", etcd.endpoint(), e.kind()))
}

/// Heartbeat 500 ms, ttl 2 s: short enough to see leases expire in tests.
pub fn short_ttl() -> TtlOption {
    TtlOption::new(Duration::from_millis(500), Duration::from_secs(2))
}

/// A Registrar of `key` → `value` with [`short_ttl`], registered.
pub fn registered(client: &Client, key: impl Into<String>, value: impl Into<String>) -> Registrar {
    let reg = Registrar::new(client, Service::new(key, value).with_ttl(short_ttl()));
    reg.register()
        .unwrap_or_else(|e| panic!("register {}: {e}", reg.service().key));
    reg
}

/// Asserts that `result` failed the way an unreachable etcd makes calls fail
/// (`Timeout` or `Unavailable`), and in less than `limit`.
pub fn assert_unreachable<T: std::fmt::Debug>(
    result: etcd_sd::Result<T>,
    took: Duration,
    limit: Duration,
    what: &str,
) {
    let e = result.expect_err(what);
    assert!(
        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{what}: kind {:?}: {e}",
        e.kind()
    );
    assert!(took < limit, "{what} took {took:?} (limit {limit:?})");
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn instances(ev: &Event) -> Vec<String> {
    ev.instances.to_vec()
}

pub fn kind_of(ev: &Event) -> Option<ErrorKind> {
    ev.err.as_ref().map(|e| e.kind())
}

/// Short description of an event for failure messages.
pub fn describe(ev: &Event) -> String {
    match &ev.err {
        None => format!("{:?}", ev.instances.to_vec()),
        Some(e) => format!("{:?} err={:?}({e})", ev.instances.to_vec(), e.kind()),
    }
}

/// Receives events until one satisfies `pred`, or `timeout` passes. Returns
/// the matching event, or all events seen (described) on timeout.
pub fn recv_until(
    rx: &Receiver<Event>,
    timeout: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Result<Event, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    // Bounded by time; the count bound guards against a flood of events.
    for _ in 0..1_000_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => {
                if pred(&ev) {
                    return Ok(ev);
                }
                if seen.len() < 50 {
                    seen.push(describe(&ev));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("timed out after {timeout:?}; seen: {seen:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("disconnected; seen: {seen:?}"))
            }
        }
    }
    Err(format!("too many events; seen (first 50): {seen:?}"))
}

/// Waits for an error-free event whose instances equal `want`.
pub fn recv_instances(rx: &Receiver<Event>, timeout: Duration, want: &[&str]) -> Event {
    let want = strs(want);
    match recv_until(rx, timeout, |ev| ev.err.is_none() && instances(ev) == want) {
        Ok(ev) => ev,
        Err(e) => panic!("waiting for instances {want:?}: {e}"),
    }
}

/// Asserts that no event arrives within `quiet`.
pub fn assert_no_event(rx: &Receiver<Event>, quiet: Duration, what: &str) {
    match rx.recv_timeout(quiet) {
        Ok(ev) => panic!("{what}: unexpected event {}", describe(&ev)),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: receiver disconnected"),
    }
}

/// Drains everything that is waiting, then waits `quiet` for more; returns
/// all received events (bounded).
pub fn drain(rx: &Receiver<Event>, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match rx.recv_timeout(quiet) {
            Ok(ev) => out.push(ev),
            Err(_) => break,
        }
    }
    out
}

/// Receives registration events until one satisfies `pred` or `timeout`
/// passes; returns (matched, every event seen including the match).
pub fn recv_states_until(
    rx: &Receiver<RegistrationEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&RegistrationEvent, &[RegistrationEvent]) -> bool,
) -> (bool, Vec<RegistrationEvent>) {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<RegistrationEvent> = Vec::new();
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => {
                seen.push(ev.clone());
                if pred(&ev, &seen) {
                    return (true, seen);
                }
            }
            Err(_) => return (false, seen),
        }
    }
    (false, seen)
}

pub fn states(events: &[RegistrationEvent]) -> Vec<RegistrationState> {
    events.iter().map(|e| e.state).collect()
}

/// Whether `want` occurs in `have` as a subsequence (in order, gaps allowed).
pub fn has_subsequence(have: &[RegistrationState], want: &[RegistrationState]) -> bool {
    let mut it = want.iter().peekable();
    for s in have {
        if it.peek() == Some(&s) {
            it.next();
        }
    }
    it.peek().is_none()
}

/// Waits until `rx` has delivered `Lost` and, later, `Registered`.
pub fn wait_lost_then_registered(
    rx: &Receiver<RegistrationEvent>,
    timeout: Duration,
) -> Vec<RegistrationEvent> {
    let (ok, seen) = recv_states_until(rx, timeout, |_, seen| {
        has_subsequence(
            &states(seen),
            &[RegistrationState::Lost, RegistrationState::Registered],
        )
    });
    assert!(
        ok,
        "expected Lost then Registered within {timeout:?}, got {:?}",
        seen
    );
    seen
}

/// A tiny deterministic PRNG (xorshift64*), to avoid a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Waits (bounded) until `pred` holds for `client.stats()`; returns the last
/// stats read, and panics with them (and `what`) on timeout.
pub fn wait_stats(
    client: &Client,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Stats) -> bool,
) -> Stats {
    let mut last = client.stats();
    let ok = wait_until(timeout, || {
        last = client.stats();
        pred(&last)
    });
    assert!(ok, "{what}: not reached within {timeout:?}; stats {last:?}");
    last
}
