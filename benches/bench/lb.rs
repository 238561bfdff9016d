//! Section 4, load balancing: what one pick of `lb::RoundRobin` / `lb::Random` costs
//! (1 and 8 threads) over an `sd::Endpointer` fed by a real Instancer, and
//! what the Endpointer adds to each discovery update at large N.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use etcd_sd::channel as cb;
use etcd_sd::lb::{Balancer, Endpoint, Random, RoundRobin};
use etcd_sd::sd::{Endpointer, EndpointerOptions};
use etcd_sd::{Client, ClientOptions, Instancer};

use super::{current_tid, new_threads, populate, support, tid_cpu_ns, us, Report, Samples, WAIT};

/// What the benchmark's endpoints are: go-kit style callable endpoints (an
/// `Arc`, so handing one out is a reference-count increment).
type Ep = Endpoint<(), usize>;

fn factory(instance: &str) -> Result<(Ep, Option<etcd_sd::sd::Closer>), etcd_sd::BoxError> {
    let addr = instance.to_owned();
    let ep: Ep = Arc::new(move |()| Ok(addr.len()));
    Ok((ep, None))
}

/// Waits (bounded) until `endpointer` serves `n` endpoints.
fn wait_endpoints(endpointer: &Endpointer<Ep>, n: usize) {
    let ok = support::wait_until(WAIT, || {
        endpointer.endpoints().map(|e| e.len()).unwrap_or(0) == n
    });
    assert!(ok, "endpointer never reached {n} endpoints");
}

pub(crate) fn load_balancing(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    quick: bool,
    report: &mut Report,
) {
    let mut t = String::new();
    picks(rt, raw, etcd, quick, &mut t);
    let sizes: &[usize] = if quick { &[1_000] } else { &[100, 10_000] };
    updates(
        rt,
        raw,
        etcd,
        sizes,
        if quick { 200 } else { 1_000 },
        &mut t,
    );
    report.section("4. Load balancing", &t);
    eprintln!("load balancing done");
}

// ---------------------------------------------------------------- picks

/// One measured pick loop: wall time and the CPU the picking threads used.
struct PickRun {
    picks: u64,
    wall: Duration,
    cpu_ns: u64,
}

/// Runs `per_thread` calls of `pick` on each of `threads` threads, started
/// together.
fn run_picks(threads: usize, per_thread: u64, pick: &(dyn Fn() -> usize + Sync)) -> PickRun {
    let barrier = Barrier::new(threads + 1);
    let (wall, cpu_ns) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let tid = current_tid();
                    barrier.wait();
                    let cpu0 = tid_cpu_ns(tid);
                    let mut sum = 0usize;
                    for _ in 0..per_thread {
                        sum = sum.wrapping_add(pick());
                    }
                    black_box(sum);
                    tid_cpu_ns(tid) - cpu0
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let cpu: u64 = handles.into_iter().map(|h| h.join().expect("picker")).sum();
        (t0.elapsed(), cpu)
    });
    PickRun {
        picks: per_thread * threads as u64,
        wall,
        cpu_ns,
    }
}

fn picks(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    quick: bool,
    t: &mut String,
) {
    let n = 100;
    let prefix = "/bench/lb/picks/";
    populate(rt, raw, prefix, n);
    let client = Client::connect(&[etcd.endpoint()], ClientOptions::default()).expect("connect");
    let instancer = Instancer::new(&client, prefix).expect("instancer");
    let endpointer = Endpointer::new(&instancer, factory, EndpointerOptions::default());
    wait_endpoints(&endpointer, n);
    let rr = RoundRobin::new(endpointer.clone());
    let random = Random::new(endpointer.clone(), 42);
    // The floor: what a lock-free round robin over a plain, fixed slice costs
    // (an atomic increment, a modulo and an `Arc` clone), with no Endpointer.
    let fixed: Arc<[Ep]> = endpointer.endpoints().expect("endpoints").into();
    let counter = AtomicU64::new(0);

    // Each pick clones the endpoint and drops it; `.len()` of the address
    // (through the endpoint call) keeps the work from being optimised away.
    let pick_rr = || (rr.endpoint().expect("pick"))(()).expect("call");
    let pick_random = || (random.endpoint().expect("pick"))(()).expect("call");
    let pick_floor = || {
        let i = counter.fetch_add(1, Ordering::Relaxed) % fixed.len() as u64;
        (fixed[i as usize].clone())(()).expect("call")
    };
    let per_thread_1: u64 = if quick { 200_000 } else { 2_000_000 };
    let per_thread_8: u64 = per_thread_1 / 4;
    let reps = if quick { 3 } else { 7 };

    let _ = writeln!(
        t,
        "Pick cost over an `sd::Endpointer` of {n} endpoints fed by a real Instancer (each \
         endpoint an `lb::Endpoint` closure; a pick is `endpoint()`, one call of the endpoint \
         and its drop). \"wall ns/pick\" is elapsed time over all picks of all threads (the \
         inverse of throughput; this machine has {} cores, so 8 threads share them); \
         \"CPU ns/pick\" is the picking threads' CPU time (the kernel's per-thread CPU \
         clock) over all picks, which shows what contention costs. The floor is a round robin over a fixed `Arc<[Endpoint]>` \
         with one atomic counter, no Endpointer. Each configuration ran {reps} times, \
         interleaved with the others; the table gives the median run (and the range of \
         wall ns/pick). With 8 threads on 2 cores the result depends on how the scheduler \
         interleaves them (and on what else the host runs), so it varies more from run to \
         run: compare it with the floor of the same run (\"× floor\", on wall time).\n\n\
         | balancer | threads | picks per run | wall ns/pick | range | × floor | CPU ns/pick | M picks/s |\n\
         |---|---|---|---|---|---|---|---|",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    let cases: [(&str, &(dyn Fn() -> usize + Sync)); 3] = [
        ("`lb::RoundRobin`", &pick_rr),
        ("`lb::Random`", &pick_random),
        ("floor: atomic counter over a fixed slice", &pick_floor),
    ];
    // Every configuration runs `reps` times, the configurations interleaved,
    // so that a burst of outside load hits them alike; the median is shown.
    let configs: Vec<(usize, usize)> = [1usize, 8]
        .iter()
        .flat_map(|&threads| (0..cases.len()).map(move |c| (threads, c)))
        .collect();
    let per = |threads: usize| {
        if threads == 1 {
            per_thread_1
        } else {
            per_thread_8
        }
    };
    for &(threads, c) in &configs {
        run_picks(threads, per(threads) / 10, cases[c].1);
    }
    let mut runs: Vec<Vec<PickRun>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..reps {
        for (k, &(threads, c)) in configs.iter().enumerate() {
            runs[k].push(run_picks(threads, per(threads), cases[c].1));
        }
    }
    // Per configuration: picks per run, median wall ns/pick, its range, median
    // CPU ns/pick.
    let stats: Vec<(f64, f64, f64, f64, f64)> = runs
        .iter()
        .map(|runs| {
            let picks = runs[0].picks as f64;
            let mut wall: Vec<f64> = runs
                .iter()
                .map(|r| r.wall.as_nanos() as f64 / picks)
                .collect();
            let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ns as f64 / picks).collect();
            wall.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            let last = wall.len() - 1;
            (picks, wall[last / 2], wall[0], wall[last], cpu[last / 2])
        })
        .collect();
    for (k, &(threads, c)) in configs.iter().enumerate() {
        let (picks, wall, lo, hi, cpu) = stats[k];
        // The floor of the same thread count is the last case.
        let floor = configs
            .iter()
            .position(|&(t, c)| t == threads && c == cases.len() - 1)
            .map(|f| stats[f].1)
            .unwrap_or(wall);
        let _ = writeln!(
            t,
            "| {} | {threads} | {picks} | {wall:.1} | {lo:.1}–{hi:.1} | {:.1}× | {cpu:.1} | {:.1} |",
            cases[c].0,
            wall / floor,
            1e3 / wall,
        );
    }
    drop((rr, random, endpointer, instancer, client));
    let mut kv = raw.kv_client();
    rt.block_on(kv.delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    ))
    .expect("clean up");
}

// ---------------------------------------------------------------- updates

/// A callback that timestamps every Event with its instance count.
fn stamp(instancer: &Instancer) -> cb::Receiver<(usize, Instant)> {
    let (tx, rx) = cb::unbounded();
    instancer.on_update(move |e| {
        let _ = tx.send((e.instances.len(), Instant::now()));
    });
    rx
}

fn wait_len(rx: &cb::Receiver<(usize, Instant)>, len: usize) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let (l, t) = rx
            .recv_deadline(deadline)
            .unwrap_or_else(|_| panic!("no event with {len} instances"));
        if l == len {
            return t;
        }
    }
}

/// One churn run: put/delete `churn` times, waiting for both stamps. Returns
/// (before→after gap, put→after latency) samples and the dispatcher's CPU
/// per update.
#[allow(clippy::too_many_arguments)]
fn churn_run(
    rt: &tokio::runtime::Runtime,
    kv: &mut etcd_client::KvClient,
    prefix: &str,
    n: usize,
    churn: usize,
    before: &cb::Receiver<(usize, Instant)>,
    after: &cb::Receiver<(usize, Instant)>,
    dispatch_tid: u32,
    check: &dyn Fn(usize),
) -> (Samples, Samples, f64) {
    let (mut gap, mut total) = (Samples::default(), Samples::default());
    let cpu0 = tid_cpu_ns(dispatch_tid);
    for j in 0..churn {
        let key = format!("{prefix}x{:06}", j / 2);
        let t0 = Instant::now();
        let len = if j % 2 == 0 {
            let value = format!("http://10.200.0.1:{}", 10_000 + j);
            rt.block_on(kv.put(key, value, None)).expect("put");
            n + 1
        } else {
            rt.block_on(kv.delete(key, None)).expect("delete");
            n
        };
        let tb = wait_len(before, len);
        let ta = wait_len(after, len);
        gap.push(ta - tb);
        total.push(ta - t0);
        check(len);
    }
    let cpu = (tid_cpu_ns(dispatch_tid) - cpu0) as f64 / churn as f64;
    (gap, total, cpu)
}

fn updates(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    sizes: &[usize],
    churn: usize,
    t: &mut String,
) {
    let _ = writeln!(
        t,
        "\n`sd::Endpointer` update cost. Three callbacks on one Instancer, called in this order \
         on the client's dispatcher thread for every update: a timestamp (\"before\"), the \
         Endpointer's, a timestamp (\"after\"). \"Endpointer update\" is after − before: the \
         time the Endpointer takes to bring its endpoints in line with the new set (find what \
         changed, make or close the endpoint, publish the new list). \"put → endpoints()\" is from the start of a \
         plain `etcd-client` put/delete to \"after\", when `endpoints()` already returns the new \
         set (checked after each update, outside the timing). Dispatcher CPU is the CPU \
         time of that client's `etcd-sd-dispatch` thread per update, with the Endpointer \
         and again after closing it (only the two timestamps left); the difference is what the \
         Endpointer costs. {churn} updates (alternating add and remove) per row.\n\n\
         | N | Endpointer update p50 (µs) | p99 (µs) | put → endpoints() p50 (µs) | p99 (µs) | dispatcher CPU/update with Endpointer (µs) | without (µs) | Endpointer CPU/update (µs) |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let mut kv = raw.kv_client();
    for &n in sizes {
        let prefix = format!("/bench/lb/upd{n}/");
        populate(rt, raw, &prefix, n);
        let (client, tids) = new_threads(&["etcd-sd-dispatch"], || {
            Client::connect(&[etcd.endpoint()], ClientOptions::default()).expect("connect")
        });
        let dispatch_tid = tids[0];
        let instancer = Instancer::new(&client, &prefix).expect("instancer");
        let before = stamp(&instancer);
        let endpointer = Endpointer::new(&instancer, factory, EndpointerOptions::default());
        let after = stamp(&instancer);
        wait_len(&before, n);
        wait_len(&after, n);
        wait_endpoints(&endpointer, n);

        let check = |len: usize| {
            let got = endpointer.endpoints().expect("endpoints").len();
            assert_eq!(got, len, "endpoints() behind the after-callback");
        };
        let (gap, total, cpu_with) = churn_run(
            rt,
            &mut kv,
            &prefix,
            n,
            churn,
            &before,
            &after,
            dispatch_tid,
            &check,
        );
        endpointer.close();
        let (_, _, cpu_without) = churn_run(
            rt,
            &mut kv,
            &prefix,
            n,
            churn,
            &before,
            &after,
            dispatch_tid,
            &|_| {},
        );
        let _ = writeln!(
            t,
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            us(gap.pct(50.0)),
            us(gap.pct(99.0)),
            us(total.pct(50.0)),
            us(total.pct(99.0)),
            cpu_with / 1e3,
            cpu_without / 1e3,
            (cpu_with - cpu_without) / 1e3,
        );
        drop((endpointer, instancer, client));
        rt.block_on(kv.delete(
            prefix.clone(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ))
        .expect("clean up");
        eprintln!("endpointer updates N={n} done");
    }
}
