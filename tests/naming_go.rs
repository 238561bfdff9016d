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

/// The `etcd-sd` tool against the Go program.
#[cfg(feature = "cli")]
mod cli {
    use std::process::Command;

    use super::*;
    use support::go::Lines;

    const BIN: &str = env!("CARGO_BIN_EXE_etcd-sd");

    fn etcd_sd(etcd: &EtcdServer, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("ETCD_ENDPOINTS")
            .env_remove("ETCD_SD_PASSWORD")
            .arg("--endpoints")
            .arg(etcd.endpoint())
            .args(args);
        cmd
    }

    /// Runs to the end, bounded; (status code, stdout, stderr).
    fn run(cmd: Command) -> (Option<i32>, String, String) {
        let mut lines = Lines::spawn(cmd);
        let status = lines.wait_exit(Duration::from_secs(60));
        let mut out = Vec::new();
        while let Some(l) = lines.next(Duration::from_millis(200)) {
            out.push(l);
        }
        (
            status.and_then(|s| s.code()),
            out.join("\n"),
            lines.stderr(),
        )
    }

    #[test]
    fn cli_register_naming_is_seen_by_go_then_deregistered() {
        let etcd = EtcdServer::start();
        let go = GoPeer::new(&etcd.endpoint());
        let target = target("cli-reg");
        let key = format!("{target}/127.0.0.1:7000");
        let metadata = r#"{"version": "1.2", "weights": [1, 2.5]}"#;
        let mut reg = Lines::spawn(etcd_sd(
            &etcd,
            &[
                "register",
                &key,
                "127.0.0.1:7000",
                "--naming",
                "--metadata",
                metadata,
                "--heartbeat",
                "1s",
                "--ttl",
                "3s",
            ],
        ));
        let mut lines = Vec::new();
        for _ in 0..10 {
            let Some(line) = reg.next(WAIT) else { break };
            let done = line.contains("Registered");
            lines.push(line);
            if done {
                break;
            }
        }
        assert!(
            lines.iter().any(|l| l.contains("Registered")),
            "register: {lines:?}\n{}",
            reg.stderr()
        );
        let listed = go.list(&target);
        assert_eq!(listed[&key]["Addr"], "127.0.0.1:7000", "{listed}");
        assert_eq!(listed[&key]["Metadata"], json(metadata));
        // The value is exactly the library's encoding.
        let want = Endpoint::new("127.0.0.1:7000")
            .with_metadata(metadata)
            .unwrap()
            .encode();
        assert_eq!(etcd.get(&key).as_deref(), Some(want.as_str()));

        // SIGINT deregisters: Go's List no longer has it.
        let pid = reg.pid().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let status = reg.wait_exit(WAIT).expect("register ends after SIGINT");
        assert!(status.success(), "{status:?}: {}", reg.stderr());
        let listed = go.list(&target);
        assert_eq!(listed.as_object().unwrap().len(), 0, "{listed}");

        // Bad metadata, or --metadata without --naming: usage errors.
        let (code, _, err) = run(etcd_sd(
            &etcd,
            &["register", &key, "a:1", "--naming", "--metadata", "{bad"],
        ));
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--metadata") && err.contains("not valid JSON"),
            "{err}"
        );
        let (code, _, err) = run(etcd_sd(
            &etcd,
            &["register", &key, "a:1", "--metadata", "{}"],
        ));
        assert_eq!(code, Some(2), "{err}");
        assert!(etcd.get(&key).is_none());
    }

    #[test]
    fn cli_list_and_watch_decode_go_endpoints() {
        let etcd = EtcdServer::start();
        let go = GoPeer::new(&etcd.endpoint());
        let target = target("cli-list");
        go.add(&target, &format!("{target}/a"), "10.0.0.1:1", None);
        let meta = r#"{"zone":"eu-1","n":12345678901234567890,"f":1.50}"#;
        go.add(&target, &format!("{target}/b"), "10.0.0.2:2", Some(meta));
        etcd.put(&format!("{target}/c"), "http://plain\nvalue");
        let prefix = format!("{target}/");

        let (code, out, err) = run(etcd_sd(&etcd, &["list", &prefix]));
        assert_eq!(code, Some(0), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], "addr=10.0.0.1:1 metadata=null");
        let shown = lines[1]
            .strip_prefix("addr=10.0.0.2:2 metadata=")
            .expect(lines[1]);
        assert_eq!(json(shown), json(meta));
        // Go writes numbers as it read them (json.Number): kept as written.
        assert!(
            shown.contains("12345678901234567890") && shown.contains("1.50"),
            "{shown}"
        );
        assert_eq!(lines[2], r"http://plain\nvalue");

        let (code, out, err) = run(etcd_sd(&etcd, &["list", &prefix, "--json"]));
        assert_eq!(code, Some(0), "{err}");
        let v = json(&out);
        let items = v.as_array().expect("an array");
        assert_eq!(items.len(), 3, "{out}");
        assert_eq!(items[0]["addr"], "10.0.0.1:1");
        assert_eq!(items[0]["metadata"], Value::Null);
        assert_eq!(
            Endpoint::decode(items[0]["value"].as_str().unwrap()).unwrap(),
            Endpoint::new("10.0.0.1:1")
        );
        assert_eq!(items[1]["addr"], "10.0.0.2:2");
        assert_eq!(items[1]["metadata"], json(meta));
        assert_eq!(items[2], "http://plain\nvalue");

        // watch --json: structured, then Go's DeleteEndpoint.
        let mut watch = Lines::spawn(etcd_sd(&etcd, &["watch", &prefix, "--json"]));
        let first = watch
            .next(WAIT)
            .unwrap_or_else(|| panic!("watch: {}", watch.stderr()));
        let ev = json(&first);
        assert_eq!(ev["error"], Value::Null);
        let instances = ev["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 3, "{first}");
        // Instances are sorted by value: the plain one first.
        assert_eq!(instances[0], "http://plain\nvalue");
        assert_eq!(instances[1]["addr"], "10.0.0.1:1");
        assert_eq!(instances[2]["addr"], "10.0.0.2:2");
        assert_eq!(instances[2]["metadata"], json(meta));
        go.delete(&target, &format!("{target}/b"));
        let next = watch.next(WAIT).expect("watch: the delete");
        let ev = json(&next);
        let instances = ev["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 2, "{next}");
        assert_eq!(instances[0], "http://plain\nvalue");
        assert_eq!(instances[1]["addr"], "10.0.0.1:1");
        // And plain watch shows the same decoded.
        let mut plain = Lines::spawn(etcd_sd(&etcd, &["watch", &prefix]));
        let mut got = Vec::new();
        for _ in 0..3 {
            match plain.next(WAIT) {
                Some(l) => got.push(l),
                None => break,
            }
        }
        assert!(got[0].ends_with("2 instances"), "{got:?}");
        assert_eq!(got[1], r"  http://plain\nvalue");
        assert_eq!(got[2], "  addr=10.0.0.1:1 metadata=null");
    }
}

/// The C functions against the Go program: `tests/c/naming_go.c`, built
/// against the fresh cdylib and the committed header.
mod c {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use support::go::Lines;

    /// The cdylib built with this test binary (next to it in `deps`, or in
    /// the profile directory).
    fn cdylib_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("deps dir");
        for dir in [deps, deps.parent().expect("profile dir")] {
            if dir.join("libetcd_sd.so").exists() {
                return dir.to_path_buf();
            }
        }
        panic!("libetcd_sd.so not found next to {}", exe.display());
    }

    /// Builds tests/c/naming_go.c into `dir`.
    fn build(dir: &Path) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = cdylib_dir().join("libetcd_sd.so");
        std::os::unix::fs::symlink(&lib, dir.join("libetcd_sd.so.0")).unwrap();
        std::os::unix::fs::symlink(&lib, dir.join("libetcd_sd.so")).unwrap();
        let exe = dir.join("naming_go");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut cmd = Command::new(&cc);
        cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
            .arg(format!("-I{}", root.join("include").display()))
            .arg(root.join("tests/c/naming_go.c"))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", dir.display()))
            .arg("-letcd_sd")
            .arg("-lpthread")
            .arg(format!("-Wl,-rpath,{}", dir.display()));
        let mut build = Lines::spawn(cmd);
        let status = build.wait_exit(Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "{cc} tests/c/naming_go.c: {status:?}\n{}",
            build.stderr()
        );
        exe
    }

    #[test]
    fn c_encode_and_decode_against_go() {
        let etcd = EtcdServer::start();
        let go = GoPeer::new(&etcd.endpoint());
        let dir = tempfile::tempdir().unwrap();
        let exe = build(dir.path());
        let target = target("c");
        let ep = etcd.endpoint();

        // C registers an encoded endpoint: Go's List sees it.
        let key = format!("{target}/c1");
        let metadata = r#"{"lang":"C","v":[1,2.5,"x"]}"#;
        let mut cmd = Command::new(&exe);
        cmd.args(["register", &ep, &key, "127.0.0.1:9001", metadata]);
        let mut reg = Lines::spawn(cmd);
        let first = reg
            .next(WAIT)
            .unwrap_or_else(|| panic!("naming_go register: {}", reg.stderr()));
        assert!(first.starts_with("registered {\"Op\":0"), "{first}");
        let listed = go.list(&target);
        assert_eq!(listed[&key]["Addr"], "127.0.0.1:9001", "{listed}");
        assert_eq!(listed[&key]["Metadata"], json(metadata));

        // Go adds one: C decodes both.
        let go_meta = r#"{"lang":"Go","big":1e300,"s":"caf\u00e9"}"#;
        go.add(
            &target,
            &format!("{target}/go1"),
            "127.0.0.1:9002",
            Some(go_meta),
        );
        go.add(&target, &format!("{target}/go2"), "127.0.0.1:9003", None);
        let mut cmd = Command::new(&exe);
        cmd.args(["list", &ep, &format!("{target}/")]);
        let mut list = Lines::spawn(cmd);
        let status = list.wait_exit(WAIT);
        assert!(status.is_some_and(|s| s.success()), "{}", list.stderr());
        let mut rows = Vec::new();
        while let Some(l) = list.next(Duration::from_millis(500)) {
            rows.push(l);
        }
        assert_eq!(rows.len(), 3, "{rows:?}");
        let row = |i: usize| rows[i].split_once('\t').expect("ADDR\tMETADATA");
        assert_eq!(row(0).0, "127.0.0.1:9001");
        assert_eq!(row(0).1, metadata, "C's own metadata comes back as written");
        assert_eq!(row(1).0, "127.0.0.1:9002");
        assert_eq!(json(row(1).1), json(go_meta));
        assert_eq!(row(2), ("127.0.0.1:9003", "-"));

        // Closing its stdin deregisters (revokes at once): Go's List loses it.
        reg.close_stdin();
        let status = reg.wait_exit(WAIT);
        assert!(status.is_some_and(|s| s.success()), "{}", reg.stderr());
        assert_eq!(reg.next(WAIT).as_deref(), Some("deregistered"));
        let listed = go.list(&target);
        assert!(listed.get(&key).is_none(), "{listed}");
    }
}
