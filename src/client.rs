//! [`Client`]: the connection to etcd and go-kit's client methods.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crossbeam_channel as cb;
use parking_lot::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::options::{check_key, validate_prefix, ClientOptions, Service};
// The one deliberate import circle: `Client::register` is go-kit's sugar over
// a `Registrar` (which is made from a `Client`).
use crate::registrar::Registrar;
use crate::registration::RegistrationState;
use crate::runtime::notify;
use crate::runtime::{Command, Core};
use crate::stats::Stats;

const LOG: &str = "etcd_sd::client";

/// A connection to an etcd cluster (go-kit's `etcdv3.Client`), as plain
/// blocking calls.
///
/// Each `Client` owns three threads: `etcd-sd-runtime`, a tokio runtime that
/// does all etcd I/O, `etcd-sd-dispatch`, which runs subscriber callbacks, and
/// `etcd-sd-retry`, which serves channels that were full.
/// Clones share them, as do the [`Registrar`]s and
/// [`Instancer`](crate::Instancer)s made from it, whatever their number; the
/// threads are joined when the last of all these handles is dropped. Every
/// call waits at most `request_timeout` (`dial_timeout` for
/// [`connect`](Client::connect)). The API may be called from inside a tokio
/// runtime (it never calls `block_on`), but it blocks that runtime's thread
/// while it waits.
///
/// ```no_run
/// use etcd_sd::{Client, ClientOptions, Service};
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// client.register(&Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080"))?;
/// assert_eq!(client.get_entries("/services/foosvc/")?, ["http://1.2.3.4:8080"]);
/// client.deregister(&Service::new("/services/foosvc/1.2.3.4:8080", ""))?;
/// # Ok::<(), etcd_sd::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Registrations made with [`Client::register`], by key.
    registered: Mutex<HashMap<String, Arc<Registrar>>>,
    last_lease: AtomicI64,
    core: Arc<Core>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.core.endpoints)
            .field("options", &self.inner.core.options)
            .finish()
    }
}

impl Client {
    /// Connects to the cluster and checks that it answers.
    ///
    /// Endpoints are `host:port`, `http://host:port` or `https://host:port`;
    /// with any TLS file in `options`, plain `host:port` means TLS. Returns once
    /// a member answered a status call, at most `dial_timeout` after the call.
    ///
    /// # Errors
    /// * `InvalidArgument`: no endpoints, a malformed endpoint (`""`,
    ///   `"http://"`, `"host:notaport"`, port 0), `http://` with TLS files, a
    ///   certificate without its key or the other way round, a password
    ///   without a user name;
    /// * `Tls`: a TLS file cannot be read or parsed, or the handshake failed;
    /// * `Timeout` / `Unavailable`: no member answered within `dial_timeout`;
    /// * `Auth`: wrong user name or password.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use etcd_sd::{Client, ClientOptions, ErrorKind};
    ///
    /// let options = ClientOptions { dial_timeout: Duration::from_secs(1), ..Default::default() };
    /// match Client::connect(&["10.0.0.1:2379", "10.0.0.2:2379", "https://etcd-3:2379"], options) {
    ///     Ok(client) => println!("connected to {:?}", client.endpoints()),
    ///     Err(e) if e.kind() == ErrorKind::InvalidArgument => eprintln!("bad endpoint: {e}"),
    ///     Err(e) => eprintln!("etcd not reachable: {e}"),
    /// }
    /// ```
    pub fn connect<S: AsRef<str>>(endpoints: &[S], options: ClientOptions) -> Result<Client> {
        let tls = options.uses_tls();
        if endpoints.is_empty() {
            return Err(Error::invalid("no endpoints given"));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| normalize_endpoint(e.as_ref(), tls))
            .collect::<Result<Vec<_>>>()?;
        Client::start(endpoints, options, false)
    }

    /// Makes a client without waiting for etcd: checks its arguments as
    /// [`connect`](Client::connect) does, starts the client's threads and
    /// returns at once, then dials in the background until a member
    /// answers, retrying with jittered backoff (100 ms doubling to 5 s), so
    /// it is connected within about 5 s of a member starting. After that it
    /// is exactly a client made by `connect` (with several endpoints, the
    /// cluster id is taken from the first member that answers; with a user
    /// name, the auth token is fetched then).
    ///
    /// For a service that must start while etcd is down (a cold start of
    /// the whole system, etcd restarting): before the first answer,
    ///
    /// * calls that need etcd ([`get_entries`](Client::get_entries),
    ///   [`deregister`](Client::deregister),
    ///   [`Instancer::new`](crate::Instancer::new)) fail within
    ///   `request_timeout` with `Timeout` or `Unavailable`, as they do on
    ///   any client while etcd is unreachable;
    /// * a [`Registrar`] (or [`register`](Client::register)) returns such an
    ///   error from `register()` but keeps trying, and is `Registered` once
    ///   etcd answers, with no further call;
    /// * [`watch_prefix`](Client::watch_prefix) returns its receiver and
    ///   starts watching when etcd answers;
    /// * [`stats`](Client::stats) says `connected: false`,
    ///   [`endpoints`](Client::endpoints) lists the endpoints given, and
    ///   dropping the client never waits for etcd.
    ///
    /// # Errors
    /// Only those of the arguments: `InvalidArgument` and `Tls` (a TLS file
    /// that cannot be read or parsed) as for [`connect`](Client::connect);
    /// a TLS handshake or a password that etcd refuses shows later, as the
    /// error of the calls (and in the log), since it is learnt only when a
    /// member answers.
    ///
    /// ```no_run
    /// use etcd_sd::{Client, ClientOptions, Registrar, Service};
    /// // Returns at once, even with etcd down.
    /// let client = Client::connect_lazy(&["127.0.0.1:2379"], ClientOptions::default())?;
    /// let registrar = Registrar::new(&client, Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080"));
    /// if let Err(e) = registrar.register() {
    ///     eprintln!("not registered yet ({e}); it keeps trying");
    /// }
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn connect_lazy<S: AsRef<str>>(endpoints: &[S], options: ClientOptions) -> Result<Client> {
        let tls = options.uses_tls();
        if endpoints.is_empty() {
            return Err(Error::invalid("no endpoints given"));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| normalize_endpoint(e.as_ref(), tls))
            .collect::<Result<Vec<_>>>()?;
        Client::start(endpoints, options, true)
    }

    fn start(endpoints: Vec<String>, options: ClientOptions, lazy: bool) -> Result<Client> {
        let core = Core::start(endpoints, options, lazy)?;
        Ok(Client {
            inner: Arc::new(Inner {
                registered: Mutex::new(HashMap::new()),
                last_lease: AtomicI64::new(0),
                core: Arc::new(core),
            }),
        })
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// The values of all keys under `prefix`, in key order (go-kit's
    /// `GetEntries`), read at one revision, a page at a time.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty prefix; `Timeout`, `Unavailable`,
    /// `Auth` or `Etcd` when etcd cannot answer within `request_timeout`.
    ///
    /// ```no_run
    /// # let client = etcd_sd::Client::connect(&["127.0.0.1:2379"], Default::default())?;
    /// for value in client.get_entries("/services/barsvc/")? {
    ///     println!("{value}");
    /// }
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn get_entries(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let core = &self.inner.core;
        core.call("get entries", core.request_timeout(), |reply| {
            Command::GetEntries {
                prefix: prefix.to_owned(),
                reply,
            }
        })
    }

    /// A notifier for changes under `prefix` (go-kit's `WatchPrefix`): the
    /// receiver holds one `()` at once (the initial sentinel), then gets one
    /// after each change. Notifications are coalesced: at most one waits. The
    /// watch resumes by itself after outages. It ends when the client goes,
    /// or once the receiver is dropped and the next change or etcd progress
    /// notification comes (etcd sends one every 10 minutes by default; each
    /// also brings a `()`, as every watch response does in go-kit).
    ///
    /// Prefer an [`Instancer`](crate::Instancer), which delivers the
    /// values themselves; this is go-kit's lower-level building block.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty prefix; `Closed` if the runtime is gone.
    ///
    /// ```no_run
    /// # let client = etcd_sd::Client::connect(&["127.0.0.1:2379"], Default::default())?;
    /// let changes = client.watch_prefix("/services/barsvc/")?;
    /// while changes.recv().is_ok() {
    ///     // The first `()` comes at once: read the current state, then again
    ///     // after each notification.
    ///     println!("{:?}", client.get_entries("/services/barsvc/")?);
    /// }
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn watch_prefix(&self, prefix: &str) -> Result<cb::Receiver<()>> {
        validate_prefix(prefix)?;
        let (tx, rx) = cb::bounded(1);
        let _ = tx.try_send(());
        self.inner.core.send(Command::WatchPrefix(notify::Task {
            prefix: prefix.to_owned(),
            tx,
        }))?;
        Ok(rx)
    }

    /// Registers `service` under its own lease and keeps it alive (go-kit's
    /// `Register`), exactly like a [`Registrar`] owned by this client: it
    /// re-registers after losses until [`deregister`](Client::deregister) or
    /// until the last handle of this client is dropped.
    ///
    /// Registering the same key again with another value or ttl replaces the
    /// earlier registration without the key ever going: the new value is
    /// written under its own new lease first, then the earlier registration
    /// is stopped and its lease revoked (the key is no longer attached to it,
    /// so a watcher sees the old value, then the new one, never neither). A
    /// replacement that etcd refuses for good (`InvalidArgument`) leaves the
    /// earlier registration as it was.
    ///
    /// A [`Registrar`] of your own does the same, and also gives you its
    /// state and events and deregisters when dropped.
    ///
    /// # Errors
    /// `NoKey` for an empty key, then `NoValue` for an empty value, both before
    /// any network traffic; otherwise as [`Registrar::register`].
    pub fn register(&self, service: &Service) -> Result<()> {
        service.validate()?;
        let (registrar, replaced) = self.registrar_for(service);
        // An earlier registration that does not hold the key now (lost,
        // still trying) goes first: left running, its next attempt could
        // write the old value over the new one.
        let replaced = match replaced {
            Some(old) if old.state() != RegistrationState::Registered => {
                stop_replaced(&old);
                None
            }
            other => other,
        };
        let result = registrar.register();
        if let Some(id) = registrar.lease_id() {
            self.inner.last_lease.store(id, Ordering::Relaxed);
        }
        if let Some(old) = replaced {
            let refused = result
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::InvalidArgument);
            if refused {
                self.restore(&service.key, &registrar, old);
            } else {
                // The key is under the new lease now (or will be, once the
                // new registration gets through): revoking the old lease
                // does not delete it.
                stop_replaced(&old);
            }
        }
        result
    }

    /// The registrar for `service` in the map: the one there if it has the
    /// same value and ttl, else a new one put in its place, with the one it
    /// replaced.
    fn registrar_for(&self, service: &Service) -> (Arc<Registrar>, Option<Arc<Registrar>>) {
        let mut map = self.inner.registered.lock();
        let same = map
            .get(&service.key)
            .filter(|r| r.service().value == service.value && r.service().ttl == service.ttl);
        if let Some(r) = same {
            return (r.clone(), None);
        }
        let r = Arc::new(Registrar::on_core(self.inner.core.clone(), service.clone()));
        let replaced = map.insert(service.key.clone(), r.clone());
        (r, replaced)
    }

    /// Puts `old` back in the map in place of `refused` (unless another
    /// call has replaced that meanwhile).
    fn restore(&self, key: &str, refused: &Arc<Registrar>, old: Arc<Registrar>) {
        let mut map = self.inner.registered.lock();
        if map.get(key).is_some_and(|r| Arc::ptr_eq(r, refused)) {
            map.insert(key.to_owned(), old);
        } else {
            drop(map);
            stop_replaced(&old);
        }
    }

    /// Removes `service` (go-kit's `Deregister`); only the key is needed.
    /// A registration made by [`register`](Client::register) is stopped and
    /// its lease revoked (which deletes the key); otherwise the key is deleted.
    ///
    /// # Errors
    /// `NoKey` for an empty key, before any network traffic; `Timeout` or
    /// `Unavailable` when etcd cannot answer within `request_timeout`.
    pub fn deregister(&self, service: &Service) -> Result<()> {
        check_key(&service.key)?;
        let registrar = self.inner.registered.lock().remove(&service.key);
        if let Some(r) = registrar {
            // Revoking the lease deletes the key. Without a lease (never
            // registered successfully) fall through and delete it, as go-kit.
            let had_lease = r.lease_id().is_some();
            r.deregister()?;
            if had_lease {
                return Ok(());
            }
        }
        let core = &self.inner.core;
        core.call("deregister", core.request_timeout(), |reply| {
            Command::DeleteKey {
                key: service.key.clone(),
                reply,
            }
        })
    }

    /// The lease of the last successful [`register`](Client::register) on
    /// this client, 0 if none (go-kit's `LeaseID`). Each registered service
    /// has its own lease; [`Registrar::lease_id`] gives the lease of one.
    pub fn lease_id(&self) -> i64 {
        self.inner.last_lease.load(Ordering::Relaxed)
    }

    /// How the client is doing: its counters (see [`Stats`]). Cheap (a few
    /// atomic loads, no lock, no call to etcd), so it answers at once even
    /// while etcd or the runtime is stuck.
    ///
    /// ```no_run
    /// let client = etcd_sd::Client::connect(&["127.0.0.1:2379"], Default::default())?;
    /// let s = client.stats();
    /// println!("{} of {} registrars registered; connected: {}", s.registered, s.registrars, s.connected);
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let core = &self.inner.core;
        core.counters.snapshot(core.dispatcher.callback_panics())
    }

    /// The endpoints in use, normalised (`http://host:port` or
    /// `https://host:port`).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.core.endpoints
    }
}

/// Stops a registration that another one of the same key replaced (its lease
/// is revoked); failures are only logged, the lease then expires by its ttl.
fn stop_replaced(old: &Registrar) {
    if let Err(e) = old.deregister() {
        log::debug!(target: LOG, "{}: stopping the replaced registration: {e}", old.service().key);
    }
}

/// Checks one endpoint and gives it its scheme.
pub(crate) fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String> {
    let bad = |why: &str| Error::invalid(format!("endpoint {endpoint:?}: {why}"));
    let (scheme, rest) = match endpoint.split_once("://") {
        Some(("http", rest)) => {
            if tls {
                return Err(bad("http:// with TLS files set; use https:// or host:port"));
            }
            ("http", rest)
        }
        Some(("https", rest)) => ("https", rest),
        Some((other, _)) => return Err(bad(&format!("unknown scheme {other:?}"))),
        None => (if tls { "https" } else { "http" }, endpoint),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected host:port"))?;
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if host.contains(':') {
            return Err(bad("IPv6 addresses go in brackets, like [::1]:2379"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '\0' || c == '@')
    {
        return Err(bad("invalid host"));
    }
    match port.parse::<u16>() {
        Ok(0) => return Err(bad("port 0")),
        Ok(_) => {}
        Err(_) => return Err(bad("the port is not a number from 1 to 65535")),
    }
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_normalised() {
        let ok = [
            ("127.0.0.1:2379", false, "http://127.0.0.1:2379"),
            ("localhost:2379", true, "https://localhost:2379"),
            ("http://127.0.0.1:2379/", false, "http://127.0.0.1:2379"),
            ("https://[::1]:2379", false, "https://[::1]:2379"),
        ];
        for (e, tls, want) in ok {
            assert_eq!(normalize_endpoint(e, tls).unwrap(), want);
        }
        let bad = [
            "",
            "http://",
            "host:notaport",
            "127.0.0.1:0",
            "127.0.0.1",
            "ftp://a:1",
            "::1:2379",
            "[::1:2379",
            "a b:1",
            "127.0.0.1:65536",
            ":2379",
        ];
        for e in bad {
            let err = normalize_endpoint(e, false).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{e:?}");
        }
        assert!(normalize_endpoint("http://127.0.0.1:2379", true).is_err());
    }
}
