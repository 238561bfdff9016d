//! Feature `metrics`: what the library publishes through the `metrics`
//! facade is what `Client::stats()` says, and each Instancer's delay from a
//! watch response to its Event is a histogram labelled by prefix. Run with
//! `cargo test --features metrics --test metrics` (`make test` does); without
//! the feature this file is empty.
#![cfg(feature = "metrics")]

mod support;

use std::collections::HashMap;

use etcd_sd::{Client, Instancer, Registrar, RegistrationState, Service};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{secs, unique_prefix, wait_until, EtcdServer};

/// Counters and gauges by name, and histogram samples by (name, prefix).
struct Seen {
    values: HashMap<String, f64>,
    samples: HashMap<(String, String), usize>,
}

fn seen(snapshotter: &Snapshotter) -> Seen {
    let mut values = HashMap::new();
    let mut samples = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_string();
        match value {
            DebugValue::Counter(n) => {
                values.insert(name, n as f64);
            }
            DebugValue::Gauge(g) => {
                values.insert(name, g.into_inner());
            }
            DebugValue::Histogram(h) => {
                let prefix = key
                    .key()
                    .labels()
                    .find(|l| l.key() == "prefix")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                *samples.entry((name, prefix)).or_insert(0) += h.len();
            }
        }
    }
    Seen { values, samples }
}

#[test]
fn the_published_metrics_are_the_clients_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], Default::default()).expect("connect");
    let p = unique_prefix("metrics");
    let reg = Registrar::new(&client, Service::new(format!("{p}a"), "a:1"));
    reg.register().expect("register");
    let inst = Instancer::new(&client, &p).expect("instancer");
    for i in 0..3 {
        etcd.put(&format!("{p}k{i}"), &format!("k:{i}"));
    }
    assert!(wait_until(secs(10), || inst.current().instances.len() == 4));
    // A lost lease and the registration made again.
    let events = reg.events();
    etcd.revoke_lease_of(&format!("{p}a"));
    assert!(wait_until(secs(10), || {
        events
            .try_iter()
            .any(|e| e.state == RegistrationState::Registered)
    }));
    // A panicking callback.
    let _id = inst.on_update(|_| panic!("a callback that panics (on purpose)"));
    assert!(wait_until(secs(10), || client.stats().callback_panics == 1));

    // Everything counted so far is published. The debugging recorder
    // drains what it reports (counters, gauges, histograms alike), so it is
    // read once, when the counts have settled.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = client.stats();
    let now = seen(&snapshotter);
    eprintln!("stats {s:?}\nmetrics {:?}", now.values);
    let v = |name: &str| now.values.get(name).copied().unwrap_or(-1.0);
    let published = [
        ("etcd_sd_registrations_total", s.registrations),
        ("etcd_sd_reregistrations_total", s.reregistrations),
        ("etcd_sd_leases_lost_total", s.leases_lost),
        ("etcd_sd_events_total", s.events),
        ("etcd_sd_callback_panics_total", s.callback_panics),
        ("etcd_sd_registrars", s.registrars),
        ("etcd_sd_registered", s.registered),
        ("etcd_sd_instancers", s.instancers),
        ("etcd_sd_connected", u64::from(s.connected)),
    ];
    for (name, want) in published {
        assert_eq!(v(name), want as f64, "{name}");
    }
    assert_eq!(
        (s.registrations, s.reregistrations, s.leases_lost),
        (2, 1, 1)
    );
    assert_eq!((s.registrars, s.registered, s.instancers), (1, 1, 1));
    // One delay per change the Instancer published after its first read.
    let delays: usize = now
        .samples
        .iter()
        .filter(|((name, prefix), _)| name == "etcd_sd_event_delay_seconds" && *prefix == p)
        .map(|(_, n)| n)
        .sum();
    eprintln!("event delay samples for {p}: {delays}");
    assert!(delays >= 3, "{:?}", now.samples);

    // Gauges come down when the handles go (read as what changed since the
    // last read: one fewer of each).
    drop(reg);
    drop(inst);
    assert!(wait_until(secs(10), || client.stats().registrars == 0));
    let after = seen(&snapshotter).values;
    assert_eq!(after.get("etcd_sd_registrars"), Some(&-1.0), "{after:?}");
    assert_eq!(after.get("etcd_sd_instancers"), Some(&-1.0), "{after:?}");
}
