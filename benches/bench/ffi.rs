//! Section 5, the C API: what one event costs through a C callback
//! (`etcd_sd_instancer_on_update`) and through a polled C subscription
//! (`etcd_sd_subscription_recv`), side by side with the Rust callback and the
//! Rust channel (`Instancer::subscribe().recv()`), from the same writes.
//!
//! The `ffi` module is private to the crate, but its functions are exported
//! `#[no_mangle]` symbols of the rlib this benchmark links, so they are
//! declared here and called exactly as a C program would call them.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt::Write as _;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::channel as cb;
use etcd_sd::{Client, ClientOptions, Event, Instancer};

use super::{
    current_tid, new_threads, populate, raw_watch, support, tid_cpu_ns, us, wait_raw, Report,
    Samples, WAIT,
};

// ---------------------------------------------------------------- the C API

/// Opaque C handles.
enum CClient {}
enum CInstancer {}
enum CSubscription {}
enum CEvent {}

type Status = i32;
const OK: Status = 0;
const ERR_TIMEOUT: Status = 4;
type EventFn = Option<unsafe extern "C" fn(ev: *const CEvent, context: *mut c_void)>;
type DropFn = Option<unsafe extern "C" fn(context: *mut c_void)>;

extern "C" {
    fn etcd_sd_client_new(
        endpoints: *const *const c_char,
        n: usize,
        options: *const c_void,
        out: *mut *mut CClient,
    ) -> Status;
    fn etcd_sd_client_free(c: *mut CClient);
    fn etcd_sd_instancer_new(
        c: *const CClient,
        prefix: *const c_char,
        out: *mut *mut CInstancer,
    ) -> Status;
    fn etcd_sd_instancer_free(i: *mut CInstancer);
    fn etcd_sd_instancer_on_update(
        i: *mut CInstancer,
        call: EventFn,
        drop: DropFn,
        context: *mut c_void,
        out_id: *mut u64,
    ) -> Status;
    fn etcd_sd_instancer_subscribe(i: *mut CInstancer, out: *mut *mut CSubscription) -> Status;
    fn etcd_sd_subscription_recv(
        s: *mut CSubscription,
        timeout_ms: u64,
        out: *mut *mut CEvent,
    ) -> Status;
    fn etcd_sd_subscription_free(s: *mut CSubscription);
    fn etcd_sd_event_len(e: *const CEvent) -> usize;
    fn etcd_sd_event_instance(e: *const CEvent, i: usize) -> *const c_char;
    fn etcd_sd_event_free(e: *mut CEvent);
}

// ---------------------------------------------------------------- consumers

/// What every consumer reports per event: the instance count, a checksum of
/// what it read, and when it had it.
struct Delivery {
    len: usize,
    sum: usize,
    at: Instant,
}

/// Which consumers (bit i for `PATHS[i]`) read every instance string; the
/// others read only the count.
static READ_ALL: AtomicU8 = AtomicU8::new(0);

fn reads_all(path: usize) -> bool {
    READ_ALL.load(Ordering::Relaxed) & (1 << path) != 0
}

fn checksum(bytes: &[u8]) -> usize {
    bytes.iter().map(|&b| b as usize).sum()
}

fn read_rust(e: &Event, path: usize) -> Delivery {
    let len = e.instances.len();
    let sum = if reads_all(path) {
        e.instances.iter().map(|s| checksum(s.as_bytes())).sum()
    } else {
        0
    };
    Delivery {
        len,
        sum,
        at: Instant::now(),
    }
}

/// # Safety
/// `ev` is a live event.
unsafe fn read_c(ev: *const CEvent, path: usize) -> Delivery {
    // SAFETY: the caller's promise.
    let len = unsafe { etcd_sd_event_len(ev) };
    let mut sum = 0;
    if reads_all(path) {
        for i in 0..len {
            // SAFETY: `i` is in range; the string lives as long as the event.
            let p = unsafe { etcd_sd_event_instance(ev, i) };
            if !p.is_null() {
                // SAFETY: a NUL-terminated string from the library.
                sum += checksum(unsafe { CStr::from_ptr(p) }.to_bytes());
            }
        }
    }
    Delivery {
        len,
        sum,
        at: Instant::now(),
    }
}

/// The C callback: what a C program's `etcd_sd_event_fn` would do.
unsafe extern "C" fn c_on_event(ev: *const CEvent, context: *mut c_void) {
    // SAFETY: `context` is the `Sender` boxed below, alive until `c_drop`.
    let tx = unsafe { &*(context as *const cb::Sender<Delivery>) };
    // SAFETY: the event is lent for the duration of this call.
    let _ = tx.send(unsafe { read_c(ev, C_CALLBACK) });
}

unsafe extern "C" fn c_drop(context: *mut c_void) {
    // SAFETY: made by `Box::into_raw` below; the library calls this once.
    drop(unsafe { Box::from_raw(context as *mut cb::Sender<Delivery>) });
}

/// A raw pointer that the poll thread owns.
struct SendPtr<T>(*mut T);
// SAFETY: the C API allows using a subscription from another thread, one at a time.
unsafe impl<T> Send for SendPtr<T> {}

/// A thread that receives and reports until `stop`, bounded by a deadline.
/// `recv` returns Some(Some) for an event, Some(None) for a timeout, None
/// when the subscription is closed. Returns the thread's id.
fn poller<F>(
    name: &str,
    stop: Arc<AtomicBool>,
    tx: cb::Sender<Delivery>,
    mut recv: F,
) -> (std::thread::JoinHandle<()>, u32)
where
    F: FnMut() -> Option<Option<Delivery>> + Send + 'static,
{
    let (tid_tx, tid_rx) = cb::bounded(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tid_tx.send(current_tid());
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match recv() {
                    Some(Some(d)) => {
                        let _ = tx.send(d);
                    }
                    Some(None) => {}
                    None => break,
                }
            }
        })
        .expect("spawn poller");
    let tid = tid_rx.recv_timeout(WAIT).expect("poller tid");
    (handle, tid)
}

fn wait_len(rx: &cb::Receiver<Delivery>, path: usize, len: usize) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = rx
            .recv_deadline(deadline)
            .unwrap_or_else(|_| panic!("no delivery with {len} instances"));
        if d.len == len {
            assert!(!reads_all(path) || d.sum > 0, "strings not read");
            return d.at;
        }
    }
}

// ---------------------------------------------------------------- the run

const RUST_CALLBACK: usize = 0;
const C_CALLBACK: usize = 1;
const RUST_CHANNEL: usize = 2;
const C_POLL: usize = 3;
/// The four deliveries, in the order of the indexes above.
const PATHS: [&str; 4] = [
    "Rust callback (`Instancer::on_update`)",
    "C callback (`etcd_sd_instancer_on_update`)",
    "Rust channel (`subscribe().recv()`)",
    "C poll (`etcd_sd_subscription_recv`)",
];

pub(crate) fn ffi(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    quick: bool,
    report: &mut Report,
) {
    let sizes: &[usize] = if quick { &[100, 1_000] } else { &[100, 10_000] };
    let events = if quick { 200 } else { 1_000 };
    let mut t = format!(
        "Two clients on the same etcd, each with one Instancer on the same prefix of N \
         instances: a Rust `Client` with a Rust callback and a `subscribe()` channel, and a C \
         client (`etcd_sd_client_new`, called through the exported C symbols) with a C callback \
         (an `extern \"C\" fn`) and a C subscription polled by `etcd_sd_subscription_recv` on \
         its own thread. A plain `etcd-client` writer alternately adds and removes one instance \
         ({events} events per phase); each write is waited for at all four consumers and at a \
         raw `etcd-client` watch (the floor, whose p50/p99 over the same writes is given in \
         each row) before the next. In the \"count\" phase every consumer reads only the \
         instance count: the cost of delivery alone. Then one \"all\" phase per consumer, in \
         which that consumer alone also reads every instance string (what a real consumer \
         does: in Rust by iterating `event.instances`, in C by one `etcd_sd_event_instance` call \
         per string, which lends the library's own NUL-terminated copy without making a new one) \
         while the others read the count, so that its reading does not hold the others up.\n\n\
         Latency is from the start of the write to the consumer having read the event. \
         \"CPU/event\" is the CPU time (the kernel's per-thread CPU clock) per event of the \
         thread that delivers to that consumer: the client's dispatcher thread for callbacks \
         (the library's delivery plus the callback's reading), the consumer's own receiving \
         thread for polled delivery (the receive, the reading, and in C \
         `etcd_sd_event_free`). \"runtime CPU/event\" is that client's `etcd-sd-runtime` \
         thread (watch decoding, the new snapshot, the channel's `try_send`), shared by both \
         of its consumers. Two clients, five receivers and the writer share {} cores, so \
         latencies are higher than in section 1.\n\n\
         | N | reads | delivery | p50 (µs) | p90 (µs) | p99 (µs) | floor p50 (µs) | floor p99 (µs) | CPU/event (µs) | runtime CPU/event (µs) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    for &n in sizes {
        run_size(rt, raw, etcd, n, events, &mut t);
    }
    report.section("5. C API", &t);
    eprintln!("ffi done");
}

fn run_size(
    rt: &tokio::runtime::Runtime,
    raw: &etcd_client::Client,
    etcd: &support::EtcdServer,
    n: usize,
    events: usize,
    t: &mut String,
) {
    let prefix = format!("/bench/ffi{n}/");
    populate(rt, raw, &prefix, n);
    let names = ["etcd-sd-runtime", "etcd-sd-dispatch"];

    // The Rust side.
    let (client, rust_tids) = new_threads(&names, || {
        Client::connect(&[etcd.endpoint()], ClientOptions::default()).expect("connect")
    });
    let instancer = Instancer::new(&client, &prefix).expect("instancer");
    let (rcb_tx, rcb_rx) = cb::unbounded();
    instancer.on_update(move |e| {
        let _ = rcb_tx.send(read_rust(e, RUST_CALLBACK));
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (rch_tx, rch_rx) = cb::unbounded();
    let sub = instancer.subscribe();
    let (rust_poller, rust_poll_tid) = poller("bench-rust-recv", stop.clone(), rch_tx, move || {
        match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => Some(Some(read_rust(&e, RUST_CHANNEL))),
            Err(cb::RecvTimeoutError::Timeout) => Some(None),
            Err(cb::RecvTimeoutError::Disconnected) => None,
        }
    });

    // The C side, through the exported symbols.
    let endpoint = CString::new(etcd.endpoint()).expect("endpoint");
    let endpoints = [endpoint.as_ptr()];
    let c_prefix = CString::new(prefix.clone()).expect("prefix");
    let mut c_client: *mut CClient = ptr::null_mut();
    let ((), c_tids) = new_threads(&names, || {
        // SAFETY: valid strings and out-pointer; NULL options mean the defaults.
        let status =
            unsafe { etcd_sd_client_new(endpoints.as_ptr(), 1, ptr::null(), &mut c_client) };
        assert_eq!(status, OK, "etcd_sd_client_new");
    });
    let mut c_instancer: *mut CInstancer = ptr::null_mut();
    // SAFETY: a live client, a valid prefix and out-pointer.
    let status = unsafe { etcd_sd_instancer_new(c_client, c_prefix.as_ptr(), &mut c_instancer) };
    assert_eq!(status, OK, "etcd_sd_instancer_new");
    let (ccb_tx, ccb_rx) = cb::unbounded::<Delivery>();
    let context = Box::into_raw(Box::new(ccb_tx)) as *mut c_void;
    let mut id = 0u64;
    // SAFETY: a live instancer; `c_drop` frees `context` exactly once.
    let status = unsafe {
        etcd_sd_instancer_on_update(
            c_instancer,
            Some(c_on_event),
            Some(c_drop),
            context,
            &mut id,
        )
    };
    assert_eq!(status, OK, "etcd_sd_instancer_on_update");
    let mut c_sub: *mut CSubscription = ptr::null_mut();
    // SAFETY: a live instancer and out-pointer.
    let status = unsafe { etcd_sd_instancer_subscribe(c_instancer, &mut c_sub) };
    assert_eq!(status, OK, "etcd_sd_instancer_subscribe");
    let (cch_tx, cch_rx) = cb::unbounded();
    let owned_sub = SendPtr(c_sub);
    let (c_poller, c_poll_tid) = poller("bench-c-recv", stop.clone(), cch_tx, move || {
        let sub = &owned_sub;
        let mut ev: *mut CEvent = ptr::null_mut();
        // SAFETY: this thread is the subscription's only user until joined.
        match unsafe { etcd_sd_subscription_recv(sub.0, 50, &mut ev) } {
            OK => {
                // SAFETY: an event we own; read, then freed once.
                let d = unsafe { read_c(ev, C_POLL) };
                unsafe { etcd_sd_event_free(ev) };
                Some(Some(d))
            }
            ERR_TIMEOUT => Some(None),
            _ => None,
        }
    });

    let floor = raw_watch(rt, raw, &prefix);
    let consumers = [&rcb_rx, &ccb_rx, &rch_rx, &cch_rx];
    for (path, rx) in consumers.iter().enumerate() {
        wait_len(rx, path, n);
    }
    // CPU per path: the thread that delivers to it.
    let path_tids = [rust_tids[1], c_tids[1], rust_poll_tid, c_poll_tid];
    let runtime_tids = [rust_tids[0], c_tids[0]];
    let mut kv = raw.kv_client();

    // One phase where every consumer reads only the count, then one per
    // consumer where it alone reads every string (so that its reading does
    // not slow the others down on this small machine).
    let phases: [(u8, &[usize]); 5] = [
        (0, &[RUST_CALLBACK, C_CALLBACK, RUST_CHANNEL, C_POLL]),
        (1 << RUST_CALLBACK, &[RUST_CALLBACK]),
        (1 << C_CALLBACK, &[C_CALLBACK]),
        (1 << RUST_CHANNEL, &[RUST_CHANNEL]),
        (1 << C_POLL, &[C_POLL]),
    ];
    for (mask, rows) in phases {
        READ_ALL.store(mask, Ordering::Relaxed);
        let mut lat: [Samples; 4] = Default::default();
        let mut floor_lat = Samples::default();
        let cpu0: Vec<u64> = path_tids.iter().map(|&t| tid_cpu_ns(t)).collect();
        let rt0: Vec<u64> = runtime_tids.iter().map(|&t| tid_cpu_ns(t)).collect();
        for j in 0..events {
            let key = format!("{prefix}x{:06}", j / 2);
            let t0 = Instant::now();
            let len = if j % 2 == 0 {
                let value = format!("http://10.201.0.1:{}", 10_000 + j);
                rt.block_on(kv.put(key.clone(), value, None)).expect("put");
                n + 1
            } else {
                rt.block_on(kv.delete(key.clone(), None)).expect("delete");
                n
            };
            floor_lat.push(wait_raw(&floor, &key) - t0);
            for (path, (samples, rx)) in lat.iter_mut().zip(consumers).enumerate() {
                samples.push(wait_len(rx, path, len) - t0);
            }
        }
        let per_event = |ns: u64| ns as f64 / events as f64 / 1e3;
        let reads = if mask == 0 { "count" } else { "all" };
        for &path in rows {
            let _ = writeln!(
                t,
                "| {n} | {reads} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
                PATHS[path],
                us(lat[path].pct(50.0)),
                us(lat[path].pct(90.0)),
                us(lat[path].pct(99.0)),
                us(floor_lat.pct(50.0)),
                us(floor_lat.pct(99.0)),
                per_event(tid_cpu_ns(path_tids[path]) - cpu0[path]),
                per_event(tid_cpu_ns(runtime_tids[path % 2]) - rt0[path % 2]),
            );
        }
    }

    stop.store(true, Ordering::Relaxed);
    let _ = rust_poller.join();
    let _ = c_poller.join();
    // SAFETY: the poll thread is gone; each handle is freed once, the
    // subscription before its instancer, the instancer before its client
    // (any order would do: each holds what it needs).
    unsafe {
        etcd_sd_subscription_free(c_sub);
        etcd_sd_instancer_free(c_instancer);
        etcd_sd_client_free(c_client);
    }
    drop((instancer, client));
    rt.block_on(kv.delete(
        prefix.clone(),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    ))
    .expect("clean up");
    eprintln!("ffi N={n} done");
}
