//! Soak: 1,000 Registrars and 50 Instancers on one Client, continuous churn
//! (deregister / register again) and periodic etcd restarts, for a bounded
//! time. At the end every Instancer must equal etcd's state and every active
//! registration must be in etcd on its own lease; memory, threads and event
//! counts are printed along the way.
//!
//! Run with `make soak` (SOAK_SECS=120 by default). It starts its own etcd on
//! 127.0.0.1 (`ETCD_BIN` / `ETCDCTL_BIN`, as the tests) and exits non-zero if
//! a check fails.
//!
//! Settings (environment): SOAK_SECS (120), SOAK_REGISTRARS (1000),
//! SOAK_INSTANCERS (50), SOAK_RESTART_EVERY_SECS (30).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::channel::Receiver;
use etcd_sd::{
    Client, ClientOptions, Event, Instancer, Registrar, RegistrationState, Service, TtlOption,
};
use support::{rss_kib, thread_count, unique_prefix, wait_until, EtcdServer};

/// Registrars and instancers are spread over this many prefixes.
const GROUPS: usize = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stats {
    events: AtomicU64,
    error_events: AtomicU64,
    callback_calls: AtomicU64,
    churn_ops: AtomicU64,
    churn_errors: AtomicU64,
}

fn group_prefix(p: &str, g: usize) -> String {
    format!("{p}g{g}/")
}

fn main() {
    let secs = env_u64("SOAK_SECS", 120);
    let n_regs = env_u64("SOAK_REGISTRARS", 1000) as usize;
    let n_insts = env_u64("SOAK_INSTANCERS", 50) as usize;
    let restart_every = Duration::from_secs(env_u64("SOAK_RESTART_EVERY_SECS", 30).max(5));
    let run_for = Duration::from_secs(secs);
    println!(
        "soak: {n_regs} registrars, {n_insts} instancers, {secs} s, etcd restart every {restart_every:?}"
    );

    let mut etcd = EtcdServer::start();
    let options = ClientOptions {
        dial_timeout: Duration::from_secs(3),
        dial_keep_alive: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let client = Client::connect(&[etcd.endpoint()], options).expect("connect");
    let p = unique_prefix("soak");
    let baseline_threads = thread_count();

    // Heartbeat 1 s, ttl 5 s: some outages below are shorter, some longer.
    let ttl = TtlOption::new(Duration::from_secs(1), Duration::from_secs(5));
    let t = Instant::now();
    let regs: Arc<Vec<Registrar>> = Arc::new(
        (0..n_regs)
            .map(|i| {
                let g = i % GROUPS;
                let key = format!("{}svc{i:04}", group_prefix(&p, g));
                Registrar::new(
                    &client,
                    Service::new(key, format!("10.{g}.{}.{}:80", i / 250, i % 250)).with_ttl(ttl),
                )
            })
            .collect(),
    );
    let active: Arc<Vec<AtomicBool>> =
        Arc::new((0..n_regs).map(|_| AtomicBool::new(true)).collect());
    for r in regs.iter() {
        r.register().expect("initial register");
    }
    println!("registered {n_regs} in {:?}", t.elapsed());

    let stats = Arc::new(Stats {
        events: AtomicU64::new(0),
        error_events: AtomicU64::new(0),
        callback_calls: AtomicU64::new(0),
        churn_ops: AtomicU64::new(0),
        churn_errors: AtomicU64::new(0),
    });
    let mut insts = Vec::new();
    let mut receivers: Vec<Receiver<Event>> = Vec::new();
    for i in 0..n_insts {
        let inst = Instancer::new(&client, &group_prefix(&p, i % GROUPS)).expect("instancer");
        receivers.push(inst.subscribe());
        let s = stats.clone();
        inst.on_update(move |_| {
            s.callback_calls.fetch_add(1, Ordering::Relaxed);
        });
        insts.push(inst);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stop_draining = Arc::new(AtomicBool::new(false));
    // Drains every subscription, counting events.
    let drainer = {
        let stop = stop_draining.clone();
        let stats = stats.clone();
        std::thread::spawn(move || {
            let hard_stop = Instant::now() + run_for + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                for rx in &receivers {
                    for ev in rx.try_iter().take(1000) {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        if ev.err.is_some() {
                            stats.error_events.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Churn: a random registrar is deregistered, or registered again, every
    // 20 ms.
    let churner = {
        let stop = stop.clone();
        let stats = stats.clone();
        let regs = regs.clone();
        let active = active.clone();
        std::thread::spawn(move || {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let hard_stop = Instant::now() + run_for + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % regs.len() as u64) as usize;
                let was = active[i].load(Ordering::Relaxed);
                let r = if was {
                    active[i].store(false, Ordering::Relaxed);
                    regs[i].deregister()
                } else {
                    active[i].store(true, Ordering::Relaxed);
                    regs[i].register()
                };
                stats.churn_ops.fetch_add(1, Ordering::Relaxed);
                if r.is_err() {
                    stats.churn_errors.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let started = Instant::now();
    let mut next_restart = started + restart_every;
    let mut next_report = started;
    let mut restarts = 0u32;
    let report = |label: &str, restarts: u32| {
        let mut counts = [0usize; 5];
        for r in regs.iter() {
            counts[match r.state() {
                RegistrationState::Unregistered => 0,
                RegistrationState::Registering => 1,
                RegistrationState::Registered => 2,
                RegistrationState::Lost => 3,
                // Paused, and any state added later: counted with the
                // deregistered ones (the soak never pauses).
                _ => 4,
            }] += 1;
        }
        println!(
            "[{:>6.1}s] {label:<8} rss {:>4} MiB  threads {:>3}  events {:>7} (errors {:>5})  callbacks {:>7}  churn {:>6} (errors {:>4})  restarts {restarts}  registered {} registering {} lost {} deregistered {}",
            started.elapsed().as_secs_f64(),
            rss_kib() / 1024,
            thread_count(),
            stats.events.load(Ordering::Relaxed),
            stats.error_events.load(Ordering::Relaxed),
            stats.callback_calls.load(Ordering::Relaxed),
            stats.churn_ops.load(Ordering::Relaxed),
            stats.churn_errors.load(Ordering::Relaxed),
            counts[2],
            counts[1],
            counts[3],
            counts[4],
        );
    };
    // Bounded: one iteration per 250 ms at most, and never past run_for.
    let max_iters = run_for.as_millis() / 250 + 10;
    for _ in 0..max_iters {
        let now = Instant::now();
        if now >= started + run_for {
            break;
        }
        if now >= next_report {
            report("running", restarts);
            next_report += Duration::from_secs(10);
        }
        if now >= next_restart {
            // Alternately shorter and longer than the 5 s ttl.
            let down = if restarts.is_multiple_of(2) { 2 } else { 7 };
            etcd.kill();
            println!(
                "[{:>6.1}s] etcd killed for {down} s",
                started.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_secs(down));
            etcd.restart();
            restarts += 1;
            println!("[{:>6.1}s] etcd restarted", started.elapsed().as_secs_f64());
            next_restart = Instant::now() + restart_every;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().expect("churn thread");
    report("churn end", restarts);

    // Converge: the active registrations are exactly the keys in etcd, each
    // on its registrar's lease; every instancer equals etcd.
    let check = || -> Result<(), String> {
        let in_etcd = etcd.get_prefix_leases(&p);
        let want: BTreeSet<String> = regs
            .iter()
            .zip(active.iter())
            .filter(|(_, a)| a.load(Ordering::Relaxed))
            .map(|(r, _)| r.service().key.clone())
            .collect();
        let have: BTreeSet<String> = in_etcd.iter().map(|(k, _)| k.clone()).collect();
        if want != have {
            let missing = want.difference(&have).count();
            let extra = have.difference(&want).count();
            return Err(format!(
                "{missing} active registrations missing from etcd, {extra} inactive keys still there (e.g. missing {:?}, extra {:?})",
                want.difference(&have).next(),
                have.difference(&want).next()
            ));
        }
        for (r, a) in regs.iter().zip(active.iter()) {
            if !a.load(Ordering::Relaxed) {
                continue;
            }
            let lease = in_etcd
                .iter()
                .find(|(k, _)| *k == r.service().key)
                .map(|(_, l)| *l);
            if r.state() != RegistrationState::Registered || r.lease_id() != lease {
                return Err(format!(
                    "{}: state {:?} lease {:?}, in etcd {lease:?}",
                    r.service().key,
                    r.state(),
                    r.lease_id()
                ));
            }
        }
        for (g, inst) in insts.iter().enumerate() {
            let want = etcd.instances_under(&group_prefix(&p, g % GROUPS));
            let cur = inst.current();
            if cur.err.is_some() || cur.instances.to_vec() != want {
                return Err(format!(
                    "instancer #{g}: {} instances (err {:?}), etcd has {}",
                    cur.instances.len(),
                    cur.err.map(|e| e.to_string()),
                    want.len()
                ));
            }
        }
        Ok(())
    };
    let t = Instant::now();
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(90), || match check() {
        Ok(()) => true,
        Err(e) => {
            last = e;
            false
        }
    });
    stop_draining.store(true, Ordering::Relaxed);
    drainer.join().expect("drain thread");
    report("final", restarts);
    let n_active = active.iter().filter(|a| a.load(Ordering::Relaxed)).count();
    // The client's own counters, checked against what the soak did.
    let counters = client.stats();
    println!("client.stats(): {counters:?}");
    let mut counter_problems = Vec::new();
    if counters.registrars != n_regs as u64 {
        counter_problems.push(format!("registrars {} != {n_regs}", counters.registrars));
    }
    if counters.registered != n_active as u64 {
        counter_problems.push(format!(
            "registered {} != {n_active} active",
            counters.registered
        ));
    }
    if counters.instancers != n_insts as u64 {
        counter_problems.push(format!("instancers {} != {n_insts}", counters.instancers));
    }
    if counters.registrations < n_regs as u64 {
        counter_problems.push(format!(
            "registrations {} < {n_regs}",
            counters.registrations
        ));
    }
    if counters.callback_panics != 0 {
        counter_problems.push(format!("{} callback panics", counters.callback_panics));
    }
    if counters.events < n_insts as u64 {
        counter_problems.push(format!(
            "events {} fewer than the {n_insts} instancers' first Events",
            counters.events
        ));
    }
    if restarts > 0 && counters.watch_resumes + counters.rereads == 0 {
        counter_problems.push(format!(
            "{restarts} etcd restarts but no watch resumed or re-read"
        ));
    }
    let ok = ok && counter_problems.is_empty();
    if !counter_problems.is_empty() {
        println!("soak FAILED: counters disagree with the run: {counter_problems:?}");
    }
    if ok {
        println!(
            "soak PASSED: converged {:?} after churn stopped; {n_active} active registrations all in etcd on their leases; {n_insts} instancers equal etcd; baseline threads {baseline_threads}",
            t.elapsed()
        );
    } else {
        if counter_problems.is_empty() {
            println!("soak FAILED: not converged within 90 s: {last}");
        }
    }
    drop(insts);
    drop(regs);
    drop(client);
    drop(etcd);
    if !ok {
        std::process::exit(1);
    }
}
