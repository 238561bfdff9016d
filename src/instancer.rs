//! [`Instancer`]: watches a prefix and keeps subscribers up to date with the
//! set of values under it (go-kit's `Instancer`).
//!
//! The watch loop ([`Task::run`], on the runtime thread) reads the prefix at a
//! revision R, watches from R + 1 and applies each change to a key → value map
//! plus a value → count map (for de-duplication). Only when the visible set
//! changes is a new [`Instances`] snapshot built and published to the topic;
//! the dispatcher thread hands it to subscribers.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel as cb;
use tokio::sync::watch;

use crate::client::Client;
use crate::dispatch::Topic;
use crate::error::{Error, Result};
use crate::instances::{Event, Instances};
use crate::options::validate_prefix;
use crate::runtime::discover::Task;
use crate::runtime::{wait_reply, Command, Core};
use crate::snapshot::{self, Writer};
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

/// Options of [`Instancer::with_options`]: a snapshot file to start from
/// when etcd is down, and to keep up to date while it is up.
///
/// ```no_run
/// use std::time::Duration;
/// use etcd_sd::{Client, ClientOptions, Instancer, InstancerOptions};
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let options = InstancerOptions::new()
///     .snapshot_file("/var/lib/myapp/barsvc.snapshot")
///     .snapshot_max_age(Duration::from_secs(6 * 3600));
/// let instancer = Instancer::with_options(&client, "/services/barsvc/", options)?;
/// let now = instancer.current(); // etcd's state, or the file's with `err` set
/// println!("{:?} {:?}", now.instances, now.err);
/// # Ok::<(), etcd_sd::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct InstancerOptions {
    snapshot_file: Option<PathBuf>,
    snapshot_max_age: Option<Duration>,
}

impl InstancerOptions {
    /// No snapshot file; the max age at its default (24 h).
    pub fn new() -> InstancerOptions {
        InstancerOptions::default()
    }

    /// Keep the instances in `path`, and start from it when etcd does not
    /// answer. A relative path is taken from the current directory when
    /// [`Instancer::with_options`] is called. The directory must exist; the
    /// file is written within 1 s of every change etcd reports, atomically
    /// (see [`Instancer::with_options`]).
    pub fn snapshot_file(self, path: impl Into<PathBuf>) -> InstancerOptions {
        InstancerOptions {
            snapshot_file: Some(path.into()),
            ..self
        }
    }

    /// A snapshot file written longer ago than `age` is ignored (with a
    /// warning). Default 24 h. While etcd keeps confirming an unchanged set,
    /// the file is written again every quarter of `age` (at most every
    /// hour), so that it does not age while the process runs.
    pub fn snapshot_max_age(self, age: Duration) -> InstancerOptions {
        InstancerOptions {
            snapshot_max_age: Some(age),
            ..self
        }
    }

    /// The snapshot file set with [`snapshot_file`](InstancerOptions::snapshot_file).
    pub fn snapshot_path(&self) -> Option<&std::path::Path> {
        self.snapshot_file.as_deref()
    }

    /// Reads the snapshot file for `prefix` as [`Instancer::with_options`]
    /// does at a cold start, without etcd: `None` when there is no file set,
    /// no file, or one that cannot be used (which is logged as a warning,
    /// as there). For tools that show the last known instances while etcd is
    /// unreachable.
    ///
    /// ```
    /// use etcd_sd::InstancerOptions;
    /// let options = InstancerOptions::new().snapshot_file("/nonexistent/barsvc.snapshot");
    /// assert!(options.read_snapshot("/services/barsvc/").is_none());
    /// ```
    pub fn read_snapshot(&self, prefix: &str) -> Option<Instances> {
        let path = self.snapshot_file.as_deref()?;
        match snapshot::load(path, prefix, self.max_age()) {
            snapshot::Found::Loaded(l) => Some(l.instances),
            _ => None,
        }
    }

    fn max_age(&self) -> Duration {
        self.snapshot_max_age.unwrap_or(snapshot::DEFAULT_MAX_AGE)
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
    /// The snapshot file's writer thread, when there is a file.
    writer: parking_lot::Mutex<Option<Writer>>,
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
        let (instancer, ready_rx) = Instancer::start(client, prefix, |task| task, None)?;
        wait_reply(
            &ready_rx,
            instancer._core.request_timeout(),
            "first read of the prefix",
        )?;
        Ok(instancer)
    }

    /// Like [`new`](Instancer::new), but never fails because etcd does not
    /// answer, and optionally keeps a snapshot file to start from.
    ///
    /// It waits for the first read at most `request_timeout`. When etcd
    /// answers, it behaves exactly as `new`: the first Event and `current()`
    /// are etcd's state, never the file's. When it does not (or refuses the
    /// read), it returns anyway with an Instancer whose `current()` holds the
    /// error (`Unavailable` or `Timeout` when etcd is down) and the instances
    /// of the snapshot file (none without a usable one); it keeps trying with
    /// backoff, and a clean Event with etcd's state follows when etcd answers.
    ///
    /// # The snapshot file
    /// One line of JSON (a format name and version, the prefix, the etcd
    /// revision, the time written in Unix milliseconds, the instances in
    /// sorted order) and a line `crc32 <8 hex digits>`, a CRC-32 of every
    /// byte before it. It is written on a thread of its own
    /// (`etcd-sd-snapshot`, one per Instancer with a file, ended by
    /// [`stop`](Instancer::stop) or drop), within 1 s of every change etcd
    /// reports (changes close together are written once), and only states
    /// that came from etcd: an Instancer that started from the file and has
    /// not heard from etcd does not rewrite it. Every write is atomic: a
    /// temporary file in the same directory, fsync, rename over the file,
    /// fsync of the directory; a process killed at any moment leaves the old
    /// file or the new one.
    ///
    /// A file that cannot be read, is corrupt or truncated, was written for
    /// another prefix or in an unknown format version, is larger than
    /// 256 MiB (not read at all), or is older than
    /// [`snapshot_max_age`](InstancerOptions::snapshot_max_age) is ignored
    /// with one `warn` log record, never partly used. A directory that
    /// cannot be written (or a directory in the way of the file) is one
    /// `warn` record until a write succeeds again; discovery goes on, the
    /// failed write is tried again (after 1 s, doubling up to 30 s) so the
    /// file catches up once the place is usable, and what is in the way (a
    /// directory, a FIFO, a device: anything but a regular file) is left as
    /// it is and never read. A symlink is followed: the file it names is
    /// read and replaced, the link stays.
    ///
    /// Two Instancers (in one process or two) on the same file with the same
    /// prefix are safe: each write is whole, and the file holds the last one
    /// written. Give each prefix a file of its own: a file of another prefix
    /// is ignored at start.
    ///
    /// # Errors
    /// Only `InvalidArgument` (an empty prefix) and `Closed` (the client's
    /// runtime is gone); never because of etcd or of the snapshot file.
    pub fn with_options(
        client: &Client,
        prefix: &str,
        options: InstancerOptions,
    ) -> Result<Instancer> {
        validate_prefix(prefix)?;
        let max_age = options.max_age();
        let path = options.snapshot_file.as_ref().map(|p| {
            // Relative to the directory of now, whatever a later chdir does.
            std::path::absolute(p).unwrap_or_else(|_| p.clone())
        });
        let found = path.as_deref().map(|p| snapshot::load(p, prefix, max_age));
        let warned = matches!(found, Some(snapshot::Found::DirectoryInTheWay));
        let initial = match found {
            Some(snapshot::Found::Loaded(l)) => l.instances,
            _ => Default::default(),
        };
        let writer = path.and_then(|p| Writer::start(p, prefix, max_age, warned));
        let feed = writer.as_ref().map(Writer::feed);
        let first = initial.clone();
        let (instancer, ready_rx) = Instancer::start(
            client,
            prefix,
            move |task| task.tolerant(first, feed),
            writer,
        )?;
        match ready_rx.recv_timeout(instancer._core.request_timeout()) {
            // Success or failure, the task has published it.
            Ok(_) => {}
            Err(cb::RecvTimeoutError::Timeout) => {
                // Unless the task published meanwhile: the read took too long.
                instancer.topic.publish_first(Event {
                    instances: initial,
                    err: Some(Error::timeout("first read of the prefix")),
                });
            }
            Err(cb::RecvTimeoutError::Disconnected) => {
                return Err(Error::closed("client runtime"));
            }
        }
        Ok(instancer)
    }

    /// Starts the task (`make` adjusts it) and the handle; the receiver hears
    /// the outcome of the first read.
    fn start(
        client: &Client,
        prefix: &str,
        make: impl FnOnce(Task) -> Task,
        writer: Option<Writer>,
    ) -> Result<(Instancer, cb::Receiver<Result<()>>)> {
        validate_prefix(prefix)?;
        if !prefix.ends_with('/') {
            log::warn!(target: LOG, "prefix {prefix:?} does not end with '/': it also matches keys that merely start with it");
        }
        let core = client.core().clone();
        let topic = Topic::new(prefix.to_owned(), core.dispatcher.clone());
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = cb::bounded(1);
        core.send(Command::Watch(make(Task::new(
            prefix.to_owned(),
            topic.clone(),
            stop_rx,
            ready_tx,
        ))))?;
        // Counted from here; the drop (also of a failed `new`) uncounts it.
        core.counters.up(Gauge::Instancers);
        let instancer = Instancer {
            _core: core.clone(),
            prefix: prefix.to_owned(),
            topic,
            stop,
            writer: parking_lot::Mutex::new(writer),
        };
        Ok((instancer, ready_rx))
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
    /// Calling it twice is fine; it never blocks on etcd. With a snapshot
    /// file ([`with_options`](Instancer::with_options)), it also writes the
    /// state not yet written and ends the writer thread, waiting for it.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.topic.stop();
        // The snapshot writer writes what is pending and ends.
        let writer = self.writer.lock().take();
        if let Some(mut writer) = writer {
            writer.stop();
        }
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
