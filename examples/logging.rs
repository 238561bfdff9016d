//! How to see what etcd-sd logs: a Registrar and an Instancer on one Client,
//! with `env_logger` printing the crate's records on stderr.
//!
//! etcd-sd logs through the `log` facade, one target per module:
//!
//! | target                   | what                                                        |
//! | ------------------------ | ----------------------------------------------------------- |
//! | `etcd_sd::runtime`       | connected; auth token refreshes; runtime shutdown           |
//! | `etcd_sd::registrar`     | state changes (`Registering`, `Registered`, `Deregistered`) at info; `Lost` and the first failure of each kind at warn; repeated failures at debug |
//! | `etcd_sd::instancer`     | watch down at warn (once per outage); re-read after compaction at info; each failed attempt at debug |
//! | `etcd_sd::dispatch`      | a panicking callback at error; stops at debug               |
//! | `etcd_sd::sd`            | factory failures at warn; invalidation at warn; recovery at info |
//! | `etcd_sd::client`        | replaced registrations of `Client::register` at debug       |
//! | `etcd_sd::watch_prefix`  | `Client::watch_prefix` retries at debug                     |
//!
//! Run it against any etcd v3 (default `127.0.0.1:2379`), then stop or
//! restart etcd while it runs to see losses and recoveries:
//!
//! ```text
//! ETCD_ENDPOINTS=127.0.0.1:2379 cargo run --example logging
//! RUST_LOG=etcd_sd=debug cargo run --example logging      # retries too
//! RUST_LOG=etcd_sd::registrar=info cargo run --example logging
//! LOGGING_SECS=60 cargo run --example logging             # watch for longer
//! ```
//!
//! Without `RUST_LOG` it shows `etcd_sd` at `info`.

use std::time::{Duration, Instant};

use etcd_sd::{Client, ClientOptions, Instancer, Registrar, Service, TtlOption};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `RUST_LOG` if set, else everything etcd-sd logs at info and above.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("etcd_sd=info"))
        .init();

    let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2379".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let secs: u64 = std::env::var("LOGGING_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);

    let client = Client::connect(&endpoints, ClientOptions::default())?;

    // Heartbeat 1 s, ttl 3 s: a restart of etcd longer than 3 s loses the
    // lease, and the log shows `Lost`, then `Registered` again.
    let service = Service::new("/services/logging-example/1", "http://127.0.0.1:8080").with_ttl(
        TtlOption::new(Duration::from_secs(1), Duration::from_secs(3)),
    );
    let registrar = Registrar::new(&client, service);
    if let Err(e) = registrar.register() {
        // Not fatal: the registrar keeps trying (and logs it).
        eprintln!("register: {e}");
    }

    let instancer = Instancer::new(&client, "/services/logging-example/")?;
    let updates = instancer.subscribe();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match updates.recv_timeout(left) {
            Ok(event) => match &event.err {
                None => println!("instances: {:?}", event.instances),
                Some(e) => println!("instances (stale, {e}): {:?}", event.instances),
            },
            Err(_) => break,
        }
    }

    // Dropping them deregisters and stops, and logs it.
    drop(instancer);
    drop(registrar);
    Ok(())
}
