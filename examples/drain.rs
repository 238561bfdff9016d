//! Draining on SIGTERM: the Kubernetes pre-stop pattern.
//!
//! A service registers itself, serves (simulated requests that take a
//! while), and on SIGTERM or Ctrl-C:
//!
//! 1. pauses its registration ([`Registrar::pause`]): the lease is revoked,
//!    so the key leaves etcd at once and Instancers everywhere stop sending
//!    new clients here, while this process keeps running;
//! 2. stops taking new work and waits a fixed grace period for the requests
//!    in flight to finish;
//! 3. exits with status 0.
//!
//! The client is made with [`Client::connect_lazy`], so the service also
//! starts while etcd is down (it registers by itself once etcd answers).
//!
//! ```text
//! cargo run --example drain                    # its own etcd on 127.0.0.1 (ETCD_BIN or etcd on PATH)
//! cargo run --example drain -- 127.0.0.1:2379  # an etcd of yours
//! kill -TERM <pid>                             # or Ctrl-C
//! ```
//!
//! Environment: `DRAIN_GRACE_MS` (default 2000), the grace period.

#[path = "common/private_etcd.rs"]
mod private_etcd;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etcd_sd::channel;
use etcd_sd::{Client, ClientOptions, Registrar, Service, TtlOption};
use private_etcd::PrivateEtcd;

const PREFIX: &str = "/services/drain-example/";

fn main() {
    // First of all, so that a SIGTERM during start-up is not lost (and does
    // not kill the process before the private etcd is stopped).
    let (signal_tx, signals) = channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = signal_tx.try_send(());
    }) {
        eprintln!("drain: cannot handle SIGTERM: {e}");
        std::process::exit(1);
    }
    let grace = Duration::from_millis(
        std::env::var("DRAIN_GRACE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );

    // Either the etcd given on the command line, or a private one.
    let (endpoint, private) = match std::env::args().nth(1) {
        Some(endpoint) => (endpoint, None),
        None => match PrivateEtcd::start("drain", false) {
            Ok(etcd) => {
                println!(
                    "etcd {} on {}, data in {} (ready in {:.2} s)",
                    etcd.version,
                    etcd.endpoint,
                    etcd.dir().display(),
                    etcd.ready_in.as_secs_f64()
                );
                (etcd.endpoint.clone(), Some(etcd))
            }
            Err(e) => {
                eprintln!("drain: cannot start etcd: {e}");
                eprintln!("       install it (make deps), point ETCD_BIN at an etcd binary,");
                eprintln!("       or give the endpoint of a running etcd as the argument");
                std::process::exit(1);
            }
        },
    };

    let code = match run(&endpoint, &signals, grace) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drain: {e}");
            1
        }
    };
    drop(private); // stops the private etcd, removes its directory
    std::process::exit(code);
}

fn run(
    endpoint: &str,
    signals: &channel::Receiver<()>,
    grace: Duration,
) -> Result<(), etcd_sd::Error> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    // Returns at once, even with etcd down; it dials in the background.
    let client = Client::connect_lazy(&[endpoint], options)?;

    // The "server": a worker that takes a request every 100 ms, each taking
    // 500 ms, until told to stop taking new ones.
    let server = Server::start();
    let key = format!("{PREFIX}pid-{}", std::process::id());
    let service = Service::new(key.clone(), "http://127.0.0.1:8080").with_ttl(TtlOption::new(
        Duration::from_secs(1),
        Duration::from_secs(5),
    ));
    let registrar = Registrar::new(&client, service);
    match registrar.register() {
        Ok(()) => println!(
            "registered {key} (lease {:x})",
            registrar.lease_id().unwrap_or(0)
        ),
        // The registrar keeps trying; it is registered once etcd answers.
        Err(e) => println!("not registered yet ({e}); retrying in the background"),
    }
    println!(
        "serving (pid {}); send SIGTERM or press Ctrl-C to drain",
        std::process::id()
    );

    // Serve until the signal.
    let _ = signals.recv();
    let t = Instant::now();
    println!("SIGTERM: draining");

    // 1. Out of the pool: the key goes now, nothing registers it again.
    match registrar.pause() {
        Ok(()) => println!(
            "paused: {key} removed from etcd in {:.0} ms (state {:?})",
            t.elapsed().as_secs_f64() * 1000.0,
            registrar.state()
        ),
        // etcd unreachable: the key expires by itself after its ttl.
        Err(e) => println!(
            "paused ({e}); the key expires within its ttl (state {:?})",
            registrar.state()
        ),
    }

    // 2. No new work; let what is in flight finish, for at most the grace
    // period.
    server.stop_taking_work();
    if server.wait_idle(grace) {
        println!(
            "requests in flight finished {:.1} s after SIGTERM; {} served in all",
            t.elapsed().as_secs_f64(),
            server.served()
        );
    } else {
        println!(
            "grace period ({:.1} s) over with {} request(s) still in flight; {} served",
            grace.as_secs_f64(),
            server.in_flight(),
            server.served()
        );
    }

    // 3. Exit. Dropping a paused registrar has nothing left to revoke.
    drop(registrar);
    println!("exiting");
    Ok(())
}

/// A stand-in for a real server: requests start every 100 ms and take
/// 500 ms each, on their own threads.
struct Server {
    accepting: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl Server {
    fn start() -> Server {
        let server = Server {
            accepting: Arc::new(AtomicBool::new(true)),
            in_flight: Arc::default(),
            served: Arc::default(),
        };
        let (accepting, in_flight, served) = (
            server.accepting.clone(),
            server.in_flight.clone(),
            server.served.clone(),
        );
        thread::spawn(move || {
            while accepting.load(Ordering::SeqCst) {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (in_flight, served) = (in_flight.clone(), served.clone());
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(500)); // the work
                    served.fetch_add(1, Ordering::SeqCst);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
                thread::sleep(Duration::from_millis(100));
            }
        });
        server
    }

    fn stop_taking_work(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Waits until nothing is in flight, at most `grace`; true if it got there.
    fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.in_flight() == 0 {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.in_flight() == 0
    }
}
