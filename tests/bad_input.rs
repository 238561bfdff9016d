//! Bad input, table-driven, for the public Rust API: empty, very long (1 MiB)
//! and NUL-containing strings as keys, values and prefixes; empty and
//! malformed endpoint lists; zero and huge (`Duration::MAX`) durations in
//! `ClientOptions` and `TtlOption`; the prefixes `""` and `"/"`.
//!
//! Each row must end in a clear error of the right kind or in documented
//! behaviour: never a panic, never a hang (every row runs on its own thread
//! under a 30 s watchdog), never a lost registration. All rows of a table
//! run, and the failures are reported together.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::lb::{self, Balancer, Endpoint};
use etcd_sd::sd::{Closer, Endpointer, EndpointerOptions};
use etcd_sd::{
    BoxError, CallbackId, Client, ClientOptions, ErrorKind, Event, Instancer, Instances, Registrar,
    RegistrationState as S, Result, Service, TtlOption,
};
use support::api::*;
use support::{ms, secs, unique_prefix, EtcdServer};

const WATCHDOG: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

/// One row: a name and a check that returns what went wrong, if anything.
type Row = (
    String,
    Box<dyn FnOnce() -> std::result::Result<(), String> + Send>,
);

fn row(
    name: impl Into<String>,
    f: impl FnOnce() -> std::result::Result<(), String> + Send + 'static,
) -> Row {
    (name.into(), Box::new(f))
}

/// Runs every row at once, each on its own thread, and fails with the list
/// of rows that failed, panicked or did not finish within the watchdog.
fn run_table(table: &str, rows: Vec<Row>) {
    let started = Instant::now();
    let mut pending = Vec::new();
    for (name, f) in rows {
        let (tx, rx) = etcd_sd::channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name(format!("row {name}"))
            .spawn(move || {
                let _ = tx.send(f());
            })
            .unwrap();
        pending.push((name, rx, handle));
    }
    let mut failures = Vec::new();
    let n = pending.len();
    for (name, rx, handle) in pending {
        let left = (started + WATCHDOG).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {
                let _ = handle.join();
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                failures.push(format!("{name}: {e}"));
            }
            Err(etcd_sd::channel::RecvTimeoutError::Timeout) => {
                // Left running: the thread is hung.
                failures.push(format!("{name}: HUNG (no answer within {WATCHDOG:?})"));
            }
            Err(etcd_sd::channel::RecvTimeoutError::Disconnected) => {
                let msg = match handle.join() {
                    Err(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                    Ok(()) => String::new(),
                };
                failures.push(format!("{name}: PANICKED: {msg}"));
            }
        }
    }
    eprintln!(
        "{table}: {n} rows in {:?}, {} failed",
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{table}: {failures:#?}");
}

/// `r` must be an error of one of `kinds`.
fn want_err<T: std::fmt::Debug>(
    r: Result<T>,
    kinds: &[ErrorKind],
) -> std::result::Result<(), String> {
    match r {
        Ok(v) => Err(format!(
            "Ok({}) where an error of {kinds:?} was expected",
            short(&format!("{v:?}"))
        )),
        Err(e) if kinds.contains(&e.kind()) => {
            if e.to_string().is_empty() {
                Err("an error without a message".into())
            } else {
                Ok(())
            }
        }
        Err(e) => Err(format!(
            "kind {:?} (want {kinds:?}): {}",
            e.kind(),
            short(&e.to_string())
        )),
    }
}

/// Shortens very long texts (1 MiB inputs echoed in messages).
fn short(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &s[..end], s.len())
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        dial_timeout: secs(2),
        request_timeout: secs(3),
        ..Default::default()
    }
}

fn long(prefix: &str, fill: char, len: usize) -> String {
    let mut s = String::with_capacity(len + prefix.len());
    s.push_str(prefix);
    while s.len() < prefix.len() + len {
        s.push(fill);
    }
    s
}

// ---------------------------------------------------------------------------

#[test]
fn connect_rejects_malformed_endpoint_lists() {
    let endpoints: Vec<(&str, Vec<String>)> = vec![
        ("no endpoint", vec![]),
        ("empty string", vec!["".into()]),
        ("scheme only", vec!["http://".into()]),
        ("https scheme only", vec!["https://".into()]),
        ("port not a number", vec!["host:notaport".into()]),
        ("port 0", vec!["127.0.0.1:0".into()]),
        ("port too large", vec!["127.0.0.1:65536".into()]),
        ("negative port", vec!["127.0.0.1:-1".into()]),
        ("no port", vec!["127.0.0.1".into()]),
        ("slash", vec!["/".into()]),
        ("blank", vec![" ".into()]),
        ("NUL", vec!["\0".into()]),
        ("NUL in host", vec!["127.0.0.1\0:2379".into()]),
        ("NUL in port", vec!["127.0.0.1:23\u{0}79".into()]),
        ("path after port", vec!["http://127.0.0.1:2379/v3".into()]),
        ("1 MiB port", vec![long("127.0.0.1:", '9', MIB)]),
        (
            "1 MiB of slashes",
            vec![long("http://127.0.0.1:2379", '/', MIB)],
        ),
        ("unknown scheme", vec!["unix:///tmp/etcd.sock".into()]),
        (
            "one good, one bad",
            vec!["127.0.0.1:2379".into(), "host:notaport".into()],
        ),
        (
            "http:// with TLS files",
            vec!["http://127.0.0.1:2379".into()],
        ),
    ];
    let rows = endpoints
        .into_iter()
        .map(|(name, eps)| {
            row(format!("connect({name})"), move || {
                let mut o = opts();
                if name == "http:// with TLS files" {
                    o.ca_cert = Some("/nonexistent/ca.pem".into());
                }
                let t = Instant::now();
                let r = Client::connect(&eps, o);
                want_err(r, &[ErrorKind::InvalidArgument])?;
                // Found without dialing anything.
                if t.elapsed() > secs(2) {
                    return Err(format!("took {:?}", t.elapsed()));
                }
                Ok(())
            })
        })
        .collect();
    run_table("endpoints", rows);
}

#[test]
fn connect_with_zero_tiny_and_huge_durations() {
    let etcd = EtcdServer::start();
    let ep = etcd.endpoint();
    let dead = format!("127.0.0.1:{}", support::free_port());
    let d = |dial: Duration, keep: Duration, req: Duration| ClientOptions {
        dial_timeout: dial,
        dial_keep_alive: keep,
        request_timeout: req,
        ..Default::default()
    };
    let z = Duration::ZERO;
    let max = Duration::MAX;
    let tiny = Duration::from_nanos(1);
    let cases: Vec<(&str, ClientOptions)> = vec![
        ("all zero (defaults)", d(z, z, z)),
        ("dial_timeout MAX", d(max, z, z)),
        ("dial_keep_alive MAX", d(z, max, z)),
        ("request_timeout MAX", d(z, z, max)),
        ("all MAX", d(max, max, max)),
        ("all 1 ns", d(tiny, tiny, tiny)),
        ("dial_keep_alive 1 ns", d(z, tiny, z)),
        ("request_timeout 1 ns", d(z, z, tiny)),
        (
            "huge but not MAX",
            d(secs(u64::MAX / 4), secs(u64::MAX / 4), secs(u64::MAX / 4)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, o) in cases {
        let ep = ep.clone();
        let o2 = o.clone();
        // Against a live etcd: connect and use it, or refuse the options
        // clearly (a 1 ns timeout may also time out).
        rows.push(row(
            format!("live etcd, {name}"),
            move || match Client::connect(&[ep.as_str()], o) {
                Ok(c) => {
                    match c.get_entries("/bad-input-durations/") {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Timeout && name.contains("1 ns") => {}
                        Err(e) => return Err(format!("connected, then get_entries: {e}")),
                    }
                    let p = unique_prefix("durations");
                    let reg = Registrar::new(&c, Service::new(format!("{p}k"), "v"));
                    match reg.register() {
                        Ok(()) => reg.deregister().map_err(|e| format!("deregister: {e}"))?,
                        Err(e) if e.kind() == ErrorKind::Timeout && name.contains("1 ns") => {}
                        Err(e) => return Err(format!("register: {e}")),
                    }
                    drop(reg);
                    drop(c);
                    Ok(())
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidArgument => Ok(()),
                    ErrorKind::Timeout if name.contains("1 ns") => Ok(()),
                    k => Err(format!("connect: {k:?}: {e}")),
                },
            },
        ));
        // Against nobody: a clear error, in bounded time, whatever the
        // durations (a "forever" dial is a hang).
        let dead = dead.clone();
        rows.push(row(format!("dead endpoint, {name}"), move || {
            want_err(
                Client::connect(&[dead.as_str()], o2),
                &[
                    ErrorKind::Unavailable,
                    ErrorKind::Timeout,
                    ErrorKind::InvalidArgument,
                ],
            )
        }));
    }
    // A password needs a user; a user on an etcd without auth is refused
    // clearly; NUL and 1 MiB user names are no problem for the API.
    let users: Vec<UserRow> = vec![
        (
            "password without user",
            None,
            Some("pw".into()),
            &[ErrorKind::InvalidArgument],
        ),
        (
            "user on an etcd without auth",
            Some("root".into()),
            Some("pw".into()),
            &[ErrorKind::Auth, ErrorKind::Etcd, ErrorKind::InvalidArgument],
        ),
        (
            "empty user",
            Some(String::new()),
            Some(String::new()),
            &[ErrorKind::Auth, ErrorKind::Etcd, ErrorKind::InvalidArgument],
        ),
        (
            "NUL in user",
            Some("ro\0ot".into()),
            Some("p\0w".into()),
            &[ErrorKind::Auth, ErrorKind::Etcd, ErrorKind::InvalidArgument],
        ),
        (
            "1 MiB user",
            Some(long("u", 'u', MIB)),
            Some(long("p", 'p', MIB)),
            &[ErrorKind::Auth, ErrorKind::Etcd, ErrorKind::InvalidArgument],
        ),
    ];
    for (name, username, password, kinds) in users {
        let ep = etcd.endpoint();
        rows.push(row(format!("credentials: {name}"), move || {
            let o = ClientOptions {
                username,
                password,
                ..opts()
            };
            match Client::connect(&[ep.as_str()], o) {
                // etcd without auth may ignore credentials: then it must work.
                Ok(c) => c
                    .get_entries("/bad-input-users/")
                    .map(|_| ())
                    .map_err(|e| format!("connected, then get_entries: {e}")),
                Err(e) if kinds.contains(&e.kind()) => Ok(()),
                Err(e) => Err(format!(
                    "kind {:?} (want {kinds:?}): {}",
                    e.kind(),
                    short(&e.to_string())
                )),
            }
        }));
    }
    run_table("durations and credentials", rows);
}

#[test]
fn reads_and_watches_with_bad_prefixes() {
    let etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], opts()).unwrap();
    let base = unique_prefix("bad-prefix");
    etcd.put(&format!("{base}k"), "v");
    let prefixes: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("slash", "/".into()),
        ("NUL", "\0".into()),
        ("NUL inside", format!("{base}a\0b")),
        ("no trailing slash", base.trim_end_matches('/').to_string()),
        ("1 MiB", long(&base, 'x', MIB)),
        ("1 MiB of NULs", long(&base, '\0', MIB)),
        ("all 0xff-ish", "\u{10FFFF}\u{10FFFF}".into()),
    ];
    let mut rows = Vec::new();
    for (name, prefix) in prefixes {
        let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
        let (p1, p2, p3) = (prefix.clone(), prefix.clone(), prefix);
        let base1 = base.clone();
        rows.push(row(format!("get_entries({name})"), move || {
            let r = c1.get_entries(&p1);
            match name {
                "empty" => want_err(r, &[ErrorKind::InvalidArgument]),
                "slash" => match r {
                    Ok(v) if v.contains(&"v".to_string()) => Ok(()),
                    other => Err(format!("{:?}", other.map(|v| v.len()))),
                },
                "no trailing slash" => match r {
                    Ok(v) if v == ["v"] => Ok(()),
                    other => Err(format!("{other:?} under {base1:?} without its slash")),
                },
                // Too large for etcd, or simply nothing there.
                "1 MiB" | "1 MiB of NULs" => match r {
                    Ok(v) if v.is_empty() => Ok(()),
                    other => want_err(other, &[ErrorKind::Etcd, ErrorKind::InvalidArgument]),
                },
                _ => match r {
                    Ok(v) if v.is_empty() => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            }
        }));
        rows.push(row(format!("watch_prefix({name})"), move || {
            let r = c2.watch_prefix(&p2);
            match name {
                "empty" => want_err(r, &[ErrorKind::InvalidArgument]),
                _ => match r {
                    // The go-kit sentinel comes at once, whatever happens to
                    // the watch itself.
                    Ok(rx) => rx
                        .recv_timeout(secs(2))
                        .map_err(|e| format!("no sentinel: {e:?}")),
                    Err(e) => want_err::<()>(Err(e), &[ErrorKind::InvalidArgument]),
                },
            }
        }));
        rows.push(row(format!("Instancer::new({name})"), move || {
            let r = Instancer::new(&c3, &p3);
            match name {
                "empty" => want_err(r.map(|_| ()), &[ErrorKind::InvalidArgument]),
                "1 MiB" | "1 MiB of NULs" => match r {
                    Ok(i) => {
                        i.stop();
                        Ok(())
                    }
                    Err(e) => {
                        want_err::<()>(Err(e), &[ErrorKind::Etcd, ErrorKind::InvalidArgument])
                    }
                },
                _ => {
                    let i = r.map_err(|e| format!("{e}"))?;
                    let cur = i.current();
                    if cur.err.is_some() {
                        return Err(describe(&cur));
                    }
                    i.stop();
                    i.stop();
                    match i.current().err.map(|e| e.kind()) {
                        Some(ErrorKind::Closed) => Ok(()),
                        k => Err(format!("after stop: {k:?}")),
                    }
                }
            }
        }));
    }
    run_table("prefixes", rows);
    // The client is still fine afterwards.
    assert_eq!(client.get_entries(&base).unwrap(), strs(&["v"]));
}

/// How a registration row is made.
#[derive(Clone, Copy, Debug)]
enum Via {
    Registrar,
    Client,
}

#[test]
fn registrations_with_bad_keys_values_and_ttls() {
    let etcd = Arc::new(EtcdServer::start());
    let client = Client::connect(&[etcd.endpoint()], opts()).unwrap();
    let p = unique_prefix("bad-svc");
    let max = Duration::MAX;
    let z = Duration::ZERO;
    let tiny = Duration::from_nanos(1);
    let mut cases: Vec<ServiceRow> = vec![
        (
            "empty key".into(),
            String::new(),
            "v".into(),
            None,
            &[ErrorKind::NoKey],
        ),
        (
            "empty key and value".into(),
            String::new(),
            String::new(),
            None,
            &[ErrorKind::NoKey],
        ),
        (
            "empty value".into(),
            format!("{p}ev"),
            String::new(),
            None,
            &[ErrorKind::NoValue],
        ),
        (
            "NUL in key and value".into(),
            format!("{p}nul\0key"),
            "v\0al".into(),
            None,
            &[],
        ),
        (
            "NUL only value".into(),
            format!("{p}nulval"),
            "\0".into(),
            None,
            &[],
        ),
        (
            "1 MiB key".into(),
            long(&format!("{p}long-key-"), 'k', MIB),
            "long-key:1".into(),
            None,
            &[],
        ),
        (
            "1 MiB value".into(),
            format!("{p}long-value"),
            long("long-value:", 'v', MIB),
            None,
            &[],
        ),
        (
            "1 MiB key and 1 MiB value (over etcd's request limit)".into(),
            long(&format!("{p}too-large-"), 'k', MIB),
            long("too-large:", 'v', MIB),
            None,
            &[ErrorKind::Etcd, ErrorKind::InvalidArgument],
        ),
    ];
    for (name, hb, ttl) in [
        ("TtlOption(MAX, MAX)", max, max),
        ("TtlOption(0, MAX)", z, max),
        ("TtlOption(MAX, 0)", max, z),
        ("TtlOption(1 ns, 1 ns)", tiny, tiny),
        ("TtlOption(0, 0)", z, z),
        ("TtlOption(1 s, MAX)", secs(1), max),
    ] {
        cases.push((
            name.to_string(),
            format!("{p}{}", name.replace([' ', ',', '(', ')'], "_")),
            // Rows run at once and are told apart by their values.
            format!("ttl:{}", name.replace(' ', "")),
            Some(TtlOption::new(hb, ttl)),
            &[],
        ));
    }
    let mut rows = Vec::new();
    for via in [Via::Registrar, Via::Client] {
        for (name, key, value, ttl, kinds) in cases.clone() {
            let client = client.clone();
            let etcd = etcd.clone();
            let key = match via {
                Via::Registrar => key,
                // A key of its own, so both rows can run at once.
                Via::Client if key.is_empty() => key,
                Via::Client if key.len() > 1000 => key.replacen("bad-svc", "bad-svc-c", 1),
                Via::Client => format!("{key}-c"),
            };
            // A value of its own too: rows run at once and are told apart by
            // their values.
            let value = if value.is_empty() {
                value
            } else {
                format!("{value}-{via:?}")
            };
            rows.push(row(format!("{via:?}: {name}"), move || {
                let mut svc = Service::new(key.clone(), value.clone());
                if let Some(t) = ttl {
                    svc = svc.with_ttl(t);
                }
                registration_row(&client, &etcd, via, svc, kinds)
            }));
        }
    }
    run_table("services", rows);
}

/// Registers `svc` via `via`; an expected error must come within
/// request_timeout plus a margin; a registration that works must still be
/// there a few heartbeats later, readable, and gone right after deregister.
fn registration_row(
    client: &Client,
    etcd: &EtcdServer,
    via: Via,
    svc: Service,
    kinds: &[ErrorKind],
) -> std::result::Result<(), String> {
    let key = svc.key.clone();
    let printable = !key.contains('\0') && key.len() < 1000;
    let t = Instant::now();
    let registrar = match via {
        Via::Registrar => Some(Registrar::new(client, svc.clone())),
        Via::Client => None,
    };
    let r = match &registrar {
        Some(reg) => reg.register(),
        None => client.register(&svc),
    };
    let took = t.elapsed();
    if !kinds.is_empty() {
        want_err(r, kinds)?;
        if took > secs(6) {
            return Err(format!("error after {took:?}"));
        }
        // Stopping it is fine (and quick) too.
        let t = Instant::now();
        let r = match &registrar {
            Some(reg) => reg.deregister(),
            None if key.is_empty() => want_err(client.deregister(&svc), &[ErrorKind::NoKey])
                .map_err(|e| etcd_sd::Error::new(ErrorKind::Etcd, e)),
            None => client.deregister(&svc),
        };
        r.map_err(|e| format!("deregister after a failed register: {e}"))?;
        if t.elapsed() > secs(6) {
            return Err(format!("deregister took {:?}", t.elapsed()));
        }
        return Ok(());
    }
    r.map_err(|e| format!("register: {:?}: {}", e.kind(), short(&e.to_string())))?;
    // Still there after a few heartbeats (the shortest ttl here is 2 s).
    std::thread::sleep(ms(3500));
    if let Some(reg) = &registrar {
        if reg.state() != S::Registered {
            return Err(format!("state {:?} 3.5 s after register", reg.state()));
        }
    }
    let prefix_of_key = &key[..key.len().min(40)];
    let values = client
        .get_entries(prefix_of_key)
        .map_err(|e| format!("get_entries: {e}"))?;
    if !values.contains(&svc.value) {
        return Err(format!(
            "value not in etcd 3.5 s after register: {} values under the key",
            values.len()
        ));
    }
    if printable && !etcd.exists(&key) {
        return Err("key not in etcd (etcdctl)".into());
    }
    let t = Instant::now();
    match &registrar {
        Some(reg) => reg.deregister(),
        None => client.deregister(&svc),
    }
    .map_err(|e| format!("deregister: {:?}: {e}", e.kind()))?;
    if t.elapsed() > secs(6) {
        return Err(format!("deregister took {:?}", t.elapsed()));
    }
    let values = client
        .get_entries(prefix_of_key)
        .map_err(|e| format!("get_entries: {e}"))?;
    if values.contains(&svc.value) {
        return Err("still in etcd after deregister (lease not revoked)".into());
    }
    Ok(())
}

#[test]
fn instancer_subscriptions_with_odd_arguments() {
    let etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], opts()).unwrap();
    let p = unique_prefix("bad-inst");
    etcd.put(&format!("{p}a"), "a:1");
    let inst = Arc::new(Instancer::new(&client, &p).unwrap());
    let other = Arc::new(Instancer::new(&client, &p).unwrap());
    let mut rows = Vec::new();
    let (i1, o1) = (inst.clone(), other.clone());
    rows.push(row(
        "remove_callback of another instancer's id",
        move || {
            let id = o1.on_update(|_: &Event| {});
            i1.remove_callback(id);
            i1.remove_callback(id);
            o1.remove_callback(id);
            o1.remove_callback(id);
            Ok(())
        },
    ));
    let i2 = inst.clone();
    rows.push(row("remove_callback of a made-up id", move || {
        // Ids are opaque; the only way to get a foreign one is from another
        // instancer, or a stale one from a removed callback.
        let id: CallbackId = i2.on_update(|_: &Event| {});
        i2.remove_callback(id);
        i2.remove_callback(id);
        Ok(())
    }));
    let i3 = inst.clone();
    rows.push(row("deregister of a sender never registered", move || {
        let (tx, _rx) = etcd_sd::channel::unbounded::<Event>();
        i3.deregister(&tx);
        i3.deregister(&tx);
        Ok(())
    }));
    let i4 = inst.clone();
    rows.push(row("register a zero-capacity channel", move || {
        // Nobody ever receives: it must be skipped, not waited on.
        let (tx, rx) = etcd_sd::channel::bounded::<Event>(0);
        i4.register(tx.clone());
        let cur = i4.current();
        i4.deregister(&tx);
        drop(rx);
        if cur.err.is_some() || instances(&cur) != strs(&["a:1"]) {
            return Err(describe(&cur));
        }
        Ok(())
    }));
    let i5 = inst.clone();
    rows.push(row("register a sender whose receiver is gone", move || {
        let (tx, rx) = etcd_sd::channel::bounded::<Event>(1);
        drop(rx);
        i5.register(tx);
        Ok(())
    }));
    let c6 = client.clone();
    let p6 = p.clone();
    rows.push(row("every call on a stopped instancer", move || {
        let i = Instancer::new(&c6, &p6).map_err(|e| e.to_string())?;
        i.stop();
        let rx = i.subscribe();
        let ev = rx
            .recv_timeout(secs(1))
            .map_err(|e| format!("subscribe after stop: {e:?}"))?;
        if ev.err.as_ref().map(|e| e.kind()) != Some(ErrorKind::Closed) {
            return Err(format!("subscribe after stop: {}", describe(&ev)));
        }
        let (tx, rx2) = etcd_sd::channel::bounded::<Event>(4);
        i.register(tx.clone());
        i.deregister(&tx);
        let _ = rx2.try_recv();
        let id = i.on_update(|_: &Event| {});
        i.remove_callback(id);
        i.stop();
        Ok(())
    }));
    rows.push(row("Instances edge cases", || {
        let empty = Instances::default();
        if empty.get(usize::MAX).is_some()
            || empty.get(0).is_some()
            || empty.contains("")
            || empty.contains("\0")
            || !empty.is_empty()
            || empty.iter().count() != 0
            || !empty.to_vec().is_empty()
            || (&empty).into_iter().count() != 0
        {
            return Err("empty Instances misbehaves".into());
        }
        Ok(())
    }));
    let i8 = inst.clone();
    rows.push(row(
        "Instances of a live instancer, out of range",
        move || {
            let cur = i8.current().instances;
            if cur.get(cur.len()).is_some() || cur.get(usize::MAX).is_some() {
                return Err("get past the end".into());
            }
            if !cur.contains("a:1") || cur.contains("a:1\0") || cur.contains("") {
                return Err(format!("contains: {:?}", cur.to_vec()));
            }
            Ok(())
        },
    ));
    run_table("instancer calls", rows);
}

/// (name, username, password, acceptable error kinds)
type UserRow = (
    &'static str,
    Option<String>,
    Option<String>,
    &'static [ErrorKind],
);

/// (name, key, value, ttl, expected error kinds of register; empty = must work)
type ServiceRow = (
    String,
    String,
    String,
    Option<TtlOption>,
    &'static [ErrorKind],
);

/// A balancer that never has an endpoint.
struct Empty;

impl Balancer<Endpoint<u32, u32>> for Empty {
    fn endpoint(&self) -> Result<Endpoint<u32, u32>> {
        Err(etcd_sd::Error::new(ErrorKind::NoEndpoints, "none"))
    }
}

type Made = std::result::Result<(Endpoint<u32, u32>, Option<Closer>), BoxError>;

#[test]
fn endpointers_balancers_and_retries_with_odd_arguments() {
    let etcd = EtcdServer::start();
    let client = Client::connect(&[etcd.endpoint()], opts()).unwrap();
    let p = unique_prefix("bad-lb");
    etcd.put(&format!("{p}a"), "a:1");
    etcd.put(&format!("{p}b"), "");
    let inst = Arc::new(Instancer::new(&client, &p).unwrap());
    let failing = |_: &str| -> Made { Err("factory refuses".into()) };
    let mut rows = Vec::new();
    for (name, invalidate) in [
        ("invalidate_on_error None", None),
        ("invalidate_on_error ZERO", Some(Duration::ZERO)),
        ("invalidate_on_error MAX", Some(Duration::MAX)),
    ] {
        let i = inst.clone();
        rows.push(row(
            format!("Endpointer with a failing factory, {name}"),
            move || {
                let e: Endpointer<Endpoint<u32, u32>> = Endpointer::new(
                    &i,
                    failing,
                    EndpointerOptions {
                        invalidate_on_error: invalidate,
                    },
                );
                let eps = e.endpoints().map_err(|e| e.to_string())?;
                if !eps.is_empty() {
                    return Err(format!("{} endpoints from a failing factory", eps.len()));
                }
                let rr = lb::RoundRobin::new(e.clone());
                want_err(rr.endpoint().map(|_| ()), &[ErrorKind::NoEndpoints])?;
                let r = lb::Random::new(e.clone(), u64::MAX);
                want_err(r.endpoint().map(|_| ()), &[ErrorKind::NoEndpoints])?;
                e.close();
                e.close();
                want_err(e.endpoints().map(|v| v.len()), &[ErrorKind::Closed])?;
                want_err(
                    rr.endpoint().map(|_| ()),
                    &[ErrorKind::Closed, ErrorKind::NoEndpoints],
                )
            },
        ));
    }
    let retries: Vec<(&str, usize, Duration)> = vec![
        ("retry(0, ZERO)", 0, Duration::ZERO),
        ("retry(0, MAX)", 0, Duration::MAX),
        ("retry(3, MAX)", 3, Duration::MAX),
        ("retry(usize::MAX, 300 ms)", usize::MAX, ms(300)),
        ("retry(1, 1 ns)", 1, Duration::from_nanos(1)),
    ];
    for (name, max, timeout) in retries {
        rows.push(row(format!("{name} on an empty balancer"), move || {
            let t = Instant::now();
            let r = lb::retry(max, timeout, Empty).call(1u32);
            match r {
                Ok(v) => Err(format!("Ok({v}) from an empty balancer")),
                Err(e) if t.elapsed() < secs(5) => {
                    if e.to_string().is_empty() {
                        Err("empty message".into())
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(format!("took {:?}: {e}", t.elapsed())),
            }
        }));
    }
    rows.push(row(
        "retry_with_callback(MAX) that gives up at once",
        || {
            let r = lb::retry_with_callback(Duration::MAX, Empty, |_, _| (false, None)).call(1u32);
            match r {
                Err(e) if e.raw.len() == 1 => Ok(()),
                Err(e) => Err(format!("{} raw errors: {e}", e.raw.len())),
                Ok(v) => Err(format!("Ok({v})")),
            }
        },
    ));
    run_table("sd and lb", rows);
}
