//! [`Instancer`]: watches a prefix and keeps subscribers up to date with the
//! set of values under it (go-kit's `Instancer`).
//!
//! The watch loop ([`Task::run`], on the runtime thread) reads the prefix at a
//! revision R, watches from R + 1 and applies each change to a key → value map
//! plus a value → count map (for de-duplication). Only when the visible set
//! changes is a new [`Instances`] snapshot built and published to the topic;
//! the dispatcher thread hands it to subscribers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crossbeam_channel as cb;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::chunks::SortedChunks;
use crate::client::Client;
use crate::dispatch::Topic;
use crate::error::{Error, Result};
use crate::instances::{Event, Instances};
use crate::name::Name;
use crate::prefix_watch::{self, End, Flow, Position};
use crate::runtime::{read_prefix, wait_reply, Command, Core, Ctx, Reply};

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

/// Checks a prefix for reading or watching.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid(
            "empty prefix (it would match every key); use \"/\" for all keys under /",
        ));
    }
    Ok(())
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
        core.send(Command::Watch(Task {
            prefix: prefix.to_owned(),
            topic: topic.clone(),
            stop: stop_rx,
            ready: Some(ready_tx),
        }))?;
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
    }
}

/// The set of values under the prefix, kept up to date change by change:
/// key → value, value → number of keys holding it, and the visible set of
/// distinct values (copy-on-write chunks, so a snapshot is O(1)). Each
/// distinct value is one shared [`Name`], whoever holds it.
///
/// Keys are kept as etcd's bytes: two keys that differ only in bytes that are
/// not UTF-8 are two instances. Values are converted lossily for the `&str`
/// API.
#[derive(Default)]
struct View {
    by_key: HashMap<Vec<u8>, Name>,
    counts: HashMap<Name, usize>,
    set: SortedChunks<Name>,
}

impl View {
    fn reset(&mut self, kvs: Vec<(Vec<u8>, String)>) {
        self.by_key.clear();
        self.counts.clear();
        for (k, v) in kvs {
            let value = match self.counts.get_key_value(v.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => Name::from_string(v),
            };
            *self.counts.entry(value.clone()).or_insert(0) += 1;
            if let Some(old) = self.by_key.insert(k, value) {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        let mut values: Vec<Name> = self.counts.keys().cloned().collect();
        values.sort_unstable();
        self.set = SortedChunks::from_sorted(values);
    }

    /// The `Name` of `value`: the one already held, or a new one.
    fn shared(&self, value: &str) -> Name {
        match self.counts.get_key_value(value) {
            Some((shared, _)) => shared.clone(),
            None => Name::new(value),
        }
    }

    /// Applies a put; true when the visible set changed.
    fn put(&mut self, key: Vec<u8>, value: &str) -> bool {
        if let Some(old) = self.by_key.get(&key) {
            if old.as_str() == value {
                return false;
            }
        }
        let value = self.shared(value);
        let mut changed = false;
        if let Some(old) = self.by_key.insert(key, value.clone()) {
            changed |= self.dec(&old);
        }
        let count = self.counts.entry(value.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.set.insert(value);
            changed = true;
        }
        changed
    }

    /// Applies a delete; true when the visible set changed.
    fn delete(&mut self, key: &[u8]) -> bool {
        match self.by_key.remove(key) {
            Some(old) => self.dec(&old),
            None => false,
        }
    }

    fn dec(&mut self, value: &Name) -> bool {
        match self.counts.get_mut(value) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(value);
                self.set.remove(value.as_str());
                true
            }
            None => false,
        }
    }

    fn snapshot(&self) -> Instances {
        Instances::from_set(self.set.clone())
    }
}

/// How often a broken watch may be resumed at once, without an error Event
/// and without backoff.
const QUIET_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The watch loop of one Instancer, run on the runtime thread.
pub(crate) struct Task {
    prefix: String,
    topic: Arc<Topic>,
    stop: watch::Receiver<bool>,
    ready: Option<Reply<()>>,
}

impl Task {
    pub(crate) async fn run(mut self, ctx: Ctx) {
        let mut view = View::default();
        let mut snapshot = Instances::default();
        let mut position = Position::default();
        let mut need_read = true;
        let mut backoff = Backoff::standard();
        // A session that broke after it was up is opened again at once (on
        // another member, when its own stopped answering) before anyone is
        // told: only when that fails do subscribers get an error Event. At
        // most once per QUIET_RETRY_EVERY, so a stream that etcd keeps
        // cancelling right after creating it still backs off.
        let mut last_quiet_retry: Option<tokio::time::Instant> = None;
        loop {
            if need_read {
                let read = tokio::select! {
                    r = read_prefix(&ctx, &self.prefix) => r,
                    _ = stopped(&mut self.stop) => return,
                };
                match read {
                    Ok(read) => {
                        position = Position::after_read(&read);
                        view.reset(read.kvs);
                        snapshot = view.snapshot();
                        need_read = false;
                        self.topic.publish(Event {
                            instances: snapshot.clone(),
                            err: None,
                        });
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Err(e));
                            return;
                        }
                        self.report(&snapshot, e);
                        if !self.pause(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut established = false;
            let end = self
                .watch(
                    &ctx,
                    &mut view,
                    &mut snapshot,
                    &mut position,
                    &mut backoff,
                    &mut established,
                )
                .await;
            match end {
                End::Stopped => return,
                End::HistoryGone(why) => {
                    log::info!(target: LOG, "{}: {why} (after revision {}); reading again", self.prefix, position.revision);
                    need_read = true;
                }
                End::Broken(e) => {
                    // An expired token cancels watches; get a fresh one.
                    ctx.refresh_auth(&e).await;
                    let quiet_ok =
                        last_quiet_retry.is_none_or(|t| t.elapsed() >= QUIET_RETRY_EVERY);
                    if established && quiet_ok {
                        last_quiet_retry = Some(tokio::time::Instant::now());
                        log::debug!(target: LOG, "{}: watch broke ({e}); resuming at once", self.prefix);
                        continue;
                    }
                    self.report(&snapshot, e);
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Tells subscribers the watch is down, keeping the last good set.
    fn report(&self, snapshot: &Instances, e: Error) {
        log::debug!(target: LOG, "{}: {e}", self.prefix);
        if self.topic.publish(Event {
            instances: snapshot.clone(),
            err: Some(e.clone()),
        }) {
            log::warn!(target: LOG, "{}: watch down, keeping the last good set: {e}", self.prefix);
        }
    }

    /// Sleeps the next backoff step; false when stopped meanwhile.
    async fn pause(&mut self, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }

    /// One watch session from `revision + 1`, applying changes as they come.
    async fn watch(
        &mut self,
        ctx: &Ctx,
        view: &mut View,
        snapshot: &mut Instances,
        position: &mut Position,
        backoff: &mut Backoff,
        established: &mut bool,
    ) -> End {
        use etcd_client::EventType;
        let prefix = &self.prefix;
        let topic = &self.topic;
        let session = prefix_watch::session(ctx, prefix, position, |resp| {
            if resp.created() {
                *established = true;
                backoff.reset();
                // Back after an outage: say so, even if nothing changed.
                let was_down = topic.current().err.is_some();
                if topic.publish(Event {
                    instances: snapshot.clone(),
                    err: None,
                }) && was_down
                {
                    log::info!(target: LOG, "{prefix}: watch is back");
                }
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                changed |= match ev.event_type() {
                    EventType::Put => {
                        view.put(kv.key().to_vec(), &String::from_utf8_lossy(kv.value()))
                    }
                    EventType::Delete => view.delete(kv.key()),
                };
            }
            if changed {
                *snapshot = view.snapshot();
                topic.publish(Event {
                    instances: snapshot.clone(),
                    err: None,
                });
            }
            Flow::Continue
        });
        tokio::select! {
            end = session => end,
            _ = stopped(&mut self.stop) => End::Stopped,
        }
    }
}

/// Resolves once the instancer is stopped or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn view_dedups_and_reports_visible_changes() {
        let mut v = View::default();
        assert!(v.put(b"/a".to_vec(), "x"));
        assert!(!v.put(b"/b".to_vec(), "x"), "same value under a second key");
        assert!(!v.put(b"/a".to_vec(), "x"), "identical re-put");
        assert!(!v.delete(b"/a"), "x still under /b");
        assert!(v.delete(b"/b"));
        assert!(!v.delete(b"/nope"));
        assert!(v.put(b"/a".to_vec(), "y"));
        assert!(v.put(b"/a".to_vec(), "z"), "value replaced");
        assert_eq!(v.snapshot().to_vec(), ["z"]);
        v.reset(vec![
            (b"/1".to_vec(), "b".into()),
            (b"/2".to_vec(), "a".into()),
            (b"/3".to_vec(), "a".into()),
        ]);
        assert_eq!(v.snapshot().to_vec(), ["a", "b"]);
    }

    #[test]
    fn keys_that_differ_only_in_invalid_utf8_stay_two_instances() {
        let mut v = View::default();
        assert!(v.put(b"/p/\xff".to_vec(), "one"));
        assert!(
            v.put(b"/p/\xfe".to_vec(), "two"),
            "another key, not a replacement"
        );
        assert_eq!(v.snapshot().to_vec(), ["one", "two"]);
        assert!(v.delete(b"/p/\xff"));
        assert_eq!(v.snapshot().to_vec(), ["two"]);
        v.reset(vec![
            (b"/p/\xff".to_vec(), "one".into()),
            (b"/p/\xfe".to_vec(), "two".into()),
        ]);
        assert_eq!(v.snapshot().len(), 2);
    }

    #[test]
    fn empty_prefix_is_invalid() {
        assert_eq!(
            validate_prefix("").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(validate_prefix("/").is_ok());
    }
}
