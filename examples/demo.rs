//! A guided tour: service discovery on a private etcd, in about two seconds.
//!
//! Starts its own etcd (from `ETCD_BIN`, or `etcd` on `PATH`) on 127.0.0.1
//! with free ports and a temporary data directory, then registers three
//! instances of a small TCP service, routes calls to them round robin, and
//! shows every change reaching the Instancer with its latency. etcd is
//! stopped and its directory removed at the end, on error and on Ctrl-C.
//!
//! ```text
//! make demo            # or: cargo run --release --example demo
//! ```

#[path = "common/private_etcd.rs"]
mod private_etcd;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_sd::channel::{self, Receiver};
use etcd_sd::lb::{self, Endpoint, Retry, RoundRobin};
use etcd_sd::sd::{Endpointer, EndpointerOptions};
use etcd_sd::{
    BoxError, Client, ClientOptions, Instancer, Instances, Registrar, RegistrationState, Service,
    TtlOption,
};
use private_etcd::PrivateEtcd;

const PREFIX: &str = "/services/greeter/";
const WAIT: Duration = Duration::from_secs(10);

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let started = Instant::now();
    let etcd = match PrivateEtcd::start("demo", true) {
        Ok(etcd) => {
            println!("etcd-sd demo");
            println!(
                "   etcd {} on {}, data in {} (ready in {:.2} s)",
                etcd.version,
                etcd.endpoint,
                etcd.dir().display(),
                etcd.ready_in.as_secs_f64()
            );
            etcd
        }
        Err(e) => {
            eprintln!("demo: cannot start etcd: {e}");
            eprintln!("      install it (make deps) or point ETCD_BIN at an etcd binary");
            std::process::exit(1);
        }
    };
    let result = tour(&etcd);
    drop(etcd); // kills etcd, removes its directory
    match result {
        Ok(()) => println!(
            "\nDone in {:.1} s: instances deregistered, etcd stopped, its directory removed.",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}

fn tour(etcd: &PrivateEtcd) -> Fallible<()> {
    let options = ClientOptions {
        dial_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let client = Client::connect(&[etcd.endpoint.as_str()], options)?;

    // Discovery side: an Instancer, an Endpointer making one TCP endpoint per
    // instance, a round-robin balancer and a retry policy.
    let instancer = Instancer::new(&client, PREFIX)?;
    let updates = record_updates(&instancer);
    let endpointer = Endpointer::new(&instancer, tcp_endpoint, EndpointerOptions::default());
    let retry = lb::retry(
        3,
        Duration::from_secs(3),
        RoundRobin::new(endpointer.clone()),
    );
    let mut names = Names::default();

    println!("\n1. Three instances of \"greeter\" register under {PREFIX}");
    println!("   (update after: from the call until the Instancer's update arrived)");
    // Three servers on free ports, named in the order of their URLs, which is
    // the order in which the Instancer sorts them.
    let mut listeners = (0..3)
        .map(|_| -> Fallible<_> {
            let l = TcpListener::bind("127.0.0.1:0")?;
            Ok((format!("http://{}", l.local_addr()?), l))
        })
        .collect::<Fallible<Vec<_>>>()?;
    listeners.sort_by(|a, b| a.0.cmp(&b.0));
    let mut registrars = Vec::new();
    for (n, (url, listener)) in listeners.into_iter().enumerate() {
        let name = format!("node-{}", n + 1);
        serve(listener, &name);
        names.add(&url, &name);
        let service = Service::new(format!("{PREFIX}{name}"), url.clone()).with_ttl(
            TtlOption::new(Duration::from_secs(1), Duration::from_secs(3)),
        );
        let registrar = Registrar::new(&client, service);
        let t0 = Instant::now();
        registrar.register()?;
        let (at, _) = wait_for(&updates, |i| i.contains(&url))?;
        println!(
            "   {name}  {url:<22}  lease {:<16x}  update after {}",
            registrar.lease_id().unwrap_or(0),
            micros(at - t0)
        );
        registrars.push(registrar);
    }

    println!("\n2. The Instancer's view: the sorted values under the prefix");
    for value in &instancer.current().instances {
        println!("   {value:<29}  ({})", names.of(value));
    }

    println!("\n3. Nine calls, round robin");
    wait_until(|| endpointer.endpoints().is_ok_and(|e| e.len() == 3))?;
    nine_calls(&retry)?;

    println!("\n4. Changes, as they reach the Instancer");
    let t0 = Instant::now();
    registrars[1].deregister()?;
    let (at, set) = wait_for(&updates, |i| i.len() == 2)?;
    println!(
        "   {:<34} update after {}  ->  {}",
        "node-2 deregisters",
        micros(at - t0),
        names.list(&set)
    );

    let node3 = &registrars[2];
    let states = node3.events();
    let lease = node3.lease_id().ok_or("node-3 has no lease")?;
    let t0 = Instant::now();
    revoke_lease(&etcd.endpoint, lease)?;
    let (at, set) = wait_for(&updates, |i| i.len() == 1)?;
    println!(
        "   {:<34} update after {}  ->  {}",
        "node-3's lease is revoked",
        micros(at - t0),
        names.list(&set)
    );
    for (state, at) in wait_registered(&states)? {
        println!(
            "   {:<34} at {:>9}",
            format!("  node-3's registrar: {state:?}"),
            millis(at - t0)
        );
    }
    let (at, set) = wait_for(&updates, |i| i.len() == 2)?;
    println!(
        "   {:<34} update after {}  ->  {}",
        "node-3 is back",
        micros(at - t0),
        names.list(&set)
    );

    println!("\n5. Nine calls again");
    wait_until(|| endpointer.endpoints().is_ok_and(|e| e.len() == 2))?;
    nine_calls(&retry)?;

    for registrar in &registrars {
        registrar.deregister()?;
    }
    instancer.stop();
    Ok(())
}

/// Every update of the instancer, stamped when it arrived.
fn record_updates(instancer: &Instancer) -> Receiver<(Instant, Instances)> {
    let (tx, rx) = channel::unbounded();
    instancer.on_update(move |event| {
        if event.err.is_none() {
            let _ = tx.send((Instant::now(), event.instances.clone()));
        }
    });
    rx
}

/// The next update whose instances satisfy `pred`.
fn wait_for(
    updates: &Receiver<(Instant, Instances)>,
    pred: impl Fn(&Instances) -> bool,
) -> Fallible<(Instant, Instances)> {
    let deadline = Instant::now() + WAIT;
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, set) = updates
            .recv_timeout(left)
            .map_err(|_| "no matching update within 10 s")?;
        if pred(&set) {
            return Ok((at, set));
        }
    }
    Err("no matching update".into())
}

/// The registrar's state changes until it is registered again.
fn wait_registered(
    states: &Receiver<etcd_sd::RegistrationEvent>,
) -> Fallible<Vec<(RegistrationState, Instant)>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = states
            .recv_timeout(left)
            .map_err(|_| "node-3 did not register again within 10 s")?;
        seen.push((event.state, Instant::now()));
        if event.state == RegistrationState::Registered {
            return Ok(seen);
        }
    }
    Err("node-3 did not register again".into())
}

fn wait_until(f: impl Fn() -> bool) -> Fallible<()> {
    for _ in 0..500 {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the endpointer did not catch up within 10 s".into())
}

fn nine_calls(retry: &Retry<RoundRobin<Endpoint<(), String>>>) -> Fallible<()> {
    let mut line = String::from("  ");
    for call in 1..=9 {
        let served_by = retry.call(())?;
        line.push_str(&format!(" call {call} -> {served_by:<8}"));
        if call % 3 == 0 {
            println!("{}", line.trim_end());
            line = String::from("  ");
        }
    }
    Ok(())
}

fn micros(d: Duration) -> String {
    format!("{:>7} µs", d.as_micros())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Instance values and the names of the nodes behind them.
#[derive(Default)]
struct Names(HashMap<String, String>);

impl Names {
    fn add(&mut self, url: &str, name: &str) {
        self.0.insert(url.to_string(), name.to_string());
    }
    fn of(&self, url: &str) -> &str {
        self.0.get(url).map(String::as_str).unwrap_or("?")
    }
    fn list(&self, set: &Instances) -> String {
        set.iter()
            .map(|u| self.of(u))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// --- the service: a TCP server that answers with its name ------------------

/// Answers every connection to `listener` with `name` (for as long as the
/// demo runs).
fn serve(listener: TcpListener, name: &str) {
    let name = name.to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = writeln!(stream, "{name}");
        }
    });
}

/// The endpoint factory: a call connects to the instance and reads its name.
fn tcp_endpoint(
    instance: &str,
) -> Result<(Endpoint<(), String>, Option<etcd_sd::sd::Closer>), BoxError> {
    let addr: SocketAddr = instance
        .strip_prefix("http://")
        .unwrap_or(instance)
        .parse()?;
    let endpoint: Endpoint<(), String> = Arc::new(move |()| {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut name = String::new();
        BufReader::new(stream).read_line(&mut name)?;
        Ok(name.trim().to_string())
    });
    Ok((endpoint, None))
}

/// Revokes a lease as another client would (`etcdctl lease revoke`), through
/// etcd's JSON gateway on the client port.
fn revoke_lease(endpoint: &str, id: i64) -> Fallible<()> {
    let addr: SocketAddr = endpoint.parse()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let body = format!("{{\"ID\":\"{id}\"}}");
    write!(
        stream,
        "POST /v3/lease/revoke HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if status.contains(" 200 ") {
        Ok(())
    } else {
        Err(format!("lease revoke refused: {status}").into())
    }
}
