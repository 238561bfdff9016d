//! Starting while etcd is down (`Client::connect_lazy`) and draining
//! (`Registrar::pause` / `resume`, `RegistrationState::Paused`): API.md 5.1.
//!
//! Every wait is bounded; bounds are the contract's plus generous margins
//! (shared, noisy machines).

mod support;

use std::time::{Duration, Instant};

use etcd_sd::{Client, ClientOptions, ErrorKind, Instancer, Registrar, RegistrationState as S};
use etcd_sd::{Service, TtlOption};
use support::api::*;
use support::{closed_endpoint, secs, unique_prefix, wait_until, EtcdServer};

/// The request timeout the tests use.
const REQUEST: Duration = Duration::from_secs(2);

/// Slack on top of a bound of the contract (thread scheduling, etcdctl).
const MARGIN: Duration = Duration::from_secs(3);

fn lazy(endpoint: &str) -> Client {
    Client::connect_lazy(&[endpoint], options(REQUEST))
        .unwrap_or_else(|e| panic!("connect_lazy {endpoint}: {e} ({:?})", e.kind()))
}

fn service(key: &str, value: &str) -> Service {
    Service::new(key, value).with_ttl(short_ttl())
}

/// Checks, every 250 ms for `span`, that `key` is absent and `reg` Paused.
fn assert_stays_away(etcd: &EtcdServer, reg: &Registrar, key: &str, span: Duration) {
    let deadline = Instant::now() + span;
    for _ in 0..(span.as_millis() / 250 + 1) {
        assert!(!etcd.exists(key), "{key} came back during the pause");
        assert_eq!(reg.state(), S::Paused);
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn lazy_client_starts_with_etcd_down_and_registers_once_it_is_up() {
    let mut etcd = EtcdServer::start();
    etcd.kill(); // its port stays this server's
    let p = unique_prefix("lazy-down");
    let key = format!("{p}svc");

    let t = Instant::now();
    let client = lazy(&etcd.endpoint());
    assert!(t.elapsed() < secs(2), "connect_lazy took {:?}", t.elapsed());
    assert_eq!(client.endpoints(), [etcd.endpoint_url()]);
    assert!(!client.stats().connected);

    // Calls that need etcd fail in time, with the kinds of an outage.
    let t = Instant::now();
    let r = client.get_entries(&p);
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "get_entries");
    let t = Instant::now();
    let r = Instancer::new(&client, &p);
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "Instancer::new");
    let notifier = client.watch_prefix(&p).expect("watch_prefix");
    assert!(notifier.recv_timeout(secs(1)).is_ok(), "initial sentinel");

    // A registrar made now fails its register() but keeps trying.
    let reg = Registrar::new(&client, service(&key, "10.0.0.1:8080"));
    let events = reg.events();
    let t = Instant::now();
    let r = reg.register();
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "register");
    assert_eq!(reg.state(), S::Registering);
    assert_eq!(client.stats().registered, 0);

    // Long enough for every backoff in play to reach its 5 s cap.
    std::thread::sleep(secs(8));
    assert_eq!(reg.state(), S::Registering);

    etcd.restart();
    let up = Instant::now();
    // Registered within 5 s of etcd answering, with no call from the test.
    let within = secs(5) + MARGIN;
    assert!(
        wait_until(within, || reg.state() == S::Registered),
        "not registered {within:?} after etcd came back (state {:?})",
        reg.state()
    );
    let took = up.elapsed();
    assert_eq!(etcd.get(&key).as_deref(), Some("10.0.0.1:8080"));
    let (ok, seen) = recv_states_until(&events, secs(1), |e, _| e.state == S::Registered);
    assert!(ok, "no Registered event: {seen:?}");
    eprintln!("registered {took:?} after etcd restarted");

    // From now on it is a connected client.
    assert!(wait_until(secs(2), || client.stats().connected));
    assert_eq!(client.stats().registered, 1);
    assert_eq!(client.get_entries(&p).unwrap(), ["10.0.0.1:8080"]);
    let instancer = Instancer::new(&client, &p).expect("Instancer::new after etcd is up");
    assert_eq!(instancer.current().instances.to_vec(), ["10.0.0.1:8080"]);
    etcd.put(&format!("{p}other"), "10.0.0.2:8080");
    assert!(
        notifier.recv_timeout(secs(5) + MARGIN).is_ok(),
        "watch_prefix made before the first answer saw no change"
    );
    reg.deregister().unwrap();
    assert!(!etcd.exists(&key));
}

#[test]
fn lazy_client_of_several_endpoints_uses_the_one_that_answers() {
    let mut etcd = EtcdServer::start();
    etcd.kill();
    let dead = closed_endpoint();
    let p = unique_prefix("lazy-multi");
    let key = format!("{p}svc");
    let client = Client::connect_lazy(&[dead.as_str(), &etcd.endpoint()], options(REQUEST))
        .expect("connect_lazy");
    let reg = Registrar::new(&client, service(&key, "v"));
    let t = Instant::now();
    let r = reg.register();
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "register");
    etcd.restart();
    assert!(
        wait_until(secs(5) + MARGIN, || reg.state() == S::Registered),
        "not registered after etcd came back (state {:?})",
        reg.state()
    );
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
    assert_eq!(client.get_entries(&p).unwrap(), ["v"]);
}

#[test]
fn lazy_client_with_etcd_up_behaves_as_connect() {
    let etcd = EtcdServer::start();
    let p = unique_prefix("lazy-up");
    let client = lazy(&etcd.endpoint());
    // No wait: the first call itself reaches etcd.
    assert_eq!(client.get_entries(&p).unwrap(), Vec::<String>::new());
    let reg = registered(&client, format!("{p}a"), "A");
    assert_eq!(reg.state(), S::Registered);
    let instancer = Instancer::new(&client, &p).unwrap();
    assert_eq!(instancer.current().instances.to_vec(), ["A"]);
    client.register(&service(&format!("{p}b"), "B")).unwrap();
    assert_ne!(client.lease_id(), 0);
    assert_eq!(client.get_entries(&p).unwrap(), ["A", "B"]);
    assert!(wait_until(secs(5), || client.stats().connected));
    client
        .deregister(&Service::new(format!("{p}b"), ""))
        .unwrap();
    reg.deregister().unwrap();
    assert_eq!(etcd.count_prefix(&p), 0);

    // Dropping a lazy client that never reached etcd does not wait for it.
    let t = Instant::now();
    let never = Client::connect_lazy(&[closed_endpoint()], options(REQUEST)).unwrap();
    let r = Registrar::new(&never, service(&format!("{p}never"), "v"));
    let _ = r.register();
    let t_drop = Instant::now();
    drop(r);
    drop(never);
    assert!(
        t_drop.elapsed() < REQUEST + MARGIN,
        "drop took {:?}",
        t_drop.elapsed()
    );
    assert!(t.elapsed() < 2 * REQUEST + 2 * MARGIN);
}

#[test]
fn connect_lazy_rejects_the_arguments_connect_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    let missing = dir.path().join("missing.pem");
    let ok = "127.0.0.1:2";
    let cases: Vec<(Vec<&str>, ClientOptions, ErrorKind)> = vec![
        (vec![], ClientOptions::default(), ErrorKind::InvalidArgument),
        (
            vec![""],
            ClientOptions::default(),
            ErrorKind::InvalidArgument,
        ),
        (
            vec!["http://"],
            ClientOptions::default(),
            ErrorKind::InvalidArgument,
        ),
        (
            vec!["host:notaport"],
            ClientOptions::default(),
            ErrorKind::InvalidArgument,
        ),
        (
            vec![ok, "127.0.0.1:0"],
            ClientOptions::default(),
            ErrorKind::InvalidArgument,
        ),
        (
            vec!["http://127.0.0.1:2"],
            ClientOptions {
                ca_cert: Some(junk.clone()),
                ..Default::default()
            },
            ErrorKind::InvalidArgument,
        ),
        (
            vec![ok],
            ClientOptions {
                cert: Some(junk.clone()),
                ..Default::default()
            },
            ErrorKind::InvalidArgument,
        ),
        (
            vec![ok],
            ClientOptions {
                password: Some("secret".into()),
                ..Default::default()
            },
            ErrorKind::InvalidArgument,
        ),
        (
            vec![ok],
            ClientOptions {
                ca_cert: Some(missing.clone()),
                ..Default::default()
            },
            ErrorKind::Tls,
        ),
        (
            vec![ok],
            ClientOptions {
                ca_cert: Some(junk.clone()),
                ..Default::default()
            },
            ErrorKind::Tls,
        ),
        (
            vec![ok],
            ClientOptions {
                cert: Some(junk.clone()),
                key: Some(missing.clone()),
                ..Default::default()
            },
            ErrorKind::Tls,
        ),
    ];
    for (endpoints, options, want) in cases {
        let what = format!("{endpoints:?} {options:?}");
        let t = Instant::now();
        let lazy = Client::connect_lazy(&endpoints, options.clone())
            .expect_err(&format!("connect_lazy {what}"));
        assert!(t.elapsed() < secs(2), "{what}: took {:?}", t.elapsed());
        let eager = Client::connect(&endpoints, options).expect_err(&format!("connect {what}"));
        assert_eq!(lazy.kind(), want, "connect_lazy {what}: {lazy}");
        assert_eq!(eager.kind(), want, "connect {what}: {eager}");
    }
}

#[test]
fn pause_removes_the_key_at_once_until_resume_brings_it_back_on_a_new_lease() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST));
    let p = unique_prefix("drain");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "10.0.0.1:8080");
    let events = reg.events();
    let before = reg.lease_id().expect("lease");
    assert_eq!(client.stats().registered, 1);

    reg.pause().expect("pause");
    assert!(!etcd.exists(&key), "key still there right after pause");
    assert_eq!(reg.state(), S::Paused);
    assert_eq!(reg.lease_id(), None);
    assert_eq!(etcd.lease_ttl(before), None, "lease not revoked");
    let (ok, seen) = recv_states_until(&events, secs(2), |e, _| e.state == S::Paused);
    assert!(ok, "no Paused event: {seen:?}");
    let paused = seen.last().unwrap();
    assert!(
        paused.error.is_none() && paused.lease_id.is_none(),
        "{paused:?}"
    );
    let stats = client.stats();
    assert_eq!((stats.registrars, stats.registered), (1, 0), "{stats:?}");
    assert_eq!(stats.leases_lost, 0, "a pause is no loss: {stats:?}");

    // Three ttls (2 s each), and nothing brings the key back.
    assert_stays_away(&etcd, &reg, &key, 3 * short_ttl().ttl());
    assert!(
        etcd.leases().is_empty(),
        "a lease was granted during the pause"
    );

    reg.resume().expect("resume");
    assert_eq!(reg.state(), S::Registered);
    assert_eq!(etcd.get(&key).as_deref(), Some("10.0.0.1:8080"));
    let after = reg.lease_id().expect("lease after resume");
    assert_ne!(after, before, "resume must grant a new lease");
    assert_eq!(etcd.lease_of(&key), after);
    let (ok, seen) = recv_states_until(&events, secs(2), |e, _| e.state == S::Registered);
    assert!(ok, "no Registered event after resume: {seen:?}");
    let stats = client.stats();
    assert_eq!((stats.registrars, stats.registered), (1, 1), "{stats:?}");
    assert_eq!(stats.registrations, 2, "{stats:?}");
    assert_eq!(stats.reregistrations, 0, "{stats:?}");

    // Kept alive past its ttl, as any registration.
    std::thread::sleep(short_ttl().ttl() + secs(1));
    assert_eq!(etcd.lease_of(&key), after);
    drop(reg);
    assert!(!etcd.exists(&key));
    assert_eq!(client.stats().registered, 0);
}

#[test]
fn pause_before_register_twice_and_deregister_after_are_fine() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST));
    let p = unique_prefix("drain-edges");
    let key = format!("{p}svc");

    // Before register: Ok, Paused, nothing written.
    let reg = Registrar::new(&client, service(&key, "v"));
    let events = reg.events();
    reg.pause().expect("pause before register");
    assert_eq!(reg.state(), S::Paused);
    let (ok, seen) = recv_states_until(&events, secs(1), |e, _| e.state == S::Paused);
    assert!(ok, "no Paused event: {seen:?}");
    assert!(!etcd.exists(&key));
    // Resume is register().
    reg.resume().expect("resume after an early pause");
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));

    // Twice.
    reg.pause().expect("pause");
    reg.pause().expect("pause again");
    assert_eq!(reg.state(), S::Paused);
    assert!(!etcd.exists(&key));

    // Deregister after pause.
    reg.deregister().expect("deregister after pause");
    assert_eq!(reg.state(), S::Deregistered);
    assert!(!etcd.exists(&key));
    reg.deregister().expect("deregister twice");

    // Resume when not paused: register().
    let other = Registrar::new(&client, service(&format!("{p}other"), "o"));
    other.resume().expect("resume when never registered");
    assert_eq!(other.state(), S::Registered);
    assert_eq!(etcd.get(&format!("{p}other")).as_deref(), Some("o"));
    let lease = other.lease_id();
    other.resume().expect("resume when registered");
    assert_eq!(
        other.lease_id(),
        lease,
        "resume while registered changed nothing"
    );
    // register() on a paused registrar resumes it too.
    other.pause().unwrap();
    other.register().expect("register after pause");
    assert_eq!(other.state(), S::Registered);
    assert!(etcd.exists(&format!("{p}other")));

    // A pause right after deregister is fine too.
    other.deregister().unwrap();
    other.pause().expect("pause after deregister");
    assert_eq!(other.state(), S::Paused);
    assert!(!etcd.exists(&format!("{p}other")));
    let stats = client.stats();
    assert_eq!((stats.registrars, stats.registered), (2, 0), "{stats:?}");
}

#[test]
fn pause_with_etcd_down_returns_in_time_and_the_key_goes() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST));
    let p = unique_prefix("drain-down");
    let key = format!("{p}svc");
    // A ttl of 4 s: longer than the pause's wait, so what removes the key is
    // observable.
    let ttl = TtlOption::new(Duration::from_millis(500), secs(4));
    let reg = Registrar::new(&client, Service::new(key.clone(), "v").with_ttl(ttl));
    reg.register().unwrap();
    let lease = reg.lease_id().unwrap();

    etcd.kill();
    let t = Instant::now();
    let r = reg.pause();
    let took = t.elapsed();
    assert!(took < REQUEST + MARGIN, "pause took {took:?}");
    if let Err(e) = &r {
        assert!(
            matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
            "pause: {e} ({:?})",
            e.kind()
        );
    }
    assert_eq!(reg.state(), S::Paused);
    assert_eq!(client.stats().registered, 0);

    // Back: the key goes within its ttl (etcd gives surviving leases a full
    // ttl when it starts), and stays away.
    etcd.restart();
    assert!(
        wait_until(ttl.ttl() + MARGIN, || !etcd.exists(&key)),
        "key still there {:?} after etcd came back",
        ttl.ttl() + MARGIN
    );
    assert!(wait_until(secs(2), || etcd.lease_ttl(lease).is_none()));
    assert_stays_away(&etcd, &reg, &key, secs(6));
    assert!(
        etcd.leases().is_empty(),
        "a lease was granted during the pause"
    );

    reg.resume().expect("resume");
    assert_ne!(reg.lease_id(), Some(lease));
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
}

#[test]
fn nothing_registers_a_paused_key_again_across_an_etcd_restart() {
    let mut etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(REQUEST));
    let p = unique_prefix("drain-restart");
    let key = format!("{p}svc");
    let reg = registered(&client, key.clone(), "v");
    // Also a client.register() of its own: pausing one registrar leaves the
    // others alone.
    let other = format!("{p}other");
    client.register(&service(&other, "o")).unwrap();
    reg.pause().unwrap();
    assert!(!etcd.exists(&key));

    etcd.kill();
    std::thread::sleep(secs(2));
    etcd.restart();
    // Past the 5 s backoff cap and every re-registration of an outage.
    assert_stays_away(&etcd, &reg, &key, secs(8));
    assert!(
        wait_until(secs(5) + MARGIN, || etcd.exists(&other)),
        "the other registration did not come back"
    );
    assert_eq!(etcd.get_prefix(&p).len(), 1, "{:?}", etcd.get_prefix(&p));

    reg.resume().unwrap();
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
    assert_eq!(reg.state(), S::Registered);
}

#[test]
fn a_registrar_made_on_a_lazy_client_can_be_paused_before_etcd_answers() {
    let mut etcd = EtcdServer::start();
    etcd.kill();
    let p = unique_prefix("lazy-pause");
    let key = format!("{p}svc");
    let client = lazy(&etcd.endpoint());
    let reg = Registrar::new(&client, service(&key, "v"));
    let _ = reg.register();
    let t = Instant::now();
    let r = reg.pause();
    assert!(
        t.elapsed() < REQUEST + MARGIN,
        "pause took {:?}",
        t.elapsed()
    );
    assert!(r.is_ok(), "no lease to revoke yet: {r:?}");
    assert_eq!(reg.state(), S::Paused);
    etcd.restart();
    assert_stays_away(&etcd, &reg, &key, secs(7));
    reg.resume().expect("resume once etcd is up");
    assert!(etcd.exists(&key));
}

/// `examples/drain.rs`, built with this package's cargo (`cargo test` alone
/// does not build examples for a `--test` run).
fn drain_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf();
    let mut build = std::process::Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", "drain"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let mut child = build.spawn().expect("spawn cargo build --example drain");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            assert!(status.success(), "cargo build --example drain: {status}");
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo build --example drain did not finish in 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    profile_dir.join("examples").join("drain")
}

#[test]
fn drain_example_removes_its_key_on_sigterm_and_exits_0() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let etcd = EtcdServer::start();
    let exe = drain_example();
    let mut child = Command::new(&exe)
        .arg(etcd.endpoint())
        .env("DRAIN_GRACE_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the drain example");
    // Kills the example if the test fails half-way.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let mut child = Reap(child);
    let (tx, lines) = etcd_sd::channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |prefix: &str, within: Duration| -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line starting with {prefix:?} within {within:?}; saw {seen:?}");
    };

    let registered = wait_line("registered ", secs(15));
    let key = registered
        .split_whitespace()
        .nth(1)
        .expect("registered <key>")
        .to_string();
    assert!(etcd.exists(&key), "{key} not in etcd: {registered}");
    wait_line("serving", secs(5));

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    // The key is gone by the time the example says it paused.
    let paused = wait_line("paused", REQUEST + MARGIN + secs(3));
    assert!(paused.starts_with("paused: "), "pause failed: {paused}");
    assert!(!etcd.exists(&key), "{key} still in etcd after: {paused}");
    wait_line("exiting", secs(10));
    let deadline = Instant::now() + secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the example did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(!etcd.exists(&key), "{key} came back after the exit");
}

#[test]
fn lazy_client_with_credentials_authenticates_when_etcd_first_answers() {
    let password = "root-pw-lazy-4Tz9";
    let mut etcd = EtcdServer::start();
    etcd.etcdctl(&["user", "add", &format!("root:{password}")]);
    etcd.etcdctl(&["auth", "enable"]);
    etcd.set_etcdctl_user(Some(&format!("root:{password}")));
    etcd.kill();
    let p = unique_prefix("lazy-auth");
    let key = format!("{p}svc");
    let as_root = |password: &str| ClientOptions {
        username: Some("root".into()),
        password: Some(password.into()),
        ..options(REQUEST)
    };
    let client = Client::connect_lazy(&[etcd.endpoint()], as_root(password)).unwrap();
    let wrong = Client::connect_lazy(&[etcd.endpoint()], as_root("wrong-pw")).unwrap();
    let reg = Registrar::new(&client, service(&key, "v"));
    let t = Instant::now();
    let r = reg.register();
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "register");

    etcd.restart();
    assert!(
        wait_until(secs(5) + MARGIN, || reg.state() == S::Registered),
        "not registered after etcd came back (state {:?})",
        reg.state()
    );
    assert_eq!(etcd.get(&key).as_deref(), Some("v"));
    assert_eq!(client.get_entries(&p).unwrap(), ["v"]);
    // A password etcd refuses shows as the calls' error once it answers.
    let e = wrong.get_entries(&p).expect_err("wrong password");
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
}

#[test]
fn lazy_client_on_a_silent_port_never_hangs() {
    let silent = support::SilentPort::start();
    let p = unique_prefix("lazy-silent");
    let t = Instant::now();
    let client = lazy(&silent.endpoint());
    assert!(t.elapsed() < secs(2), "connect_lazy took {:?}", t.elapsed());
    let t = Instant::now();
    let r = client.get_entries(&p);
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "get_entries");
    let t = Instant::now();
    let r = Instancer::new(&client, &p);
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "Instancer::new");
    let reg = Registrar::new(&client, service(&format!("{p}svc"), "v"));
    let t = Instant::now();
    let r = reg.register();
    assert_unreachable(r, t.elapsed(), REQUEST + MARGIN, "register");
    let t = Instant::now();
    let r = reg.pause();
    assert!(r.is_ok(), "no lease to revoke: {r:?}");
    assert!(
        t.elapsed() < REQUEST + MARGIN,
        "pause took {:?}",
        t.elapsed()
    );
    assert!(!client.stats().connected);
    let t = Instant::now();
    drop(reg);
    drop(client);
    assert!(t.elapsed() < secs(4), "drop took {:?}", t.elapsed());
}
