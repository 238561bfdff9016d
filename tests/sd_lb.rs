//! sd::Endpointer and the lb balancers against a real etcd: instances that
//! come and go, closers, failing factories, invalidation while etcd is down,
//! retry.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_sd::lb::{self, Balancer, Endpoint, Random, RoundRobin};
use etcd_sd::sd::{Closer, Endpointer, EndpointerOptions};
use etcd_sd::{Client, ClientOptions, ErrorKind, Instancer, Registrar, Service, TtlOption};
use support::{unique_prefix, wait_until, EtcdServer};

const CONVERGE: Duration = Duration::from_secs(10);

fn connect(etcd: &EtcdServer) -> Client {
    let options = ClientOptions {
        dial_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    Client::connect(&[etcd.endpoint()], options).expect("connect")
}

/// What the factory made and what the closers closed, by instance.
#[derive(Clone, Default)]
struct Journal {
    made: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<Vec<String>>>,
}

impl Journal {
    fn made(&self) -> Vec<String> {
        self.made.lock().unwrap().clone()
    }
    fn closed(&self) -> Vec<String> {
        let mut v = self.closed.lock().unwrap().clone();
        v.sort();
        v
    }
}

/// An endpointer whose endpoint is the instance string; values containing
/// "bad" make the factory fail.
fn endpointer(
    instancer: &Instancer,
    journal: &Journal,
    options: EndpointerOptions,
) -> Endpointer<String> {
    let j = journal.clone();
    Endpointer::new(
        instancer,
        move |instance: &str| {
            if instance.contains("bad") {
                return Err(format!("cannot reach {instance}").into());
            }
            j.made.lock().unwrap().push(instance.to_string());
            let closed = j.closed.clone();
            let name = instance.to_string();
            let closer: Closer = Box::new(move || closed.lock().unwrap().push(name));
            Ok((instance.to_string(), Some(closer)))
        },
        options,
    )
}

/// The distinct endpoints `n` picks return (errors as "ERR <kind>").
fn picks(b: &impl Balancer<String>, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| match b.endpoint() {
            Ok(e) => e,
            Err(e) => format!("ERR {:?}", e.kind()),
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn instances_that_come_and_go_change_what_the_balancer_returns() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("sdlb-churn");
    let instancer = Instancer::new(&client, &prefix).unwrap();
    let journal = Journal::default();
    let e = endpointer(&instancer, &journal, EndpointerOptions::default());
    let rr = RoundRobin::new(e.clone());

    assert_eq!(rr.endpoint().unwrap_err().kind(), ErrorKind::NoEndpoints);

    // One instance by a Registrar, one by hand.
    let reg = Registrar::new(
        &client,
        Service::new(format!("{prefix}a"), "http://a").with_ttl(TtlOption::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
        )),
    );
    reg.register().unwrap();
    assert!(
        wait_until(CONVERGE, || picks(&rr, 4) == set(&["http://a"])),
        "a did not appear: {:?}",
        picks(&rr, 4)
    );
    etcd.put(&format!("{prefix}b"), "http://b");
    assert!(
        wait_until(CONVERGE, || picks(&rr, 4) == set(&["http://a", "http://b"])),
        "b did not appear: {:?}",
        picks(&rr, 4)
    );
    assert_eq!(e.endpoints().unwrap(), ["http://a", "http://b"]);

    // a goes: its closer runs, b's endpoint is kept.
    reg.deregister().unwrap();
    assert!(
        wait_until(CONVERGE, || picks(&rr, 4) == set(&["http://b"])),
        "a did not go: {:?}",
        picks(&rr, 4)
    );
    assert!(wait_until(CONVERGE, || journal.closed() == ["http://a"]));
    assert_eq!(journal.made(), ["http://a", "http://b"]);

    // Random sees the same set.
    let random = Random::new(e.clone(), 7);
    assert_eq!(picks(&random, 8), set(&["http://b"]));

    etcd.del(&format!("{prefix}b"));
    assert!(wait_until(CONVERGE, || {
        rr.endpoint().map_err(|e| e.kind()) == Err(ErrorKind::NoEndpoints)
    }));
    assert!(wait_until(CONVERGE, || journal.closed() == ["http://a", "http://b"]));
}

#[test]
fn closers_run_on_close_and_when_the_instancer_stops() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("sdlb-close");
    etcd.put(&format!("{prefix}1"), "one");
    etcd.put(&format!("{prefix}2"), "two");
    let instancer = Instancer::new(&client, &prefix).unwrap();

    // Built from the instancer's current state: ready at once.
    let j1 = Journal::default();
    let e1 = endpointer(&instancer, &j1, EndpointerOptions::default());
    assert_eq!(e1.endpoints().unwrap(), ["one", "two"]);
    e1.close();
    assert_eq!(j1.closed(), ["one", "two"]);
    assert_eq!(e1.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    e1.close();
    assert_eq!(j1.closed(), ["one", "two"], "close is idempotent");

    // Dropping the last clone closes.
    let j2 = Journal::default();
    let e2 = endpointer(&instancer, &j2, EndpointerOptions::default());
    let clone = e2.clone();
    drop(e2);
    assert!(j2.closed().is_empty());
    drop(clone);
    assert_eq!(j2.closed(), ["one", "two"]);

    // Stopping the instancer closes the endpointers that follow it.
    let j3 = Journal::default();
    let e3 = endpointer(&instancer, &j3, EndpointerOptions::default());
    assert_eq!(e3.endpoints().unwrap(), ["one", "two"]);
    instancer.stop();
    assert!(wait_until(CONVERGE, || j3.closed() == ["one", "two"]));
    assert_eq!(e3.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    let rr = RoundRobin::new(e3.clone());
    assert_eq!(rr.endpoint().unwrap_err().kind(), ErrorKind::Closed);

    // On a stopped instancer an endpointer is closed from the start.
    let j4 = Journal::default();
    let e4 = endpointer(&instancer, &j4, EndpointerOptions::default());
    assert_eq!(e4.endpoints().unwrap_err().kind(), ErrorKind::Closed);
    assert!(
        j4.made().is_empty(),
        "no endpoint is made for a stopped instancer"
    );
}

#[test]
fn instances_whose_factory_fails_are_skipped() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("sdlb-factory");
    etcd.put(&format!("{prefix}1"), "good-1");
    etcd.put(&format!("{prefix}2"), "bad-2");
    let instancer = Instancer::new(&client, &prefix).unwrap();
    let journal = Journal::default();
    let e = endpointer(&instancer, &journal, EndpointerOptions::default());
    assert_eq!(e.endpoints().unwrap(), ["good-1"]);
    etcd.put(&format!("{prefix}3"), "good-3");
    assert!(wait_until(CONVERGE, || e.endpoints().unwrap() == ["good-1", "good-3"]));
    let rr = RoundRobin::new(e.clone());
    assert_eq!(picks(&rr, 6), set(&["good-1", "good-3"]));
    assert_eq!(journal.made(), ["good-1", "good-3"]);
}

#[test]
fn invalidate_on_error_with_etcd_killed() {
    let mut etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("sdlb-invalidate");
    etcd.put(&format!("{prefix}1"), "one");
    let instancer = Instancer::new(&client, &prefix).unwrap();
    let updates = instancer.subscribe();
    let first = updates.recv_timeout(CONVERGE).unwrap();
    assert!(first.err.is_none());

    let invalidate = Duration::from_secs(3);
    let jv = Journal::default();
    let strict = endpointer(
        &instancer,
        &jv,
        EndpointerOptions {
            invalidate_on_error: Some(invalidate),
        },
    );
    let jk = Journal::default();
    let lenient = endpointer(&instancer, &jk, EndpointerOptions::default());
    assert_eq!(strict.endpoints().unwrap(), ["one"]);
    assert_eq!(lenient.endpoints().unwrap(), ["one"]);

    etcd.kill();
    // Wait (bounded) for the instancer to report the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_error = None;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        match updates.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(ev) if ev.err.is_some() => {
                seen_error = Some(Instant::now());
                break;
            }
            _ if Instant::now() >= deadline => break,
            _ => {}
        }
    }
    let seen_error = seen_error.expect("no error event within 30 s of killing etcd");
    // Within the delay the old endpoints are still served.
    assert_eq!(strict.endpoints().unwrap(), ["one"]);
    assert!(
        wait_until(Duration::from_secs(20), || strict.endpoints().is_err()),
        "strict endpointer never invalidated"
    );
    assert!(
        seen_error.elapsed() >= Duration::from_secs(2),
        "invalidated {:?} after the error event, expected about {invalidate:?}",
        seen_error.elapsed()
    );
    let err = strict.endpoints().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    assert_eq!(jv.closed(), ["one"], "closers ran at invalidation");
    let rr = RoundRobin::new(strict.clone());
    assert_eq!(rr.endpoint().unwrap_err().kind(), err.kind());
    // Without the option the error is ignored.
    assert_eq!(lenient.endpoints().unwrap(), ["one"]);
    assert!(jk.closed().is_empty());

    // Back: the strict endpointer builds its endpoints again.
    etcd.restart();
    assert!(
        wait_until(Duration::from_secs(30), || strict
            .endpoints()
            .is_ok_and(|e| e == ["one"])),
        "strict endpointer did not recover: {:?}",
        strict.endpoints()
    );
    assert_eq!(jv.made(), ["one", "one"]);
    assert_eq!(lenient.endpoints().unwrap(), ["one"]);
    assert_eq!(jk.made(), ["one"], "lenient endpoint kept throughout");
}

#[test]
fn retry_calls_through_the_live_set() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let prefix = unique_prefix("sdlb-retry");
    etcd.put(&format!("{prefix}1"), "down");
    etcd.put(&format!("{prefix}2"), "up");
    let instancer = Instancer::new(&client, &prefix).unwrap();
    let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = served.clone();
    let e: Endpointer<Endpoint<u32, String>> = Endpointer::new(
        &instancer,
        move |instance: &str| {
            let name = instance.to_string();
            let served = s.clone();
            let ep: Endpoint<u32, String> = Arc::new(move |req: u32| {
                *served.lock().unwrap().entry(name.clone()).or_default() += 1;
                if name == "down" {
                    Err(format!("{name} refused").into())
                } else {
                    Ok(format!("{name} served {req}"))
                }
            });
            Ok((ep, None))
        },
        EndpointerOptions::default(),
    );
    let retry = lb::retry(3, Duration::from_secs(3), RoundRobin::new(e.clone()));
    for i in 0..4 {
        assert_eq!(retry.call(i).unwrap(), format!("up served {i}"));
    }
    assert_eq!(served.lock().unwrap()["up"], 4);

    // With only the failing instance left, every attempt fails.
    etcd.del(&format!("{prefix}2"));
    assert!(wait_until(CONVERGE, || e.endpoints().unwrap().len() == 1));
    let err = retry.call(9).unwrap_err();
    assert_eq!(err.raw.len(), 3);
    assert_eq!(
        err.to_string(),
        "down refused (previously: down refused; down refused) after 3 attempts"
    );

    // With none, NoEndpoints until the deadline or max.
    etcd.del(&format!("{prefix}1"));
    assert!(wait_until(CONVERGE, || e.endpoints().unwrap().is_empty()));
    let err = retry.call(10).unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::NoEndpoints));
}
