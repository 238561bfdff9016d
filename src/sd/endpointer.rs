//! [`Endpointer`]: one endpoint per discovered instance, kept in step with an
//! [`Instancer`] through a callback on the client's dispatcher thread.
//!
//! One lock, never held while user code (factory, closer) runs, and never
//! taken by readers:
//! * `cache` belongs to the update path: the endpoints, their closers, the
//!   set they were built from, the error state. An update takes its state
//!   out, applies the change with no lock held and puts it back.
//! * `view` is what [`Endpointer::endpoints`] and the balancers read: an
//!   `ArcSwap` of the current endpoint list and status, replaced whole by the
//!   update path and loaded by readers without a lock or a shared counter.
//!
//! An update is incremental: the new instances are compared with the applied
//! ones chunk by chunk ([`SortedChunks::diff`]), so only what changed is
//! looked at, and the endpoint list is copy-on-write, so only the chunk an
//! instance joins or leaves is copied.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::{Closer, EndpointerOptions};
use crate::chunks::{Change, Keyed, SortedChunks};
use crate::dispatch::Topic;
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::instancer::Instancer;
use crate::instances::{Event, Instances};
use crate::name::Name;

const LOG: &str = "etcd_sd::sd";

/// The endpoint factory, boxed.
type Factory<E> =
    dyn Fn(&str) -> std::result::Result<(E, Option<Closer>), BoxError> + Send + Sync + 'static;

/// Where "now" comes from (a fake clock in tests).
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Keeps one endpoint per instance of an [`Instancer`] (go-kit's
/// `sd.NewEndpointer`).
///
/// * For each new instance it calls the factory once, with the instance
///   string, and keeps the endpoint (and its optional [`Closer`]) for as long
///   as the instance stays.
/// * When an instance goes, its closer runs; on [`close`](Endpointer::close)
///   every closer runs.
/// * An instance whose factory fails (or panics) is skipped and logged
///   (target `etcd_sd::sd`); the factory is tried again at the next update.
/// * [`endpoints`](Endpointer::endpoints) lists the endpoints in instance
///   order (sorted by instance string).
/// * Discovery errors are handled as [`EndpointerOptions`] says.
///
/// Updates are applied by a callback on the client's dispatcher thread (see
/// [`Instancer::on_update`]): factories and closers run there, except for
/// the first set, which [`new`](Endpointer::new) builds on the calling thread
/// so that `endpoints()` is ready when it returns. Readers never wait for a
/// factory or a closer.
///
/// # Lifetime
/// Clones share one state. The endpointer closes (every closer runs, and
/// `endpoints()` returns an error of kind `Closed` from then on) when
/// [`close`](Endpointer::close) is called, when the last clone is dropped,
/// or when its **Instancer is stopped or dropped**: keep the Instancer for as
/// long as you use the endpointer.
///
/// # Example
/// ```no_run
/// use etcd_sd::sd::{Closer, Endpointer, EndpointerOptions};
/// use etcd_sd::{Client, ClientOptions, Instancer};
///
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let instancer = Instancer::new(&client, "/services/barsvc/")?;
/// let endpointer = Endpointer::new(
///     &instancer,
///     |instance: &str| {
///         let url = instance.to_string();
///         let closer: Closer = Box::new(move || println!("{url} is gone"));
///         Ok((instance.to_string(), Some(closer)))
///     },
///     EndpointerOptions::default(),
/// );
/// println!("{:?}", endpointer.endpoints()?);
/// endpointer.close(); // runs every closer
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub struct Endpointer<E> {
    handle: Arc<Handle<E>>,
}

impl<E> Clone for Endpointer<E> {
    fn clone(&self) -> Self {
        Endpointer {
            handle: self.handle.clone(),
        }
    }
}

impl<E> fmt::Debug for Endpointer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.handle.shared.view.load();
        f.debug_struct("Endpointer")
            .field("prefix", &self.handle.shared.name)
            .field("endpoints", &view.endpoints.len())
            .field("status", &view.status)
            .finish()
    }
}

/// Shared by the clones of one `Endpointer`; dropping the last one closes.
struct Handle<E> {
    shared: Arc<Shared<E>>,
}

impl<E> Drop for Handle<E> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// What the Instancer's callback owns: it feeds events in, and closes the
/// endpointer when it is dropped (the callback was removed or the instancer
/// stopped).
pub(crate) struct Feed<E> {
    shared: Arc<Shared<E>>,
}

impl<E: Clone + Send + Sync + 'static> Feed<E> {
    pub(crate) fn send(&self, event: &Event) {
        self.shared.update(event);
    }
}

impl<E> Drop for Feed<E> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared<E> {
    /// The prefix, for logs and errors.
    name: String,
    factory: Box<Factory<E>>,
    invalidate_after: Option<Duration>,
    clock: Clock,
    cache: Mutex<Cache<E>>,
    /// What readers load, without a lock: swapped whole by the update path.
    view: ArcSwap<View<E>>,
}

/// One endpoint in the list readers see, with the instance it was made for.
#[derive(Clone)]
pub(crate) struct Slot<E> {
    instance: Name,
    pub(crate) endpoint: E,
}

impl<E> Keyed for Slot<E> {
    fn key(&self) -> &str {
        self.instance.as_str()
    }
}

/// The endpoints in instance order, in copy-on-write chunks: an update copies
/// the chunk it touches, and a reader's snapshot is one `Arc`.
pub(crate) type EndpointList<E> = SortedChunks<Slot<E>>;

/// What the update path works on; taken out of the [`Cache`] while an update
/// runs with no lock held.
struct State<E> {
    /// The instances `list`, `closers` and `failed` were built from; `None`
    /// once they were dropped (invalidated), which forces a rebuild.
    applied: Option<Instances>,
    /// The endpoints, as readers see them.
    list: EndpointList<E>,
    /// The closer of each instance that has an endpoint.
    closers: HashMap<Name, Option<Closer>>,
    /// Instances of `applied` whose factory failed: tried again next update.
    failed: Vec<Name>,
}

impl<E> Default for State<E> {
    fn default() -> Self {
        State {
            applied: None,
            list: SortedChunks::default(),
            closers: HashMap::new(),
            failed: Vec::new(),
        }
    }
}

struct Cache<E> {
    closed: bool,
    /// Empty (default) while an update has it out.
    state: State<E>,
    /// The first discovery error since the last good update, and when it
    /// invalidates the endpoints (only with `invalidate_on_error`).
    failing: Option<(Error, Instant)>,
    /// The callback to remove on close.
    subscription: Option<(Weak<Topic>, u64)>,
}

/// What readers see.
struct View<E> {
    endpoints: EndpointList<E>,
    status: Status,
}

#[derive(Clone, Debug)]
enum Status {
    Good,
    /// Serving the last endpoints until `until`, then `err`.
    Failing {
        err: Error,
        until: Instant,
    },
    /// Invalidated after a discovery error: `endpoints()` returns it.
    Invalid(Error),
    Closed,
}

impl<E> View<E> {
    fn new(endpoints: EndpointList<E>, status: Status) -> Arc<View<E>> {
        Arc::new(View { endpoints, status })
    }

    fn empty(status: Status) -> Arc<View<E>> {
        View::new(SortedChunks::default(), status)
    }
}

impl<E: Clone + Send + Sync + 'static> Endpointer<E> {
    /// Builds the endpoints of the instances `instancer` knows now, then
    /// follows its updates.
    ///
    /// `factory` is called once per new instance with the instance string; it
    /// returns the endpoint and an optional [`Closer`], or an error, in which
    /// case the instance is skipped (and logged) until the next update. The
    /// first set is built on the calling thread, later ones on the client's
    /// dispatcher thread (a slow factory delays the other callbacks of the
    /// same client, never readers or the etcd watch).
    ///
    /// On a stopped instancer the endpointer is closed at once.
    pub fn new<F>(instancer: &Instancer, factory: F, options: EndpointerOptions) -> Endpointer<E>
    where
        F: Fn(&str) -> std::result::Result<(E, Option<Closer>), BoxError> + Send + Sync + 'static,
    {
        let (endpointer, feed) = Endpointer::detached(
            instancer.prefix().to_owned(),
            Box::new(factory),
            options,
            Arc::new(Instant::now),
        );
        let shared = endpointer.handle.shared.clone();
        let current = instancer.current();
        match &current.err {
            // A stopped instancer: `on_update` drops the feed, which closes.
            Some(err) if err.kind() == ErrorKind::Closed => {}
            Some(err) => {
                // etcd is unreachable right now: build from the last good set
                // anyway, then treat the error as any later one.
                shared.apply_instances(&current.instances);
                shared.on_error(err);
            }
            None => shared.apply_instances(&current.instances),
        }
        let id = instancer.on_update(move |event| feed.send(event));
        let mut cache = shared.cache.lock();
        if !cache.closed && id.0 != 0 {
            cache.subscription = Some((instancer.topic_weak(), id.0));
        }
        drop(cache);
        endpointer
    }

    /// An endpointer fed by hand through the returned [`Feed`]: what `new`
    /// hooks to the instancer, and what unit tests drive directly.
    pub(crate) fn detached(
        name: String,
        factory: Box<Factory<E>>,
        options: EndpointerOptions,
        clock: Clock,
    ) -> (Endpointer<E>, Feed<E>) {
        let shared = Arc::new(Shared {
            name,
            factory,
            invalidate_after: options.invalidate_on_error,
            clock,
            cache: Mutex::new(Cache {
                closed: false,
                state: State::default(),
                failing: None,
                subscription: None,
            }),
            view: ArcSwap::new(View::empty(Status::Good)),
        });
        let feed = Feed {
            shared: shared.clone(),
        };
        let endpointer = Endpointer {
            handle: Arc::new(Handle { shared }),
        };
        (endpointer, feed)
    }

    /// The endpoints of the current instances, in instance order.
    ///
    /// Never waits for a factory or a closer: it copies the current list.
    ///
    /// # Errors
    /// * `Closed`: after [`close`](Endpointer::close), after the last clone
    ///   was dropped, or once the instancer was stopped;
    /// * the discovery error (e.g. `Unavailable`), with
    ///   `invalidate_on_error: Some(t)`, once discovery has been failing for
    ///   `t`; the first such call also runs every closer.
    pub fn endpoints(&self) -> Result<Vec<E>> {
        self.with_endpoints(|list| list.iter().map(|s| s.endpoint.clone()).collect())
    }

    /// Runs `f` on the current endpoints (what `endpoints` copies), with no
    /// lock held; for the balancers, which need only one of them.
    pub(crate) fn with_endpoints<R>(&self, f: impl FnOnce(&EndpointList<E>) -> R) -> Result<R> {
        let shared = &self.handle.shared;
        let view = shared.view.load();
        match &view.status {
            Status::Good => Ok(f(&view.endpoints)),
            Status::Failing { err, until } => {
                if (shared.clock)() < *until {
                    Ok(f(&view.endpoints))
                } else {
                    shared.invalidate();
                    Err(err.clone())
                }
            }
            Status::Invalid(err) => Err(err.clone()),
            Status::Closed => Err(Error::closed("endpointer")),
        }
    }

    /// One endpoint for a balancer: the one at index `choose(len)` of the
    /// current list (`len` > 0), or `NoEndpoints` on an empty list.
    pub(crate) fn pick(&self, choose: impl FnOnce(usize) -> usize) -> Result<E> {
        self.with_endpoints(|list| match list.len() {
            0 => None,
            n => list.get(choose(n) % n).map(|slot| slot.endpoint.clone()),
        })?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NoEndpoints,
                format!("none under {}", self.handle.shared.name),
            )
        })
    }
}

impl<E> Endpointer<E> {
    /// Closes the endpointer: stops following the instancer, runs every
    /// closer, and makes [`endpoints`](Endpointer::endpoints) return `Closed`.
    ///
    /// Idempotent. If an update is running on the dispatcher thread, it is
    /// waited for (its closers run too). Dropping the last clone closes.
    pub fn close(&self) {
        self.handle.shared.close();
    }
}

impl<E: Clone + Send + Sync + 'static> Shared<E> {
    /// Applies one event from the instancer.
    fn update(&self, event: &Event) {
        match &event.err {
            Some(err) => self.on_error(err),
            None => self.apply_instances(&event.instances),
        }
    }

    /// A discovery error: ignored, or the start of the invalidation delay.
    fn on_error(&self, err: &Error) {
        let Some(after) = self.invalidate_after else {
            log::debug!(target: LOG, "{}: discovery error ignored, keeping the last endpoints: {err}", self.name);
            return;
        };
        let mut cache = self.cache.lock();
        if cache.closed || cache.failing.is_some() {
            // Already counting down: keep the first error and its deadline.
            return;
        }
        let now = (self.clock)();
        // A deadline beyond what Instant holds means "never".
        let until = now
            .checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        cache.failing = Some((err.clone(), until));
        // Only the update path (under `cache`) stores views: no lost update.
        let endpoints = self.view.load().endpoints.clone();
        self.view.store(View::new(
            endpoints,
            Status::Failing {
                err: err.clone(),
                until,
            },
        ));
        drop(cache);
        log::warn!(target: LOG, "{}: discovery failing; endpoints invalidated in {after:?} unless it recovers: {err}", self.name);
    }

    /// A good set of instances: keep, create and close endpoints to match.
    fn apply_instances(&self, instances: &Instances) {
        let mut state = {
            let mut cache = self.cache.lock();
            if cache.closed {
                return;
            }
            if cache.failing.is_none() && cache.state.applied.as_ref() == Some(instances) {
                return;
            }
            std::mem::take(&mut cache.state)
        };
        let gone = self.build(instances, &mut state);
        let leftover = {
            let mut cache = self.cache.lock();
            if cache.closed {
                // Closed while we built: the closers are ours to run.
                Some(state.closers)
            } else {
                if cache.failing.take().is_some() {
                    log::info!(target: LOG, "{}: discovery recovered", self.name);
                }
                self.view.store(View::new(state.list.clone(), Status::Good));
                cache.state = state;
                None
            }
        };
        run_closers(&self.name, gone);
        if let Some(closers) = leftover {
            run_closers(&self.name, closers);
        }
    }

    /// Brings `state` in line with `instances`, with no lock held: walks the
    /// difference from the applied set, makes endpoints for the new
    /// instances (and for those whose factory failed before), and returns
    /// the closers of the instances that went.
    fn build(&self, instances: &Instances, state: &mut State<E>) -> Vec<(Name, Option<Closer>)> {
        let old = state.applied.take().unwrap_or_default();
        let retry = std::mem::take(&mut state.failed);
        let mut gone = Vec::new();
        let mut added = Vec::new();
        SortedChunks::diff(old.set(), instances.set(), |change| {
            match change {
                Change::Removed(instance) => {
                    if let Some(closer) = state.closers.remove(instance.as_str()) {
                        state.list.remove(instance.as_str());
                        gone.push((instance.clone(), closer));
                    }
                }
                Change::Added(instance) => added.push(instance.clone()),
            }
            true
        });
        let retry = retry.into_iter().filter(|i| instances.contains(i.as_str()));
        for instance in added.into_iter().chain(retry) {
            match catch_unwind(AssertUnwindSafe(|| (self.factory)(instance.as_str()))) {
                Ok(Ok((endpoint, closer))) => {
                    log::debug!(target: LOG, "{}: endpoint made for {instance:?}", self.name);
                    state.list.insert(Slot {
                        instance: instance.clone(),
                        endpoint,
                    });
                    state.closers.insert(instance, closer);
                }
                Ok(Err(e)) => {
                    log::warn!(target: LOG, "{}: instance {instance:?} skipped: the endpoint factory failed: {e}", self.name);
                    state.failed.push(instance);
                }
                Err(_) => {
                    log::error!(target: LOG, "{}: instance {instance:?} skipped: the endpoint factory panicked", self.name);
                    state.failed.push(instance);
                }
            }
        }
        state.applied = Some(instances.clone());
        gone
    }
}

impl<E> Shared<E> {
    /// Past the invalidation deadline: drop every endpoint and run the closers.
    fn invalidate(&self) {
        let entries = {
            let mut cache = self.cache.lock();
            if cache.closed {
                return;
            }
            // Check again: a good update may have come in the meantime.
            let err = match &cache.failing {
                Some((err, until)) if (self.clock)() >= *until => err.clone(),
                _ => return,
            };
            if matches!(self.view.load().status, Status::Invalid(_)) {
                return;
            }
            self.view.store(View::empty(Status::Invalid(err.clone())));
            log::warn!(target: LOG, "{}: discovery still failing; endpoints invalidated: {err}", self.name);
            // `applied` goes too: the next good update builds from scratch.
            std::mem::take(&mut cache.state).closers
        };
        run_closers(&self.name, entries);
    }

    /// Closes for good; see [`Endpointer::close`].
    fn close(&self) {
        let (entries, subscription) = {
            let mut cache = self.cache.lock();
            if cache.closed {
                return;
            }
            cache.closed = true;
            cache.failing = None;
            self.view.store(View::empty(Status::Closed));
            (
                std::mem::take(&mut cache.state).closers,
                cache.subscription.take(),
            )
        };
        // No lock held: removing the callback waits for a running update and
        // may drop the callback (whose `Feed` calls `close` again: a no-op).
        if let Some((topic, id)) = subscription {
            if let Some(topic) = topic.upgrade() {
                topic.remove_callback(id);
            }
        }
        run_closers(&self.name, entries);
        log::debug!(target: LOG, "{}: endpointer closed", self.name);
    }
}

/// Runs `closers` (with no lock held), catching panics.
fn run_closers(name: &str, closers: impl IntoIterator<Item = (Name, Option<Closer>)>) {
    for (instance, closer) in closers {
        if let Some(closer) = closer {
            if catch_unwind(AssertUnwindSafe(closer)).is_err() {
                log::error!(target: LOG, "{name}: the closer of {instance:?} panicked");
            } else {
                log::debug!(target: LOG, "{name}: endpoint of {instance:?} closed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
