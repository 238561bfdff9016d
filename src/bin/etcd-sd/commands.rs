//! The subcommands, each a plain function over the library's blocking API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_sd::channel::{self, select, Receiver};
use etcd_sd::lb::{Balancer, Random, RoundRobin};
use etcd_sd::naming::Endpoint;
use etcd_sd::sd::{Endpointer, EndpointerOptions};
use etcd_sd::{
    Client, ClientOptions, Error, ErrorKind, Event, Instancer, InstancerOptions, Registrar,
    RegistrationEvent, RegistrationState, Service, TtlOption,
};

use crate::args::{Connection, SnapshotArgs};
use crate::output;
use crate::Failure;

/// Connects, after checking the flags that the library cannot explain as
/// well (which TLS file is unreadable, a password without a user).
fn connect(c: &Connection) -> Result<Client, Failure> {
    for (flag, path) in [
        ("--cacert", &c.tls_ca_cert),
        ("--cert", &c.tls_cert),
        ("--key", &c.tls_key),
    ] {
        if let Some(path) = path {
            let problem = match std::fs::read(path) {
                Err(e) => Some(e.to_string()),
                Ok(pem) if !pem.windows(11).any(|w| w == b"-----BEGIN ") => {
                    Some("not a PEM file".to_string())
                }
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                return Err(Failure::new(
                    Failure::TLS_OR_AUTH,
                    format!("cannot use {flag} {}: {problem}", path.display()),
                ));
            }
        }
    }
    let (username, password) = match (&c.user, &c.password) {
        (Some(user), None) if user.contains(':') => {
            let (u, p) = user.split_once(':').unwrap_or_default();
            (Some(u.to_string()), Some(p.to_string()))
        }
        (None, Some(_)) => {
            return Err(Failure::new(Failure::USAGE, "--password needs --user"));
        }
        (u, p) => (u.clone(), p.clone()),
    };
    let options = ClientOptions {
        cert: c.tls_cert.clone(),
        key: c.tls_key.clone(),
        ca_cert: c.tls_ca_cert.clone(),
        dial_timeout: c.dial_timeout,
        dial_keep_alive: Duration::ZERO,
        request_timeout: c.request_timeout,
        username,
        password,
    };
    Client::connect(&c.endpoints, options).map_err(|e| {
        let f = Failure::from_error(&format!("cannot connect to {}", c.endpoints.join(",")), &e);
        if f.code == Failure::UNREACHABLE {
            Failure::new(
                f.code,
                format!(
                    "{} (is etcd running? see --endpoints, --dial-timeout)",
                    f.message
                ),
            )
        } else {
            f
        }
    })
}

/// Sends one message per Ctrl-C / SIGTERM / SIGHUP; a second one exits at once.
fn interrupts() -> Result<Receiver<()>, Failure> {
    let (tx, rx) = channel::bounded(1);
    let mut seen = false;
    ctrlc::set_handler(move || {
        if seen {
            eprintln!("etcd-sd: interrupted again, exiting now");
            std::process::exit(130);
        }
        seen = true;
        let _ = tx.try_send(());
    })
    .map_err(|e| Failure::new(Failure::OTHER, format!("cannot handle Ctrl-C: {e}")))?;
    Ok(rx)
}

/// The value `register` writes: VALUE itself, or with `--naming` the
/// naming-format value of address VALUE and `metadata`.
pub fn naming_value(value: &str, naming: bool, metadata: Option<&str>) -> Result<String, Failure> {
    if !naming {
        return Ok(value.to_string());
    }
    // An empty address would still make a non-empty value, which Go's
    // resolver dials as "": as for a plain value, a usage error.
    if value.is_empty() {
        return Err(Failure::new(Failure::USAGE, "the address is empty"));
    }
    let mut endpoint = Endpoint::new(value);
    if let Some(json) = metadata {
        endpoint = endpoint
            .with_metadata(json)
            .map_err(|e| Failure::new(Failure::USAGE, format!("--metadata: {}", e.message())))?;
    }
    Ok(endpoint.encode())
}

/// `register KEY VALUE`: stays registered until interrupted.
pub fn register(
    c: &Connection,
    key: &str,
    value: &str,
    ttl: Duration,
    heartbeat: Duration,
) -> Result<(), Failure> {
    let ttl = TtlOption::new(heartbeat, ttl);
    let service = Service::new(key, value).with_ttl(ttl);
    // Before connecting: an empty key or value is a usage error.
    if key.is_empty() {
        return Err(Failure::new(Failure::USAGE, "the key is empty"));
    }
    if value.is_empty() {
        return Err(Failure::new(Failure::USAGE, "the value is empty"));
    }
    let client = connect(c)?;
    let stop = interrupts()?;
    let registrar = Registrar::new(&client, service);
    let events = registrar.events();
    // A closed stdout (`?`) ends the command; dropping the registrar then
    // deregisters it.
    output::line(&format!(
        "{}  registering {} = {} (heartbeat {:?}, ttl {:?}); Ctrl-C to deregister",
        output::now(),
        output::one_line(key),
        output::one_line(value),
        ttl.heartbeat(),
        ttl.ttl()
    ))?;
    if let Err(e) = registrar.register() {
        match e.kind() {
            ErrorKind::Unavailable | ErrorKind::Timeout => {
                eprintln!("etcd-sd: not registered yet ({e}); still trying");
            }
            _ => return Err(Failure::from_error(&format!("cannot register {key}"), &e)),
        }
    }
    loop {
        select! {
            recv(events) -> ev => match ev {
                Ok(ev) => print_state(&ev)?,
                Err(_) => break,
            },
            recv(stop) -> _ => break,
        }
    }
    let result = registrar.deregister();
    let mut printed = false;
    for ev in events.try_iter() {
        printed |= ev.state == RegistrationState::Deregistered;
        print_state(&ev)?;
    }
    match result {
        Ok(()) => {
            if !printed {
                output::line(&format!(
                    "{}  {:<13} {}",
                    output::now(),
                    "Deregistered",
                    output::one_line(key)
                ))?;
            }
            Ok(())
        }
        Err(e) => Err(Failure::from_error(
            &format!(
                "deregister {key} (the key expires by itself after {:?})",
                ttl.ttl()
            ),
            &e,
        )),
    }
}

fn print_state(ev: &RegistrationEvent) -> Result<(), Failure> {
    let lease = ev
        .lease_id
        .map(|id| format!("lease {id:x}"))
        .unwrap_or_default();
    let error = ev
        .error
        .as_ref()
        .map(|e| format!("  ({})", output::one_line(&e.to_string())))
        .unwrap_or_default();
    let line = format!(
        "{}  {:<13} {lease}{error}",
        output::now(),
        format!("{:?}", ev.state)
    );
    output::line(line.trim_end())
}

/// How often `watch --stats` prints the counters.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The options of an Instancer with `--snapshot`, if given.
fn instancer_options(snapshot: &SnapshotArgs) -> Option<InstancerOptions> {
    snapshot.snapshot.as_ref().map(|path| {
        InstancerOptions::new()
            .snapshot_file(path)
            .snapshot_max_age(snapshot.snapshot_max_age)
    })
}

/// How often `watch --snapshot` tries to connect while etcd is unreachable.
const CONNECT_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// `watch PREFIX`: every event until interrupted.
pub fn watch(
    c: &Connection,
    prefix: &str,
    json: bool,
    stats: bool,
    snapshot: &SnapshotArgs,
) -> Result<(), Failure> {
    let options = instancer_options(snapshot);
    let stop = interrupts()?;
    let client = match (connect(c), &options) {
        (Ok(client), _) => client,
        (Err(f), Some(options)) if f.code == Failure::UNREACHABLE => {
            // Start from the snapshot, as an error event, and keep trying.
            let instances = options.read_snapshot(prefix).unwrap_or_default();
            let from = match options.snapshot_path() {
                Some(p) => format!("instances from snapshot {}", p.display()),
                None => String::new(),
            };
            let event = Event {
                instances,
                err: Some(Error::new(
                    ErrorKind::Unavailable,
                    format!("{}; {from}", f.message),
                )),
            };
            output::lines(output::event_lines(&output::now(), &event, json))?;
            let mut connected = None;
            // Bounded by the user: until etcd answers or Ctrl-C.
            while connected.is_none() {
                if stop.recv_timeout(CONNECT_AGAIN_EVERY).is_ok() {
                    return Ok(());
                }
                connected = connect(c).ok();
            }
            connected.unwrap_or_else(|| unreachable!())
        }
        (Err(f), _) => return Err(f),
    };
    let instancer = match options {
        Some(options) => Instancer::with_options(&client, prefix, options),
        None => Instancer::new(&client, prefix),
    }
    .map_err(|e| Failure::from_error(&format!("cannot watch {prefix}"), &e))?;
    let updates = instancer.subscribe();
    let ticks = if stats {
        crossbeam_channel::tick(STATS_EVERY)
    } else {
        crossbeam_channel::never()
    };
    loop {
        select! {
            recv(updates) -> ev => match ev {
                Ok(ev) => output::lines(output::event_lines(&output::now(), &ev, json))?,
                Err(_) => break,
            },
            recv(ticks) -> _ => output::stats_line(&output::now(), &client.stats(), json),
            recv(stop) -> _ => break,
        }
    }
    instancer.stop();
    Ok(())
}

/// `list PREFIX`: the values, in key order. With `--snapshot`, etcd's state
/// is also written to the file, and when etcd is unreachable the file's
/// instances are printed instead (a note on stderr, exit status 6).
pub fn list(
    c: &Connection,
    prefix: &str,
    json: bool,
    snapshot: &SnapshotArgs,
) -> Result<(), Failure> {
    let options = instancer_options(snapshot);
    let values = connect(c).and_then(|client| {
        let values = client
            .get_entries(prefix)
            .map_err(|e| Failure::from_error(&format!("cannot list {prefix}"), &e))?;
        if let Some(options) = &options {
            // Its first read is written to the file; stop writes it now.
            if let Ok(instancer) = Instancer::with_options(&client, prefix, options.clone()) {
                instancer.stop();
            }
        }
        Ok(values)
    });
    let values = match (values, &options) {
        (Ok(values), _) => values,
        (Err(f), Some(options)) if f.code == Failure::UNREACHABLE => {
            let path = options
                .snapshot_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let Some(instances) = options.read_snapshot(prefix) else {
                return Err(Failure::new(
                    f.code,
                    format!("{}; no usable snapshot in {path}", f.message),
                ));
            };
            let n = instances.len();
            eprintln!(
                "etcd-sd: {}; printing the {n} instance{} of snapshot {path} instead (etcd's state may differ)",
                f.message,
                if n == 1 { "" } else { "s" }
            );
            if json {
                output::line(&output::instances_json(instances.iter()))?;
            } else {
                output::lines(instances.iter().map(|v| output::instance_line(v)))?;
            }
            return Err(Failure::new(Failure::FROM_SNAPSHOT, ""));
        }
        (Err(f), _) => return Err(f),
    };
    if json {
        output::line(&output::instances_json(values.iter().map(String::as_str)))
    } else {
        output::lines(values.iter().map(|v| output::instance_line(v)))
    }
}

/// `pick PREFIX`: `n` picks of a round-robin or random balancer.
pub fn pick(
    c: &Connection,
    prefix: &str,
    n: u64,
    random: bool,
    seed: Option<u64>,
) -> Result<(), Failure> {
    let client = connect(c)?;
    let instancer = Instancer::new(&client, prefix)
        .map_err(|e| Failure::from_error(&format!("cannot read {prefix}"), &e))?;
    let endpointer = Endpointer::new(
        &instancer,
        |instance: &str| Ok((instance.to_string(), None)),
        EndpointerOptions::default(),
    );
    let balancer: Box<dyn Balancer<String>> = if random {
        let seed = seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Box::new(Random::new(endpointer, seed))
    } else {
        Box::new(RoundRobin::new(endpointer))
    };
    for _ in 0..n {
        let instance = balancer.endpoint().map_err(|e| {
            if e.kind() == ErrorKind::NoEndpoints {
                Failure::new(Failure::NO_INSTANCES, format!("no instance under {prefix}"))
            } else {
                Failure::from_error("pick", &e)
            }
        })?;
        output::line(&output::one_line(&instance))?;
    }
    Ok(())
}
