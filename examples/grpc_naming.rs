//! A service registered in etcd's own naming format, which Go services and
//! gRPC clients find: what `etcd:///services/greeter` resolves to.
//!
//! Starts its own etcd (from `ETCD_BIN`, or `etcd` on `PATH`) on 127.0.0.1
//! with free ports and a temporary data directory, registers two instances
//! of `services/greeter` as `naming::Endpoint`s, reads them back with an
//! Instancer as a Go `endpoints.Manager` would list them, and prints what a
//! Go gRPC client dialing `etcd:///services/greeter` connects to, before and
//! after one instance leaves. etcd is stopped and its directory removed at
//! the end.
//!
//! ```text
//! cargo run --example grpc_naming
//! ```
//!
//! The Go client it stands for (etcd 3.4's packages; 3.5 moved them to
//! `go.etcd.io/etcd/client/v3/naming/resolver`):
//!
//! ```text
//! r, _ := resolver.NewBuilder(etcdClient)
//! conn, _ := grpc.Dial("etcd:///services/greeter", grpc.WithResolvers(r),
//!     grpc.WithInsecure(), grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_sd::naming::Endpoint;
use etcd_sd::{Client, ClientOptions, Event, Instancer, Registrar, Service, TtlOption};

/// The gRPC target: keys are `TARGET/<anything>`.
const TARGET: &str = "services/greeter";
const WAIT: Duration = Duration::from_secs(10);

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let etcd = match PrivateEtcd::start() {
        Ok(etcd) => etcd,
        Err(e) => {
            eprintln!("grpc_naming: cannot start etcd: {e}");
            eprintln!("             install it (make deps) or point ETCD_BIN at an etcd binary");
            std::process::exit(1);
        }
    };
    let result = run(&etcd.endpoint);
    drop(etcd);
    if let Err(e) = result {
        eprintln!("grpc_naming failed: {e}");
        std::process::exit(1);
    }
    println!("done: instances deregistered, etcd stopped");
}

fn run(endpoint: &str) -> Fallible<()> {
    let options = ClientOptions {
        dial_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let client = Client::connect(&[endpoint], options)?;
    let ttl = TtlOption::new(Duration::from_secs(1), Duration::from_secs(5));

    // Two instances. Metadata is any JSON; a string, because gRPC-Go dialers
    // up to 1.33 on etcd 3.4's resolver crash on an object or array.
    let instances = [
        Endpoint::new("10.0.0.1:50051").with_metadata(r#""zone-a""#)?,
        Endpoint::new("10.0.0.2:50051"),
    ];
    let mut registrars = Vec::new();
    for e in &instances {
        let key = format!("{TARGET}/{}", e.addr);
        let value = e.encode();
        println!("register  {key}\n       =  {value}");
        let registrar = Registrar::new(&client, Service::new(key, value).with_ttl(ttl));
        registrar.register()?;
        registrars.push(registrar);
    }

    // What Go's endpoints.Manager lists, and what etcd:/// dials.
    let instancer = Instancer::new(&client, &format!("{TARGET}/"))?;
    let updates = instancer.subscribe();
    let ev = wait_for(&updates, 2)?;
    show(&ev)?;

    // One instance leaves: Go's resolver drops it at once.
    let leaving = registrars.remove(0);
    leaving.deregister()?;
    println!("deregistered {}", leaving.service().key);
    let ev = wait_for(&updates, 1)?;
    show(&ev)?;
    Ok(())
}

/// The next event with `n` instances.
fn wait_for(updates: &etcd_sd::channel::Receiver<Event>, n: usize) -> Fallible<Event> {
    let deadline = Instant::now() + WAIT;
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = updates.recv_timeout(left)?;
        if ev.err.is_none() && ev.instances.len() == n {
            return Ok(ev);
        }
    }
    Err(format!("no event with {n} instances").into())
}

/// Prints what a Go client of `etcd:///TARGET` would dial.
fn show(ev: &Event) -> Fallible<()> {
    let mut endpoints = ev
        .instances
        .iter()
        .map(Endpoint::decode)
        .collect::<Result<Vec<_>, _>>()?;
    endpoints.sort_by(|a, b| a.addr.cmp(&b.addr));
    println!("a Go client dialing etcd:///{TARGET} connects to:");
    for e in &endpoints {
        println!(
            "    {}  (metadata: {})",
            e.addr,
            e.metadata.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// etcd on 127.0.0.1 with free ports and a temporary data directory; killed
/// (and its directory removed) when dropped.
struct PrivateEtcd {
    endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PrivateEtcd {
    fn start() -> Fallible<PrivateEtcd> {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let dir = tempfile::Builder::new()
            .prefix("etcd-sd-grpc-naming-")
            .tempdir()?;
        let free =
            || -> Fallible<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (client_port, peer_port) = (free()?, free()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            // etcd reads ETCD_* variables as flags: keep the user's out.
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--name", "grpc-naming", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("grpc-naming={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut etcd = PrivateEtcd {
            endpoint: format!("127.0.0.1:{client_port}"),
            child: cmd.spawn()?,
            _dir: dir,
        };
        // Ready when a client connects (bounded: 50 tries, 10 s).
        let options = ClientOptions {
            dial_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let deadline = Instant::now() + WAIT;
        for _ in 0..50 {
            if Client::connect(&[etcd.endpoint.as_str()], options.clone()).is_ok() {
                println!("etcd on {}", etcd.endpoint);
                return Ok(etcd);
            }
            if let Some(status) = etcd.child.try_wait()? {
                return Err(format!("etcd exited: {status}").into());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("etcd on {} did not answer within {WAIT:?}", etcd.endpoint).into())
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
