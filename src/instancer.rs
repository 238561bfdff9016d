//! [`Instancer`]: watches a prefix and keeps subscribers up to date with the
//! set of values under it (go-kit's `Instancer`).
//!
//! The watch loop ([`Task::run`], on the runtime thread) reads the prefix at a
//! revision R, watches from R + 1 and applies each change to a key → value map
//! plus a value → count map (for de-duplication). Only when the visible set
//! changes is a new [`Instances`] snapshot built and published to the topic;
//! the dispatcher thread hands it to subscribers.

use std::fmt;
use std::sync::Arc;

use crossbeam_channel as cb;
use tokio::sync::watch;

use crate::client::Client;
use crate::dispatch::Topic;
use crate::error::Result;
use crate::instances::Event;
use crate::options::validate_prefix;
use crate::runtime::discover::Task;
use crate::runtime::{wait_reply, Command, Core};
use crate::stats::Gauge;

const LOG: &str = "etcd_sd::instancer";

/// Capacity of a [`Instancer::subscribe`] channel. A subscriber that falls
/// further behind is skipped and later given only the latest snapshot.
const SUBSCRIBE_CAPACITY: usize = 16;

/// Identifies a callback added with [`Instancer::on_update`], for
/// [`Instancer::remove_callback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallbackId(pub(crate) u64);

impl CallbackId {
    /// The number behind the id (what the C API hands out).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Watches a prefix and delivers the set of values under it to subscribers.
///
/// Subscribers come in three forms: a channel you own
/// ([`register`](Instancer::register), go-kit style), a channel made for you
/// ([`subscribe`](Instancer::subscribe)) and a callback
/// ([`on_update`](Instancer::on_update)). Each gets the current state at once,
/// then every real change, in order. Every [`Event`] is a full snapshot, so a
/// subscriber that falls behind is given only the latest one: it never blocks
/// the watcher or other subscribers.
///
/// While etcd cannot be watched, subscribers get one `Event` with `err` set and
/// the last good instances; when the watch is back, an `Event` without `err`.
///
/// The watch runs as a task on the client's runtime thread: it reads the
/// prefix at a revision R, watches from R + 1, applies each change as it
/// comes (no re-read per change), resumes from the last revision it saw after
/// a broken watch, and reads again only after a compaction. An Instancer adds
/// no thread; it is `Send + Sync`.
///
/// # Disconnection
/// After [`stop`](Instancer::stop) (or drop), `subscribe` receivers still hold
/// the events already delivered; once those are received, `recv` reports
/// disconnection at once. Registered senders are dropped; callbacks are
/// removed and dropped after their last call.
///
/// ```no_run
/// use etcd_sd::{Client, ClientOptions, Instancer};
/// use etcd_sd::channel::TryRecvError;
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let instancer = Instancer::new(&client, "/services/barsvc/")?;
/// let updates = instancer.subscribe();
/// let first = updates.recv().unwrap(); // the current state, at once
/// println!("instances: {:?}", first.instances);
/// assert_eq!(updates.try_recv().unwrap_err(), TryRecvError::Empty); // no change yet
/// instancer.stop();
/// assert_eq!(updates.try_recv().unwrap_err(), TryRecvError::Disconnected);
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub struct Instancer {
    _core: Arc<Core>,
    prefix: String,
    topic: Arc<Topic>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for Instancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instancer")
            .field("prefix", &self.prefix)
            .field("stopped", &self.topic.is_stopped())
            .finish()
    }
}

impl Instancer {
    /// Reads the instances under `prefix` and starts watching it.
    ///
    /// Blocks until the first read is done, at most `request_timeout`. A
    /// prefix is used as given (as in go-kit, `/services/barsvc` also matches
    /// `/services/barsvc2/...`); end it with `/`. A prefix without a final `/`
    /// is logged once as a warning.
    ///
    /// # Errors
    /// * `InvalidArgument`: an empty prefix;
    /// * `Timeout`, `Unavailable`, `Auth`, `Etcd`: the first read failed
    ///   (go-kit returns the error of its first read too);
    /// * `Closed`: the client's runtime is gone.
    pub fn new(client: &Client, prefix: &str) -> Result<Instancer> {
        validate_prefix(prefix)?;
        if !prefix.ends_with('/') {
            log::warn!(target: LOG, "prefix {prefix:?} does not end with '/': it also matches keys that merely start with it");
        }
        let core = client.core().clone();
        let topic = Topic::new(prefix.to_owned(), core.dispatcher.clone());
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = cb::bounded(1);
        core.send(Command::Watch(Task::new(
            prefix.to_owned(),
            topic.clone(),
            stop_rx,
            ready_tx,
        )))?;
        // Counted from here; the drop (also of a failed `new`) uncounts it.
        core.counters.up(Gauge::Instancers);
        let instancer = Instancer {
            _core: core.clone(),
            prefix: prefix.to_owned(),
            topic,
            stop,
        };
        wait_reply(
            &ready_rx,
            core.request_timeout(),
            "first read of the prefix",
        )?;
        Ok(instancer)
    }

    /// The prefix being watched.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a channel you own (go-kit's `Register`). It gets the current state
    /// at once, if it has room, then every change; when it is full it is
    /// skipped and later given the latest state. It is dropped by
    /// [`deregister`](Instancer::deregister), by `stop`, or when its receiver
    /// is gone. On a stopped instancer it gets one event with a `Closed` error.
    ///
    /// ```no_run
    /// use etcd_sd::{channel, Client, ClientOptions, Instancer};
    /// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
    /// let instancer = Instancer::new(&client, "/services/barsvc/")?;
    /// let (tx, rx) = channel::bounded(1); // room for one: only the latest waits
    /// instancer.register(tx.clone());
    /// let event = rx.recv().unwrap(); // the current state
    /// println!("{:?}", event.instances);
    /// instancer.deregister(&tx);
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn register(&self, tx: cb::Sender<Event>) {
        self.topic.add_channel(tx);
    }

    /// Removes a channel added with [`register`](Instancer::register)
    /// (compared by channel, so any clone of the sender works).
    pub fn deregister(&self, tx: &cb::Sender<Event>) {
        self.topic.remove_channel(tx);
    }

    /// A new receiver of updates, holding the current state at once.
    ///
    /// It holds up to 16 events; when it is full, updates wait (coalesced into
    /// the latest) until it has room. See "Disconnection" above for what
    /// happens after `stop`. On a stopped instancer it holds one event with a
    /// `Closed` error and is disconnected.
    pub fn subscribe(&self) -> cb::Receiver<Event> {
        let (tx, rx) = cb::bounded(SUBSCRIBE_CAPACITY);
        self.topic.add_channel(tx);
        rx
    }

    /// Calls `f` with the current state and then with every change, on the
    /// client's dispatcher thread, in order.
    ///
    /// `f` may call [`remove_callback`](Instancer::remove_callback),
    /// [`deregister`](Instancer::deregister) or [`stop`](Instancer::stop) on
    /// this instancer. A slow `f` delays other callbacks of the same client,
    /// never the watch nor channel subscribers. If `f` panics, the panic is
    /// caught and logged and `f` is removed; a panic in the drop of `f` or of
    /// its panic payload is caught too. On a stopped instancer `f` is dropped
    /// without being called and the id returned is inert (its number is 0).
    ///
    /// `f` is dropped exactly once, after its last call: on
    /// [`remove_callback`](Instancer::remove_callback), [`stop`](Instancer::stop)
    /// or drop of the instancer.
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use etcd_sd::{Client, ClientOptions, Event, Instancer};
    /// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
    /// let instancer = Instancer::new(&client, "/services/barsvc/")?;
    /// let size = Arc::new(AtomicUsize::new(0));
    /// let seen = size.clone();
    /// let id = instancer.on_update(move |event: &Event| {
    ///     // Runs on the `etcd-sd-dispatch` thread: keep it short.
    ///     seen.store(event.instances.len(), Ordering::Relaxed);
    /// });
    /// // ...
    /// instancer.remove_callback(id); // not called again once this returns
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn on_update<F: Fn(&Event) + Send + 'static>(&self, f: F) -> CallbackId {
        CallbackId(self.topic.add_callback(Box::new(f)).unwrap_or(0))
    }

    /// Removes a callback. Once this returns, it is not called again. A call
    /// running on the dispatcher is waited for, at most `request_timeout`:
    /// if it ends in time the closure has been dropped when this returns,
    /// otherwise it is dropped when that call returns. Called from inside
    /// that very call, it returns at once and the closure is dropped when the
    /// call returns. Unknown ids are ignored.
    ///
    /// Do not call it while holding a lock that the callback takes: it waits
    /// (up to `request_timeout`) for a running call.
    pub fn remove_callback(&self, id: CallbackId) {
        self.topic.remove_callback(id.0);
    }

    /// A weak handle on this instancer's subscribers, so that
    /// `sd::Endpointer` can remove its callback later without holding the
    /// Instancer (and without keeping it alive).
    pub(crate) fn topic_weak(&self) -> std::sync::Weak<Topic> {
        Arc::downgrade(&self.topic)
    }

    /// The current state; after [`stop`](Instancer::stop), the last state with
    /// an error of kind `Closed`. Never blocks: it clones the current
    /// snapshot (O(1)).
    ///
    /// ```no_run
    /// # let client = etcd_sd::Client::connect(&["127.0.0.1:2379"], Default::default())?;
    /// let instancer = etcd_sd::Instancer::new(&client, "/services/barsvc/")?;
    /// let now = instancer.current();
    /// if let Some(url) = now.instances.get(0) {
    ///     println!("first instance: {url}");
    /// }
    /// # Ok::<(), etcd_sd::Error>(())
    /// ```
    pub fn current(&self) -> Event {
        self.topic.current()
    }

    /// Stops watching: cancels the etcd watch, disconnects subscribers (after
    /// the events they already hold) and removes callbacks, as
    /// [`remove_callback`](Instancer::remove_callback) does (so it waits for a
    /// callback that is running on the dispatcher, at most `request_timeout`).
    /// Calling it twice is fine; it never blocks on etcd.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.topic.stop();
    }

    /// True once [`stop`](Instancer::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.topic.is_stopped()
    }
}

impl Drop for Instancer {
    fn drop(&mut self) {
        self.stop();
        self._core.counters.down(Gauge::Instancers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn empty_prefix_is_invalid() {
        assert_eq!(
            validate_prefix("").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(validate_prefix("/").is_ok());
    }
}
