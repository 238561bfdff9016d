//! What a registration reports, shared by the handle (`Registrar`, on the
//! caller's thread) and its state machine (`runtime::lease`, on the runtime
//! thread): the public [`RegistrationState`] and [`RegistrationEvent`], the
//! status both sides read and write ([`Shared`]), the messages from the
//! handle to its task ([`Control`]) and the client-wide [`DropGate`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel as cb;
use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::runtime::Reply;
use crate::stats::{Counters, Gauge};

const LOG: &str = "etcd_sd::registrar";

/// Where a registration stands, as [`Registrar::state`](crate::Registrar::state) and
/// [`Registrar::events`](crate::Registrar::events) report it.
///
/// ```text
/// Unregistered ─register()─▶ Registering ─key written─▶ Registered ◀──┐
///                                                          │           │ key written
///                                 lease expired/revoked,   ▼           │ again (backoff)
///                                 key deleted ──────────▶ Lost ────────┘
/// any state ─pause()─▶ Paused (lease revoked, key gone, nothing retries)
///                        └─resume()/register()─▶ Registering (a new lease)
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
///
/// [`Registrar::pause`](crate::Registrar::pause) (draining before a shutdown)
/// revokes the lease and stops every retry until
/// [`resume`](crate::Registrar::resume): the registrar stays `Paused` through
/// etcd outages and restarts. More states may be added: match with a
/// wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Paused by [`Registrar::pause`](crate::Registrar::pause): lease revoked
    /// (or, with etcd down, left to expire after its ttl), nothing running,
    /// nothing re-registers the key. [`resume`](crate::Registrar::resume) (or
    /// `register`) registers it again under a new lease.
    Paused,
}

/// A change of [`RegistrationState`], as delivered by [`Registrar::events`](crate::Registrar::events).
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
    pub(crate) fn should_wait(&self) -> bool {
        !self.unanswered.load(Ordering::SeqCst)
    }

    /// A wait for a revoke timed out, or etcd could not be reached.
    pub(crate) fn wait_failed(&self) {
        self.unanswered.store(true, Ordering::SeqCst);
    }

    /// etcd answered a registration or a revoke.
    pub(crate) fn etcd_answered(&self) {
        self.unanswered.store(false, Ordering::SeqCst);
    }
}

/// State shared by the handle and the task.
pub(crate) struct Shared {
    pub(crate) key: String,
    /// The client's [`DropGate`], told by the task when etcd answers.
    pub(crate) gate: Arc<DropGate>,
    /// Bumped each time `register` starts a task; a task whose epoch is not
    /// the current one (an old task still finishing its revoke) reports
    /// nothing.
    pub(crate) epoch: AtomicU64,
    pub(crate) status: Mutex<Status>,
    pub(crate) changed: Condvar,
    /// The client's counters (`registered`, `registrars`).
    counters: Arc<Counters>,
}

pub(crate) struct Status {
    pub(crate) state: RegistrationState,
    pub(crate) lease_id: Option<i64>,
    pub(crate) last_error: Option<Error>,
    pub(crate) listeners: Vec<cb::Sender<RegistrationEvent>>,
    /// Counted in the client's `registered` gauge.
    counted: bool,
    /// The handle is gone: no longer counted at all.
    gone: bool,
}

impl Shared {
    /// The status of a new registration of `key`, counted among the client's
    /// registrars until [`gone`](Shared::gone).
    pub(crate) fn new(key: String, gate: Arc<DropGate>, counters: Arc<Counters>) -> Shared {
        counters.up(Gauge::Registrars);
        Shared {
            key,
            gate,
            epoch: AtomicU64::new(0),
            status: Mutex::new(Status {
                state: RegistrationState::Unregistered,
                lease_id: None,
                last_error: None,
                listeners: Vec::new(),
                counted: false,
                gone: false,
            }),
            changed: Condvar::new(),
            counters,
        }
    }

    /// The handle was dropped: it leaves the client's gauges.
    pub(crate) fn gone(&self) {
        let mut st = self.status.lock();
        if !st.gone {
            st.gone = true;
            self.counters.down(Gauge::Registrars);
            self.recount(&mut st);
        }
    }

    /// Keeps the client's `registered` gauge in line with `st`.
    fn recount(&self, st: &mut Status) {
        let now = st.state == RegistrationState::Registered && !st.gone;
        if now != st.counted {
            st.counted = now;
            if now {
                self.counters.up(Gauge::Registered);
            } else {
                self.counters.down(Gauge::Registered);
            }
        }
    }

    /// Records a state; listeners hear of it when the state changed. `epoch`
    /// is the reporting task's, or `None` from the handle.
    pub(crate) fn set(
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
        self.recount(&mut st);
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
    pub(crate) fn note_error(&self, epoch: u64, error: Error) {
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
        RegistrationState::Deregistered | RegistrationState::Paused => {
            error.is_none() && before.lease_id.is_some()
        }
        _ => false,
    }
}

/// Messages from the handle to its task.
pub(crate) enum Control {
    /// Revoke the lease and stop.
    Deregister(Reply<()>),
    /// Revoke the lease and stop, reporting `Paused` (a drain, until resumed).
    Pause(Reply<()>),
}
