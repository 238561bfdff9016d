//! Integration-test harness, shared by every `tests/*.rs` (as `mod support;`)
//! and by `examples/soak.rs` and `benches/bench.rs` (through `#[path]`).
//!
//! - [`etcd`]: a real, single-member etcd process on 127.0.0.1
//!   ([`EtcdServer`], [`EtcdConfig`], [`ServerTls`]) with its etcdctl
//!   wrappers, and [`RawEtcd`], which talks to etcd directly with
//!   `etcd_client` (byte keys, many fast writes).
//! - [`cluster`]: [`EtcdCluster`], several such members in one cluster.
//! - [`proxy`]: [`FaultProxy`] sits between a client and etcd to cut the link
//!   while etcd keeps running; [`SilentPort`] accepts TCP and never answers;
//!   [`closed_endpoint`] is a port nothing listens on.
//! - [`probe`]: what the OS says about this process (threads, established
//!   connections, memory), and the scraping of etcd's metrics and of
//!   etcdctl's output.
//! - [`go`]: the Go program of the naming tests (`tests/go/naming_peer`),
//!   built once with etcd's own Go naming packages.
//! - [`api`]: helpers on top of the `etcd_sd` API (clients, registrations,
//!   waiting for events), used as `use support::api::*;`.
//! - here: free ports, unique key prefixes, bounded polling, `secs`/`ms`.
//!
//! Binaries come from `ETCD_BIN` / `ETCDCTL_BIN` (default `etcd` / `etcdctl`
//! on `PATH`). Every server gets its own free client and peer ports on
//! 127.0.0.1, its own temporary data directory and a log file inside it. All
//! waits are bounded; `Drop` kills the process and removes the directory (also
//! while a test panics, in which case the tail of the etcd log is printed).
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod api;
pub mod cluster;
pub mod etcd;
pub mod go;
pub mod probe;
pub mod proxy;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// The names test files import from `support` directly (each uses some).
#[allow(unused_imports)]
pub use self::{
    cluster::EtcdCluster,
    etcd::{EtcdConfig, EtcdServer, RawEtcd, ServerTls, START_TIMEOUT},
    probe::{established_remote_ports, rss_kib, thread_count, thread_names},
    proxy::{closed_endpoint, FaultProxy, SilentPort},
};

/// Ports are picked in this range, which is below Linux's default ephemeral
/// range (32768-60999). A port handed out by `bind(0)` could otherwise be
/// taken, while a server is killed, by another test's etcd or by an outgoing
/// connection of a reconnecting client (TCP self-connect to the dead port).
/// It also stays clear of the 2379x/2380x ports people use for a local etcd.
const PORT_LOW: u16 = 24_000;
const PORT_HIGH: u16 = 32_000;

static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Whether nothing listens on 127.0.0.1:`port` and it can be bound.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free TCP port on 127.0.0.1, outside the ephemeral range when possible,
/// never the same twice in this process.
pub fn free_port() -> u16 {
    let span = u32::from(PORT_HIGH - PORT_LOW);
    if PORT_CURSOR.load(Ordering::Relaxed) == 0 {
        // Spread concurrently running test binaries over the range.
        let seed = (std::process::id().wrapping_mul(7919)) % span + 1;
        let _ = PORT_CURSOR.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = PORT_CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = PORT_LOW + (n % span) as u16;
        if port_is_free(port) {
            return port;
        }
    }
    // Fallback: let the OS choose.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A unique key prefix ending with `/`, for one test.
pub fn unique_prefix(name: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("/etcd-sd-it/{}-{}-{}/", name, std::process::id(), n)
}

/// Polls `f` every ~50 ms until it returns true or `timeout` passes.
/// Returns whether `f` returned true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    // Bounded in count as well as in time.
    let max_iters = (timeout.as_millis() / 50 + 2) as usize;
    for _ in 0..max_iters {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
