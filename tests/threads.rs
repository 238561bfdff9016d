//! OS threads: a Client and everything built on it use a fixed number of
//! threads, and dropping the last handle joins them.
//!
//! Thread counts are per process, so this binary holds a single test that
//! runs its phases one after the other.

mod support;

use etcd_sd::{Event, Instancer, Registrar, Service};
use support::api::*;
use support::{secs, thread_count, thread_names, unique_prefix, wait_until, EtcdServer};

/// Slack for threads that a runtime may start lazily (e.g. one blocking-pool
/// thread for name resolution).
const SLACK: usize = 2;

#[test]
fn thread_count_is_fixed_per_client_and_threads_are_joined() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("threads");
    let baseline = thread_count();
    eprintln!("baseline: {baseline} threads {:?}", thread_names());

    // Phase 1: one client, 50 registrars, 20 instancers with subscribers.
    let client = connect(&etcd);
    let after_connect = thread_count();
    eprintln!(
        "after connect: {after_connect} threads {:?}",
        thread_names()
    );
    assert!(
        after_connect > baseline,
        "a client is expected to run at least one thread"
    );

    let mut regs = Vec::new();
    for i in 0..50 {
        let r = registered(&client, format!("{p}svc/{i:02}"), format!("10.2.0.{i}:80"));
        regs.push(r);
    }
    let mut insts = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..20 {
        let inst = Instancer::new(&client, &format!("{p}svc/")).unwrap();
        subs.push(inst.subscribe());
        let _ = inst.on_update(|_: &Event| {});
        insts.push(inst);
    }
    // Let keep-alives, watches and dispatch run for a while (> ttl).
    assert!(wait_until(secs(10), || insts.iter().all(|i| i
        .current()
        .instances
        .len()
        == 50)));
    std::thread::sleep(secs(3));
    let loaded = thread_count();
    eprintln!(
        "with 50 registrars and 20 instancers: {loaded} threads {:?}",
        thread_names()
    );
    assert!(
        loaded <= after_connect + SLACK,
        "thread count grew from {after_connect} to {loaded}"
    );
    // Everything still alive after the wait.
    assert_eq!(etcd.get_prefix(&format!("{p}svc/")).len(), 50);

    // Churn does not add threads either.
    for r in regs.drain(..25) {
        r.deregister().unwrap();
    }
    assert!(wait_until(secs(10), || insts.iter().all(|i| i
        .current()
        .instances
        .len()
        == 25)));
    let churned = thread_count();
    assert!(
        churned <= after_connect + SLACK,
        "thread count grew from {after_connect} to {churned} after churn"
    );

    // Phase 2: dropping every handle joins the client's threads.
    drop(subs);
    drop(insts);
    drop(regs);
    drop(client);
    let ok = wait_until(secs(10), || thread_count() <= baseline + 1);
    assert!(
        ok,
        "threads not joined: baseline {baseline}, now {} {:?}",
        thread_count(),
        thread_names()
    );
    // The registrations were deregistered on drop.
    assert!(wait_until(secs(5), || etcd
        .get_prefix(&format!("{p}svc/"))
        .is_empty()));

    // Phase 3: connecting and dropping clients repeatedly leaks nothing.
    for round in 0..5 {
        let c = connect(&etcd);
        let c2 = c.clone();
        let r = Registrar::new(&c2, Service::new(format!("{p}round"), "r"));
        r.register().unwrap();
        let inst = Instancer::new(&c, &p).unwrap();
        drop(c);
        drop(c2);
        // The registrar and instancer keep the client alive.
        assert!(
            wait_until(secs(5), || inst.current().instances.len() == 1),
            "round {round}: {:?}",
            inst.current()
        );
        drop(inst);
        drop(r);
    }
    let ok = wait_until(secs(10), || thread_count() <= baseline + 1);
    assert!(
        ok,
        "threads leaked over 5 clients: baseline {baseline}, now {} {:?}",
        thread_count(),
        thread_names()
    );
}
