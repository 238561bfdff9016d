//! The smaller promises of API.md §5.4, each against a real etcd (or, for
//! "Not etcd", a server that is not etcd): replacing a key, bounded drops,
//! sizes, and an endpoint that does not speak etcd's gRPC.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use etcd_sd::{Client, ClientOptions, ErrorKind, Registrar, RegistrationState, Service};
use support::{unique_prefix, EtcdConfig, EtcdServer};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A plain HTTP/1 server on loopback that answers `400 Bad Request` to
/// every connection, whatever it is sent; it runs until the test ends.
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
