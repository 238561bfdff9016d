//! Client: connect errors, the go-kit seed methods, TtlOption rules, lease
//! TTLs in etcd, and use from inside a tokio runtime.

mod support;

use std::time::{Duration, Instant};

use etcd_sd::channel::RecvTimeoutError;
use etcd_sd::{Client, ClientOptions, Error, ErrorKind, Registrar, Service, TtlOption};
use support::api::*;
use support::{ms, secs, unique_prefix, wait_until, EtcdServer};

#[test]
fn public_types_are_send_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn clone<T: Clone>() {}
    fn debug<T: std::fmt::Debug>() {}
    fn std_error<T: std::error::Error>() {}
    send_sync::<Client>();
    clone::<Client>();
    debug::<Client>();
    send_sync::<Error>();
    clone::<Error>();
    std_error::<Error>();
    send_sync::<Registrar>();
    debug::<Registrar>();
    send_sync::<etcd_sd::Instancer>();
    debug::<etcd_sd::Instancer>();
    send_sync::<etcd_sd::Event>();
    clone::<etcd_sd::Event>();
    clone::<ClientOptions>();
}

#[test]
fn register_and_deregister_check_key_and_value_before_the_network() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    // The checks come before any network traffic: they answer the same way,
    // and at once, with etcd dead.
    for alive in [true, false] {
        if !alive {
            etcd.kill();
        }
        let t = Instant::now();
        let e = client.register(&Service::new("", "v")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoKey, "alive={alive}: {e}");
        // An empty key is reported before an empty value.
        let e = client.register(&Service::new("", "")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoKey, "alive={alive}: {e}");
        let e = client.register(&Service::new("/k", "")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoValue, "alive={alive}: {e}");
        let e = client
            .register(&Service::new("/k", "").with_ttl(short_ttl()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoValue, "alive={alive}: {e}");
        let e = client.deregister(&Service::new("", "v")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoKey, "alive={alive}: {e}");
        let e = client.deregister(&Service::new("", "")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoKey, "alive={alive}: {e}");
        assert!(
            t.elapsed() < ms(500),
            "alive={alive}: validation took {:?}",
            t.elapsed()
        );
        assert_eq!(client.lease_id(), 0);
    }
}

#[test]
fn deregister_needs_only_the_key() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("dereg-key-only");
    let key = format!("{p}svc");
    client
        .register(&Service::new(key.clone(), "addr:1").with_ttl(short_ttl()))
        .unwrap();
    assert!(etcd.exists(&key));
    client.deregister(&Service::new(key.clone(), "")).unwrap();
    assert!(!etcd.exists(&key), "key still there after deregister");
}

#[test]
fn connect_rejects_invalid_endpoints() {
    let none: [&str; 0] = [];
    let t = Instant::now();
    let e = Client::connect(&none, ClientOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "empty list: {e}");
    for bad in ["", "http://", "host:notaport", "127.0.0.1:0"] {
        let e = Client::connect(&[bad], ClientOptions::default()).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "endpoint {bad:?}: {e}"
        );
    }
    // One bad endpoint among good-looking ones is still rejected.
    let good = format!("127.0.0.1:{}", support::free_port());
    let e = Client::connect(&[good.as_str(), "http://"], ClientOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "mixed list: {e}");
    // Invalid arguments are found without dialing anything.
    assert!(t.elapsed() < secs(2), "took {:?}", t.elapsed());
}

#[test]
fn connect_to_nobody_fails_within_dial_timeout() {
    for endpoint in [
        format!("127.0.0.1:{}", support::free_port()),
        format!("http://127.0.0.1:{}", support::free_port()),
    ] {
        let opts = ClientOptions {
            dial_timeout: secs(1),
            request_timeout: secs(1),
            ..Default::default()
        };
        let t = Instant::now();
        let res = Client::connect(&[endpoint.as_str()], opts);
        let took = t.elapsed();
        // The error is a proper std error with a message.
        assert!(res.as_ref().is_err_and(|e| !e.to_string().is_empty()));
        assert_unreachable(res, took, secs(5), &endpoint);
    }
}

#[test]
fn calls_fail_with_unavailable_or_timeout_when_etcd_is_down() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(1)));
    let p = unique_prefix("down");
    etcd.kill();
    let t = Instant::now();
    let res = client.get_entries(&p);
    assert_unreachable(res, t.elapsed(), secs(5), "get_entries");
    let t = Instant::now();
    let res = client.register(&Service::new(format!("{p}k"), "v").with_ttl(short_ttl()));
    assert_unreachable(res, t.elapsed(), secs(5), "register");
    // A key this client never registered: go-kit's plain delete.
    let t = Instant::now();
    let res = client.deregister(&Service::new(format!("{p}never"), "v"));
    assert_unreachable(res, t.elapsed(), secs(5), "deregister");
    // Back up: the same client works again.
    etcd.restart();
    assert!(
        wait_until(secs(15), || client.get_entries(&p).is_ok()),
        "client did not recover after restart"
    );
}

#[test]
fn both_endpoint_forms_are_accepted() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("forms");
    etcd.put(&format!("{p}a"), "1");
    for ep in [etcd.endpoint(), etcd.endpoint_url()] {
        let c = Client::connect(&[ep.as_str()], options(secs(5)))
            .unwrap_or_else(|e| panic!("{ep}: {e}"));
        assert_eq!(c.get_entries(&p).unwrap(), strs(&["1"]), "{ep}");
    }
}

#[test]
fn get_entries_returns_values_in_key_order() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("entries");
    assert_eq!(client.get_entries(&p).unwrap(), Vec::<String>::new());
    etcd.put(&format!("{p}b"), "x1");
    etcd.put(&format!("{p}a"), "z");
    etcd.put(&format!("{p}c"), "a");
    etcd.put(&format!("{p}d"), "z");
    // Outside the prefix.
    etcd.put(&format!("{}zz", &p[..p.len() - 1]), "outside");
    assert_eq!(
        client.get_entries(&p).unwrap(),
        strs(&["z", "x1", "a", "z"]),
        "values in key order, as go-kit's GetEntries"
    );
    // Clones share the connection and see the same.
    let c2 = client.clone();
    drop(client);
    etcd.del(&format!("{p}a"));
    assert_eq!(c2.get_entries(&p).unwrap(), strs(&["x1", "a", "z"]));
}

#[test]
fn watch_prefix_sends_sentinel_then_changes() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("watch");
    let rx = client.watch_prefix(&p).unwrap();
    assert_eq!(
        rx.recv_timeout(secs(5)),
        Ok(()),
        "initial sentinel (go-kit sends one before any change)"
    );
    // Nothing more without a change.
    assert_eq!(rx.recv_timeout(ms(500)), Err(RecvTimeoutError::Timeout));
    etcd.put(&format!("{p}a"), "1");
    assert_eq!(rx.recv_timeout(secs(5)), Ok(()), "after put");
    etcd.del(&format!("{p}a"));
    assert_eq!(rx.recv_timeout(secs(5)), Ok(()), "after delete");
}

/// A change made while the link is cut is notified once the watch is back
/// (it resumes after the last revision it saw instead of starting from now).
#[test]
fn watch_prefix_notifies_a_change_made_while_the_link_was_down() {
    let etcd = EtcdServer::start();
    let proxy = support::FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], options(secs(1))).unwrap();
    let p = unique_prefix("watch-down");
    let rx = client.watch_prefix(&p).unwrap();
    assert_eq!(rx.recv_timeout(secs(5)), Ok(()), "initial sentinel");
    etcd.put(&format!("{p}a"), "1");
    assert_eq!(rx.recv_timeout(secs(5)), Ok(()), "after put");
    for round in 0..2 {
        proxy.cut();
        std::thread::sleep(ms(500));
        etcd.put(&format!("{p}b{round}"), "2");
        assert_eq!(
            rx.recv_timeout(ms(300)),
            Err(RecvTimeoutError::Timeout),
            "round {round}: nothing can arrive while cut"
        );
        proxy.restore();
        assert_eq!(
            rx.recv_timeout(secs(15)),
            Ok(()),
            "round {round}: the change made while cut was not notified"
        );
    }
}

/// An idle `watch_prefix` whose receiver is dropped ends at etcd's next
/// progress notification (every 300 ms here, 10 minutes by default), not only
/// at the next change.
#[test]
fn watch_prefix_ends_after_its_receiver_is_dropped_even_when_idle() {
    let etcd = EtcdServer::start_with(support::EtcdConfig {
        extra_args: vec!["--experimental-watch-progress-notify-interval=300ms".into()],
        ..Default::default()
    });
    let client = connect(&etcd);
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let before = etcd.metric(WATCHERS, &[]);
    let p = unique_prefix("watch-drop");
    let rx = client.watch_prefix(&p).unwrap();
    assert_eq!(rx.recv_timeout(secs(5)), Ok(()), "initial sentinel");
    assert!(
        wait_until(secs(5), || etcd.metric(WATCHERS, &[]) == before + 1.0),
        "the watch was not created"
    );
    drop(rx);
    assert!(
        wait_until(secs(10), || etcd.metric(WATCHERS, &[]) == before),
        "the watch of a dropped receiver is still open with no change under its prefix"
    );
}

#[test]
fn client_register_deregister_and_lease_id() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    assert_eq!(client.lease_id(), 0, "no register yet");
    let p = unique_prefix("client-reg");
    let key = format!("{p}svc");
    let svc = Service::new(key.clone(), "10.0.0.1:80").with_ttl(short_ttl());
    client.register(&svc).unwrap();
    assert_eq!(etcd.get(&key).as_deref(), Some("10.0.0.1:80"));
    let lease = client.lease_id();
    assert_ne!(lease, 0, "lease_id after register");
    assert_eq!(etcd.lease_of(&key), lease, "key carries the client's lease");
    assert_eq!(client.get_entries(&p).unwrap(), strs(&["10.0.0.1:80"]));

    // The client keeps the lease alive (go-kit's Register starts keep-alive).
    std::thread::sleep(secs(4));
    assert!(etcd.exists(&key), "key expired although registered");

    client.deregister(&svc).unwrap();
    assert!(!etcd.exists(&key), "key still there after deregister");
}

#[test]
fn ttl_option_clamping() {
    let cases: [(Duration, Duration, Duration, Duration); 11] = [
        // (heartbeat, ttl) -> (heartbeat(), ttl())
        (ms(0), ms(0), secs(3), secs(9)),
        (ms(0), secs(3), secs(3), secs(9)),
        (ms(0), secs(10), secs(3), secs(10)),
        (ms(1), ms(0), ms(500), ms(1500)),
        (ms(100), ms(400), ms(500), ms(1500)),
        (ms(100), ms(500), ms(500), ms(1500)),
        (ms(100), ms(600), ms(500), ms(600)),
        (ms(499), secs(5), ms(500), secs(5)),
        (ms(500), ms(2000), ms(500), ms(2000)),
        (secs(1), secs(1), secs(1), secs(3)),
        (secs(1), ms(1500), secs(1), ms(1500)),
    ];
    for (hb, ttl, want_hb, want_ttl) in cases {
        let o = TtlOption::new(hb, ttl);
        assert_eq!(
            (o.heartbeat(), o.ttl()),
            (want_hb, want_ttl),
            "TtlOption::new({hb:?}, {ttl:?})"
        );
    }
    assert_eq!(
        TtlOption::new(ms(0), ms(0)),
        TtlOption::new(secs(3), secs(9))
    );
    let s = Service::new("k", "v");
    assert!(s.ttl.is_none());
    let s = s.with_ttl(TtlOption::new(secs(1), secs(5)));
    assert_eq!(s.ttl, Some(TtlOption::new(secs(1), secs(5))));
    assert_eq!((s.key.as_str(), s.value.as_str()), ("k", "v"));
}

#[test]
fn lease_ttl_in_etcd_is_rounded_up_to_whole_seconds() {
    let etcd = EtcdServer::start();
    let client = connect(&etcd);
    let p = unique_prefix("lease-ttl");
    // (ttl option, granted TTL expected in etcd)
    let cases: [(Option<TtlOption>, i64); 5] = [
        (Some(TtlOption::new(ms(500), ms(1500))), 2),
        (Some(TtlOption::new(secs(1), ms(2001))), 3),
        (Some(TtlOption::new(secs(1), secs(3))), 3),
        (Some(TtlOption::new(ms(0), ms(0))), 9),
        (None, 10), // a Service without ttl: 3 s heartbeat, 10 s ttl
    ];
    let mut regs = Vec::new();
    for (i, (ttl, want)) in cases.into_iter().enumerate() {
        let key = format!("{p}r{i}");
        let mut svc = Service::new(key.clone(), format!("v{i}"));
        if let Some(t) = ttl {
            svc = svc.with_ttl(t);
        }
        let reg = Registrar::new(&client, svc);
        reg.register().unwrap();
        let id = reg.lease_id().expect("lease id after register");
        assert_eq!(etcd.lease_of(&key), id);
        let (granted, _) = etcd.lease_ttl(id).expect("lease exists");
        assert_eq!(granted, want, "granted TTL for {ttl:?}");
        regs.push(reg);
    }
    // Client::register uses the same rule.
    let key = format!("{p}client");
    client
        .register(&Service::new(key.clone(), "c").with_ttl(TtlOption::new(ms(500), ms(1500))))
        .unwrap();
    let (granted, _) = etcd.lease_ttl(client.lease_id()).expect("client lease");
    assert_eq!(granted, 2);
}

#[test]
fn client_options_debug_hides_password() {
    let opts = ClientOptions {
        username: Some("alice".into()),
        password: Some("hunter2-very-secret".into()),
        ..Default::default()
    };
    let dbg = format!("{opts:?}");
    assert!(!dbg.contains("hunter2-very-secret"), "{dbg}");
    let dbg = format!("{:?}", opts.clone());
    assert!(!dbg.contains("hunter2-very-secret"), "{dbg}");
}

#[test]
fn errors_have_kind_display_and_are_cloneable() {
    let e = Client::connect(&["http://"], ClientOptions::default()).unwrap_err();
    let e2 = e.clone();
    assert_eq!(e2.kind(), e.kind());
    assert!(!format!("{e}").is_empty());
    assert!(!format!("{e:?}").is_empty());
    let boxed: etcd_sd::BoxError = Box::new(e);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn blocking_api_inside_a_multi_thread_tokio_runtime() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("tokio-mt");
    etcd.put(&format!("{p}a"), "1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = etcd.endpoint();
    let p2 = p.clone();
    let got = rt.block_on(async move {
        let client = Client::connect(&[ep.as_str()], options(secs(5))).unwrap();
        let entries = client.get_entries(&p2).unwrap();
        let reg = Registrar::new(&client, Service::new(format!("{p2}r"), "2"));
        reg.register().unwrap();
        let inst = etcd_sd::Instancer::new(&client, &p2).unwrap();
        wait_until(secs(10), || inst.current().instances.len() == 2);
        let cur = inst.current();
        reg.deregister().unwrap();
        inst.stop();
        drop(inst);
        drop(reg);
        drop(client); // joins the client's threads from a runtime worker
        (entries, cur.instances.to_vec())
    });
    assert_eq!(got.0, strs(&["1"]));
    assert_eq!(got.1, strs(&["1", "2"]));
    // A client made outside, used from a spawned task.
    let client = connect(&etcd);
    let c = client.clone();
    let p3 = p.clone();
    let res = rt
        .block_on(async move { tokio::spawn(async move { c.get_entries(&p3) }).await })
        .unwrap()
        .unwrap();
    assert_eq!(res, strs(&["1"]));
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_api_inside_a_current_thread_tokio_runtime() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("tokio-ct");
    etcd.put(&format!("{p}a"), "1");
    let client = connect(&etcd);
    assert_eq!(client.get_entries(&p).unwrap(), strs(&["1"]));
    let reg = Registrar::new(&client, Service::new(format!("{p}r"), "2"));
    reg.register().unwrap();
    assert_eq!(client.get_entries(&p).unwrap(), strs(&["1", "2"]));
    drop(reg);
    drop(client);
}
