//! etcd-sd benchmarks, each pair measured side by side in one process against
//! the floor of a plain async `etcd-client` doing the same thing.
//!
//! `cargo bench --bench bench` (or `make bench`) runs everything and rewrites
//! `BENCHMARKS.md`; `BENCH_QUICK=1` (`make bench-quick`) runs a small version
//! that prints the report without writing it.
//!
//! Each run starts its own etcd on 127.0.0.1 (binary from `ETCD_BIN`).
//! Sections 4 (load balancing) and 5 (the C API) live in `benches/bench/`,
//! as does the SVG latency chart that full runs write to `docs/latency.svg`.
//! `BENCH_ONLY=lb,ffi` runs only the named sections (`propagation`, `scale`,
//! `registrations`, `lb`, `ffi`), e.g. under `perf`, and writes nothing.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "bench/chart.rs"]
mod chart;
#[path = "bench/ffi.rs"]
mod ffi;
#[path = "bench/lb.rs"]
mod lb;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::channel as cb;
use etcd_sd::{Client, ClientOptions, Event, Instancer, Registrar, Service, TtlOption};

const WAIT: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command
    // line. `cargo test --all-targets` runs this binary too, without it (and
    // unoptimized): measure nothing then, and write nothing.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: run by `make bench` (cargo bench); nothing to do under cargo test");
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v == "1");
    let started = Instant::now();
    let load_start = load_average();
    let mut etcd = support::EtcdServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let raw = rt
        .block_on(etcd_client::Client::connect([etcd.endpoint_url()], None))
        .expect("raw etcd-client connects");
    let mut report = Report::new(quick, &etcd);

    // `BENCH_ONLY=lb,ffi` (any of propagation, scale, registrations, lb, ffi)
    // runs only those sections, e.g. under a profiler; nothing is written then.
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |section: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == section))
    };

    let ops = if quick { 100 } else { 2_000 };
    let latencies = run("propagation").then(|| propagation(&rt, &raw, &etcd, ops, &mut report));
    let sizes: &[usize] = if quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000, 100_000]
    };
    let churn = if quick { 200 } else { 1_000 };
    if run("scale") {
        scale(&rt, &raw, &etcd, sizes, churn, &mut report);
    }
    if run("registrations") {
        registrations(&mut etcd, if quick { 100 } else { 1_000 }, &mut report);
    }
    if run("lb") {
        lb::load_balancing(&rt, &raw, &etcd, quick, &mut report);
    }
    if run("ffi") {
        ffi::ffi(&rt, &raw, &etcd, quick, &mut report);
    }

    let text = report.finish(started.elapsed(), &load_start, &load_average());
    println!("{text}");
    if let (false, None, Some(latencies)) = (quick, &only, latencies) {
        std::fs::write("BENCHMARKS.md", &text).expect("write BENCHMARKS.md");
        eprintln!("wrote BENCHMARKS.md");
        let svg = chart::cdf_svg(
            &format!(
                "Propagation latency: etcd write → subscriber ({} operations each, same process)",
                latencies.put_ours.0.len()
            ),
            &[
                chart::Series::new("ours: put → Event", &latencies.put_ours.0, 0, false),
                chart::Series::new("floor: put → raw watch", &latencies.put_floor.0, 0, true),
                chart::Series::new("ours: delete → Event", &latencies.del_ours.0, 1, false),
                chart::Series::new("floor: delete → raw watch", &latencies.del_floor.0, 1, true),
            ],
        );
        std::fs::create_dir_all("docs").expect("docs/");
        std::fs::write("docs/latency.svg", svg).expect("write docs/latency.svg");
        eprintln!("wrote docs/latency.svg");
    }
    eprintln!("bench ran for {:.0} s", started.elapsed().as_secs_f64());
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------- statistics

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
        v[i]
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------- report

struct Report {
    out: String,
}

impl Report {
    fn new(quick: bool, etcd: &support::EtcdServer) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let version = etcd
            .try_etcdctl(&["version"])
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Generated by `{}` on {cores} cores ({cpu}), etcd server: {}, {version}. \
             Every latency pair below comes from the same operations in the same process: \
             \"ours\" is the etcd-sd path, \"floor\" a plain async `etcd-client` doing the same \
             over its own connection to the same etcd.\n",
            if quick {
                "make bench-quick"
            } else {
                "make bench"
            },
            etcd_version(etcd),
        );
        Report { out }
    }

    fn section(&mut self, title: &str, text: &str) {
        let _ = writeln!(self.out, "## {title}\n\n{text}");
    }

    fn finish(mut self, took: Duration, load_start: &str, load_end: &str) -> String {
        let _ = writeln!(
            self.out,
            "## How this was run\n\n\
             `make bench` (= `cargo bench --bench bench`) rewrites this file and `docs/latency.svg`; \
             `make bench-quick` (= `BENCH_QUICK=1 cargo bench --bench bench`) runs smaller sizes and \
             only prints. Each run starts its own etcd on 127.0.0.1 and talks to nothing else. \
             This run took {:.0} s (after compiling). Load average (1, 5, 15 min) at the \
             start: {load_start}; at the end: {load_end}. The machine is shared: other processes \
             (test suites, builds) may have been running, so treat single-digit-percent \
             differences as noise.",
            took.as_secs_f64(),
        );
        self.out
    }
}

fn etcd_version(etcd: &support::EtcdServer) -> String {
    etcd.try_etcdctl(&["endpoint", "status", "-w", "simple"])
        .ok()
        .and_then(|s| s.split(", ").nth(2).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------- helpers

/// A raw watch on `prefix` that timestamps every event, per key.
fn raw_watch(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    prefix: &str,
) -> cb::Receiver<(String, Instant)> {
    let (tx, rx) = cb::unbounded();
    let mut watch = raw.watch_client();
    let prefix = prefix.to_owned();
    let (ready_tx, ready_rx) = cb::bounded(1);
    rt.spawn(async move {
        let opts = etcd_client::WatchOptions::new().with_prefix();
        let mut stream = watch.watch(prefix, Some(opts)).await.expect("raw watch");
        let _ = ready_tx.send(());
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    if tx.send((key, now)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    ready_rx.recv_timeout(WAIT).expect("raw watch ready");
    rx
}

/// Timestamps every Event of `instancer` on a thread of its own.
fn timed_events(instancer: &Instancer) -> cb::Receiver<(Event, Instant)> {
    let (tx, rx) = cb::unbounded();
    instancer.on_update(move |e| {
        let _ = tx.send((e.clone(), Instant::now()));
    });
    rx
}

fn wait_raw(rx: &cb::Receiver<(String, Instant)>, key: &str) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let (k, t) = rx
            .recv_deadline(deadline)
            .unwrap_or_else(|_| panic!("raw event for {key}"));
        if k == key {
            return t;
        }
    }
}

fn wait_ours(rx: &cb::Receiver<(Event, Instant)>, pred: impl Fn(&Event) -> bool) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let (e, t) = rx.recv_deadline(deadline).expect("etcd-sd event");
        if pred(&e) {
            return t;
        }
    }
}

/// CPU time (ns) used so far by this process's threads with the given names.
fn thread_cpu_ns(names: &[&str]) -> u64 {
    names
        .iter()
        .flat_map(|n| tids_named(n))
        .map(tid_cpu_ns)
        .sum()
}

/// Whether a thread's `comm` is `name`: Linux keeps only the first 15 bytes of
/// a thread's name (`etcd-sd-dispatch` reads `etcd-sd-dispatc`).
fn is_named(comm: &str, name: &str) -> bool {
    comm.trim_end_matches('\n') == &name[..name.len().min(15)]
}

/// The ids of this process's threads whose name is `name`.
fn tids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| is_named(&c, name))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The threads that `f` starts (e.g. a Client's runtime and dispatcher), one
/// per name in `names`, found by comparing the thread lists before and after.
/// A new thread names itself once it runs, so this waits (bounded) for that.
fn new_threads<T>(names: &[&str], f: impl FnOnce() -> T) -> (T, Vec<u32>) {
    let before: Vec<Vec<u32>> = names.iter().map(|n| tids_named(n)).collect();
    let value = f();
    let new = |i: usize| -> Vec<u32> {
        tids_named(names[i])
            .into_iter()
            .filter(|t| !before[i].contains(t))
            .collect()
    };
    let named = support::wait_until(WAIT, || (0..names.len()).all(|i| new(i).len() == 1));
    assert!(named, "expected one new thread named each of {names:?}");
    (value, (0..names.len()).map(|i| new(i)[0]).collect())
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU time (ns) one thread of this process has used so far, from the
/// kernel's per-thread CPU clock (the clock id glibc's `pthread_getcpuclockid`
/// builds: `(~tid << 3) | 6`). Unlike /proc schedstat, which is only brought
/// up to date when the thread is descheduled or at a tick, it is exact even
/// while the thread runs. Falls back to schedstat; 0 once the thread is gone.
fn tid_cpu_ns(tid: u32) -> u64 {
    let clock = ((!(tid as i32)) << 3) | 6;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; an invalid clock only returns an error.
    if unsafe { clock_gettime(clock, &mut ts) } == 0 {
        return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    }
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The calling thread's id.
fn current_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("/proc/thread-self")
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Sums one metric of etcd over all label sets that contain every string in
/// `labels`.
fn metric(etcd: &support::EtcdServer, name: &str, labels: &[&str]) -> f64 {
    etcd.metric(name, labels)
}

fn fast_client(etcd: &support::EtcdServer) -> Client {
    Client::connect(&[etcd.endpoint()], ClientOptions::default()).expect("connect")
}

// ---------------------------------------------------------------- 1. propagation

/// The discovery latencies of section 1, for the chart.
struct Latencies {
    put_ours: Samples,
    put_floor: Samples,
    del_ours: Samples,
    del_floor: Samples,
}

/// One `Registrar::register` → Event and `deregister` → Event, for section 1.
fn registration_ours(
    client: &Client,
    ours: &cb::Receiver<(Event, Instant)>,
    key: &str,
    value: &str,
) -> (Duration, Duration) {
    while ours.try_recv().is_ok() {}
    let ttl = TtlOption::new(Duration::from_secs(3), Duration::from_secs(10));
    let registrar = Registrar::new(client, Service::new(key, value).with_ttl(ttl));
    let t0 = Instant::now();
    registrar.register().expect("register");
    let reg = wait_ours(ours, |e| e.instances.contains(value)) - t0;
    let t0 = Instant::now();
    registrar.deregister().expect("deregister");
    let dereg = wait_ours(ours, |e| !e.instances.contains(value)) - t0;
    (reg, dereg)
}

/// The floor of [`registration_ours`]: lease grant + put → watch event, and
/// revoke → watch event, with a plain etcd-client.
fn registration_floor(
    rt: &tokio::runtime::Runtime,
    leases: &mut etcd_client::LeaseClient,
    kv: &mut etcd_client::KvClient,
    floor: &cb::Receiver<(String, Instant)>,
    key: &str,
    value: &str,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    let lease = rt.block_on(leases.grant(10, None)).expect("grant").id();
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    rt.block_on(kv.put(key, value, Some(opts))).expect("put");
    let reg = wait_raw(floor, key) - t0;
    let t0 = Instant::now();
    rt.block_on(leases.revoke(lease)).expect("revoke");
    let dereg = wait_raw(floor, key) - t0;
    (reg, dereg)
}

fn propagation(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    ops: usize,
    report: &mut Report,
) -> Latencies {
    let client = fast_client(etcd);
    let prefix = "/bench/prop/";
    let instancer = Instancer::new(&client, prefix).expect("instancer");
    let ours = timed_events(&instancer);
    wait_ours(&ours, |_| true);
    let floor = raw_watch(rt, raw, prefix);
    let mut kv = raw.kv_client();

    let (mut put_ours, mut put_floor, mut del_ours, mut del_floor) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for i in 0..ops {
        let key = format!("{prefix}{i}");
        let value = format!("10.0.0.{}:{}", i % 250, 8000 + i);
        let t0 = Instant::now();
        rt.block_on(kv.put(key.clone(), value.clone(), None))
            .expect("put");
        let tr = wait_raw(&floor, &key);
        let to = wait_ours(&ours, |e| e.instances.contains(&value));
        put_floor.push(tr - t0);
        put_ours.push(to - t0);

        let t0 = Instant::now();
        rt.block_on(kv.delete(key.clone(), None)).expect("delete");
        let tr = wait_raw(&floor, &key);
        let to = wait_ours(&ours, |e| !e.instances.contains(&value));
        del_floor.push(tr - t0);
        del_ours.push(to - t0);
    }

    // Registration: Registrar::register -> Event vs lease grant + put -> watch.
    let (mut reg_ours, mut reg_floor, mut dereg_ours, mut dereg_floor) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut leases = raw.lease_client();
    // Twice the discovery rows: their tails are etcd's lease operations,
    // which vary the most; p99 is then the 40th slowest of 4,000.
    let reg_ops = 2 * ops;
    for i in 0..reg_ops {
        // Distinct values, so that one side's events never satisfy the other.
        let value = format!("10.1.0.{}:{}", i % 250, 9000 + i);
        let value_f = format!("10.2.0.{}:{}", i % 250, 9000 + i);
        // Ours and the floor take turns going first, so that neither gains
        // from what the other just did to etcd.
        let ours_pair = || registration_ours(&client, &ours, &format!("{prefix}r{i}"), &value);
        let mut floor_pair = || {
            let key = format!("{prefix}f{i}");
            registration_floor(rt, &mut leases, &mut kv, &floor, &key, &value_f)
        };
        let ((reg, dereg), (reg_f, dereg_f)) = if i % 2 == 0 {
            let o = ours_pair();
            (o, floor_pair())
        } else {
            let f = floor_pair();
            (ours_pair(), f)
        };
        reg_ours.push(reg);
        dereg_ours.push(dereg);
        reg_floor.push(reg_f);
        dereg_floor.push(dereg_f);
    }

    let mut t = String::from(
        "Latency from the start of the operation to the subscriber seeing it, in µs.\n\n\
         | operation | n | ours p50 | floor p50 | ratio | ours p90 | floor p90 | ours p99 | floor p99 | ratio p99 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, o, f) in [
        ("put → Event (discovery)", &put_ours, &put_floor),
        ("delete → Event (discovery)", &del_ours, &del_floor),
        ("register → Event", &reg_ours, &reg_floor),
        ("deregister → Event", &dereg_ours, &dereg_floor),
    ] {
        let _ = writeln!(
            t,
            "| {name} | {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            o.0.len(),
            us(o.pct(50.0)),
            us(f.pct(50.0)),
            ratio(o.pct(50.0), f.pct(50.0)),
            us(o.pct(90.0)),
            us(f.pct(90.0)),
            us(o.pct(99.0)),
            us(f.pct(99.0)),
            ratio(o.pct(99.0), f.pct(99.0)),
        );
    }
    t.push_str(
        "\nFloors: a plain `etcd-client` watch in the same process sees the same put/delete; \
         for registration, a plain lease grant + put (and revoke) seen by that watch. \
         Goal: p50 within 1.15× of the floor, p99 within 1.5×.\n",
    );
    t.push_str("\nThe distribution of the discovery rows (full runs): `docs/latency.svg`.\n");
    report.section("1. Propagation", &t);
    eprintln!("propagation done");
    Latencies {
        put_ours,
        put_floor,
        del_ours,
        del_floor,
    }
}

// ---------------------------------------------------------------- 2. scale

fn populate(rt: &tokio::runtime::Runtime, raw: &etcd_client::Client, prefix: &str, n: usize) {
    let mut kv = raw.kv_client();
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<etcd_client::TxnOp> = batch
            .iter()
            .map(|i| etcd_client::TxnOp::put(format!("{prefix}{i:06}"), instance_value(*i), None))
            .collect();
        rt.block_on(kv.txn(etcd_client::Txn::new().and_then(ops)))
            .expect("populate txn");
    }
}

fn instance_value(i: usize) -> String {
    format!(
        "http://10.{}.{}.{}:8080",
        i / 65536 % 256,
        i / 256 % 256,
        i % 256
    )
}

fn scale(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    sizes: &[usize],
    churn: usize,
    report: &mut Report,
) {
    let mut t = String::from(
        "N instances under one prefix, then churn (alternating add and remove) by a plain \
         `etcd-client` writer. CPU is the run time of the `etcd-sd-runtime` and \
         `etcd-sd-dispatch` threads per update (from the kernel's per-thread CPU clocks). \
         Bytes are what etcd sent to all gRPC clients per update (the writer's small replies included). \
         Ranges are etcd's Range RPCs per update after start-up.\n\n\
         | N | subscribers | first Event (ms) | update p50 (µs) | update p99 (µs) | CPU/update (µs) | bytes/update | Ranges/update | RSS (MB) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut kv = raw.kv_client();
    for &n in sizes {
        // N = 100,000 (full runs): one subscriber and fewer updates.
        let (subscribers, churn) = if n >= 100_000 {
            (&[1usize][..], churn.min(200))
        } else {
            (&[1usize, 10][..], churn)
        };
        for &subs in subscribers {
            let prefix = format!("/bench/scale{n}s{subs}/");
            let t_pop = Instant::now();
            populate(rt, raw, &prefix, n);
            eprintln!(
                "populated {n} keys in {:.1} s",
                t_pop.elapsed().as_secs_f64()
            );
            let client = fast_client(etcd);
            let t0 = Instant::now();
            let instancer = Instancer::new(&client, &prefix).expect("instancer");
            let ours = timed_events(&instancer);
            let first = wait_ours(&ours, |e| e.instances.len() == n) - t0;
            let others: Vec<_> = (1..subs).map(|_| instancer.subscribe()).collect();
            // Let the extra subscribers drain in the background.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let drains: Vec<_> = others
                .into_iter()
                .map(|rx| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = rx.recv_timeout(Duration::from_millis(50));
                        }
                    })
                })
                .collect();

            let ranges0 = metric(
                etcd,
                "grpc_server_handled_total",
                &["grpc_method=\"Range\""],
            );
            let bytes0 = metric(etcd, "etcd_network_client_grpc_sent_bytes_total", &[]);
            let cpu0 = thread_cpu_ns(&["etcd-sd-runtime", "etcd-sd-dispatch"]);
            let mut lat = Samples::default();
            for j in 0..churn {
                let i = n + j / 2;
                let key = format!("{prefix}{i:06}");
                let value = instance_value(i);
                let t0 = Instant::now();
                if j % 2 == 0 {
                    rt.block_on(kv.put(key, value.clone(), None)).expect("put");
                    lat.push(wait_ours(&ours, |e| e.instances.contains(&value)) - t0);
                } else {
                    rt.block_on(kv.delete(key, None)).expect("delete");
                    lat.push(wait_ours(&ours, |e| !e.instances.contains(&value)) - t0);
                }
            }
            let cpu = thread_cpu_ns(&["etcd-sd-runtime", "etcd-sd-dispatch"]) - cpu0;
            let bytes = metric(etcd, "etcd_network_client_grpc_sent_bytes_total", &[]) - bytes0;
            let ranges = metric(
                etcd,
                "grpc_server_handled_total",
                &["grpc_method=\"Range\""],
            ) - ranges0;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for d in drains {
                let _ = d.join();
            }
            let _ = writeln!(
                t,
                "| {n} | {subs} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.1} |",
                first.as_secs_f64() * 1e3,
                us(lat.pct(50.0)),
                us(lat.pct(99.0)),
                cpu as f64 / 1e3 / churn as f64,
                bytes / churn as f64,
                ranges / churn as f64,
                rss_mb(),
            );
            drop(instancer);
            drop(client);
            rt.block_on(kv.delete(
                prefix.clone(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ))
            .expect("clean up");
            eprintln!("scale N={n} subscribers={subs} done");
        }
    }
    t.push_str(
        "\nGoals at N = 10,000: zero Range RPCs per change, CPU ≤ 100 µs per update with one \
         subscriber and ≤ 150 µs with ten, ≤ 2 KB received per update, first Event ≤ 30 ms, \
         RSS ≤ 40 MB. For context, go-kit's sd/etcdv3 re-reads the whole prefix on every change.\n\n\
         The N = 100,000 row (full runs only, 200 updates) checks the paginated first read: \
         \"first Event\" is from `Instancer::new` to the first Event holding all 100,000 \
         instances. RSS is that of the whole benchmark process (etcd runs in its own), \
         read after each row; memory freed by earlier rows may not be returned to the OS. \
         After this section etcd's history is compacted, so that the 100,000 deleted keys \
         do not slow etcd down in the sections that follow.\n",
    );
    report.section("2. Scale", &t);
    // The rows above leave etcd with every deleted key still in its index (no
    // compaction). With the 100,000 row, etcd's Go GC then dominates its CPU
    // in about half the runs and the 1,000 registrations of section 3 take
    // 3-7 s instead of 0.3-0.7 s. Compacting it away keeps sections apart.
    compact(rt, raw);
}

/// Compacts etcd's history up to now (physically), so that later sections
/// start from a small index.
fn compact(rt: &tokio::runtime::Runtime, raw: &etcd_client::Client) {
    let mut kv = raw.kv_client();
    let rev = rt
        .block_on(kv.get("/bench/", None))
        .expect("get")
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    let opts = etcd_client::CompactionOptions::new().with_physical();
    rt.block_on(kv.compact(rev, Some(opts))).expect("compact");
}

// ---------------------------------------------------------------- 3. registrations

fn registrations(etcd: &mut support::EtcdServer, n: usize, report: &mut Report) {
    let threads0 = support::thread_count();
    let client = fast_client(etcd);
    let threads_client = support::thread_count();
    let t0 = Instant::now();
    let ttl = TtlOption::new(Duration::from_secs(1), Duration::from_secs(5));
    let registrars: Vec<Registrar> = (0..n)
        .map(|i| {
            Registrar::new(
                &client,
                Service::new(format!("/bench/reg/{i:05}"), format!("10.2.0.{i}:80")).with_ttl(ttl),
            )
        })
        .collect();
    let handles: Vec<_> = registrars
        .chunks(n.div_ceil(8))
        .map(|c| c.iter().collect::<Vec<_>>())
        .collect();
    std::thread::scope(|s| {
        for chunk in handles {
            s.spawn(move || {
                for r in chunk {
                    r.register().expect("register");
                }
            });
        }
    });
    let all_registered = t0.elapsed();
    // The 8 registering threads are joined, but the kernel may list them for
    // a moment longer: let that settle (bounded) before counting.
    support::wait_until(Duration::from_secs(2), || {
        support::thread_count() <= threads_client
    });
    let threads_all = support::thread_count();
    let ka0 = metric(etcd, "grpc_server_msg_received_total", &["LeaseKeepAlive"]);
    let cpu0 = thread_cpu_ns(&["etcd-sd-runtime", "etcd-sd-dispatch"]);
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    let cpu = thread_cpu_ns(&["etcd-sd-runtime", "etcd-sd-dispatch"]) - cpu0;
    let ka = metric(etcd, "grpc_server_msg_received_total", &["LeaseKeepAlive"]) - ka0;
    let restart = restarts(etcd, &registrars, ttl);
    let t = format!(
        "{n} Registrars (heartbeat 1 s, ttl 5 s) on one Client, registered from 8 threads.\n\n\
         | measure | value |\n|---|---|\n\
         | OS threads before connect / after connect / with all registered | {threads0} / {threads_client} / {threads_all} |\n\
         | time to register all | {:.0} ms |\n\
         | keep-alive messages per second | {:.0} |\n\
         | CPU of the library's threads while idle | {:.1} % of one core |\n\
         | etcd killed, started again 1 s later (data kept): keep-alives back at the full rate ({n} in one heartbeat) | {} after the start |\n\
         | the same: registrations still in etcd on their first lease, 2 ttl later | {} of {n} |\n\
         | etcd killed, started again with its data dir wiped (every key and lease gone): all {n} keys back | {} after the start |\n\
         \nTimes after a start run from the moment the etcd process is started again, so they \
         include etcd's own start-up until it answers ({:.0} ms and {:.0} ms in this run); they are \
         measured by polling etcd every 50 ms (keep-alive messages from its `/metrics`, keys with \
         `etcdctl get`).\n",
        all_registered.as_secs_f64() * 1e3,
        ka / idle.as_secs_f64(),
        cpu as f64 / idle.as_nanos() as f64 * 100.0,
        within(restart.keep_alives_back),
        restart.kept,
        within(restart.keys_back),
        restart.start_up[0].as_secs_f64() * 1e3,
        restart.start_up[1].as_secs_f64() * 1e3,
    );
    drop(registrars);
    drop(client);
    report.section("3. Registrations", &t);
    eprintln!("registrations done");
}

/// What section 3 measures around etcd restarts (`None`: not within the
/// limit).
struct Restarts {
    keep_alives_back: Option<Duration>,
    kept: usize,
    keys_back: Option<Duration>,
    /// How long etcd took to answer after each start (included above).
    start_up: [Duration; 2],
}

/// A time, or that it did not happen within the limit.
fn within(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        None => "**not within 60 s**".to_string(),
    }
}

/// Restarts etcd twice under `registrars` (all registered): once with its
/// data, once with its data dir wiped.
fn restarts(etcd: &mut support::EtcdServer, registrars: &[Registrar], ttl: TtlOption) -> Restarts {
    let n = registrars.len();
    let leases: Vec<Option<i64>> = registrars.iter().map(Registrar::lease_id).collect();
    let keep_alives = |etcd: &support::EtcdServer| {
        metric(etcd, "grpc_server_msg_received_total", &["LeaseKeepAlive"])
    };
    let limit = Duration::from_secs(60);

    // 1. Killed, back after 1 s with its data: the leases survive (etcd
    // renews them on start); the registrars must resume their keep-alives.
    etcd.kill();
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    etcd.restart();
    let start_up = t0.elapsed();
    let keep_alives_back =
        support::wait_until(limit, || keep_alives(etcd) >= n as f64).then(|| t0.elapsed());
    std::thread::sleep(2 * ttl.ttl());
    let in_etcd: std::collections::HashMap<String, i64> =
        etcd.get_prefix_leases("/bench/reg/").into_iter().collect();
    let kept = registrars
        .iter()
        .zip(&leases)
        .filter(|(r, lease)| {
            lease.is_some()
                && **lease == r.lease_id()
                && in_etcd.get(&r.service().key).copied() == **lease
        })
        .count();

    // 2. Back empty: every key and lease is gone; the registrars must notice
    // and register again.
    let t0 = Instant::now();
    etcd.restart_empty();
    let start_up_empty = t0.elapsed();
    let prefix = "/bench/reg/";
    let keys_back =
        support::wait_until(limit, || etcd.count_prefix(prefix) >= n).then(|| t0.elapsed());
    Restarts {
        keep_alives_back,
        kept,
        keys_back,
        start_up: [start_up, start_up_empty],
    }
}
