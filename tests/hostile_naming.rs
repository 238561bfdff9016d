//! etcd's naming format, tried the way a hostile user in a mixed Go/Rust
//! shop would: random and odd endpoints against the real Go Manager (etcd
//! 3.4's `clientv3/naming/endpoints`, through `tests/go/naming_peer`), values
//! Go's `encoding/json` cannot read, and the CLI on hostile values. A real
//! etcd on loopback; every wait bounded in time and count.

mod support;

use std::time::Duration;

use etcd_sd::naming::Endpoint;
use etcd_sd::{ErrorKind, Instancer};
use serde_json::Value;

use support::api::*;
use support::go::GoPeer;
use support::{unique_prefix, EtcdServer};

const WAIT: Duration = Duration::from_secs(20);

fn target(name: &str) -> String {
    format!("{}svc", unique_prefix(name))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}"))
}

/// `v` with every number as a float64, as Go's `interface{}` holds it.
fn as_go(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::from(n.as_f64().expect("a finite number")),
        Value::Array(a) => Value::Array(a.iter().map(as_go).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), as_go(v))).collect()),
        v => v.clone(),
    }
}

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A string of odd characters: quotes, escapes, controls, ANSI escapes,
    /// separators, non-BMP, the replacement character.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "10.0.0.1:80",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{0}",
            "\u{1b}[31m",
            "\u{7f}",
            "\u{85}",
            "\u{9b}",
            "é",
            "😀",
            "\u{2028}",
            "\u{2029}",
            "\u{fffd}",
            "\u{feff}",
            "<&>",
            " ",
            "/",
            ":",
            "\\u0000",
        ];
        (0..self.below(6)).map(|_| self.pick(PIECES)).collect()
    }

    /// JSON metadata Go reads into the same value (numbers that a float64
    /// holds exactly, so that Go's float64 round trip compares equal).
    fn metadata(&mut self, depth: usize) -> String {
        match self.below(if depth > 3 { 5 } else { 7 }) {
            0 => "null".into(),
            1 => self.pick(&["true", "false"]).into(),
            2 => self
                .pick(&[
                    "0",
                    "-1",
                    "42",
                    "2.5",
                    "-0.125",
                    "1e3",
                    "1E-2",
                    "9007199254740991",
                ])
                .into(),
            3 | 4 => serde_json::to_string(&self.text()).unwrap(),
            5 => {
                let items: Vec<String> = (0..self.below(4))
                    .map(|_| self.metadata(depth + 1))
                    .collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let fields: Vec<String> = (0..self.below(4))
                    .map(|i| {
                        let name = format!("{}{i}", self.text());
                        format!(
                            "{}: {}",
                            serde_json::to_string(&name).unwrap(),
                            self.metadata(depth + 1)
                        )
                    })
                    .collect();
                format!("{{{}}}", fields.join(" ,"))
            }
        }
    }
}

/// Random endpoints (odd addresses, metadata of every JSON type), each
/// registered as `encode()`: Go's Manager lists every one, with the same
/// address and the same metadata value.
#[test]
fn go_manager_reads_every_encoded_endpoint_as_written() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("h-prop");
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut registrars = Vec::new();
    let mut want = Vec::new();
    for i in 0..100 {
        let mut e = Endpoint::new(rng.text());
        if rng.below(4) > 0 {
            e = e.with_metadata(rng.metadata(0)).unwrap();
        }
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e);
        let key = format!("{target}/ep{i}");
        registrars.push(registered(&client, &key, e.encode()));
        want.push((key, e));
    }
    let listed = go.list(&target);
    let listed = listed.as_object().expect("Go's List: an object");
    assert_eq!(listed.len(), want.len(), "Go's List: {listed:?}");
    for (key, e) in &want {
        let got = listed
            .get(key)
            .unwrap_or_else(|| panic!("{key} ({e:?}) missing"));
        assert_eq!(got["Addr"], e.addr.as_str(), "{key}: {e:?}");
        let meta = e.metadata.as_deref().map_or(Value::Null, json);
        assert_eq!(as_go(&got["Metadata"]), as_go(&meta), "{key}: {e:?}");
    }
}

/// The other way: random endpoints that Go's Manager adds reach an
/// Instancer, and `decode` gives the same address and metadata value.
#[test]
fn go_added_random_endpoints_decode_to_what_go_wrote() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("h-go-prop");
    let mut rng = Rng(0x0ddb_a11c_0ffe_e123);
    let mut want = Vec::new();
    for i in 0..25 {
        // argv holds no NUL.
        let addr = format!("{}#{i}", rng.text().replace('\0', ""));
        let metadata = (rng.below(4) > 0).then(|| rng.metadata(0));
        go.add(
            &target,
            &format!("{target}/ep{i}"),
            &addr,
            metadata.as_deref(),
        );
        want.push((addr, metadata));
    }
    let instancer = Instancer::new(&client, &format!("{target}/")).unwrap();
    let rx = instancer.subscribe();
    let ev = recv_until(&rx, WAIT, |ev| {
        ev.err.is_none() && ev.instances.len() == want.len()
    })
    .unwrap_or_else(|e| panic!("all Go endpoints: {e}"));
    let got: Vec<Endpoint> = ev
        .instances
        .iter()
        .map(|v| Endpoint::decode(v).unwrap_or_else(|e| panic!("decode {v:?}: {e}")))
        .collect();
    for (addr, metadata) in &want {
        let e = got
            .iter()
            .find(|e| e.addr == *addr)
            .unwrap_or_else(|| panic!("{addr:?} not in {got:?}"));
        let want_meta = metadata.as_deref().map_or(Value::Null, json);
        let got_meta = e.metadata.as_deref().map_or(Value::Null, json);
        assert_eq!(as_go(&got_meta), as_go(&want_meta), "{addr:?}");
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), *e);
    }
}

/// What Go's `encoding/json` refuses makes Go skip the endpoint entirely,
/// so `with_metadata` (and so the C API and the CLI) refuses it at once.
#[test]
fn metadata_go_cannot_read_is_refused_because_go_skips_it() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("h-go-skip");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let hostile = ["1e400", r#"{"w":-1.8e308}"#, deep.as_str()];
    let mut registrars = Vec::new();
    for (i, m) in hostile.iter().enumerate() {
        let err = Endpoint::new("127.0.0.1:1")
            .with_metadata(*m)
            .expect_err("metadata Go cannot read");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        // Written anyway through the public field: Go skips it.
        let e = Endpoint {
            addr: format!("127.0.0.1:{i}"),
            metadata: Some(m.to_string()),
        };
        registrars.push(registered(&client, format!("{target}/bad{i}"), e.encode()));
    }
    let ok = Endpoint::new("127.0.0.1:9")
        .with_metadata("1.7976931348623157e308")
        .unwrap();
    registrars.push(registered(&client, format!("{target}/ok"), ok.encode()));
    let listed = go.list(&target);
    let listed = listed.as_object().expect("Go's List: an object");
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        [&format!("{target}/ok")],
        "Go's List skips what it cannot read"
    );
    // etcd-sd still decodes all of them.
    let got = client.get_entries(&format!("{target}/")).unwrap();
    assert_eq!(got.len(), hostile.len() + 1);
    assert!(got.iter().all(|v| Endpoint::decode(v).is_ok()));
}

/// An Instancer over a prefix with plain and naming values lists them all;
/// `decode` tells the naming ones apart.
#[test]
fn mixed_prefix_lists_everything_and_decode_tells_them_apart() {
    let etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("h-mixed");
    go.add(
        &target,
        &format!("{target}/go"),
        "10.0.0.1:1",
        Some("\"m\""),
    );
    let _plain = registered(&client, format!("{target}/plain"), "10.0.0.2:2");
    let _json = registered(&client, format!("{target}/json"), r#"{"addr2":"x"}"#);
    let _rust = registered(
        &client,
        format!("{target}/rust"),
        Endpoint::new("10.0.0.3:3").encode(),
    );
    let instancer = Instancer::new(&client, &format!("{target}/")).unwrap();
    let rx = instancer.subscribe();
    let ev = recv_until(&rx, WAIT, |ev| ev.err.is_none() && ev.instances.len() == 4)
        .unwrap_or_else(|e| panic!("four instances: {e}"));
    let mut addrs: Vec<String> = ev
        .instances
        .iter()
        .filter_map(|v| Endpoint::decode(v).ok().map(|e| e.addr))
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["10.0.0.1:1", "10.0.0.3:3"]);
    // Go's Manager reads `{"addr2":"x"}` as an endpoint with an empty
    // address and the plain value not at all; etcd-sd refuses both.
    let listed = go.list(&target);
    assert_eq!(listed.as_object().unwrap().len(), 3, "{listed}");
}

/// A Go gRPC client dialing `etcd:///TARGET` across an etcd restart: it
/// keeps reaching the registered servers, and a Registrar dropped after the
/// restart is left by the client.
#[test]
fn grpc_dialer_across_an_etcd_restart_then_a_dropped_registrar() {
    let mut etcd = EtcdServer::start();
    let go = GoPeer::new(&etcd.endpoint());
    let client = connect(&etcd);
    let target = target("h-grpc-restart");
    let a = go.serve_health();
    let b = go.serve_health();
    let ra = registered(
        &client,
        format!("{target}/a"),
        Endpoint::new(&a.addr)
            .with_metadata("\"a\"")
            .unwrap()
            .encode(),
    );
    let rb = registered(
        &client,
        format!("{target}/b"),
        Endpoint::new(&b.addr).encode(),
    );
    let mut dialer = go.dial(&target);
    dialer.check_until(20, WAIT, "reach both servers", |c| {
        c.peers.contains(&a.addr) && c.peers.contains(&b.addr)
    });

    etcd.restart();
    dialer.check_until(20, WAIT, "both servers after the restart", |c| {
        c.errors == 0 && c.peers.contains(&a.addr) && c.peers.contains(&b.addr)
    });
    drop(rb);
    dialer.check_until(
        10,
        Duration::from_secs(40),
        "only A after B's Registrar dropped",
        |c| c.errors == 0 && !c.peers.is_empty() && c.peers.iter().all(|p| *p == a.addr),
    );
    let listed = go.list(&target);
    assert_eq!(listed.as_object().unwrap().len(), 1, "{listed}");
    drop(ra);
}

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
    fn cli_register_refuses_metadata_go_cannot_read() {
        let etcd = EtcdServer::start();
        let key = format!("{}/a", target("h-cli-1e400"));
        for m in ["1e400", "[-1e999]"] {
            let (code, _, err) = run(etcd_sd(
                &etcd,
                &["register", &key, "a:1", "--naming", "--metadata", m],
            ));
            assert_eq!(code, Some(2), "{m}: {err}");
            assert!(
                err.contains("--metadata") && err.contains("float64"),
                "{err}"
            );
        }
        assert!(etcd.get(&key).is_none());
        // An empty address (`"$ADDR"` unset) is a usage error, as an
        // empty plain value is, not an endpoint Go dials as "".
        let (code, _, err) = run(etcd_sd(&etcd, &["register", &key, "", "--naming"]));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("address is empty"), "{err}");
        assert!(etcd.get(&key).is_none());
    }

    /// Hostile addresses and metadata: `list` prints one line per
    /// instance with no raw control character, and `list --json` and the
    /// first `watch --json` line parse back to the same endpoints.
    #[test]
    fn cli_hostile_values_one_line_each_and_valid_json() {
        let etcd = EtcdServer::start();
        let target = target("h-cli-hostile");
        let prefix = format!("{target}/");
        let endpoints = [
            Endpoint::new("a\nb\u{1b}[2J\u{9b}31m\u{0}\u{2028}c"),
            Endpoint::new("x metadata=y")
                .with_metadata("\"\\u001b[31m\u{2028}\u{85}\\n\"")
                .unwrap(),
            Endpoint::new("\u{feff}")
                .with_metadata("{\"k\\n\":\t[1 ,\n\"\u{2029}\"]}")
                .unwrap(),
        ];
        for (i, e) in endpoints.iter().enumerate() {
            etcd.put(&format!("{prefix}{i}"), &e.encode());
        }
        etcd.put(&format!("{prefix}plain"), "p\r\n\u{1b}]0;title\u{7}");
        // A lone surrogate (Go reads it as U+FFFD): --json stays parseable
        // by strict parsers (serde_json here, jq).
        etcd.put(
            &format!("{prefix}surrogate"),
            r#"{"Addr":"s","Metadata":["\ud800","\udc00x"]}"#,
        );
        let (code, out, err) = run(etcd_sd(&etcd, &["list", &prefix]));
        assert_eq!(code, Some(0), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out:?}");
        for l in &lines {
            assert!(
                !l.chars()
                    .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
                "raw control character in {l:?}"
            );
        }

        let (code, out, err) = run(etcd_sd(&etcd, &["list", &prefix, "--json"]));
        assert_eq!(code, Some(0), "{err}");
        let v = json(&out);
        let items = v.as_array().expect("an array");
        assert_eq!(items.len(), 5, "{out}");
        let mut watch = Lines::spawn(etcd_sd(&etcd, &["watch", &prefix, "--json"]));
        let first = watch
            .next(WAIT)
            .unwrap_or_else(|| panic!("watch: {}", watch.stderr()));
        let ev = json(&first);
        let instances = ev["instances"].as_array().expect("instances");
        assert_eq!(instances.len(), 5, "{first}");
        for set in [items, instances] {
            let s = set.iter().find(|i| i["addr"] == "s").expect("addr s");
            assert_eq!(s["metadata"], serde_json::json!(["\u{fffd}", "\u{fffd}x"]));
            for e in &endpoints {
                let found = set.iter().find(|i| i["addr"] == e.addr.as_str());
                let found = found.unwrap_or_else(|| panic!("{e:?} in {set:?}"));
                let meta = e.metadata.as_deref().map_or(Value::Null, json);
                assert_eq!(found["metadata"], meta, "{e:?}");
                assert_eq!(
                    Endpoint::decode(found["value"].as_str().unwrap()).unwrap(),
                    *e
                );
            }
        }
    }
}
