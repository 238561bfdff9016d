//! [`Registrar`]: keeps one service registered, with its own lease, for as long
//! as it lives, and brings it back after every loss.
//!
//! The public handle lives on the caller's side; the state machine runs as a
//! task on the runtime thread (see [`Task::run`]):
//!
//! ```text
//! Unregistered ─register()─▶ Registering ─key written─▶ Registered ◀──┐
//!                                                          │           │ key written
//!                                 lease expired/revoked,   ▼           │ again (backoff)
//!                                 key deleted ──────────▶ Lost ────────┘
//! any state ─deregister()/drop─▶ Deregistered (lease revoked, key gone)
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::backoff::SplitMix64;
use crate::client::Client;
use crate::error::{
    from_cancel_reason, from_etcd, is_lease_exists, is_lease_not_found, Error, ErrorKind, Result,
};
use crate::members::InUse;
use crate::options::{Service, TtlOption};
use crate::runtime::{kv, wait_reply, watch, Command, Core, Ctx, Reply};

const LOG: &str = "etcd_sd::registrar";

/// Where a registration stands, as [`Registrar::state`] and
/// [`Registrar::events`] report it.
///
/// ```text
/// Unregistered ─register()─▶ Registering ─key written─▶ Registered ◀──┐
///                                                          │           │ key written
///                                 lease expired/revoked,   ▼           │ again (backoff)
///                                 key deleted ──────────▶ Lost ────────┘
/// any state ─deregister()/drop─▶ Deregistered (lease revoked, key gone)
/// ```
///
/// While `Registering` or `Lost` the registrar retries with jittered
/// backoff, 100 ms doubling to 5 s, for as long as it lives; the first
/// attempt after a loss goes at once. Only a refusal for good ends that: when
/// etcd answers `InvalidArgument` (the request is too large for its
/// `--max-request-bytes`, or malformed), trying again cannot help, so the
/// registrar revokes the lease it granted and goes back to `Unregistered`,
/// with an event whose `error` says why; nothing keeps running, and a later
/// `register` tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Made, never registered; or refused for good by etcd (see above:
    /// the event's `error` is of kind `InvalidArgument`), nothing running.
    Unregistered,
    /// First attempt under way (granting the lease, writing the key), or
    /// retrying it after failures.
    Registering,
    /// The key is written under a live lease that is kept alive.
    Registered,
    /// The lease or the key was lost (outage longer than the ttl, lease
    /// revoked, key deleted); re-registering with backoff.
    Lost,
    /// Deregistered: lease revoked (or left to expire when etcd was down),
    /// nothing running. `register` starts over.
    Deregistered,
}

/// A change of [`RegistrationState`], as delivered by [`Registrar::events`].
///
/// Besides state changes, a stream also gets an event when attempts start
/// failing for a new reason (say, etcd down, then permission denied): same
/// `state`, with `error` set. Repeated failures of the same kind are not
/// sent again.
#[derive(Clone, Debug)]
pub struct RegistrationEvent {
    /// The new state.
    pub state: RegistrationState,
    /// The lease in force, if any.
    pub lease_id: Option<i64>,
    /// Why the registration was lost or could not be made, if it was; for
    /// `Deregistered`, why the lease could not be revoked.
    pub error: Option<Error>,
}

/// Whether etcd answers revokes, shared by every Registrar of one client
/// (held by its `Core`), so that dropping any number of Registrars while
/// etcd does not answer costs the caller at most one `request_timeout` in
/// total: once a wait for a revoke has failed, later drops only tell their
/// task to revoke (in the background, bounded there) and do not wait, until
/// etcd is seen answering again (a registration written, a revoke done).
#[derive(Debug, Default)]
pub(crate) struct DropGate {
    /// A wait for a revoke failed, and etcd has not answered since.
    unanswered: AtomicBool,
}

impl DropGate {
    /// Whether a drop should wait for its revoke.
    fn should_wait(&self) -> bool {
        !self.unanswered.load(Ordering::SeqCst)
    }

    /// A wait for a revoke timed out, or etcd could not be reached.
    fn wait_failed(&self) {
        self.unanswered.store(true, Ordering::SeqCst);
    }

    /// etcd answered a registration or a revoke.
    fn etcd_answered(&self) {
        self.unanswered.store(false, Ordering::SeqCst);
    }
}

/// State shared by the handle and the task.
pub(crate) struct Shared {
    key: String,
    /// The client's [`DropGate`], told by the task when etcd answers.
    gate: Arc<DropGate>,
    /// Bumped each time `register` starts a task; a task whose epoch is not
    /// the current one (an old task still finishing its revoke) reports
    /// nothing.
    epoch: AtomicU64,
    status: Mutex<Status>,
    changed: Condvar,
}

struct Status {
    state: RegistrationState,
    lease_id: Option<i64>,
    last_error: Option<Error>,
    listeners: Vec<cb::Sender<RegistrationEvent>>,
}

impl Shared {
    fn new(key: String, gate: Arc<DropGate>) -> Shared {
        Shared {
            key,
            gate,
            epoch: AtomicU64::new(0),
            status: Mutex::new(Status {
                state: RegistrationState::Unregistered,
                lease_id: None,
                last_error: None,
                listeners: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    /// Records a state; listeners hear of it when the state changed. `epoch`
    /// is the reporting task's, or `None` from the handle.
    fn set(
        &self,
        epoch: Option<u64>,
        state: RegistrationState,
        lease_id: Option<i64>,
        error: Option<Error>,
    ) {
        let mut st = self.status.lock();
        if epoch.is_some_and(|e| e != self.epoch.load(Ordering::SeqCst)) {
            return;
        }
        if epoch.is_some() && etcd_answered(&st, state, error.as_ref()) {
            self.gate.etcd_answered();
        }
        let changed = st.state != state;
        st.state = state;
        st.lease_id = lease_id;
        if error.is_some() || state == RegistrationState::Registered {
            st.last_error = error.clone();
        }
        if changed {
            match state {
                RegistrationState::Lost => {
                    log::warn!(target: LOG, "{}: registration lost: {}", self.key,
                        error.as_ref().map(ToString::to_string).unwrap_or_default())
                }
                RegistrationState::Unregistered if error.is_some() => {
                    log::warn!(target: LOG, "{}: refused for good, not retrying: {}", self.key,
                        error.as_ref().map(ToString::to_string).unwrap_or_default())
                }
                _ => match lease_id {
                    Some(id) => log::info!(target: LOG, "{}: {state:?} (lease {id:x})", self.key),
                    None => log::info!(target: LOG, "{}: {state:?}", self.key),
                },
            }
            let event = RegistrationEvent {
                state,
                lease_id,
                error,
            };
            st.listeners.retain(|l| l.send(event.clone()).is_ok());
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Records the error of a failed attempt. Listeners hear of it when its
    /// kind differs from the last error's (say, etcd down, then permission
    /// denied), not on every retry.
    fn note_error(&self, epoch: u64, error: Error) {
        let mut st = self.status.lock();
        if epoch != self.epoch.load(Ordering::SeqCst) {
            return;
        }
        let new_kind = st.last_error.as_ref().map(Error::kind) != Some(error.kind());
        if new_kind {
            log::warn!(target: LOG, "{}: {:?}: {error}; retrying", self.key, st.state);
            let event = RegistrationEvent {
                state: st.state,
                lease_id: st.lease_id,
                error: Some(error.clone()),
            };
            st.listeners.retain(|l| l.send(event.clone()).is_ok());
        } else {
            log::debug!(target: LOG, "{}: attempt failed again: {error}", self.key);
        }
        st.last_error = Some(error);
        drop(st);
        self.changed.notify_all();
    }
}

/// Whether a task's report from `before` to `state` shows that etcd answered:
/// a key written, or a lease in force revoked.
fn etcd_answered(before: &Status, state: RegistrationState, error: Option<&Error>) -> bool {
    match state {
        RegistrationState::Registered => true,
        RegistrationState::Deregistered => error.is_none() && before.lease_id.is_some(),
        _ => false,
    }
}

/// Messages from the handle to its task.
enum Control {
    /// Revoke the lease and stop.
    Deregister(Reply<()>),
}

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
        let shared = Arc::new(Shared::new(service.key.clone(), core.drop_gate.clone()));
        Registrar {
            core,
            service,
            shared,
            control: Mutex::new(None),
        }
    }

    /// Registers the service and keeps it registered.
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
    /// * `Closed`: deregistered by another thread while waiting.
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
                self.core.send(Command::Register(Task {
                    service: self.service.clone(),
                    shared: self.shared.clone(),
                    control: rx,
                    epoch,
                }))?;
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
    }
}

/// The registration state machine, run on the runtime thread.
pub(crate) struct Task {
    service: Service,
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<Control>,
    epoch: u64,
}

/// Why the keep-alive phase ended.
enum Loss {
    /// The lease is gone (expired or revoked): grant a new one.
    Lease(Error),
    /// The key is gone but the lease may live: put again under it.
    Key(Error),
    /// No keep-alive was answered for a whole ttl (etcd unreachable, or a
    /// cluster busy electing a leader). The lease may have survived: the
    /// next attempt puts under it first and grants a new one only if etcd
    /// says it is gone.
    Silent(Error),
}

impl Task {
    /// Ends the task after etcd refused the registration for good
    /// (`InvalidArgument`: too large, malformed), where retrying cannot help:
    /// revokes `lease` (bounded; a failure only means it expires by its
    /// ttl), closes the control channel so the handle's next `register`
    /// starts a new task (answering a deregistration that raced in), and
    /// reports `Unregistered` with the error.
    async fn give_up(&mut self, ctx: &Ctx, lease: Option<i64>, error: Error) {
        if let Some(id) = lease {
            if let Err(e) = revoke(ctx, id).await {
                log::debug!(target: LOG, "{}: revoking lease {id:x} after a refusal: {e}", self.service.key);
            }
        }
        self.control.close();
        while let Ok(Control::Deregister(reply)) = self.control.try_recv() {
            let _ = reply.send(Ok(()));
        }
        self.shared.set(
            Some(self.epoch),
            RegistrationState::Unregistered,
            None,
            Some(error),
        );
    }
}

impl Task {
    pub(crate) async fn run(mut self, ctx: Ctx) {
        let ttl = self.service.ttl_or_default();
        let mut backoff = Backoff::standard();
        let mut lease: Option<i64> = None;
        loop {
            // Establish: (grant and) put.
            let attempt = establish(&ctx, &self.service, ttl, lease);
            let outcome = tokio::select! {
                r = attempt => r,
                c = self.control.recv() => return self.finish(&ctx, c, lease).await,
            };
            let (revision, watch) = match outcome {
                Ok((id, revision, watch)) => {
                    lease = Some(id);
                    backoff.reset();
                    self.shared
                        .set(Some(self.epoch), RegistrationState::Registered, lease, None);
                    (revision, watch)
                }
                Err((e, known_lease)) => {
                    lease = known_lease;
                    if e.kind() == ErrorKind::InvalidArgument {
                        return self.give_up(&ctx, lease, e).await;
                    }
                    self.shared.note_error(self.epoch, e);
                    if !self.pause(&ctx, &mut backoff, lease).await {
                        return;
                    }
                    continue;
                }
            };
            // Keep alive until lost.
            let id = lease.expect("registered with a lease");
            // The streams live out here so that a deregister revokes the
            // lease before they are torn down (closing them first would put
            // their RST_STREAM frames ahead of the revoke on the connection).
            let mut streams = Streams {
                keeper: None,
                watch,
            };
            let loss = tokio::select! {
                l = keep_alive(&ctx, &self.service.key, id, ttl, revision, &mut streams) => l,
                c = self.control.recv() => {
                    self.finish(&ctx, c, lease).await;
                    drop(streams);
                    return;
                }
            };
            drop(streams);
            let error = match loss {
                Loss::Lease(e) => {
                    lease = None;
                    e
                }
                Loss::Key(e) | Loss::Silent(e) => e,
            };
            self.shared
                .set(Some(self.epoch), RegistrationState::Lost, None, Some(error));
            // The first attempt after a loss goes at once (etcd may well be
            // answering: a revoked lease, a deleted key); failures then back
            // off from 100 ms.
        }
    }

    /// Waits the next backoff step; false when told to stop meanwhile (and
    /// then already finished).
    async fn pause(&mut self, ctx: &Ctx, backoff: &mut Backoff, lease: Option<i64>) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            c = self.control.recv() => {
                self.finish(ctx, c, lease).await;
                false
            }
        }
    }

    /// Deregisters (revoking `lease` if known) and reports to whoever asked.
    async fn finish(&mut self, ctx: &Ctx, control: Option<Control>, lease: Option<i64>) {
        let result = match lease {
            Some(id) => revoke(ctx, id).await,
            None => Ok(()),
        };
        self.shared.set(
            Some(self.epoch),
            RegistrationState::Deregistered,
            None,
            result.clone().err(),
        );
        if let Some(Control::Deregister(reply)) = control {
            let _ = reply.send(result);
        }
    }
}

/// Revokes a lease; one that is gone already is fine.
async fn revoke(ctx: &Ctx, id: i64) -> Result<()> {
    ctx.call("revoke lease", move |c| async move {
        c.lease_client().revoke(id).await
    })
    .await
    .map(|_| ())
    .or_else(|e| {
        if is_lease_not_found(&e) {
            Ok(())
        } else {
            Err(e)
        }
    })
}

/// Grants a lease of `ttl` with an id of our choosing, so that a grant that
/// reaches etcd twice (sent again to another member when the first did not
/// answer in time) makes one lease, not two: the second attempt hears that
/// the lease exists, which is ours.
async fn grant(ctx: &Ctx, ttl: TtlOption) -> Result<i64> {
    let id = new_lease_id();
    let seconds = ttl.lease_seconds();
    match ctx
        .call("grant lease", move |c| async move {
            let options = etcd_client::LeaseGrantOptions::new().with_id(id);
            c.lease_client().grant(seconds, Some(options)).await
        })
        .await
    {
        Ok(resp) => Ok(resp.id()),
        Err(e) if is_lease_exists(&e) => Ok(id),
        Err(e) => Err(e),
    }
}

/// A random positive lease id (etcd takes any but 0; 63 random bits make a
/// clash with another lease as good as impossible).
fn new_lease_id() -> i64 {
    thread_local! {
        static RNG: std::cell::RefCell<SplitMix64> = std::cell::RefCell::new(SplitMix64::from_entropy());
    }
    loop {
        let id = RNG.with(|r| (r.borrow_mut().next_u64() >> 1) as i64);
        if id != 0 {
            return id;
        }
    }
}

/// Writes the service's key under `lease`; returns the revision of the write.
async fn put(ctx: &Ctx, service: &Service, lease: i64) -> Result<i64> {
    let (key, value) = (service.key.clone(), service.value.clone());
    let resp = ctx
        .call("put", move |c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                kv(&c)
                    .put(
                        key,
                        value,
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    )
                    .await
            }
        })
        .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}

/// What [`establish`] returns: the lease, the revision of the write and the
/// watch on the key (when it could be opened).
type Established = (i64, i64, Option<OwnKeyWatch>);

/// Grants a lease (unless `lease` is given and still valid) and writes the key
/// under it. Returns the lease, the revision of the write and a watch on the
/// key that etcd created before the write; on failure, the error and the
/// lease that is known to exist (to reuse or revoke).
///
/// The watch is opened alongside the grant, so it costs the registration no
/// time, and it is in place before `register()` returns: a deregistration
/// right after never races etcd setting up the watch. A watch that cannot be
/// opened is not an error: [`keep_alive`] opens it again from the write's
/// revision, so no change to the key is missed either way.
async fn establish(
    ctx: &Ctx,
    service: &Service,
    ttl: TtlOption,
    lease: Option<i64>,
) -> std::result::Result<Established, (Error, Option<i64>)> {
    let watch = watch_own_key(ctx, &service.key, WatchFrom::Now, open_bound(ctx, ttl));
    let (watch, granted) = match lease {
        Some(id) => {
            let watch = watch.await;
            match put(ctx, service, id).await {
                Ok(revision) => return Ok((id, revision, watch)),
                Err(e) if is_lease_not_found(&e) => {}
                Err(e) => return Err((e, Some(id))),
            }
            (watch, grant(ctx, ttl).await)
        }
        None => tokio::join!(watch, grant(ctx, ttl)),
    };
    let id = granted.map_err(|e| (e, None))?;
    match put(ctx, service, id).await {
        Ok(revision) => Ok((id, revision, watch)),
        Err(e) => Err((e, Some(id))),
    }
}

/// How long opening one of a registration's streams may take.
fn open_bound(ctx: &Ctx, ttl: TtlOption) -> Duration {
    ctx.request_timeout
        .min(ttl.heartbeat().max(Duration::from_millis(500)))
}

/// Where a watch on a registrar's own key starts.
#[derive(Clone, Copy)]
enum WatchFrom {
    /// From the next revision; the watch is returned once etcd has created
    /// it, so every later change reaches it.
    Now,
    /// From the revision after this one (history is replayed). Its creation,
    /// or its cancellation (compaction), is the stream's first message, which
    /// [`keep_alive`] reads.
    After(i64),
}

/// A watch on a registrar's own key, and its member.
type OwnKeyWatch = (InUse, etcd_client::WatchStream);

/// A lease keep-alive stream, and its member.
type Keeper = (
    InUse,
    etcd_client::LeaseKeeper,
    etcd_client::LeaseKeepAliveStream,
);

/// Opens a watch on `key`; `None` if that fails within `bound` (logged).
async fn watch_own_key(
    ctx: &Ctx,
    key: &str,
    from: WatchFrom,
    bound: Duration,
) -> Option<OwnKeyWatch> {
    let owned = key.to_owned();
    let open = ctx.open("watch own key", bound, move |c| {
        let key = owned.clone();
        async move {
            let mut client = watch(&c);
            match from {
                WatchFrom::After(revision) => {
                    let opts = etcd_client::WatchOptions::new().with_start_revision(revision + 1);
                    client.watch(key, Some(opts)).await
                }
                WatchFrom::Now => {
                    let mut stream = client.watch(key, None).await?;
                    match stream.message().await? {
                        Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                        Some(resp) => Err(etcd_client::Error::WatchError(format!(
                            "watch cancelled by etcd: {}",
                            resp.cancel_reason()
                        ))),
                        None => Err(etcd_client::Error::WatchError("watch stream closed".into())),
                    }
                }
            }
        }
    });
    match open.await {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::debug!(target: LOG, "{key}: cannot watch own key: {e}");
            None
        }
    }
}

/// The keep-alive stream and the own-key watch of one registration.
#[derive(Default)]
struct Streams {
    keeper: Option<Keeper>,
    watch: Option<OwnKeyWatch>,
}

/// Keeps `lease` alive at the heartbeat and watches `key` for changes after
/// `revision` (the write); returns when the lease or the key is gone, or when
/// no keep-alive succeeded for a whole ttl (etcd has dropped the lease by
/// then).
async fn keep_alive(
    ctx: &Ctx,
    key: &str,
    lease: i64,
    ttl: TtlOption,
    revision: i64,
    streams: &mut Streams,
) -> Loss {
    use etcd_client::EventType;
    let heartbeat = ttl.heartbeat();
    let mut last_ok = tokio::time::Instant::now();
    let Streams { keeper, watch } = streams;
    let mut watched_rev = revision;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let open_bound = open_bound(ctx, ttl);
    // A missing or broken key watch is reopened from the last revision seen
    // (the put's at first), so no change is missed, at the next heartbeat.
    let open_watch = |from: i64| watch_own_key(ctx, key, WatchFrom::After(from), open_bound);
    if watch.is_none() {
        *watch = open_watch(watched_rev).await;
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if watch.is_none() {
                    *watch = open_watch(watched_rev).await;
                }
                if last_ok.elapsed() >= ttl.ttl() {
                    return Loss::Silent(Error::new(ErrorKind::Unavailable,
                        format!("no keep-alive answered for {:?} (the ttl)", ttl.ttl())));
                }
                match keeper {
                    Some((_, k, _)) => {
                        if k.keep_alive().await.is_err() {
                            *keeper = None;
                        }
                    }
                    None => {
                        let open = ctx.open("keep-alive", open_bound, move |c| async move {
                            c.lease_client().keep_alive(lease).await
                        });
                        match open.await {
                            Ok((member, (k, stream))) => {
                                // Opening sends and answers the first keep-alive.
                                last_ok = tokio::time::Instant::now();
                                *keeper = Some((member, k, stream));
                            }
                            Err(e) if is_lease_not_found(&e) => return Loss::Lease(e),
                            Err(e) => log::debug!(target: LOG, "{key}: keep-alive stream failed: {e}"),
                        }
                    }
                }
            }
            msg = next_message(keeper) => match msg {
                Ok(Some(resp)) if resp.ttl() <= 0 => {
                    return Loss::Lease(Error::new(ErrorKind::Etcd, "lease expired or revoked"));
                }
                Ok(Some(_)) => last_ok = tokio::time::Instant::now(),
                // Broken, or its member hung: a new stream, on the member
                // that answers, at the next heartbeat.
                Ok(None) | Err(_) => *keeper = None,
            },
            msg = next_message(watch) => match msg {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        *watch = None;
                        // An expired auth token cancels watches; refresh it
                        // before the next heartbeat reopens this one.
                        ctx.refresh_auth(&from_cancel_reason(resp.cancel_reason())).await;
                        if resp.compact_revision() > 0 {
                            // History is gone; a fresh watch from now plus a
                            // read tell us whether the key is still there.
                            watched_rev = resp.compact_revision() - 1;
                            let owned = key.to_owned();
                            let get = ctx.call("get own key", move |c| {
                                let key = owned.clone();
                                async move { kv(&c).get(key, None).await }
                            });
                            if let Ok(r) = get.await {
                                watched_rev = r.header().map(|h| h.revision()).unwrap_or(watched_rev);
                                if r.kvs().is_empty() {
                                    return Loss::Key(Error::new(ErrorKind::Etcd, "key deleted by someone else"));
                                }
                            }
                        }
                        continue;
                    }
                    if let Some(h) = resp.header() {
                        watched_rev = watched_rev.max(h.revision());
                    }
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            // A watch opened before the write also sees the
                            // write itself, and whatever came before it.
                            if kv.mod_revision() <= revision {
                                continue;
                            }
                            watched_rev = watched_rev.max(kv.mod_revision());
                        }
                        match ev.event_type() {
                            EventType::Delete => {
                                return Loss::Key(Error::new(ErrorKind::Etcd, "key deleted by someone else"));
                            }
                            EventType::Put => {
                                if let Some(kv) = ev.kv() {
                                    if kv.lease() != lease {
                                        log::warn!(target: LOG, "{key}: overwritten by someone else (lease {:x}); waiting for it to go", kv.lease());
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => *watch = None,
            },
        }
    }
}

/// The next message of a stream held with its member: `Err` when the stream
/// broke or its member was declared hung (which the caller treats alike: a
/// new stream, where etcd answers).
async fn next_message<S: NextMessage>(
    slot: &mut Option<S>,
) -> std::result::Result<Option<S::Message>, Error> {
    match slot {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A stream of a registration, held with its member.
trait NextMessage {
    type Message;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error>;
}

/// Waits for `stream`'s next message, or for `member` to be declared hung.
async fn message_or_hung<T>(
    member: &mut InUse,
    stream: impl std::future::Future<Output = std::result::Result<Option<T>, etcd_client::Error>>,
) -> std::result::Result<Option<T>, Error> {
    tokio::select! {
        m = stream => m.map_err(|e| {
            let e = from_etcd(e);
            member.failed(&e);
            e
        }),
        _ = member.hung() => Err(Error::new(ErrorKind::Unavailable,
            format!("member {} stopped answering", member.endpoint()))),
    }
}

impl NextMessage for Keeper {
    type Message = etcd_client::LeaseKeepAliveResponse;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error> {
        let (member, _, stream) = self;
        message_or_hung(member, stream.message()).await
    }
}

impl NextMessage for OwnKeyWatch {
    type Message = etcd_client::WatchResponse;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error> {
        let (member, stream) = self;
        message_or_hung(member, stream.message()).await
    }
}
