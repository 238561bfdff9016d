//! [`Registrar`]: the handle, on the caller's thread, of one service kept
//! registered with its own lease for as long as it lives. Its state machine
//! runs on the runtime thread (`runtime::lease`); they share the status of
//! `registration`.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::options::Service;
use crate::registration::{Control, RegistrationEvent, RegistrationState, Shared};
use crate::runtime::lease::Task;
use crate::runtime::{wait_reply, Command, Core};

const LOG: &str = "etcd_sd::registrar";

/// Keeps one [`Service`] registered in etcd (go-kit's `Registrar`), with its
/// own lease, until it is deregistered or dropped.
///
/// Any number of Registrars share one [`Client`] without disturbing each
/// other; they add no threads. The registration runs as a task on the
/// client's runtime thread: it grants a lease for the service's ttl, puts the
/// key under it, sends a keep-alive every heartbeat, watches its own key, and
/// starts again (with backoff) when the lease expires, is revoked, or the
/// key is deleted. See [`RegistrationState`] for the states.
///
/// A registrar is `Send + Sync`: share it by reference or in an `Arc`.
///
/// ```no_run
/// use etcd_sd::{Client, ClientOptions, Registrar, RegistrationState, Service};
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let registrar = Registrar::new(&client, Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080"));
/// registrar.register()?;
/// assert_eq!(registrar.state(), RegistrationState::Registered);
/// registrar.deregister()?; // also done on drop
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub struct Registrar {
    core: Arc<Core>,
    service: Service,
    shared: Arc<Shared>,
    /// The running task's control channel; `None` when no task runs.
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("key", &self.service.key)
            .field("state", &self.state())
            .field("lease_id", &self.lease_id())
            .finish()
    }
}

impl Registrar {
    /// Makes a registrar for `service` on `client`. Nothing is sent to etcd
    /// until [`register`](Registrar::register).
    pub fn new(client: &Client, service: Service) -> Registrar {
        Registrar::on_core(client.core().clone(), service)
    }

    pub(crate) fn on_core(core: Arc<Core>, service: Service) -> Registrar {
        let shared = Arc::new(Shared::new(
            service.key.clone(),
            core.drop_gate.clone(),
            core.counters.clone(),
        ));
        Registrar {
            core,
            service,
            shared,
            control: Mutex::new(None),
        }
    }

    /// Registers the service and keeps it registered (also after
    /// [`pause`](Registrar::pause): see [`resume`](Registrar::resume)).
    ///
    /// Blocks until the key is written, at most `request_timeout`. Whether it
    /// returns `Ok` or an error, the registrar stays active: it keeps trying
    /// with backoff (100 ms growing to 5 s) and keeps the key alive at the
    /// heartbeat, re-registering after every loss, until
    /// [`deregister`](Registrar::deregister) or drop. Calling it while already
    /// registered returns `Ok` at once.
    ///
    /// # Errors
    /// * `NoKey` / `NoValue`: empty key or value, before any network traffic
    ///   (nothing keeps running then);
    /// * `InvalidArgument`: key and value over etcd's default request limit
    ///   (1.5 MiB less 1 KiB, see [`Service`]), before any network traffic;
    ///   or refused for good by etcd (too large for its
    ///   `--max-request-bytes`), at once: then nothing keeps running either
    ///   (state `Unregistered`, lease revoked);
    /// * `Timeout`, `Unavailable`, `Auth`, `Etcd`: the key could not be written
    ///   within `request_timeout` (the last attempt's error; retries go on);
    /// * `Closed`: deregistered or paused by another thread while waiting.
    pub fn register(&self) -> Result<()> {
        self.service.validate()?;
        {
            let mut control = self.control.lock();
            // A closed channel: the task gave up for good (refused by etcd)
            // and ended by itself; start again.
            if control.as_ref().is_none_or(|c| c.is_closed()) {
                let (tx, rx) = mpsc::unbounded_channel();
                let epoch = self.shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                self.shared
                    .set(None, RegistrationState::Registering, None, None);
                self.shared.status.lock().last_error = None;
                self.core.send(Command::Register(Task::new(
                    self.service.clone(),
                    self.shared.clone(),
                    rx,
                    epoch,
                )))?;
                *control = Some(tx);
            }
        }
        self.wait_registered(self.core.request_timeout())
    }

    fn wait_registered(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.shared.status.lock();
        loop {
            match st.state {
                RegistrationState::Registered => return Ok(()),
                RegistrationState::Deregistered => {
                    return Err(Error::closed("registrar (deregistered while registering)"))
                }
                RegistrationState::Paused => {
                    return Err(Error::closed("registrar (paused while registering)"))
                }
                // Only a task that gave up for good goes back to it.
                RegistrationState::Unregistered => {
                    return Err(match &st.last_error {
                        Some(e) => e.context("register (refused for good)"),
                        None => Error::invalid("register (refused for good)"),
                    })
                }
                _ => {}
            }
            let timed_out = match deadline {
                Some(d) => self.shared.changed.wait_until(&mut st, d).timed_out(),
                None => {
                    self.shared.changed.wait(&mut st);
                    false
                }
            };
            if timed_out && st.state != RegistrationState::Registered {
                return Err(match &st.last_error {
                    Some(e) => e.context("register (still retrying)"),
                    None => Error::timeout("register (still retrying)"),
                });
            }
        }
    }

    /// Deregisters: revokes the lease, so the key goes at once, and stops
    /// keeping it alive. Idempotent; a no-op when not registered.
    ///
    /// Returns within `request_timeout`. With etcd unreachable it returns a
    /// `Timeout` or `Unavailable` error; the registration is stopped anyway
    /// and the key expires by itself after its ttl.
    pub fn deregister(&self) -> Result<()> {
        let control = self.control.lock().take();
        let Some(control) = control else {
            if self.state() == RegistrationState::Paused {
                // Nothing runs; a paused task still finishing its revoke
                // (etcd down) reports no more.
                self.shared.epoch.fetch_add(1, Ordering::SeqCst);
                self.shared
                    .set(None, RegistrationState::Deregistered, None, None);
            }
            return Ok(());
        };
        if control.is_closed() && self.state() == RegistrationState::Unregistered {
            // The task gave up for good and revoked its lease: nothing runs.
            return Ok(());
        }
        let (tx, rx) = cb::bounded(1);
        if control.send(Control::Deregister(tx)).is_err() {
            self.shared
                .set(None, RegistrationState::Deregistered, None, None);
            return Err(Error::closed("client runtime"));
        }
        let r = wait_reply(&rx, self.core.request_timeout(), "deregister");
        if r.as_ref()
            .is_err_and(|e| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable))
        {
            self.shared.gate.wait_failed();
        }
        if r.is_err() {
            // The task finishes by itself (its revoke is bounded too); report
            // the state the caller asked for.
            self.shared
                .set(None, RegistrationState::Deregistered, None, r.clone().err());
        }
        r
    }

    /// Drains: revokes the lease, so the key goes at once, and stops keeping
    /// it alive; the registrar stays, [`Paused`](RegistrationState::Paused),
    /// and nothing registers the key again (not an outage, not an etcd
    /// restart) until [`resume`](Registrar::resume). This is the pre-stop
    /// step of a graceful shutdown: new clients stop being sent here while
    /// the requests in flight finish.
    ///
    /// Returns within `request_timeout`. The registrar is `Paused` when it
    /// returns, whatever the result. Calling it twice, before
    /// [`register`](Registrar::register), or after
    /// [`deregister`](Registrar::deregister) is fine (`Ok`, `Paused`).
    /// [`deregister`](Registrar::deregister) after it is fine too.
    ///
    /// # Errors
    /// `Timeout` or `Unavailable` when etcd cannot be reached: the key then
    /// goes by itself after its ttl, as no keep-alive is sent any more (the
    /// revoke is also retried in the background, so it goes as soon as etcd
    /// answers again, if that is sooner).
    ///
    /// ```no_run
    /// use etcd_sd::{Client, ClientOptions, Registrar, RegistrationState, Service};
    /// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
    /// let registrar = Registrar::new(&client, Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080"));
    /// registrar.register()?;
    /// // SIGTERM: stop taking new work, finish what is in flight.
    /// registrar.pause()?;
    /// assert_eq!(registrar.state(), RegistrationState::Paused);
    /// // ... or, if the shutdown is called off:
    /// registrar.resume()?; // a new lease
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn pause(&self) -> Result<()> {
        let control = self.control.lock().take();
        let control = match control {
            Some(c) if !c.is_closed() => c,
            // Nothing runs (never registered, deregistered, paused, or
            // given up for good): nothing holds the key.
            _ => {
                self.shared.epoch.fetch_add(1, Ordering::SeqCst);
                self.shared.set(None, RegistrationState::Paused, None, None);
                return Ok(());
            }
        };
        let (tx, rx) = cb::bounded(1);
        if control.send(Control::Pause(tx)).is_err() {
            self.shared.set(None, RegistrationState::Paused, None, None);
            return Ok(());
        }
        let r = wait_reply(&rx, self.core.request_timeout(), "pause");
        if r.as_ref()
            .is_err_and(|e| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable))
        {
            self.shared.gate.wait_failed();
        }
        if r.is_err() {
            // The task finishes by itself (its revoke is bounded too).
            self.shared
                .set(None, RegistrationState::Paused, None, r.clone().err());
        }
        r
    }

    /// Ends a [`pause`](Registrar::pause): registers the service again, under
    /// a new lease, exactly as [`register`](Registrar::register) (which it
    /// is; `register` on a paused registrar resumes it too). When not paused
    /// it is `register()`.
    ///
    /// # Errors
    /// As [`register`](Registrar::register): the registrar keeps trying
    /// after an error.
    pub fn resume(&self) -> Result<()> {
        self.register()
    }

    /// The current state. Never blocks.
    pub fn state(&self) -> RegistrationState {
        self.shared.status.lock().state
    }

    /// The lease in force, if registered. A new lease is granted after the
    /// old one is lost, so the id can change while the registrar lives.
    pub fn lease_id(&self) -> Option<i64> {
        self.shared.status.lock().lease_id
    }

    /// A new stream of state changes, from now on (earlier ones are not
    /// replayed: read [`state`](Registrar::state) for the current one).
    ///
    /// The channel is unbounded and never blocks the registration; an
    /// undrained receiver keeps the events it has not read. When the
    /// registrar is dropped, the receiver can still receive what it holds,
    /// then `recv` reports disconnection at once. Each call makes a new
    /// stream; dropping one receiver does not affect the others.
    ///
    /// ```no_run
    /// use etcd_sd::{Client, ClientOptions, Registrar, RegistrationState, Service};
    /// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
    /// let registrar = Registrar::new(&client, Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080"));
    /// let events = registrar.events();
    /// registrar.register()?;
    /// for event in events.iter() {
    ///     match event.state {
    ///         RegistrationState::Lost => eprintln!("registration lost: {:?}", event.error),
    ///         RegistrationState::Registered => eprintln!("registered, lease {:?}", event.lease_id),
    ///         other => eprintln!("{other:?}"),
    ///     }
    /// }
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn events(&self) -> cb::Receiver<RegistrationEvent> {
        let (tx, rx) = cb::unbounded();
        self.shared.status.lock().listeners.push(tx);
        rx
    }

    /// The service this registrar keeps registered.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

impl Drop for Registrar {
    /// Deregisters. While registered this waits for the revoke, at most
    /// `request_timeout`, so the key is gone when it returns; otherwise (still
    /// trying, lost) it only tells the task to stop. It does not wait either
    /// once a wait for a revoke on this client has failed and etcd has not
    /// answered since (see `DropGate`): dropping any number of registrars
    /// costs the caller at most one `request_timeout` in total. The revokes
    /// then go on in the background, each bounded by `request_timeout`; a
    /// key whose revoke fails expires by its ttl.
    fn drop(&mut self) {
        if self.state() == RegistrationState::Registered && self.shared.gate.should_wait() {
            if let Err(e) = self.deregister() {
                log::warn!(target: LOG, "{}: deregister on drop failed: {e}", self.service.key);
            }
        } else if let Some(control) = self.control.lock().take() {
            let (tx, _rx) = cb::bounded(1);
            let _ = control.send(Control::Deregister(tx));
        }
        self.shared.status.lock().listeners.clear();
        self.shared.gone();
    }
}
