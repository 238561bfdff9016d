//! 200 Registrars and an Instancer on one Client through repeated outages
//! longer than their ttl: all come back every time, and the process's thread
//! count and memory stay flat.
//!
//! Thread count and RSS are per process, so this binary holds a single test.

mod support;

use std::time::Instant;

use etcd_sd::{Client, ClientOptions, Instancer, Registrar, RegistrationState as S, Service};
use support::api::*;
use support::{rss_kib, secs, thread_count, thread_names, unique_prefix, wait_until, EtcdServer};

const REGISTRARS: usize = 200;
const OUTAGES: usize = 4;

#[test]
fn two_hundred_registrars_survive_repeated_outages_with_flat_threads_and_memory() {
    let mut etcd = EtcdServer::start();
    let client = Client::connect(
        &[etcd.endpoint()],
        ClientOptions {
            dial_timeout: secs(2),
            dial_keep_alive: secs(1),
            request_timeout: secs(3),
            ..Default::default()
        },
    )
    .unwrap();
    let p = unique_prefix("scale");
    let t = Instant::now();
    // Heartbeat 500 ms, ttl 2 s.
    let regs: Vec<Registrar> = (0..REGISTRARS)
        .map(|i| {
            let r = Registrar::new(
                &client,
                Service::new(
                    format!("{p}svc{i:03}"),
                    format!("10.0.{}.{}:80", i / 250, i % 250),
                )
                .with_ttl(short_ttl()),
            );
            r.register()
                .unwrap_or_else(|e| panic!("register #{i}: {e}"));
            r
        })
        .collect();
    eprintln!("{REGISTRARS} registered in {:?}", t.elapsed());
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();

    // Every registrar in etcd on its own lease, and the instancer complete.
    let all_back = |etcd: &EtcdServer| -> Result<(), String> {
        let in_etcd = etcd.get_prefix_leases(&p);
        if in_etcd.len() != REGISTRARS {
            return Err(format!("{} of {REGISTRARS} keys in etcd", in_etcd.len()));
        }
        let mut leases = std::collections::HashSet::new();
        for (r, (key, lease)) in regs.iter().zip(&in_etcd) {
            if r.service().key != *key {
                return Err(format!("key order: {} vs {key}", r.service().key));
            }
            if r.state() != S::Registered || r.lease_id() != Some(*lease) {
                return Err(format!(
                    "{key}: state {:?}, lease {:?}, in etcd {lease}",
                    r.state(),
                    r.lease_id()
                ));
            }
            leases.insert(*lease);
        }
        if leases.len() != REGISTRARS {
            return Err(format!("{} distinct leases", leases.len()));
        }
        let cur = inst.current();
        if cur.err.is_some() || cur.instances.len() != REGISTRARS {
            return Err(format!(
                "instancer: {} instances, err {:?}",
                cur.instances.len(),
                cur.err
            ));
        }
        Ok(())
    };
    let mut last = String::new();
    assert!(
        wait_until(secs(10), || match all_back(&etcd) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }),
        "before any outage: {last}"
    );

    let mut samples = Vec::new();
    for round in 0..OUTAGES {
        etcd.kill();
        // Down for twice the ttl: every lease expires (etcd restores them on
        // restart, and the registrars' own ttl check gives up on them).
        std::thread::sleep(secs(4));
        etcd.restart();
        let up_at = Instant::now();
        let mut last = String::new();
        let ok = wait_until(secs(20), || match all_back(&etcd) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(ok, "round {round}: not all back after 20 s: {last}");
        let back = up_at.elapsed();
        // Keep-alives keep them there.
        std::thread::sleep(secs(3));
        if let Err(e) = all_back(&etcd) {
            panic!("round {round}: lost again after recovery: {e}");
        }
        let threads = thread_count();
        let rss = rss_kib();
        eprintln!(
            "round {round}: all {REGISTRARS} back {back:?} after restart; threads {threads}, RSS {} MiB",
            rss / 1024
        );
        samples.push((threads, rss));
    }
    let events = rx.try_iter().count();
    eprintln!("instancer events over {OUTAGES} outages: {events}");

    // Flat: after the first round (which warms up allocations and pools),
    // no more threads, and memory within a generous margin.
    let (threads0, rss0) = samples[0];
    for (i, (threads, rss)) in samples.iter().enumerate() {
        assert!(
            *threads <= threads0 + 2,
            "round {i}: {threads} threads, {threads0} after round 0: {:?}",
            thread_names()
        );
        assert!(
            *rss <= rss0 + 64 * 1024,
            "round {i}: RSS {} MiB, {} MiB after round 0",
            rss / 1024,
            rss0 / 1024
        );
    }
    drop(regs);
    drop(inst);
    drop(client);
}
