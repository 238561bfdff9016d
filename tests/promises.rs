//! The smaller promises of API.md §5.4, each against a real etcd (or, for
//! "Not etcd", a server that is not etcd): replacing a key, bounded drops,
//! sizes, and an endpoint that does not speak etcd's gRPC.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use etcd_sd::{Client, ClientOptions, ErrorKind, Registrar, RegistrationState, Service, TtlOption};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdConfig, EtcdServer};

/// A plain HTTP/1 server on loopback that answers `400 Bad Request` to
/// every connection, whatever it is sent, and closes it as web servers do
/// (lingering: it reads what the client still sends until the client
/// closes, so the answer is not lost to a reset); it runs until the test
/// ends.
fn http1_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(secs(2)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request",
                );
                let _ = stream.shutdown(std::net::Shutdown::Write);
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

#[test]
fn an_endpoint_that_is_not_etcd_is_unavailable_and_says_so() {
    let endpoint = http1_server();
    let options = ClientOptions {
        dial_timeout: secs(3),
        request_timeout: secs(3),
        ..Default::default()
    };
    let started = Instant::now();
    let e = Client::connect(&[endpoint.as_str()], options).expect_err("not etcd");
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("does not speak etcd's gRPC"), "{e}");
}

/// etcd's default request limit (`--max-request-bytes`).
const ETCD_DEFAULT_LIMIT: usize = 1_572_864;

#[test]
fn a_value_over_etcds_default_limit_is_refused_before_any_traffic() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let key = format!("{}svc", unique_prefix("size-client"));
    let big = "x".repeat(2 * 1024 * 1024);
    let service = Service::new(key.clone(), big.clone());

    let reg = Registrar::new(&client, service.clone());
    let events = reg.events();
    let started = Instant::now();
    let e = reg.register().expect_err("2 MiB value");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("request limit"), "{e}");
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    assert!(
        events.try_recv().is_err(),
        "nothing started, nothing reported"
    );

    let started = Instant::now();
    let e = client.register(&service).expect_err("2 MiB value");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );

    // Just over the limit with the key counted too; nothing reached etcd.
    let just_over = "y".repeat(ETCD_DEFAULT_LIMIT - key.len());
    let e = client
        .register(&Service::new(key.clone(), just_over))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!etcd.exists(&key));
    assert!(etcd.leases().is_empty(), "leases: {:?}", etcd.leases());
}

/// Puts that etcd answered with `InvalidArgument` so far.
fn refused_puts(etcd: &EtcdServer) -> f64 {
    etcd.metric(
        "grpc_server_handled_total",
        &["grpc_method=\"Put\"", "grpc_code=\"InvalidArgument\""],
    )
}

/// etcd with a 64 KiB request limit, so that a value well under our 1.5 MiB
/// check is refused by the server itself ("request is too large").
fn etcd_with_small_limit() -> EtcdServer {
    EtcdServer::start_with(EtcdConfig {
        extra_args: vec!["--max-request-bytes=65536".into()],
        ..Default::default()
    })
}

#[test]
fn a_request_etcd_finds_too_large_is_refused_at_once_and_not_retried() {
    let etcd = etcd_with_small_limit();
    let client = connect_with(&etcd, options(secs(5)));
    let key = format!("{}svc", unique_prefix("size-server"));
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "z".repeat(100 * 1024)).with_ttl(short_ttl()),
    );
    let events = reg.events();
    let started = Instant::now();
    let e = reg.register().expect_err("100 KiB value on a 64 KiB etcd");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(took < secs(2), "took {took:?} (request_timeout 5 s)");
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    assert_eq!(reg.lease_id(), None);

    // Given up for good: no further attempt, no event, the lease revoked.
    let refused = refused_puts(&etcd);
    assert!(refused >= 1.0, "{refused} refused puts");
    let (_, seen) = recv_states_until(&events, secs(2), |_, _| false);
    assert_eq!(
        states(&seen),
        [
            RegistrationState::Registering,
            RegistrationState::Unregistered
        ],
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(
        last.error.as_ref().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        refused_puts(&etcd),
        refused,
        "retried after a refusal for good"
    );
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    assert!(etcd.leases().is_empty(), "lease left: {:?}", etcd.leases());
    assert!(!etcd.exists(&key));

    // A later register() tries again (and is refused again, at once).
    let started = Instant::now();
    let e = reg.register().expect_err("still too large");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(started.elapsed() < secs(2));
    assert_eq!(refused_puts(&etcd), refused + 1.0);
    reg.deregister().expect("deregister after a refusal");

    // The same through Client::register.
    let e = client
        .register(&Service::new(key.clone(), "z".repeat(100 * 1024)))
        .expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    std::thread::sleep(secs(1));
    assert!(etcd.leases().is_empty(), "lease left: {:?}", etcd.leases());
}

/// A raw etcd watch on a prefix, on its own thread: every event, in order,
/// as `PUT key value` or `DELETE key`.
struct RawWatch {
    events: std::sync::mpsc::Receiver<String>,
}

impl RawWatch {
    /// Returns once etcd has created the watch.
    fn start(etcd: &EtcdServer, prefix: &str) -> RawWatch {
        let (tx, events) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let endpoint = etcd.endpoint();
        let prefix = prefix.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                let opts = etcd_client::WatchOptions::new().with_prefix();
                let mut stream = client.watch(prefix, Some(opts)).await.unwrap();
                let created = stream.message().await.unwrap().unwrap();
                assert!(created.created());
                let _ = ready_tx.send(());
                while let Ok(Some(resp)) = stream.message().await {
                    for ev in resp.events() {
                        let kv = ev.kv().unwrap();
                        let line = match ev.event_type() {
                            etcd_client::EventType::Put => {
                                format!("PUT {} {}", kv.key_str().unwrap(), kv.value_str().unwrap())
                            }
                            etcd_client::EventType::Delete => {
                                format!("DELETE {}", kv.key_str().unwrap())
                            }
                        };
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            });
        });
        ready.recv_timeout(secs(10)).expect("raw watch created");
        RawWatch { events }
    }

    /// Every event that arrives until none has for `quiet`.
    fn drain(&self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.events.recv_timeout(quiet) {
            out.push(line);
        }
        out
    }
}

#[test]
fn replacing_a_registration_never_deletes_the_key_first() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("replace");
    let key = format!("{p}svc");
    let service = |v: &str| Service::new(key.clone(), v).with_ttl(short_ttl());
    client.register(&service("v0")).unwrap();
    let watch = RawWatch::start(&etcd, &p);
    for i in 1..=20 {
        client.register(&service(&format!("v{i}"))).unwrap();
    }
    let seen = watch.drain(secs(2));
    let want: Vec<String> = (1..=20).map(|i| format!("PUT {key} v{i}")).collect();
    assert_eq!(
        seen, want,
        "a watcher saw the key go, or values out of order"
    );
    assert_eq!(etcd.get(&key).as_deref(), Some("v20"));
    // Every replaced registration was stopped and its lease revoked: only
    // the last one's lease is left, and the key is under it.
    assert_eq!(etcd.leases(), [client.lease_id()]);
    assert_eq!(etcd.lease_of(&key), client.lease_id());
    // Still kept alive past the ttl, and nothing more happened.
    std::thread::sleep(secs(3));
    assert_eq!(etcd.get(&key).as_deref(), Some("v20"));
    assert_eq!(
        watch.drain(Duration::from_millis(200)),
        Vec::<String>::new()
    );
    client.deregister(&service("")).unwrap();
    assert_eq!(watch.drain(secs(2)), [format!("DELETE {key}")]);
}

#[test]
fn a_replacement_etcd_refuses_for_good_leaves_the_old_registration() {
    let etcd = etcd_with_small_limit();
    let client = connect(&etcd);
    let key = format!("{}svc", unique_prefix("replace-refused"));
    let service = |v: String| Service::new(key.clone(), v).with_ttl(short_ttl());
    client.register(&service("small".into())).unwrap();
    let lease = client.lease_id();
    let watch = RawWatch::start(&etcd, &key);
    let e = client
        .register(&service("z".repeat(100 * 1024)))
        .expect_err("100 KiB value on a 64 KiB etcd");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // The old registration stays, kept alive past its ttl.
    std::thread::sleep(secs(3));
    assert_eq!(etcd.get(&key).as_deref(), Some("small"));
    assert_eq!(etcd.lease_of(&key), lease);
    assert_eq!(etcd.leases(), [lease]);
    assert_eq!(
        watch.drain(Duration::from_millis(200)),
        Vec::<String>::new()
    );
    // And it is still the one Client::deregister stops.
    client.deregister(&service(String::new())).unwrap();
    assert!(!etcd.exists(&key));
}

#[test]
fn dropping_many_registrars_while_etcd_is_frozen_costs_one_request_timeout() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("drops");
    // A 10 s ttl: all of them are still Registered (not yet found Lost)
    // while they are dropped.
    let ttl = TtlOption::new(Duration::from_millis(500), secs(10));
    let regs: Vec<Registrar> = (0..20)
        .map(|i| {
            let r = Registrar::new(
                &client,
                Service::new(format!("{p}{i:02}"), "v").with_ttl(ttl),
            );
            r.register().unwrap();
            r
        })
        .collect();
    etcd.pause();
    let started = Instant::now();
    drop(regs);
    let took = started.elapsed();
    eprintln!("dropping 20 registrars with etcd frozen took {took:?}");
    etcd.resume();
    assert!(
        took < secs(3),
        "dropping 20 registrars took {took:?} (request_timeout 1 s)"
    );
    // The revokes went on in the background; whatever they did, the keys go
    // (revoked, or expired after the ttl) and do not come back.
    assert!(
        wait_until(secs(20), || etcd.count_prefix(&p) == 0),
        "keys left: {:?}",
        etcd.get_prefix(&p)
    );
    std::thread::sleep(secs(1));
    assert_eq!(etcd.count_prefix(&p), 0);

    // etcd answers again: a drop waits for its revoke again, so the key is
    // gone when it returns.
    let key = format!("{p}after");
    let reg = registered(&client, key.clone(), "v");
    drop(reg);
    assert!(!etcd.exists(&key), "key still there right after the drop");
}
