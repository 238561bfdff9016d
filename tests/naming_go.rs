//! etcd's naming format against the real Go code: etcd 3.4's
//! `clientv3/naming/endpoints` Manager and `clientv3/naming/resolver` with
//! gRPC-Go 1.33 (Debian's `golang-etcd-server-dev`), driven through
//! `tests/go/naming_peer` (see `support::go`), and a real etcd on loopback.
//!
//! * Go's `AddEndpoint` → an Instancer sees it and `Endpoint::decode` gives
//!   the same address and metadata; Go's `DeleteEndpoint` → it goes.
//! * A Registrar of `Endpoint::encode()` → Go's `List` and `NewWatchChannel`
//!   show it (Add, then Delete after deregistering), metadata included.
//! * gRPC end to end: a Go client dialing `etcd:///TARGET` with round robin
//!   reaches the Go health servers that etcd-sd Registrars registered, follows
//!   a deregistration, a revoked lease and the Registrar's own re-registration.
//! * The documented gRPC-Go 1.33 crash on object metadata.
//! * The CLI (`register --naming`, `list`, `watch --json`) and the C
//!   functions against the same Go program.
//!
//! Go or its packages missing is a failure, not a skip (`make test` installs
//! them). Every wait here is bounded in time and count.

mod support;

use std::time::Duration;

use etcd_sd::naming::Endpoint;
use etcd_sd::{Instancer, Registrar, RegistrationState, Service};
use serde_json::Value;

use support::api::*;
use support::go::GoPeer;
use support::{unique_prefix, EtcdServer};

const WAIT: Duration = Duration::from_secs(20);

/// A naming target of its own (`/etcd-sd-it/<name>-pid-n/svc`), whose keys
/// are `TARGET/...`.
fn target(name: &str) -> String {
    format!("{}svc", unique_prefix(name))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}"))
}

/// The instances of `ev`, decoded, sorted by address.
fn decoded(ev: &etcd_sd::Event) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> = ev
        .instances
        .iter()
        .map(|i| Endpoint::decode(i).unwrap_or_else(|e| panic!("decode {i:?}: {e}")))
        .collect();
    v.sort_by(|a, b| a.addr.cmp(&b.addr));
    v
}

/// Metadata Go's Manager writes and etcd-sd must read as the same JSON
/// value (Go keeps numbers as written: naming_peer decodes with UseNumber).
const GO_METADATA: &[(&str, Option<&str>)] = &[
    ("10.0.0.1:1", None),
    ("10.0.0.2:2", Some(r#"{"version":"1.2.3","weight":3}"#)),
    (
        "10.0.0.3:3",
        Some(r#"{"a":{"b":[1,{"c":null},[true,false]],"d":"x"},"e":[]}"#),
    ),
    (
        "10.0.0.4:4",
        Some(
            r#"{"big":123456789012345678901234567890,"f":1.50,"e":-2.5e-7,"z":-0,"i":18446744073709551616}"#,
        ),
    ),
    (
        "10.0.0.5:5",
        Some(r#"{"name":"caf\u00e9 ☃ 😀","sep":"\u2028","q":"\"<&>\"","ctl":"\u0001"}"#),
    ),
    ("10.0.0.6:6", Some(r#""just a string""#)),
    ("10.0.0.7:7", Some("42")),
];

#[test]
fn go_add_endpoint_is_seen_and_decoded_then_delete_removes_it() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("go-add");
    let instancer = Instancer::new(&client, &format!("{target}/")).unwrap();
    let rx = instancer.subscribe();
    recv_instances(&rx, WAIT, &[]);

    for (i, (addr, metadata)) in GO_METADATA.iter().enumerate() {
        go.add(&target, &format!("{target}/ep{i}"), addr, *metadata);
    }
    let ev = recv_until(&rx, WAIT, |ev| {
        ev.err.is_none() && ev.instances.len() == GO_METADATA.len()
    })
    .unwrap_or_else(|e| panic!("all Go endpoints: {e}"));
    let got = decoded(&ev);
    for ((addr, metadata), e) in GO_METADATA.iter().zip(&got) {
        assert_eq!(e.addr, *addr);
        match metadata {
            None => assert_eq!(e.metadata, None, "{addr}"),
            Some(m) => {
                let text = e.metadata.as_deref().expect("metadata");
                assert_eq!(json(text), json(m), "{addr}: {text} vs {m}");
            }
        }
        // What Go wrote round-trips through etcd-sd unchanged.
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), *e);
    }
    // The raw values are Go's layout: Op 0, Addr, Metadata.
    for raw in ev.instances.iter() {
        let v = json(raw);
        assert_eq!(v["Op"], 0, "{raw}");
        assert!(v.get("Metadata").is_some(), "{raw}");
    }
    eprintln!("Go wrote, etcd-sd decoded: {got:?}");

    go.delete(&target, &format!("{target}/ep1"));
    let ev = recv_until(&rx, WAIT, |ev| {
        ev.err.is_none() && ev.instances.len() == GO_METADATA.len() - 1
    })
    .unwrap_or_else(|e| panic!("after Go's DeleteEndpoint: {e}"));
    assert!(decoded(&ev).iter().all(|e| e.addr != "10.0.0.2:2"));
    // etcd-sd's list sees what Go's List sees.
    let listed = go.list(&target);
    assert_eq!(listed.as_object().unwrap().len(), GO_METADATA.len() - 1);
    assert_eq!(
        client.get_entries(&format!("{target}/")).unwrap().len(),
        GO_METADATA.len() - 1
    );
}

#[test]
fn registrar_of_encoded_endpoint_is_seen_by_go_list_and_watch() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("go-watch");
    let mut watch = go.watch(&target, 60);

    let with_meta = Endpoint::new("127.0.0.1:50051")
        .with_metadata(r#"{"version":"2.0","zone":"a","weight":2.5,"tags":["x","y"],"n":null}"#)
        .unwrap();
    let plain = Endpoint::new("127.0.0.1:50052");
    let k1 = format!("{target}/127.0.0.1:50051");
    let k2 = format!("{target}/127.0.0.1:50052");
    let r1 = registered(&client, &k1, with_meta.encode());
    let r2 = registered(&client, &k2, plain.encode());

    // Go's watch: one Add per key, metadata as the same JSON value.
    let mut adds = Vec::new();
    for _ in 0..10 {
        let Some(line) = watch.next(WAIT) else { break };
        adds.push(json(&line));
        if adds.len() == 2 {
            break;
        }
    }
    assert_eq!(adds.len(), 2, "Go watch updates: {adds:?}");
    adds.sort_by_key(|v| v["key"].as_str().unwrap().to_string());
    assert_eq!(adds[0]["op"], "add");
    assert_eq!(adds[0]["key"], k1.as_str());
    assert_eq!(adds[0]["addr"], "127.0.0.1:50051");
    assert_eq!(
        adds[0]["metadata"],
        json(with_meta.metadata.as_deref().unwrap())
    );
    assert_eq!(adds[1]["op"], "add");
    assert_eq!(adds[1]["addr"], "127.0.0.1:50052");
    assert_eq!(adds[1]["metadata"], Value::Null);

    // Go's List: both, same metadata.
    let listed = go.list(&target);
    assert_eq!(listed[&k1]["Addr"], "127.0.0.1:50051");
    assert_eq!(
        listed[&k1]["Metadata"],
        json(with_meta.metadata.as_deref().unwrap())
    );
    assert_eq!(listed[&k2]["Addr"], "127.0.0.1:50052");
    assert_eq!(listed[&k2]["Metadata"], Value::Null);

    // Deregistering is a Delete for Go.
    r1.deregister().unwrap();
    let line = watch.next(WAIT).expect("Go watch: the Delete");
    let del = json(&line);
    assert_eq!(del["op"], "delete", "{line}");
    assert_eq!(del["key"], k1.as_str());
    let listed = go.list(&target);
    assert_eq!(listed.as_object().unwrap().len(), 1, "{listed}");
    assert!(listed.get(&k2).is_some());
    drop(r2);
    let line = watch.next(WAIT).expect("Go watch: the second Delete");
    assert_eq!(json(&line)["key"], k2.as_str());
}

#[test]
fn grpc_round_robin_follows_registrars_deregistration_and_lease_loss() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("grpc");
    let mut a = go.serve_health();
    let mut b = go.serve_health();
    let (ka, kb) = (
        format!("{target}/{}", a.addr),
        format!("{target}/{}", b.addr),
    );
    let ra = registered(&client, &ka, Endpoint::new(&a.addr).encode());
    let rb = registered(&client, &kb, Endpoint::new(&b.addr).encode());
    let rb_events = rb.events();

    let mut watch = go.watch(&target, 120);
    let mut dialer = go.dial(&target);
    let both = dialer.check_until(20, WAIT, "reach both servers", |c| {
        c.peers.contains(&a.addr) && c.peers.contains(&b.addr)
    });
    eprintln!("round robin over both: {both:?}");

    // Deregister A: the client soon reaches only B.
    ra.deregister().unwrap();
    let only_b = dialer.check_until(10, WAIT, "only B after A deregistered", |c| {
        c.errors == 0 && !c.peers.is_empty() && c.peers.iter().all(|p| *p == b.addr)
    });
    eprintln!("after deregistering A: {only_b:?}");
    assert!(
        a.is_running(),
        "A must still serve: the client left it by itself"
    );

    // Lose B's lease behind etcd-sd's back: the key goes, the Registrar
    // registers again by itself, and the client reaches B again.
    let lease = etcd.revoke_lease_of(&kb);
    eprintln!("revoked lease {lease:x} of {kb}");
    let seen = wait_lost_then_registered(&rb_events, WAIT);
    assert_eq!(
        seen.last().map(|e| e.state),
        Some(RegistrationState::Registered)
    );
    assert_ne!(etcd.lease_of(&kb), lease, "registered under a new lease");
    // Go's resolver saw B go and come back (its watch feeds the dialer too).
    let mut updates = Vec::new();
    for _ in 0..10 {
        let Some(line) = watch.next(WAIT) else { break };
        let v = json(&line);
        if v["key"] == kb.as_str() {
            updates.push(v["op"].as_str().unwrap().to_string());
        }
        if updates.ends_with(&["delete".to_string(), "add".to_string()]) {
            break;
        }
    }
    assert!(
        updates.ends_with(&["delete".to_string(), "add".to_string()]),
        "Go's watch of B: {updates:?}"
    );
    let again = dialer.check_until(10, WAIT, "B again after re-registration", |c| {
        c.errors == 0 && !c.peers.is_empty() && c.peers.iter().all(|p| *p == b.addr)
    });
    eprintln!("after the lease loss and re-registration: {again:?}");
    assert!(b.is_running());
}

/// The caveat the docs give: gRPC-Go 1.33's round_robin, fed by etcd 3.4's
/// resolver, panics on an endpoint whose metadata is a JSON object.
#[test]
fn grpc_go_1_33_crashes_on_object_metadata_as_documented() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("grpc-crash");
    let server = go.serve_health();
    let endpoint = Endpoint::new(&server.addr)
        .with_metadata(r#"{"zone":"a"}"#)
        .unwrap();
    let _r = registered(&client, format!("{target}/a"), endpoint.encode());
    let mut dialer = go.dial(&target);
    let outcome = dialer.check(3);
    match outcome {
        Err(stderr) => assert!(
            stderr.contains("unhashable type"),
            "expected gRPC-Go's panic on object metadata, got: {stderr}"
        ),
        Ok(checks) => panic!(
            "gRPC-Go 1.33 no longer crashes on object metadata ({checks:?}): update the docs"
        ),
    }
    // A string metadata is fine for the same dialer.
    let target = format!("{target}-str");
    let endpoint = Endpoint::new(&server.addr)
        .with_metadata(r#""zone-a""#)
        .unwrap();
    let _r2 = Registrar::new(
        &client,
        Service::new(format!("{target}/a"), endpoint.encode()).with_ttl(short_ttl()),
    );
    _r2.register().unwrap();
    let mut dialer = go.dial(&target);
    dialer.check_until(5, WAIT, "string metadata", |c| {
        c.errors == 0 && c.peers == vec![server.addr.clone(); 5]
    });
}
