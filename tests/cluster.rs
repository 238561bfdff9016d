//! A three-member etcd cluster: a Client given every endpoint keeps its
//! registrations alive and its Instancer current while members die and come
//! back (the leader, the member the client is connected to, a rolling restart
//! of all), and recovers from a lost quorum.

mod support;

use std::time::{Duration, Instant};

use etcd_sd::channel::Receiver;
use etcd_sd::{
    Client, ClientOptions, ErrorKind, Instancer, Registrar, RegistrationEvent,
    RegistrationState as S, Service, TtlOption,
};
use support::api::*;
use support::{established_remote_ports, secs, unique_prefix, wait_until, EtcdCluster, EtcdServer};

/// The crate's log records (debug and up), kept to explain a failure.
static RECORDS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Keep;

impl log::Log for Keep {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("etcd_sd") && m.level() <= log::Level::Debug
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let mut v = RECORDS.lock().unwrap();
            if v.len() < 100_000 {
                v.push(format!("{} {}: {}", r.level(), r.target(), r.args()));
            }
        }
    }

    fn flush(&self) {}
}

fn keep_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        static KEEP: Keep = Keep;
        let _ = log::set_logger(&KEEP);
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// The kept log records that mention `needle`.
fn logs_about(needle: &str) -> String {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

fn fault_options() -> ClientOptions {
    ClientOptions {
        dial_timeout: secs(3),
        dial_keep_alive: secs(1),
        request_timeout: secs(2),
        ..Default::default()
    }
}

struct Reg {
    key: String,
    reg: Registrar,
    events: Receiver<RegistrationEvent>,
}

fn register_all(client: &Client, p: &str, n: usize, ttl: TtlOption) -> Vec<Reg> {
    (0..n)
        .map(|i| {
            let key = format!("{p}svc{i}");
            let reg = Registrar::new(
                client,
                Service::new(key.clone(), format!("svc:{i}")).with_ttl(ttl),
            );
            let events = reg.events();
            reg.register()
                .unwrap_or_else(|e| panic!("register {key}: {e}"));
            Reg { key, reg, events }
        })
        .collect()
}

/// Waits until the instancer is error-free and equal to etcd's state.
fn converges(
    etcd: &EtcdServer,
    inst: &Instancer,
    p: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut want = Vec::new();
    let ok = wait_until(timeout, || {
        want = etcd.instances_under(p);
        let c = inst.current();
        c.err.is_none() && instances(&c) == want
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "etcd {want:?}, instancer {}",
            describe(&inst.current())
        ))
    }
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

#[test]
fn registrations_and_discovery_ride_out_member_failures() {
    keep_logs();
    let mut cluster = EtcdCluster::start(3);
    let client = Client::connect(&cluster.endpoints(), fault_options()).unwrap();
    let p = unique_prefix("cluster");
    let regs = register_all(&client, &p, 5, TtlOption::new(secs(1), secs(8)));
    let inst = Instancer::new(&client, &p).unwrap();
    converges(cluster.any_live(), &inst, &p, secs(10)).unwrap();
    let leases: Vec<i64> = regs.iter().map(|r| r.reg.lease_id().unwrap()).collect();

    let started = Instant::now();
    let mut step = 0;
    // After each fault: a change written through a live member reaches the
    // instancer, and every registration is in etcd on its lease.
    let mut check = |cluster: &EtcdCluster, what: &str| {
        step += 1;
        if (0..cluster.len()).any(|i| !cluster.is_running(i)) {
            // Keep the member down for a few heartbeats and keep-alive pings.
            std::thread::sleep(secs(2));
        }
        let t = Instant::now();
        let leader = cluster.leader_index(secs(20));
        assert!(leader.is_some(), "{what}: no leader elected");
        cluster.put(&format!("{p}w{step}"), &format!("w:{step}"));
        let etcd = cluster.any_live();
        converges(etcd, &inst, &p, secs(20))
            .unwrap_or_else(|e| panic!("{what}: instancer not current: {e}"));
        let in_etcd = etcd.get_prefix_leases(&p);
        for (r, lease) in regs.iter().zip(&leases) {
            let found = in_etcd.iter().find(|(k, _)| *k == r.key).map(|(_, l)| *l);
            if found != Some(*lease) {
                let seen: Vec<RegistrationEvent> = r.events.try_iter().take(100).collect();
                panic!(
                    "{what}: {} not in etcd on its first lease {lease} but on {found:?} \
                     (registrar: {:?} on {:?}); its events: {seen:?}\nits log:\n{}",
                    r.key,
                    r.reg.state(),
                    r.reg.lease_id(),
                    logs_about(&r.key)
                );
            }
            assert_eq!(r.reg.state(), S::Registered, "{what}: {}", r.key);
        }
        eprintln!(
            "[{:>5.1?}] {what}: current after {:?}; connected to members {:?}",
            started.elapsed(),
            t.elapsed(),
            members_in_use(cluster)
        );
    };
    check(&cluster, "start");

    // 1. The leader dies; a new one is elected; the old one comes back.
    let leader = cluster.leader_index(secs(15)).expect("a leader");
    cluster.kill(leader);
    check(&cluster, &format!("leader m{leader} killed"));
    let new_leader = cluster.leader_index(secs(15)).expect("a new leader");
    assert_ne!(new_leader, leader);
    cluster.restart(leader);
    check(&cluster, &format!("m{leader} restarted"));

    // 2. The member the client is connected to dies.
    let in_use = members_in_use(&cluster);
    assert!(
        !in_use.is_empty(),
        "the client holds no connection to any member"
    );
    let victim = in_use[0];
    cluster.kill(victim);
    check(
        &cluster,
        &format!("member in use m{victim} killed (in use: {in_use:?})"),
    );
    cluster.restart(victim);
    check(&cluster, &format!("m{victim} restarted"));

    // 3. A rolling restart of every member.
    for i in 0..cluster.len() {
        cluster.kill(i);
        check(&cluster, &format!("rolling: m{i} killed"));
        cluster.restart(i);
        check(&cluster, &format!("rolling: m{i} restarted"));
    }

    // Never lost, on the first lease throughout.
    for r in &regs {
        let seen: Vec<RegistrationEvent> = r.events.try_iter().take(10_000).collect();
        assert!(
            seen.iter().all(|e| e.state != S::Lost),
            "{} reported Lost while the cluster kept its quorum: {seen:?}\nits log:\n{}",
            r.key,
            logs_about(&r.key)
        );
    }
}

#[test]
fn a_lost_quorum_fails_calls_in_time_and_everything_comes_back() {
    let mut cluster = EtcdCluster::start(3);
    let client = Client::connect(&cluster.endpoints(), fault_options()).unwrap();
    let p = unique_prefix("quorum");
    // Heartbeat 500 ms, ttl 2 s: the quorum is gone for longer than that.
    let regs = register_all(&client, &p, 3, short_ttl());
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    converges(cluster.any_live(), &inst, &p, secs(10)).unwrap();

    cluster.kill(1);
    cluster.kill(2);
    let down_at = Instant::now();
    // No leader: with require_leader the watch is refused, so subscribers
    // hear of it, keeping the last good set.
    let ev = recv_until(&rx, secs(15), |e| e.err.is_some())
        .unwrap_or_else(|e| panic!("no error event without a quorum: {e}"));
    eprintln!(
        "error event {:?} after the quorum was lost: {}",
        down_at.elapsed(),
        describe(&ev)
    );
    assert_eq!(ev.instances.len(), 3);
    // Calls fail within request_timeout plus a margin, never hang.
    let t = Instant::now();
    let e = client
        .get_entries(&p)
        .expect_err("get_entries without a quorum");
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{:?}: {e}",
        e.kind()
    );
    assert!(t.elapsed() < secs(6), "get_entries took {:?}", t.elapsed());

    std::thread::sleep(secs(4).saturating_sub(down_at.elapsed()));
    cluster.restart(1);
    cluster.restart(2);
    let up_at = Instant::now();
    assert!(cluster.leader_index(secs(20)).is_some(), "no leader");
    let etcd = cluster.any_live();
    for r in &regs {
        assert!(
            wait_until(secs(20), || r.reg.state() == S::Registered
                && etcd.lease_of(&r.key) == r.reg.lease_id().unwrap_or(-1)),
            "{} not registered again {:?} after the quorum came back: {:?}",
            r.key,
            up_at.elapsed(),
            r.reg.state()
        );
    }
    eprintln!(
        "all registered again {:?} after the quorum came back",
        up_at.elapsed()
    );
    cluster.put(&format!("{p}after"), "after:1");
    converges(etcd, &inst, &p, secs(20)).unwrap();
    assert_eq!(inst.current().instances.len(), 4);
}
