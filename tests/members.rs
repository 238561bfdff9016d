//! Several endpoints, one of them dead or hung (API.md §5.4 "Several
//! endpoints" and "Keep-alive pings"; issue 13 items 1 and 2).
//!
//! What these tests prove:
//!
//! * While any endpoint answers, `Client::connect`, `get_entries`,
//!   `Registrar::register`/`deregister` and `Instancer::new` all succeed,
//!   whatever the dead endpoint is (a closed port, a port that accepts TCP
//!   and never answers, a SIGSTOPped or a killed member of a 3-member
//!   cluster) and wherever it sits in the list (first, middle); a watch and
//!   a keep-alive made with the dead endpoint in the list work too.
//! * A member that comes back is used again: with two ways to one etcd,
//!   each cut or blackholed in turn, every call still succeeds.
//! * With default options, a change written while a quorum answers reaches
//!   subscribers within 3 s whichever member is hung (SIGSTOP), and a
//!   Registrar's keep-alives move off the hung member (it stays Registered
//!   on its lease).
//! * With default options and default etcd flags, an idle connection is
//!   never closed by etcd's ping policy: an idle minute brings no error
//!   Event and no lost registration.
//!
//! Every call counts; the tests print how many failed out of how many and
//! the measured delays, then assert none failed.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_sd::channel::{Receiver, TryRecvError};
use etcd_sd::{
    Client, ClientOptions, Event, Instancer, Registrar, RegistrationEvent, RegistrationState as S,
    Result, Service, TtlOption,
};
use support::api::*;
use support::{
    closed_endpoint, established_remote_ports, ms, secs, unique_prefix, wait_until, EtcdCluster,
    EtcdServer, FaultProxy, SilentPort,
};

/// Default options but for shorter dial and request timeouts, to keep a
/// failing run bounded.
fn call_options() -> ClientOptions {
    ClientOptions {
        dial_timeout: secs(3),
        request_timeout: secs(2),
        ..Default::default()
    }
}

/// The kinds of call counted, in report order.
const KINDS: [&str; 6] = [
    "connect",
    "get_entries",
    "Instancer::new",
    "register",
    "deregister",
    "get_entries (long-lived client)",
];

/// Calls made and failed, per kind, with the first failures described.
#[derive(Default)]
struct Tally {
    made: BTreeMap<&'static str, usize>,
    failed: BTreeMap<&'static str, usize>,
    slowest: BTreeMap<&'static str, Duration>,
    failures: Vec<String>,
    /// Other promises broken (watch, keep-alive), described.
    broken: Vec<String>,
}

impl Tally {
    /// Counts one call that failed with `err` (None: it succeeded).
    fn count(&mut self, kind: &'static str, label: &str, took: Duration, err: Option<String>) {
        *self.made.entry(kind).or_default() += 1;
        let slowest = self.slowest.entry(kind).or_default();
        *slowest = (*slowest).max(took);
        if let Some(e) = err {
            *self.failed.entry(kind).or_default() += 1;
            if self.failures.len() < 40 {
                self.failures
                    .push(format!("{label}: {kind} failed after {took:.2?}: {e}"));
            }
        }
    }

    fn record<T>(&mut self, kind: &'static str, label: &str, took: Duration, res: &Result<T>) {
        let err = res.as_ref().err().map(|e| format!("{:?}: {e}", e.kind()));
        self.count(kind, label, took, err);
    }

    fn total_failed(&self) -> usize {
        self.failed.values().sum()
    }

    fn total_made(&self) -> usize {
        self.made.values().sum()
    }

    /// Prints the counts and failures; returns a one-line summary.
    fn report(&self, what: &str) -> String {
        let mut line = Vec::new();
        for kind in KINDS {
            let made = self.made.get(kind).copied().unwrap_or(0);
            if made == 0 {
                continue;
            }
            let failed = self.failed.get(kind).copied().unwrap_or(0);
            let slowest = self.slowest.get(kind).copied().unwrap_or_default();
            line.push(format!(
                "{kind} {failed}/{made} failed (slowest {slowest:.2?})"
            ));
        }
        let summary = format!(
            "{what}: {} of {} calls failed; {}",
            self.total_failed(),
            self.total_made(),
            line.join("; ")
        );
        eprintln!("{summary}");
        for f in &self.failures {
            eprintln!("  {f}");
        }
        for b in &self.broken {
            eprintln!("  broken: {b}");
        }
        summary
    }

    fn assert_clean(&self, what: &str) {
        let summary = self.report(what);
        assert!(
            self.total_failed() == 0 && self.broken.is_empty(),
            "{summary}\nfailures: {:#?}\nbroken: {:#?}",
            self.failures,
            self.broken
        );
    }
}

/// A connect that is not counted (a client to make the other calls on):
/// at most 3 attempts.
fn connect_uncounted(endpoints: &[String], options: ClientOptions) -> Option<Client> {
    (0..3).find_map(|_| Client::connect(endpoints, options.clone()).ok())
}

/// One round on a fresh client: connect, get_entries, Instancer::new,
/// register, deregister, each timed and counted. `p` holds exactly
/// `static:1`; registrations go under `q`.
fn one_round(endpoints: &[String], label: &str, p: &str, q: &str, tally: &mut Tally) {
    let t = Instant::now();
    let res = Client::connect(endpoints, call_options());
    tally.record("connect", label, t.elapsed(), &res);
    let client = match res {
        Ok(c) => c,
        Err(_) => match connect_uncounted(endpoints, call_options()) {
            Some(c) => c,
            None => {
                for kind in ["get_entries", "Instancer::new", "register", "deregister"] {
                    tally.count(kind, label, Duration::ZERO, Some("no client".into()));
                }
                return;
            }
        },
    };

    let t = Instant::now();
    let res = client.get_entries(p);
    let took = t.elapsed();
    let err = match &res {
        Ok(v) if v == &strs(&["static:1"]) => None,
        Ok(v) => Some(format!("wrong entries {v:?}")),
        Err(e) => Some(format!("{:?}: {e}", e.kind())),
    };
    tally.count("get_entries", label, took, err);

    let t = Instant::now();
    let res = Instancer::new(&client, p);
    let took = t.elapsed();
    let err = match &res {
        Ok(inst) => {
            let cur = inst.current();
            if cur.err.is_none() && instances(&cur) == strs(&["static:1"]) {
                None
            } else {
                Some(format!("current() is {}", describe(&cur)))
            }
        }
        Err(e) => Some(format!("{:?}: {e}", e.kind())),
    };
    tally.count("Instancer::new", label, took, err);
    drop(res);

    let key = format!("{q}{}", label.replace(' ', "-"));
    let reg = Registrar::new(&client, Service::new(key, "svc:1"));
    let t = Instant::now();
    let res = reg.register();
    tally.record("register", label, t.elapsed(), &res);
    let t = Instant::now();
    let res = reg.deregister();
    tally.record("deregister", label, t.elapsed(), &res);
}

/// A long-lived client made with the dead endpoint in the list, with an
/// Instancer (subscribed) and a Registrar (default ttl: 3 s heartbeat,
/// 10 s ttl) on it, to check that its watch and keep-alives work.
struct LongLived {
    client: Client,
    watched: String,
    inst: Instancer,
    rx: Receiver<Event>,
    reg: Registrar,
    reg_events: Receiver<RegistrationEvent>,
    reg_key: String,
    registered_at: Instant,
}

fn long_lived(endpoints: &[String], label: &str, q: &str) -> Option<LongLived> {
    let client = connect_uncounted(endpoints, call_options())?;
    let watched = unique_prefix("members-watched");
    let inst = (0..3).find_map(|_| Instancer::new(&client, &watched).ok())?;
    let rx = inst.subscribe();
    let reg_key = format!("{q}long-lived-{}", label.replace(' ', "-"));
    let reg = Registrar::new(&client, Service::new(reg_key.clone(), "long:1"));
    let reg_events = reg.events();
    let registered_at = Instant::now();
    // A failed register keeps trying in the background (checked later).
    let _ = reg.register();
    Some(LongLived {
        client,
        watched,
        inst,
        rx,
        reg,
        reg_events,
        reg_key,
        registered_at,
    })
}

/// How long after its registration the long-lived Registrar is checked:
/// past its ttl (10 s), so that keep-alives stuck on a dead member show.
const LONG_LIVED_CHECK: Duration = Duration::from_secs(12);

/// The most time the rounds on one endpoint list may take: a working
/// client needs a few seconds; a failing one spends up to a request timeout
/// per call.
const ROUNDS_BUDGET: Duration = Duration::from_secs(25);

/// Runs `rounds` rounds on `endpoints`, plus a get_entries per round on a
/// long-lived client; then checks that a change written with `put` reaches
/// the long-lived Instancer (within 10 s) and that its Registrar, 12 s after
/// registering, is registered (`exists` sees its key) and never reported
/// Lost.
#[allow(clippy::too_many_arguments)]
fn rounds_on(
    endpoints: &[String],
    label: &str,
    rounds: usize,
    p: &str,
    q: &str,
    put: &dyn Fn(&str, &str),
    exists: &dyn Fn(&str) -> bool,
    tally: &mut Tally,
) {
    let started = Instant::now();
    let long = long_lived(endpoints, label, q);
    if long.is_none() {
        tally.broken.push(format!(
            "{label}: no long-lived client/Instancer in 3 attempts each"
        ));
    }
    for round in 0..rounds {
        // Failing calls take up to a request timeout each: bound the whole.
        if started.elapsed() > ROUNDS_BUDGET {
            tally.broken.push(format!(
                "{label}: only {round} of {rounds} rounds done in {ROUNDS_BUDGET:?}"
            ));
            break;
        }
        let l = format!("{label} round {round}");
        one_round(endpoints, &l, p, q, tally);
        if let Some(long) = &long {
            let t = Instant::now();
            let res = long.client.get_entries(p);
            tally.record("get_entries (long-lived client)", &l, t.elapsed(), &res);
        }
    }
    let Some(long) = long else { return };
    // The watch made with the dead endpoint in the list delivers a change.
    let value = format!("w:{}", label.replace(' ', "-"));
    put(&format!("{}w", long.watched), &value);
    let written = Instant::now();
    let seen = recv_until(&long.rx, secs(10), |ev| {
        ev.err.is_none() && ev.instances.contains(&value)
    });
    match seen {
        Ok(_) => eprintln!(
            "{label}: long-lived watch delivered a change after {:.2?}",
            written.elapsed()
        ),
        Err(e) => tally.broken.push(format!(
            "{label}: the long-lived Instancer did not see {value} within 10 s: {e}; current {}",
            describe(&long.inst.current())
        )),
    }
    // Its registration held for longer than its ttl (keep-alives on a live
    // member).
    std::thread::sleep(LONG_LIVED_CHECK.saturating_sub(long.registered_at.elapsed()));
    let events: Vec<RegistrationEvent> = long.reg_events.try_iter().take(1000).collect();
    let lost = events.iter().filter(|e| e.state == S::Lost).count();
    let in_etcd = exists(&long.reg_key);
    if lost > 0 || long.reg.state() != S::Registered || !in_etcd {
        tally.broken.push(format!(
            "{label}: long-lived Registrar {:?}, key in etcd {in_etcd}, {lost} Lost after {:.1?}; events {:?}",
            long.reg.state(),
            started.elapsed(),
            states(&events)
        ));
    }
}

/// One etcd and a proxy to it (a second live endpoint), with `dead` first
/// and in the middle of the list; 10 rounds each.
fn single_etcd_with_dead_endpoint(dead: &str, what: &str) -> Tally {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(&etcd.endpoint());
    let p = unique_prefix("members");
    let q = unique_prefix("members-reg");
    etcd.put(&format!("{p}static"), "static:1");
    let put = |k: &str, v: &str| etcd.put(k, v);
    let exists = |k: &str| etcd.exists(k);
    let live = [etcd.endpoint(), proxy.endpoint()];
    dead_first_then_middle(dead, &live, what, (&p, &q), &put, &exists)
}

/// 10 rounds with `dead` first in the list (`[dead, live0, live1]`), then 10
/// with it in the middle (`[live0, dead, live1]`); `p` holds what the rounds
/// read, `q` what they register.
fn dead_first_then_middle(
    dead: &str,
    live: &[String; 2],
    what: &str,
    (p, q): (&str, &str),
    put: &dyn Fn(&str, &str),
    exists: &dyn Fn(&str) -> bool,
) -> Tally {
    let mut tally = Tally::default();
    let t = Instant::now();
    let dead = dead.to_string();
    let orders = [
        (
            "first",
            vec![dead.clone(), live[0].clone(), live[1].clone()],
        ),
        ("middle", vec![live[0].clone(), dead, live[1].clone()]),
    ];
    for (place, endpoints) in &orders {
        let label = format!("{what} {place}");
        rounds_on(endpoints, &label, 10, p, q, put, exists, &mut tally);
    }
    eprintln!("{what}: all rounds took {:.1?}", t.elapsed());
    tally
}

#[test]
fn calls_succeed_with_a_closed_port_among_the_endpoints() {
    let dead = closed_endpoint();
    let tally = single_etcd_with_dead_endpoint(&dead, "closed port");
    tally.assert_clean("closed port");
}

#[test]
fn calls_succeed_with_a_silent_port_among_the_endpoints() {
    let silent = SilentPort::start();
    let tally = single_etcd_with_dead_endpoint(&silent.endpoint(), "silent port");
    eprintln!(
        "silent port: {} connections accepted (and never answered)",
        silent.accepted()
    );
    tally.assert_clean("silent port");
}

#[derive(Clone, Copy, Debug)]
enum MemberFault {
    Stopped,
    Killed,
}

/// A 3-member cluster with member 0 stopped or killed; the client lists it
/// first ([m0, m1, m2]) and in the middle ([m1, m0, m2]); 10 rounds each.
fn cluster_with_dead_member(fault: MemberFault) {
    let mut cluster = EtcdCluster::start(3);
    let p = unique_prefix("members-cluster");
    let q = unique_prefix("members-cluster-reg");
    cluster.put(&format!("{p}static"), "static:1");
    let eps = cluster.endpoints();
    match fault {
        MemberFault::Stopped => cluster.pause(0),
        MemberFault::Killed => cluster.kill(0),
    }
    // The two others elect a leader if m0 was it: calls are promised while
    // a quorum answers, so start once it does.
    let t = Instant::now();
    assert!(
        cluster.leader_index(secs(20)).is_some(),
        "no leader among m1, m2"
    );
    eprintln!(
        "{fault:?} m0: a leader among the others after {:.1?}",
        t.elapsed()
    );
    let cluster = &cluster;
    let put = |k: &str, v: &str| cluster.put(k, v);
    let exists = |k: &str| cluster.any_live().exists(k);
    let what = format!("{fault:?} member");
    let live = [eps[1].clone(), eps[2].clone()];
    let tally = dead_first_then_middle(&eps[0], &live, &what, (&p, &q), &put, &exists);
    tally.assert_clean(&what);
}

#[test]
fn calls_succeed_with_a_stopped_cluster_member() {
    cluster_with_dead_member(MemberFault::Stopped);
}

#[test]
fn calls_succeed_with_a_killed_cluster_member() {
    cluster_with_dead_member(MemberFault::Killed);
}

/// Two ways to one etcd (proxies A and B); one long-lived client on [A, B].
/// A is cut, restored, then B is cut (so A must be used again), then the
/// same with blackholes (hung links); each way is back for 2 s before the
/// other fails. Each phase: 5 rounds of calls on the
/// long-lived client and a change that must reach its Instancer.
#[test]
fn a_member_that_comes_back_is_used_again() {
    let etcd = EtcdServer::start();
    let a = FaultProxy::start(&etcd.endpoint());
    let b = FaultProxy::start(&etcd.endpoint());
    let p = unique_prefix("comes-back");
    let q = unique_prefix("comes-back-reg");
    etcd.put(&format!("{p}static"), "static:1");
    let endpoints = vec![a.endpoint(), b.endpoint()];
    let client = Client::connect(&endpoints, call_options()).expect("connect with both up");
    let watched = unique_prefix("comes-back-watched");
    let inst = Instancer::new(&client, &watched).unwrap();
    let rx = inst.subscribe();
    let reg_key = format!("{q}long-lived");
    let reg = Registrar::new(&client, Service::new(reg_key.clone(), "long:1"));
    let reg_events = reg.events();
    reg.register().unwrap();

    let mut tally = Tally::default();
    let mut delays = Vec::new();
    let started = Instant::now();
    let phases: [(&str, &FaultProxy, bool); 4] = [
        ("A cut", &a, false),
        ("B cut (A back)", &b, false),
        ("A blackholed (B back)", &a, true),
        ("B blackholed (A back)", &b, true),
    ];
    for (n, (label, proxy, blackhole)) in phases.iter().enumerate() {
        if *blackhole {
            proxy.blackhole();
        } else {
            proxy.cut();
        }
        for round in 0..5 {
            let l = format!("{label} round {round}");
            let t = Instant::now();
            let res = client.get_entries(&p);
            tally.record("get_entries", &l, t.elapsed(), &res);
            let t = Instant::now();
            let res = Instancer::new(&client, &p);
            tally.record("Instancer::new", &l, t.elapsed(), &res);
            drop(res);
            let r = Registrar::new(&client, Service::new(format!("{q}r{n}-{round}"), "r:1"));
            let t = Instant::now();
            let res = r.register();
            tally.record("register", &l, t.elapsed(), &res);
            let t = Instant::now();
            let res = r.deregister();
            tally.record("deregister", &l, t.elapsed(), &res);
        }
        let value = format!("phase:{n}");
        etcd.put(&format!("{watched}w"), &value);
        let written = Instant::now();
        match recv_until(&rx, secs(10), |ev| {
            ev.err.is_none() && ev.instances.contains(&value)
        }) {
            Ok(_) => delays.push(format!("{label}: {:.2?}", written.elapsed())),
            Err(e) => tally.broken.push(format!(
                "{label}: the watch did not deliver {value} in 10 s: {e}"
            )),
        }
        proxy.restore();
        // Back for a moment before the other way fails.
        std::thread::sleep(secs(2));
        eprintln!(
            "[{:>5.1?}] {label}: done; connections through A {}, B {}",
            started.elapsed(),
            a.connections(),
            b.connections()
        );
    }
    eprintln!("change delivered to the long-lived Instancer after: {delays:?}");
    let events: Vec<RegistrationEvent> = reg_events.try_iter().take(1000).collect();
    if events.iter().any(|e| e.state == S::Lost) || !etcd.exists(&reg_key) {
        tally.broken.push(format!(
            "long-lived Registrar {:?}, key in etcd {}; events {:?}",
            reg.state(),
            etcd.exists(&reg_key),
            states(&events)
        ));
    }
    tally.assert_clean("a member that comes back");
}

// ---------------------------------------------------------------------------
// Item 2: a hung member, and an idle link.

/// Events sent to watchers by member `i` (etcd's
/// `etcd_debugging_mvcc_events_total`), or None when it is not answering.
fn events_sent(cluster: &EtcdCluster, i: usize) -> Option<f64> {
    cluster.is_answering(i).then(|| {
        cluster
            .member(i)
            .metric("etcd_debugging_mvcc_events_total", &[])
    })
}

/// LeaseKeepAlive streams open on member `i` (started minus handled).
fn keepalive_streams(cluster: &EtcdCluster, i: usize) -> f64 {
    if !cluster.is_answering(i) {
        return 0.0;
    }
    let m = cluster.member(i);
    let label = "grpc_method=\"LeaseKeepAlive\"";
    m.metric("grpc_server_started_total", &[label])
        - m.metric("grpc_server_handled_total", &[label])
}

/// The member serving the Instancer's watch: the one whose count of events
/// sent to watchers grows when a probe key under its prefix changes (the
/// Registrar's own-key watch does not see it; etcdctl does not watch).
fn member_serving_the_watch(
    cluster: &EtcdCluster,
    rx: &Receiver<Event>,
    p: &str,
    n: usize,
) -> Option<usize> {
    let before: Vec<Option<f64>> = (0..cluster.len())
        .map(|i| events_sent(cluster, i))
        .collect();
    let value = format!("probe:{n}");
    cluster.put(&format!("{p}probe"), &value);
    if recv_until(rx, secs(20), |ev| {
        ev.err.is_none() && ev.instances.contains(&value)
    })
    .is_err()
    {
        eprintln!("probe {n}: the Instancer did not see the probe within 20 s");
        return None;
    }
    std::thread::sleep(ms(200));
    let grew: Vec<usize> = (0..cluster.len())
        .filter(|&i| match (before[i], events_sent(cluster, i)) {
            (Some(b), Some(a)) => a > b,
            _ => false,
        })
        .collect();
    if grew.len() != 1 {
        eprintln!("probe {n}: events sent grew on members {grew:?}");
    }
    grew.first().copied()
}

/// Members this process holds an established connection to.
fn members_in_use(cluster: &EtcdCluster) -> Vec<usize> {
    let mut v: Vec<usize> = established_remote_ports()
        .into_iter()
        .filter_map(|port| cluster.index_of_port(port))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Contract: within 3 s; the allowance is for a noisy machine.
const STALE_LIMIT: Duration = Duration::from_secs(4);

/// Default ClientOptions, all three members: the member serving the
/// Instancer's watch (and once the one carrying the keep-alive) is
/// SIGSTOPped; a change written through a live member must reach the
/// subscriber within 3 s (+1 s allowance). The member stays stopped past
/// the Registrar's ttl (10 s): it must stay Registered on its lease.
#[test]
fn a_hung_member_leaves_no_subscriber_stale() {
    let mut cluster = EtcdCluster::start(3);
    let client = Client::connect(&cluster.endpoints(), ClientOptions::default())
        .expect("connect with every member up");
    let p = unique_prefix("hung");
    let q = unique_prefix("hung-reg");
    let reg_key = format!("{q}svc");
    // Default ttl: 3 s heartbeat, 10 s ttl.
    let reg = Registrar::new(&client, Service::new(reg_key.clone(), "svc:1"));
    let reg_events = reg.events();
    reg.register().expect("register with every member up");
    let lease = reg.lease_id().expect("lease");
    let inst = Instancer::new(&client, &p).expect("Instancer::new with every member up");
    let rx = inst.subscribe();

    let started = Instant::now();
    let mut figures = Vec::new();
    let mut broken = Vec::new();
    for rep in 0..3 {
        let watch_member = member_serving_the_watch(&cluster, &rx, &p, rep);
        let ka: Vec<f64> = (0..cluster.len())
            .map(|i| keepalive_streams(&cluster, i))
            .collect();
        let ka_member = (0..cluster.len()).find(|&i| ka[i] > 0.0);
        let in_use = members_in_use(&cluster);
        let victim = match (rep, watch_member, ka_member) {
            (1, w, Some(k)) if w != Some(k) => k,
            (_, Some(w), _) => w,
            (_, None, Some(k)) => k,
            _ => in_use.first().copied().unwrap_or(0),
        };
        // A follower, so that the write needs no election and the clock
        // measures only how long the client takes to leave the hung member.
        let leader = cluster.leader_index(secs(20));
        if leader == Some(victim) {
            let to = (victim + 1) % cluster.len();
            let moved = cluster.move_leader_to(to, secs(20));
            eprintln!("rep {rep}: m{victim} led; leadership moved to m{to}: {moved}");
        }
        cluster.pause(victim);
        let paused_at = Instant::now();
        let value = format!("change:{rep}");
        cluster.put(&format!("{p}k{rep}"), &value);
        let written = Instant::now();
        let seen = recv_until(&rx, secs(20), |ev| {
            ev.err.is_none() && ev.instances.contains(&value)
        });
        let stale = written.elapsed();
        let figure = format!(
            "rep {rep}: paused m{victim} (watch on {watch_member:?}, keep-alive streams {ka:?}, \
             connected to {in_use:?}); write took {:.2?}; subscriber saw it {}",
            written - paused_at,
            match &seen {
                Ok(_) => format!("after {stale:.2?}"),
                Err(_) => format!("NOT within {stale:.1?}"),
            }
        );
        eprintln!("[{:>5.1?}] {figure}", started.elapsed());
        if seen.is_err() || stale > STALE_LIMIT {
            broken.push(figure.clone());
        }
        figures.push(stale);
        // Past the ttl with the member hung: the keep-alives must have moved.
        std::thread::sleep(secs(12).saturating_sub(paused_at.elapsed()));
        let on = cluster.any_live().lease_of(&reg_key);
        let state = reg.state();
        if state != S::Registered || on != lease {
            broken.push(format!(
                "rep {rep}: with m{victim} hung for {:.1?}, the Registrar is {state:?} and its key \
                 is on lease {on:x} (registered on {lease:x})",
                paused_at.elapsed()
            ));
        }
        cluster.resume(victim);
        let back = wait_until(secs(20), || {
            cluster
                .member(victim)
                .try_etcdctl_timeout(&["get", "/etcd-sd-it-x"], "2s")
                .is_ok()
        });
        assert!(back, "m{victim} does not answer after SIGCONT");
        assert!(cluster.leader_index(secs(20)).is_some(), "no leader");
        // Let the client see the member again before the next round.
        std::thread::sleep(secs(2));
    }
    let lost: Vec<RegistrationEvent> = reg_events
        .try_iter()
        .take(1000)
        .filter(|e| e.state == S::Lost)
        .collect();
    if !lost.is_empty() {
        broken.push(format!("the Registrar reported Lost: {lost:?}"));
    }
    eprintln!(
        "stale after a change, per hung member: {:?} (limit {STALE_LIMIT:?})",
        figures
    );
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Receives everything waiting on `rx` without blocking.
fn take_waiting(rx: &Receiver<Event>, out: &mut Vec<(Duration, String, bool)>, at: Duration) {
    for _ in 0..10_000 {
        match rx.try_recv() {
            Ok(ev) => out.push((at, describe(&ev), ev.err.is_some())),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
}

/// One client of the idle test: an Instancer (subscribed) and maybe a
/// Registrar, and what they reported.
struct Idler {
    name: &'static str,
    _client: Client,
    _inst: Instancer,
    rx: Receiver<Event>,
    reg: Option<(Registrar, Receiver<RegistrationEvent>, i64, String)>,
    events: Vec<(Duration, String, bool)>,
}

fn idler(etcd: &EtcdServer, name: &'static str, p: &str, ttl: Option<TtlOption>) -> Idler {
    let client = Client::connect(&[etcd.endpoint()], ClientOptions::default()).unwrap();
    let inst = Instancer::new(&client, p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["static:1"]);
    let reg = ttl.map(|ttl| {
        let key = format!("{}{name}", unique_prefix("idle-reg"));
        let reg = Registrar::new(&client, Service::new(key.clone(), "svc:1").with_ttl(ttl));
        let events = reg.events();
        reg.register().unwrap();
        let lease = reg.lease_id().unwrap();
        (reg, events, lease, key)
    });
    Idler {
        name,
        _client: client,
        _inst: inst,
        rx,
        reg,
        events: Vec::new(),
    }
}

/// Default ClientOptions, one etcd with default server flags (it accepts a
/// ping at most every 5 s, and closes a connection that pings more often
/// while nothing else moves on it): a minute with no change. Three clients,
/// each with an Instancer: one alone on its client; one beside a Registrar
/// with a 20 s heartbeat (the link is idle between keep-alives); one beside
/// a Registrar with the default 3 s heartbeat (whose keep-alives keep the
/// link busy). No error Event on any; no Registrar Lost or on a new lease.
#[test]
fn an_idle_connection_is_never_closed_by_etcd() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("idle");
    etcd.put(&format!("{p}static"), "static:1");
    let mut idlers = [
        idler(&etcd, "Instancer only", &p, None),
        idler(
            &etcd,
            "Instancer + Registrar with a 20 s heartbeat",
            &p,
            Some(TtlOption::new(secs(20), secs(60))),
        ),
        idler(
            &etcd,
            "Instancer + Registrar with the default ttl",
            &p,
            Some(TtlOption::new(secs(3), secs(10))),
        ),
    ];

    let watch = ["grpc_method=\"Watch\"", "etcdserverpb.Watch"];
    let watches_before = etcd.metric("grpc_server_started_total", &watch);
    let idle = secs(60);
    let started = Instant::now();
    // 100 ms polls over a minute: at most ~600 iterations.
    for _ in 0..1_000 {
        let at = started.elapsed();
        for i in idlers.iter_mut() {
            take_waiting(&i.rx, &mut i.events, at);
        }
        if at >= idle {
            break;
        }
        std::thread::sleep(ms(100));
    }
    let watches_after = etcd.metric("grpc_server_started_total", &watch);
    eprintln!(
        "idle {:.1?}; Watch streams started on etcd meanwhile: {}",
        started.elapsed(),
        watches_after - watches_before
    );
    let mut broken = Vec::new();
    for i in &idlers {
        let errors = i.events.iter().filter(|e| e.2).count();
        eprintln!(
            "client [{}]: Instancer: {errors} error Events of {} Events {:?}",
            i.name,
            i.events.len(),
            i.events
                .iter()
                .map(|(t, d, _)| format!("{t:.1?} {d}"))
                .collect::<Vec<_>>()
        );
        if errors > 0 {
            broken.push(format!(
                "client [{}]: Instancer: {errors} error Events",
                i.name
            ));
        }
        if let Some((reg, events, lease, key)) = &i.reg {
            let seen: Vec<RegistrationEvent> = events.try_iter().take(1000).collect();
            let lost = seen.iter().filter(|e| e.state == S::Lost).count();
            let on = etcd.lease_of(key);
            eprintln!(
                "client [{}]: Registrar: {lost} Lost, state {:?}, key on lease {on:x} (first {lease:x}), \
                 events {:?}",
                i.name,
                reg.state(),
                states(&seen)
            );
            if lost > 0 || reg.state() != S::Registered || on != *lease {
                broken.push(format!(
                    "client [{}]: Registrar: {lost} Lost, {:?}, key on lease {on:x} not {lease:x}",
                    i.name,
                    reg.state()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "in an idle minute: {broken:#?}");
}
