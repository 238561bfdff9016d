//! Security: TLS (server verification, mutual TLS, wrong CA, missing or
//! untrusted client certificate, bad files), authentication (user and
//! password, wrong password, token expiry, a user without write or read
//! permission), and secrets: no password and no private key ever shows in
//! `Debug`, in an error's `Display` or in a log record.
//!
//! Certificates are made on the fly with rcgen: a CA, a server certificate
//! for 127.0.0.1, a client certificate, and a second, untrusted CA with its
//! own client certificate. A capturing `log` logger at Trace level checks
//! every record against the secrets the tests register.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use etcd_sd::{
    Client, ClientOptions, Error, ErrorKind, Instancer, Registrar, RegistrationState as S, Service,
    TtlOption,
};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdConfig, EtcdServer, FaultProxy, ServerTls};

// ---------------------------------------------------------------------------
// A capturing logger that looks for secrets in every record.

/// Every secret a test uses; each log record is checked against all of them.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Records that contained a secret.
static LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Records seen, by target, for tests that count retries.
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        {
            let secrets = SECRETS.lock().unwrap();
            if secrets.iter().any(|s| line.contains(s.as_str())) {
                LEAKS.lock().unwrap().push(line.clone());
            }
        }
        if record.target().starts_with("etcd_sd") {
            let mut r = RECORDS.lock().unwrap();
            if r.len() < 200_000 {
                r.push(line);
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once per test binary) and registers `secrets`.
fn watch_for(secrets: &[&str]) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        static CAPTURE: Capture = Capture;
        log::set_logger(&CAPTURE).expect("no other logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
    let mut s = SECRETS.lock().unwrap();
    for secret in secrets {
        assert!(
            secret.len() >= 8,
            "secret too short to look for: {secret:?}"
        );
        s.push(secret.to_string());
    }
}

/// Fails if any log record so far, or any of `texts` (Debug and Display
/// output), holds a registered secret.
fn assert_no_secret(texts: &[String]) {
    let secrets = SECRETS.lock().unwrap().clone();
    for t in texts {
        for s in &secrets {
            assert!(!t.contains(s.as_str()), "a secret shows in: {t}");
        }
    }
    let leaks = LEAKS.lock().unwrap();
    assert!(leaks.is_empty(), "secrets in log records: {leaks:?}");
}

/// Debug and Display of an error and of its whole source chain.
fn error_texts(e: &Error) -> Vec<String> {
    let mut v = vec![format!("{e}"), format!("{e:?}")];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    for _ in 0..16 {
        let Some(s) = cur else { break };
        v.push(format!("{s}"));
        v.push(format!("{s:?}"));
        cur = s.source();
    }
    v
}

/// Prints the crate's log records that mention `needle` (the last `n`).
fn dump_records(needle: &str, n: usize) {
    let r = records_mentioning(needle);
    eprintln!("--- last {n} of {} log records about {needle} ---", r.len());
    for line in &r[r.len().saturating_sub(n)..] {
        eprintln!("{line}");
    }
}

/// Log records of the crate that mention `needle`.
fn records_mentioning(needle: &str) -> Vec<String> {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains(needle))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Certificates.

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA etcd does not trust, and a client certificate it signed.
    other_ca: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
    /// Base64 lines of every private key, to look for in outputs.
    key_lines: Vec<String>,
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    name: &str,
    sans: &[&str],
    server: bool,
    issuer: &(rcgen::Certificate, rcgen::KeyPair),
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn key_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("etcd-sd-pki-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let root = ca("etcd-sd test CA");
        let other = ca("untrusted CA");
        let (server_cert, server_key) = leaf("etcd", &["127.0.0.1", "localhost"], true, &root);
        let (client_cert, client_key) = leaf("etcd-sd client", &[], false, &root);
        let (other_cert, other_key) = leaf("stranger", &[], false, &other);
        let mut key_lines = Vec::new();
        for k in [&server_key, &client_key, &other_key] {
            key_lines.extend(key_body_lines(k));
        }
        Pki {
            ca: write(d, "ca.pem", &root.0.pem()),
            server_cert: write(d, "server.pem", &server_cert),
            server_key: write(d, "server-key.pem", &server_key),
            client_cert: write(d, "client.pem", &client_cert),
            client_key: write(d, "client-key.pem", &client_key),
            other_ca: write(d, "other-ca.pem", &other.0.pem()),
            other_client_cert: write(d, "other-client.pem", &other_cert),
            other_client_key: write(d, "other-client-key.pem", &other_key),
            key_lines,
            _dir: dir,
        }
    }

    /// Registers every private key line as a secret.
    fn watch_keys(&self) {
        let lines: Vec<&str> = self.key_lines.iter().map(String::as_str).collect();
        watch_for(&lines);
    }

    fn server(&self, client_cert_auth: bool) -> EtcdServer {
        EtcdServer::start_with(EtcdConfig {
            extra_args: Vec::new(),
            tls: Some(ServerTls {
                cert: self.server_cert.clone(),
                key: self.server_key.clone(),
                ca: self.ca.clone(),
                client_cert_auth,
                ctl_cert: Some(self.client_cert.clone()),
                ctl_key: Some(self.client_key.clone()),
            }),
        })
    }

    fn mutual(&self) -> ClientOptions {
        ClientOptions {
            ca_cert: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
            ..tight()
        }
    }
}

/// Short timeouts: 2 s to dial, 3 s per request.
fn tight() -> ClientOptions {
    ClientOptions {
        dial_timeout: secs(2),
        dial_keep_alive: secs(1),
        request_timeout: secs(3),
        ..Default::default()
    }
}

/// Connects on its own thread and gives up after `limit`: a hang fails the
/// test instead of blocking it.
fn connect_bounded(
    endpoint: &str,
    options: ClientOptions,
    limit: Duration,
) -> (Result<Client, Error>, Duration) {
    let (tx, rx) = etcd_sd::channel::bounded(1);
    let ep = endpoint.to_string();
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(Client::connect(&[ep.as_str()], options));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => (r, t.elapsed()),
        Err(_) => panic!("connect to {endpoint} did not return within {limit:?}"),
    }
}

/// Registration, discovery and the seed methods all work on `client`.
fn exercise(client: &Client, what: &str) {
    let p = unique_prefix("sec");
    let reg = Registrar::new(
        client,
        Service::new(format!("{p}r"), "r:1").with_ttl(short_ttl()),
    );
    reg.register()
        .unwrap_or_else(|e| panic!("{what}: register: {e}"));
    let inst = Instancer::new(client, &p).unwrap_or_else(|e| panic!("{what}: instancer: {e}"));
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["r:1"]);
    let svc = Service::new(format!("{p}c"), "c:1").with_ttl(short_ttl());
    client
        .register(&svc)
        .unwrap_or_else(|e| panic!("{what}: Client::register: {e}"));
    recv_instances(&rx, secs(5), &["c:1", "r:1"]);
    assert_eq!(
        client.get_entries(&p).unwrap(),
        strs(&["c:1", "r:1"]),
        "{what}"
    );
    client.deregister(&svc).unwrap();
    reg.deregister().unwrap();
    recv_instances(&rx, secs(5), &[]);
}

// ---------------------------------------------------------------------------
// TLS.

#[test]
fn tls_server_verification_and_mutual_tls_work() {
    let pki = Pki::generate();
    pki.watch_keys();
    let mut texts = Vec::new();

    // Mutual TLS: the server requires a client certificate.
    let etcd = pki.server(true);
    for ep in [etcd.endpoint(), etcd.endpoint_url()] {
        let (c, _) = connect_bounded(&ep, pki.mutual(), secs(10));
        let c = c.unwrap_or_else(|e| panic!("mutual TLS to {ep}: {e}"));
        exercise(&c, &format!("mutual TLS via {ep}"));
        texts.push(format!("{c:?}"));
        texts.push(format!("{:?}", pki.mutual()));
    }

    // Server verification only.
    let etcd = pki.server(false);
    let opts = ClientOptions {
        ca_cert: Some(pki.ca.clone()),
        ..tight()
    };
    let (c, _) = connect_bounded(&etcd.endpoint(), opts, secs(10));
    let c = c.unwrap_or_else(|e| panic!("server-verified TLS: {e}"));
    exercise(&c, "server verification");
    texts.push(format!("{c:?}"));
    assert_no_secret(&texts);
}

#[test]
fn tls_with_the_wrong_ca_fails_fast_with_kind_tls() {
    let pki = Pki::generate();
    pki.watch_keys();
    let etcd = pki.server(true);
    let opts = ClientOptions {
        ca_cert: Some(pki.other_ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..tight()
    };
    // dial_timeout 2 s: the answer must come within it plus a margin.
    let (r, took) = connect_bounded(&etcd.endpoint(), opts, secs(10));
    let e = r.expect_err("connect with a CA that did not sign the server");
    eprintln!("wrong CA: {:?} after {took:?}: {e}", e.kind());
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(took < secs(5), "took {took:?}");
    assert_no_secret(&error_texts(&e));

    // A plain-text client against the TLS port: refused in time too.
    let (r, took) = connect_bounded(&etcd.endpoint(), tight(), secs(10));
    let e = r.expect_err("plain http against a TLS server");
    eprintln!("plain http against TLS: {:?} after {took:?}: {e}", e.kind());
    assert!(took < secs(5), "took {took:?}");
}

#[test]
fn tls_without_an_accepted_client_certificate_is_refused_with_kind_tls() {
    let pki = Pki::generate();
    pki.watch_keys();
    let etcd = pki.server(true);
    let mut texts = Vec::new();
    let cases = [
        ("no client certificate", None, None),
        (
            "client certificate of an untrusted CA",
            Some(pki.other_client_cert.clone()),
            Some(pki.other_client_key.clone()),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, cert, key) in cases {
        let opts = ClientOptions {
            ca_cert: Some(pki.ca.clone()),
            cert,
            key,
            ..tight()
        };
        let (r, took) = connect_bounded(&etcd.endpoint(), opts, secs(10));
        let e = match r {
            Ok(_) => panic!(
                "{what}: connected although the server requires a trusted client certificate"
            ),
            Err(e) => e,
        };
        eprintln!("{what}: {:?} after {took:?}: {e}", e.kind());
        assert!(took < secs(5), "{what}: took {took:?}");
        texts.extend(error_texts(&e));
        if e.kind() != ErrorKind::Tls {
            wrong.push(format!("{what}: kind {:?}: {e}", e.kind()));
        }
    }
    assert_no_secret(&texts);
    assert!(wrong.is_empty(), "expected ErrorKind::Tls: {wrong:#?}");
}

#[test]
fn unusable_tls_files_are_tls_errors_that_do_not_show_the_key() {
    let pki = Pki::generate();
    pki.watch_keys();
    let dir = tempfile::tempdir().unwrap();
    // A "key" file that is not PEM: its contents are as secret as a key.
    let junk = "NOT-A-PEM-KEY-but-secret-material-7f3a9c1e";
    watch_for(&[junk]);
    let junk_key = write(dir.path(), "junk.pem", junk);
    let empty = write(dir.path(), "empty.pem", "");
    let endpoint = format!("127.0.0.1:{}", support::free_port());
    let cases: Vec<(&str, ClientOptions, &[ErrorKind])> = vec![
        (
            "missing CA file",
            ClientOptions {
                ca_cert: Some(dir.path().join("nope.pem")),
                ..tight()
            },
            &[ErrorKind::Tls],
        ),
        (
            "CA path is a directory",
            ClientOptions {
                ca_cert: Some(dir.path().to_path_buf()),
                ..tight()
            },
            &[ErrorKind::Tls],
        ),
        (
            "empty CA file",
            ClientOptions {
                ca_cert: Some(empty.clone()),
                ..tight()
            },
            &[ErrorKind::Tls],
        ),
        (
            "a private key as the CA",
            ClientOptions {
                ca_cert: Some(pki.client_key.clone()),
                ..tight()
            },
            &[ErrorKind::Tls],
        ),
        (
            "junk key",
            ClientOptions {
                ca_cert: Some(pki.ca.clone()),
                cert: Some(pki.client_cert.clone()),
                key: Some(junk_key.clone()),
                ..tight()
            },
            &[ErrorKind::Tls],
        ),
        (
            "key of another certificate",
            ClientOptions {
                ca_cert: Some(pki.ca.clone()),
                cert: Some(pki.client_cert.clone()),
                key: Some(pki.other_client_key.clone()),
                ..tight()
            },
            // Found at load time (Tls) or only by the server (Tls, or a
            // refused connection).
            &[ErrorKind::Tls, ErrorKind::Unavailable, ErrorKind::Timeout],
        ),
        (
            "certificate without key",
            ClientOptions {
                ca_cert: Some(pki.ca.clone()),
                cert: Some(pki.client_cert.clone()),
                ..tight()
            },
            &[ErrorKind::InvalidArgument],
        ),
    ];
    let etcd = pki.server(true);
    let mut wrong = Vec::new();
    let mut texts = Vec::new();
    for (what, opts, kinds) in cases {
        texts.push(format!("{opts:?}"));
        // Against a live TLS etcd, so that a key problem found only in the
        // handshake shows too; the file checks come before any dialing.
        let ep = if what == "key of another certificate" {
            etcd.endpoint()
        } else {
            endpoint.clone()
        };
        let (r, took) = connect_bounded(&ep, opts, secs(10));
        match r {
            Ok(_) => wrong.push(format!("{what}: connected")),
            Err(e) => {
                eprintln!("{what}: {:?} after {took:?}: {e}", e.kind());
                if !kinds.contains(&e.kind()) {
                    wrong.push(format!("{what}: kind {:?} (want {kinds:?}): {e}", e.kind()));
                }
                texts.extend(error_texts(&e));
            }
        }
    }
    assert_no_secret(&texts);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------------
// Authentication.

/// Starts etcd (plain http), adds `root` with `password` and enables auth.
fn etcd_with_auth(password: &str, extra_args: &[&str]) -> EtcdServer {
    let mut etcd = EtcdServer::start_with(EtcdConfig {
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        tls: None,
    });
    etcd.etcdctl(&["user", "add", &format!("root:{password}")]);
    etcd.etcdctl(&["auth", "enable"]);
    etcd.set_etcdctl_user(Some(&format!("root:{password}")));
    etcd
}

fn as_user(user: &str, password: &str) -> ClientOptions {
    ClientOptions {
        username: Some(user.to_string()),
        password: Some(password.to_string()),
        ..tight()
    }
}

#[test]
fn username_and_password_work_and_a_wrong_password_is_kind_auth() {
    let pw = "root-pw-Qx81vZ0c";
    let wrong_pw = "wrong-pw-Hh27dLp4";
    watch_for(&[pw, wrong_pw]);
    let etcd = etcd_with_auth(pw, &[]);
    let mut texts = Vec::new();

    let (c, _) = connect_bounded(&etcd.endpoint(), as_user("root", pw), secs(10));
    let client = c.unwrap_or_else(|e| panic!("root with its password: {e}"));
    exercise(&client, "root");
    texts.push(format!("{client:?}"));
    texts.push(format!("{:?}", as_user("root", pw)));

    let cases = [
        ("wrong password", as_user("root", wrong_pw)),
        ("unknown user", as_user("nobody-here", wrong_pw)),
        ("empty password", as_user("root", "")),
        (
            "no password",
            ClientOptions {
                username: Some("root".into()),
                ..tight()
            },
        ),
        ("no credentials at all", tight()),
    ];
    let mut wrong = Vec::new();
    for (what, opts) in cases {
        texts.push(format!("{opts:?}"));
        let (r, took) = connect_bounded(&etcd.endpoint(), opts, secs(10));
        assert!(took < secs(5), "{what}: took {took:?}");
        match (what, r) {
            // Without credentials etcd lets the connection be made; the
            // first request is refused.
            ("no credentials at all", Ok(c)) => {
                let e = c
                    .get_entries("/x/")
                    .expect_err("a read without credentials");
                eprintln!("{what}: connect ok; get_entries: {:?}: {e}", e.kind());
                if e.kind() != ErrorKind::Auth {
                    wrong.push(format!("{what}: get_entries kind {:?}: {e}", e.kind()));
                }
                texts.extend(error_texts(&e));
            }
            (_, Ok(_)) => wrong.push(format!("{what}: connected")),
            (_, Err(e)) => {
                eprintln!("{what}: {:?} after {took:?}: {e}", e.kind());
                if e.kind() != ErrorKind::Auth {
                    wrong.push(format!("{what}: kind {:?}: {e}", e.kind()));
                }
                texts.extend(error_texts(&e));
            }
        }
    }
    assert_no_secret(&texts);
    assert!(wrong.is_empty(), "expected ErrorKind::Auth: {wrong:#?}");
}

#[test]
fn registrations_and_watches_survive_auth_token_expiry() {
    let pw = "root-pw-Tk93mWq7";
    watch_for(&[pw]);
    // Tokens expire 2 s after their last use.
    let etcd = etcd_with_auth(pw, &["--auth-token-ttl=2"]);
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], as_user("root", pw)).unwrap();
    let p = unique_prefix("token");
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(TtlOption::new(secs(1), secs(4))),
    );
    reg.register().unwrap();
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["svc:1"]);
    let started = Instant::now();

    // 1. Idle but for keep-alives, well past the token's ttl.
    std::thread::sleep(secs(6));
    assert!(
        etcd.exists(&key),
        "registration gone after the token expired"
    );
    etcd.put(&format!("{p}a"), "a:1");
    recv_instances(&rx, secs(10), &["a:1", "svc:1"]);
    // A unary call with an expired token: refreshed and retried.
    assert_eq!(client.get_entries(&p).unwrap().len(), 2);

    // 2. The link breaks once the token is stale again: the watches and the
    //    keep-alive must be opened anew, which needs a valid token.
    let mut failures = Vec::new();
    std::thread::sleep(secs(3));
    proxy.cut();
    std::thread::sleep(secs(1));
    proxy.restore();
    let back = Instant::now();
    if !wait_until(secs(15), || {
        reg.state() == S::Registered && etcd.exists(&key)
    }) {
        failures.push(format!(
            "registration not back after a link cut with an expired token: {:?}",
            reg.state()
        ));
    }
    etcd.put(&format!("{p}b"), "b:1");
    let caught_up = wait_until(secs(15), || {
        let c = inst.current();
        c.err.is_none() && instances(&c) == strs(&["a:1", "b:1", "svc:1"])
    });
    if caught_up {
        eprintln!(
            "instancer current {:?} after the link came back",
            back.elapsed()
        );
    } else {
        failures.push(format!(
            "instancer did not recover after a link cut with an expired token: {}",
            describe(&inst.current())
        ));
    }
    // Someone deletes the key once the token is stale: the registrar's watch
    // on its own key (opened again after the cut) must see it and put it back.
    std::thread::sleep(secs(3));
    etcd.del(&key);
    if !wait_until(secs(10), || etcd.exists(&key)) {
        failures.push(format!(
            "key deleted after the token expired was not put back within 10 s (state {:?})",
            reg.state()
        ));
    }
    if !failures.is_empty() {
        dump_records(&p, 16);
        panic!("{failures:#?}");
    }

    // 3. Still there 10 s+ after it was made, and still live.
    assert!(started.elapsed() > secs(10));
    assert!(etcd.exists(&key), "registration gone");
    assert_eq!(reg.state(), S::Registered);
    etcd.del(&format!("{p}a"));
    recv_instances(&rx, secs(10), &["b:1", "svc:1"]);
    // A new registration with a stale token works too.
    std::thread::sleep(secs(3));
    let reg2 = Registrar::new(&client, Service::new(format!("{p}svc2"), "svc:2"));
    reg2.register()
        .unwrap_or_else(|e| panic!("register with a stale token: {e}"));
    reg2.deregister().unwrap();
    reg.deregister().unwrap();
    assert!(!etcd.exists(&key));
    assert_no_secret(&[format!("{client:?}")]);
}

#[test]
fn missing_permissions_are_kind_auth_and_retried_without_a_tight_loop() {
    let pw = "root-pw-Pm55sNe2";
    let ro_pw = "reader-pw-Lr40bTz9";
    watch_for(&[pw, ro_pw]);
    let mut etcd = etcd_with_auth(pw, &[]);
    let p = unique_prefix("perm");
    let other = unique_prefix("perm-other");
    etcd.put(&format!("{p}existing"), "existing:1");
    etcd.put(&format!("{other}x"), "x:1");
    etcd.etcdctl(&["role", "add", "reader"]);
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "reader",
        "read",
        "--prefix=true",
        &p,
    ]);
    etcd.etcdctl(&["user", "add", &format!("ro:{ro_pw}")]);
    etcd.etcdctl(&["user", "grant-role", "ro", "reader"]);
    let proxy = FaultProxy::start(&etcd.endpoint());
    let client = Client::connect(&[proxy.endpoint()], as_user("ro", ro_pw)).unwrap();
    let mut texts = Vec::new();

    // Reading its prefix works.
    assert_eq!(client.get_entries(&p).unwrap(), strs(&["existing:1"]));
    let inst = Instancer::new(&client, &p).unwrap();
    let rx = inst.subscribe();
    recv_instances(&rx, secs(5), &["existing:1"]);

    // Reading elsewhere is refused as Auth.
    let e = client
        .get_entries(&other)
        .expect_err("read without permission");
    assert_eq!(e.kind(), ErrorKind::Auth, "get_entries: {e}");
    texts.extend(error_texts(&e));
    let e = Instancer::new(&client, &other).expect_err("instancer without permission");
    assert_eq!(e.kind(), ErrorKind::Auth, "Instancer::new: {e}");
    texts.extend(error_texts(&e));

    // Writing is refused: register reports Auth, the registrar says so once
    // and keeps retrying with backoff, not in a tight loop.
    let key = format!("{p}svc");
    let reg = Registrar::new(
        &client,
        Service::new(key.clone(), "svc:1").with_ttl(short_ttl()),
    );
    let events = reg.events();
    let t = Instant::now();
    let e = reg
        .register()
        .expect_err("register without write permission");
    eprintln!("register: {:?} after {:?}: {e}", e.kind(), t.elapsed());
    assert_eq!(e.kind(), ErrorKind::Auth, "register: {e}");
    assert!(t.elapsed() < secs(6), "register took {:?}", t.elapsed());
    texts.extend(error_texts(&e));
    std::thread::sleep(secs(4));
    let seen: Vec<_> = events.try_iter().collect();
    eprintln!("registration events in ~7 s without permission: {seen:?}");
    let auth_events = seen
        .iter()
        .filter(|e| e.error.as_ref().map(Error::kind) == Some(ErrorKind::Auth))
        .count();
    assert!(
        auth_events >= 1,
        "no RegistrationEvent with an Auth error: {seen:?}"
    );
    assert!(seen.len() <= 3, "reported over and over: {seen:?}");
    let attempts = records_mentioning(&key);
    eprintln!("{} log records about {key} in ~7 s", attempts.len());
    assert!(
        attempts.len() <= 40,
        "retried in a tight loop: {} log records, first {:?}",
        attempts.len(),
        &attempts[..attempts.len().min(5)]
    );
    assert_ne!(reg.state(), S::Registered);
    assert!(!etcd.exists(&key));

    // Given the permission, the registrar gets through by itself, within
    // its backoff (capped at 5 s).
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "reader",
        "readwrite",
        "--prefix=true",
        &p,
    ]);
    assert!(
        wait_until(secs(15), || reg.state() == S::Registered
            && etcd.exists(&key)),
        "not registered after the permission was granted: {:?}",
        reg.state()
    );
    recv_instances(&rx, secs(10), &["existing:1", "svc:1"]);

    // Losing read permission on a watched prefix: once the watch must be
    // opened again, the instancer reports an Auth error.
    etcd.etcdctl(&["role", "revoke-permission", "reader", "--prefix=true", &p]);
    proxy.cut();
    std::thread::sleep(secs(1));
    proxy.restore();
    let auth_reported = wait_until(secs(15), || {
        inst.current().err.map(|e| e.kind()) == Some(ErrorKind::Auth)
    });
    let cur = inst.current();
    eprintln!("instancer after losing read permission: {}", describe(&cur));
    if !auth_reported {
        dump_records(&p, 12);
    }
    drop(reg);
    etcd.set_etcdctl_user(Some(&format!("root:{pw}")));
    texts.push(format!("{client:?}"));
    assert_no_secret(&texts);
    assert!(
        auth_reported,
        "watch refused for lack of read permission, but the instancer reports {}",
        describe(&cur)
    );
}
