//! Delivery to subscribers, off the runtime thread: two std threads per
//! `Client`. `etcd-sd-dispatch` runs subscriber callbacks (user code);
//! `etcd-sd-retry` feeds channels that were full once they have room again
//! (no user code). So user code never runs on the runtime thread, a slow
//! subscriber never stalls a watch, and a stuck callback never holds back a
//! channel.
//!
//! Each Instancer owns a [`Topic`]: its current [`Event`], a generation number
//! and its subscribers. The watcher replaces the event and bumps the
//! generation ([`Topic::publish`]), handing it straight to channel subscribers
//! that have room (a `try_send`, no user code). It then wakes the dispatcher
//! when the topic has callbacks, and the retry thread when a channel was full;
//! each brings its own kind of subscriber up to that generation. Because every
//! event is a full snapshot, a subscriber that is behind only ever needs the
//! latest one.
//!
//! Why a second thread for full channels: the thread that runs callbacks is
//! stuck for as long as a callback is, and a channel that drains must get the
//! latest state within 100 ms whatever callbacks do. The retry thread only
//! calls `try_send` on crossbeam channels and drops events and senders, none
//! of which runs user code, so it cannot be stuck. It sleeps while no channel
//! is full. With `etcd-sd-runtime` that makes a fixed three threads per
//! client (plus tokio's resolver thread for host names), whatever the number
//! of Instancers and subscribers.
//!
//! Guarantees, each tested:
//! * one subscriber's callbacks run in order, on the dispatcher thread;
//! * a channel that is full is skipped, never waited on; it gets the latest
//!   snapshot at most [`MAX_TICK`] after it has room again, whatever callbacks
//!   are doing (retried by `etcd-sd-retry` on a short, growing tick);
//! * no lock of the topic is held during a callback, so a callback may remove
//!   itself, deregister a channel or stop its instancer;
//! * once `remove` (or `stop`) returns, the callback is not called again. A
//!   call running on the dispatcher is waited for, at most the client's
//!   `request_timeout`; when it ends in time the closure has been dropped
//!   before `remove` returns, otherwise the dispatcher drops it when the call
//!   ends. Removed from inside its own call, it is dropped when that call
//!   returns;
//! * a callback's closure is dropped exactly once, after its last call;
//! * the dispatcher thread never dies of user code: a panic in a callback, in
//!   the drop of its closure (wherever that happens) or in the drop of a panic
//!   payload is caught, logged and counted ([`Dispatcher::callback_panics`]);
//!   a callback that panicked is removed, other subscribers go on;
//! * shutting down waits for the threads at most `request_timeout`; a thread
//!   still in a callback then ends by itself when the call returns.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::instances::Event;

/// Log target of this module.
const LOG: &str = "etcd_sd::dispatch";

/// First pause of the retry thread after a channel was found full.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Longest pause between two retries of full channels: how late, at most, a
/// channel that drained gets the latest snapshot (the contract allows 100 ms).
pub(crate) const MAX_TICK: Duration = Duration::from_millis(50);

/// How many panics in a row the drop of one panic payload may cause before the
/// last payload is leaked instead of dropped (each drop may panic again).
const MAX_NESTED_PANICS: usize = 8;

/// A subscriber callback.
pub(crate) type Callback = Box<dyn Fn(&Event) + Send + 'static>;

/// Work for the dispatcher thread.
enum Msg {
    /// A topic has callbacks that are behind.
    Deliver(Arc<Topic>),
    /// Stop the thread.
    Shutdown,
}

/// Work for the retry thread.
enum RetryMsg {
    /// A topic has a channel that was full.
    Retry(Arc<Topic>),
    /// Stop the thread.
    Shutdown,
}

/// Handle to the client's delivery threads; clones share them.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    tx: cb::Sender<Msg>,
    retry_tx: cb::Sender<RetryMsg>,
    shared: Arc<Shared>,
}

/// What the clones of a [`Dispatcher`] share.
struct Shared {
    /// The dispatcher thread: a release from it must not wait for itself.
    dispatch_thread: ThreadId,
    /// Bounds every wait for a running callback (and for the threads' end).
    request_timeout: Duration,
    panics: PanicCounter,
    /// Taken by the first `shutdown`.
    threads: Mutex<Option<Threads>>,
}

/// The two threads, and a receiver that reports disconnection once both ended.
struct Threads {
    dispatch: JoinHandle<()>,
    retry: JoinHandle<()>,
    ended: cb::Receiver<()>,
}

impl Dispatcher {
    /// Starts both threads. `request_timeout` bounds how long a removal waits
    /// for a running callback, and how long `shutdown` waits for the threads.
    pub(crate) fn start(request_timeout: Duration) -> Result<Dispatcher> {
        let (tx, rx) = cb::unbounded();
        let (retry_tx, retry_rx) = cb::unbounded();
        // Each thread holds a sender until it ends: `ended` then disconnects.
        let (alive, ended) = cb::bounded::<()>(0);
        let alive2 = alive.clone();
        let dispatch = spawn("etcd-sd-dispatch", move || {
            run(rx);
            drop(alive);
        })?;
        // On failure, returning drops `tx`, which ends the dispatcher thread.
        let retry = spawn("etcd-sd-retry", move || {
            run_retry(retry_rx);
            drop(alive2);
        })?;
        Ok(Dispatcher {
            tx,
            retry_tx,
            shared: Arc::new(Shared {
                dispatch_thread: dispatch.thread().id(),
                request_timeout,
                panics: PanicCounter::default(),
                threads: Mutex::new(Some(Threads {
                    dispatch,
                    retry,
                    ended,
                })),
            }),
        })
    }

    /// Panics caught in user code so far: callback calls and drops of
    /// callback closures (a panic payload whose drop panics again adds
    /// nothing: it is the same panic).
    // Read by the coming `Client::stats`; until then only by tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn callback_panics(&self) -> u64 {
        self.shared.panics.get()
    }

    /// Wakes the dispatcher for `topic`'s callbacks.
    fn kick(&self, topic: &Arc<Topic>) {
        // After shutdown nobody listens, and nothing is left to deliver to.
        let _ = self.tx.send(Msg::Deliver(topic.clone()));
    }

    /// Hands `topic`, which has a full channel, to the retry thread.
    fn queue_retry(&self, topic: &Arc<Topic>) {
        let _ = self.retry_tx.send(RetryMsg::Retry(topic.clone()));
    }

    /// True on the dispatcher thread (inside a callback).
    fn on_dispatch_thread(&self) -> bool {
        thread::current().id() == self.shared.dispatch_thread
    }

    /// Stops both threads and joins them, waiting at most `request_timeout`
    /// for a callback that is still running; then the threads are left to end
    /// by themselves. Called from the dispatcher thread (the last handle
    /// dropped in a callback), it does not wait at all.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let _ = self.retry_tx.send(RetryMsg::Shutdown);
        let Some(threads) = self.shared.threads.lock().take() else {
            return;
        };
        if self.on_dispatch_thread() {
            log::debug!(target: LOG, "shutdown from the dispatcher thread; not joining it");
            return;
        }
        let timeout = self.shared.request_timeout;
        // Disconnected: both threads are past their last statement.
        let ended = threads
            .ended
            .recv_timeout(timeout)
            .is_err_and(|e| e.is_disconnected());
        if !ended {
            log::warn!(target: LOG, "a callback is still running after {timeout:?}; the dispatcher thread ends when it returns");
        }
        for handle in [threads.dispatch, threads.retry] {
            // A thread still running is detached (its handle dropped).
            if (ended || handle.is_finished()) && handle.join().is_err() {
                log::error!(target: LOG, "a delivery thread panicked");
            }
        }
    }
}

/// Spawns a named delivery thread.
fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                format!("cannot start the {name} thread"),
                e,
            )
        })
}

/// Counts the panics caught in user code; clones share the count.
#[derive(Clone, Default)]
struct PanicCounter(Arc<AtomicU64>);

impl PanicCounter {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts and logs a panic of `what` (a callback of `topic`), then drops
    /// its payload without letting that drop unwind.
    fn caught(&self, topic: &str, what: &str, payload: Box<dyn Any + Send>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        let text = payload_text(payload.as_ref());
        log_quietly(|| log::error!(target: LOG, "{topic}: {what} panicked: {text}"));
        drop_payload(payload, true);
    }

    /// Drops a callback closure (user code: its drop may panic), counting and
    /// logging a panic.
    fn drop_closure(&self, topic: &str, f: Callback) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(f))) {
            self.caught(topic, "the drop of a callback", payload);
        }
    }
}

/// The message of a panic payload, when it is a string.
fn payload_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a payload that is not a string)"
    }
}

/// Drops a panic payload, which is user data: its drop may panic, and the
/// payload of that panic too. Each nested payload is dropped in turn; after
/// [`MAX_NESTED_PANICS`] the last one is leaked rather than risk an endless
/// chain. With `report`, each nested panic is logged.
fn drop_payload(mut payload: Box<dyn Any + Send>, report: bool) {
    for _ in 0..MAX_NESTED_PANICS {
        match catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(next) => {
                if report {
                    let text = payload_text(next.as_ref());
                    log_quietly(
                        || log::error!(target: LOG, "dropping a panic payload panicked: {text}"),
                    );
                }
                payload = next;
            }
        }
    }
    log_quietly(
        || log::error!(target: LOG, "a panic payload kept panicking when dropped; it is leaked"),
    );
    std::mem::forget(payload);
}

/// Logs through the user's logger, which is user code too: a panic there is
/// swallowed (and not logged again).
fn log_quietly(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        drop_payload(payload, false);
    }
}

/// Identifies a subscriber within its topic.
pub(crate) type SubscriberId = u64;

/// One Instancer's current snapshot and its subscribers.
pub(crate) struct Topic {
    name: String,
    dispatcher: Dispatcher,
    state: Mutex<TopicState>,
}

struct TopicState {
    current: Event,
    /// Bumped by every publish; 0 means nothing was published yet.
    generation: u64,
    stopped: bool,
    next_id: SubscriberId,
    subscribers: Vec<Subscriber>,
    /// The dispatcher has been woken for this topic and not yet looked at it:
    /// one wake-up serves any number of publishes.
    deliver_queued: bool,
    /// The retry thread holds this topic (a channel was full).
    retry_queued: bool,
}

impl TopicState {
    /// Gives every channel subscriber that is behind the current snapshot,
    /// dropping those whose receiver is gone. Returns true when a channel was
    /// full (it needs another try later).
    fn send_to_channels(&mut self) -> bool {
        let generation = self.generation;
        let event = &self.current;
        let mut full = false;
        self.subscribers.retain_mut(|s| {
            let Sink::Channel(tx) = &s.sink else {
                return true;
            };
            if s.delivered >= generation {
                return true;
            }
            match tx.try_send(event.clone()) {
                Ok(()) => {
                    s.delivered = generation;
                    true
                }
                Err(cb::TrySendError::Full(_)) => {
                    full = true;
                    true
                }
                Err(cb::TrySendError::Disconnected(_)) => false,
            }
        });
        full
    }

    /// The callbacks that have not been given the current generation.
    fn callbacks_behind(&self) -> Vec<SubscriberId> {
        self.subscribers
            .iter()
            .filter(|s| matches!(s.sink, Sink::Callback(_)) && s.delivered < self.generation)
            .map(|s| s.id)
            .collect()
    }

    fn has_callbacks(&self) -> bool {
        self.subscribers
            .iter()
            .any(|s| matches!(s.sink, Sink::Callback(_)))
    }

    /// Marks the dispatcher as woken; true when the caller must wake it.
    fn take_deliver_turn(&mut self) -> bool {
        !std::mem::replace(&mut self.deliver_queued, true)
    }

    /// Marks the topic as held by the retry thread; true when the caller must
    /// hand it over.
    fn take_retry_turn(&mut self) -> bool {
        !std::mem::replace(&mut self.retry_queued, true)
    }
}

struct Subscriber {
    id: SubscriberId,
    sink: Sink,
    /// The generation this subscriber has last been given.
    delivered: u64,
}

enum Sink {
    Channel(cb::Sender<Event>),
    Callback(Arc<CallbackSlot>),
}

/// A callback and what its callers and removers agree on. The closure is
/// taken out of the slot for a call, so no lock is held while it runs, and put
/// back after it unless it was removed meanwhile: then the dispatcher drops it.
struct CallbackSlot {
    state: Mutex<SlotState>,
    /// Signalled when a call (and the drop that may follow it) ends.
    idle: Condvar,
    /// The topic's name, for logs.
    topic: String,
    panics: PanicCounter,
}

struct SlotState {
    /// `None` while the dispatcher holds it, and once dropped.
    f: Option<Callback>,
    removed: bool,
    /// The dispatcher holds `f`: calling it, or dropping it after the call.
    busy: bool,
}

/// How a call went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Called {
    /// Removed before it could start.
    Skipped,
    Returned,
    /// It panicked; the callback is now removed and its closure dropped.
    Panicked,
}

impl CallbackSlot {
    fn new(f: Callback, topic: &str, panics: PanicCounter) -> CallbackSlot {
        CallbackSlot {
            state: Mutex::new(SlotState {
                f: Some(f),
                removed: false,
                busy: false,
            }),
            idle: Condvar::new(),
            topic: topic.to_owned(),
            panics,
        }
    }

    /// Calls the callback unless it was removed. Runs on the dispatcher.
    fn call(&self, event: &Event) -> Called {
        let f = {
            let mut st = self.state.lock();
            match st.f.take() {
                Some(f) if !st.removed => {
                    st.busy = true;
                    f
                }
                other => {
                    st.f = other;
                    return Called::Skipped;
                }
            }
        };
        let called = match catch_unwind(AssertUnwindSafe(|| f(event))) {
            Ok(()) => Called::Returned,
            Err(payload) => {
                self.panics.caught(&self.topic, "a callback", payload);
                Called::Panicked
            }
        };
        self.end_call(f, called);
        called
    }

    /// Puts the closure back after a call, or drops it when the callback was
    /// removed during the call or panicked; then wakes a waiting remover.
    fn end_call(&self, f: Callback, called: Called) {
        let discard = {
            let mut st = self.state.lock();
            if called == Called::Panicked {
                st.removed = true;
            }
            if st.removed {
                Some(f)
            } else {
                st.f = Some(f);
                None
            }
        };
        if let Some(f) = discard {
            // After its last call, with no lock held; a remover may be
            // waiting for this drop, so `busy` is cleared only after it.
            self.panics.drop_closure(&self.topic, f);
        }
        self.state.lock().busy = false;
        self.idle.notify_all();
    }

    /// Marks the callback removed: no call starts after this. A call running
    /// on another thread is waited for until `deadline` (not at all when
    /// `wait` is false); then the closure is dropped here. A call still
    /// running past that drops it itself when it ends.
    fn release(&self, wait: bool, deadline: Instant) {
        let f = {
            let mut st = self.state.lock();
            st.removed = true;
            while wait && st.busy {
                if self.idle.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
            if st.busy {
                if wait {
                    log_quietly(
                        || log::warn!(target: LOG, "{}: a removed callback is still running; its closure is dropped when the call returns", self.topic),
                    );
                }
                return;
            }
            st.f.take()
        };
        if let Some(f) = f {
            self.panics.drop_closure(&self.topic, f);
        }
    }
}

impl Drop for CallbackSlot {
    /// A slot that was never released (its topic dropped without `stop`)
    /// still drops its closure without letting a panic out.
    fn drop(&mut self) {
        if let Some(f) = self.state.get_mut().f.take() {
            self.panics.drop_closure(&self.topic, f);
        }
    }
}

/// What a stopped topic reports.
fn closed_event(last: &Event) -> Event {
    Event {
        instances: last.instances.clone(),
        err: Some(Error::closed("instancer")),
    }
}

impl Topic {
    pub(crate) fn new(name: String, dispatcher: Dispatcher) -> Arc<Topic> {
        Arc::new(Topic {
            name,
            dispatcher,
            state: Mutex::new(TopicState {
                current: Event {
                    instances: Default::default(),
                    err: None,
                },
                generation: 0,
                stopped: false,
                next_id: 1,
                subscribers: Vec::new(),
                deliver_queued: false,
                retry_queued: false,
            }),
        })
    }

    /// Makes `event` the current snapshot and schedules delivery, unless it is
    /// the same as the current one (then subscribers hear nothing). Returns
    /// whether it was published.
    pub(crate) fn publish(self: &Arc<Topic>, event: Event) -> bool {
        let (retry, deliver) = {
            let mut st = self.state.lock();
            if st.stopped || (st.generation > 0 && st.current.same_as(&event)) {
                return false;
            }
            st.current = event;
            st.generation += 1;
            // Channels are served right here (a `try_send` runs no user
            // code), saving a thread hop; the other threads are woken only
            // for callbacks and for channels that were full.
            let retry = st.send_to_channels() && st.take_retry_turn();
            let deliver = st.has_callbacks() && st.take_deliver_turn();
            (retry, deliver)
        };
        if retry {
            self.dispatcher.queue_retry(self);
        }
        if deliver {
            self.dispatcher.kick(self);
        }
        true
    }

    /// The current snapshot; after stop, with an error of kind `Closed`.
    pub(crate) fn current(&self) -> Event {
        let st = self.state.lock();
        if st.stopped {
            closed_event(&st.current)
        } else {
            st.current.clone()
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.state.lock().stopped
    }

    /// Adds a channel subscriber and gives it the current snapshot at once
    /// (or as soon as it has room). On a stopped topic the channel gets one
    /// `Closed` event, if it has room, and is not kept.
    pub(crate) fn add_channel(self: &Arc<Topic>, tx: cb::Sender<Event>) {
        let mut st = self.state.lock();
        if st.stopped {
            let _ = tx.try_send(closed_event(&st.current));
            return;
        }
        let mut delivered = 0;
        let mut full = false;
        if st.generation > 0 {
            match tx.try_send(st.current.clone()) {
                Ok(()) => delivered = st.generation,
                Err(cb::TrySendError::Full(_)) => full = true,
                Err(cb::TrySendError::Disconnected(_)) => return,
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.subscribers.push(Subscriber {
            id,
            sink: Sink::Channel(tx),
            delivered,
        });
        let retry = full && st.take_retry_turn();
        drop(st);
        if retry {
            self.dispatcher.queue_retry(self);
        }
    }

    /// Removes every channel subscriber on the same channel as `tx`.
    pub(crate) fn remove_channel(&self, tx: &cb::Sender<Event>) {
        let removed: Vec<Subscriber> = {
            let mut st = self.state.lock();
            let (gone, kept) = std::mem::take(&mut st.subscribers)
                .into_iter()
                .partition(|s| matches!(&s.sink, Sink::Channel(c) if c.same_channel(tx)));
            st.subscribers = kept;
            gone
        };
        drop(removed);
    }

    /// Adds a callback; its first call, with the current snapshot, comes from
    /// the dispatcher thread. Returns `None` (and drops `f`) on a stopped topic.
    pub(crate) fn add_callback(self: &Arc<Topic>, f: Callback) -> Option<SubscriberId> {
        let slot = Arc::new(CallbackSlot::new(
            f,
            &self.name,
            self.dispatcher.shared.panics.clone(),
        ));
        let (id, deliver) = {
            let mut st = self.state.lock();
            if st.stopped {
                (None, false)
            } else {
                let id = st.next_id;
                st.next_id += 1;
                st.subscribers.push(Subscriber {
                    id,
                    sink: Sink::Callback(slot.clone()),
                    delivered: 0,
                });
                (Some(id), st.generation > 0 && st.take_deliver_turn())
            }
        };
        if deliver {
            self.dispatcher.kick(self);
        }
        // On a stopped topic `slot` (and so `f`) is dropped here, outside the
        // lock; the slot's drop catches a panic of `f`'s.
        id
    }

    /// Removes a callback. Returns whether it was there. Once this returns the
    /// callback is not called again; a running call on another thread is
    /// waited for at most `request_timeout`. The closure is dropped after its
    /// last call: here, or when a call that outlasted the wait returns.
    pub(crate) fn remove_callback(&self, id: SubscriberId) -> bool {
        let removed = {
            let mut st = self.state.lock();
            st.subscribers
                .iter()
                .position(|s| s.id == id)
                .map(|i| st.subscribers.remove(i))
        };
        match removed {
            Some(sub) => {
                if let Sink::Callback(slot) = sub.sink {
                    self.release(&slot, self.release_deadline());
                }
                true
            }
            None => false,
        }
    }

    /// Stops the topic: channels get the latest snapshot if they have room,
    /// then are dropped (their receivers disconnect after the last event);
    /// callbacks are removed, with one `request_timeout` for all of them.
    /// Idempotent.
    pub(crate) fn stop(&self) {
        let subscribers = {
            let mut st = self.state.lock();
            if st.stopped {
                return;
            }
            st.stopped = true;
            let generation = st.generation;
            for s in &st.subscribers {
                if let Sink::Channel(tx) = &s.sink {
                    if s.delivered < generation {
                        let _ = tx.try_send(st.current.clone());
                    }
                }
            }
            std::mem::take(&mut st.subscribers)
        };
        let n = subscribers.len();
        let deadline = self.release_deadline();
        for s in subscribers {
            if let Sink::Callback(slot) = s.sink {
                self.release(&slot, deadline);
            }
        }
        log::debug!(target: LOG, "{}: stopped, {n} subscribers released", self.name);
    }

    /// Brings every callback up to the current generation. Runs on the
    /// dispatcher thread.
    fn deliver(&self) {
        let (event, generation, callbacks) = {
            let mut st = self.state.lock();
            // Publishes from now on wake the dispatcher again.
            st.deliver_queued = false;
            if st.stopped || st.generation == 0 {
                return;
            }
            (st.current.clone(), st.generation, st.callbacks_behind())
        };
        for id in callbacks {
            self.deliver_to(id, &event, generation);
        }
    }

    /// Calls one callback with `event`, unless it was removed or has it
    /// already; removes it if it panics.
    fn deliver_to(&self, id: SubscriberId, event: &Event, generation: u64) {
        // Take the slot out of the list afresh for each call, so the
        // dispatcher holds at most one slot at a time: one removed meanwhile
        // is not called, and `release` can wait for this one.
        let slot = {
            let st = self.state.lock();
            st.subscribers.iter().find_map(|s| match &s.sink {
                Sink::Callback(slot) if s.id == id && s.delivered < generation => {
                    Some(slot.clone())
                }
                _ => None,
            })
        };
        let Some(slot) = slot else { return };
        match slot.call(event) {
            Called::Returned => {
                let mut st = self.state.lock();
                if let Some(s) = st.subscribers.iter_mut().find(|s| s.id == id) {
                    s.delivered = s.delivered.max(generation);
                }
            }
            Called::Panicked => {
                log_quietly(
                    || log::error!(target: LOG, "{}: the callback that panicked is removed", self.name),
                );
                self.remove_callback(id);
            }
            Called::Skipped => {}
        }
    }

    /// Gives full channels the current snapshot. Runs on the retry thread;
    /// returns true while some channel is still full.
    fn retry_channels(&self) -> bool {
        let mut st = self.state.lock();
        let full = !st.stopped && st.send_to_channels();
        // Cleared under the lock: a publish that finds a full channel after
        // this hands the topic over again.
        st.retry_queued = full;
        full
    }

    /// When a release must stop waiting for a running call.
    fn release_deadline(&self) -> Instant {
        Instant::now() + self.dispatcher.shared.request_timeout
    }

    /// Releases a removed callback: no call starts after this. A call running
    /// on the dispatcher is waited for until `deadline`, and then the closure
    /// is dropped here, before this returns; a call that outlasts the wait
    /// drops it when it ends. On the dispatcher thread (from inside a
    /// callback) there is nothing to wait for: a running call is this one.
    fn release(&self, slot: &CallbackSlot, deadline: Instant) {
        slot.release(!self.dispatcher.on_dispatch_thread(), deadline);
    }
}

/// The dispatcher loop: run the callbacks of each topic that is woken, until
/// shut down.
fn run(rx: cb::Receiver<Msg>) {
    for msg in rx.iter() {
        match msg {
            Msg::Deliver(topic) => {
                // Every call and drop of user code is caught inside; this
                // only keeps a bug of ours from ending the thread.
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| topic.deliver())) {
                    drop_payload(payload, true);
                    log_quietly(
                        || log::error!(target: LOG, "{}: delivery failed (a bug); the dispatcher goes on", topic.name),
                    );
                }
            }
            Msg::Shutdown => break,
        }
    }
    log_quietly(|| log::debug!(target: LOG, "dispatcher stopped"));
}

/// The retry loop: keeps the topics that have a full channel and tries them
/// again on a tick that starts at [`MIN_TICK`] and grows to [`MAX_TICK`]
/// while nothing new comes; sleeps while none has.
fn run_retry(rx: cb::Receiver<RetryMsg>) {
    let mut waiting: Vec<Arc<Topic>> = Vec::new();
    let mut tick = MIN_TICK;
    loop {
        let msg = if waiting.is_empty() {
            rx.recv().map_err(|_| cb::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(tick)
        };
        match msg {
            Ok(RetryMsg::Retry(topic)) => {
                waiting.push(topic);
                tick = MIN_TICK;
            }
            Ok(RetryMsg::Shutdown) | Err(cb::RecvTimeoutError::Disconnected) => break,
            Err(cb::RecvTimeoutError::Timeout) => {
                waiting.retain(|t| t.retry_channels());
                tick = (tick * 2).min(MAX_TICK);
            }
        }
    }
    log::debug!(target: LOG, "channel retries stopped");
}

#[cfg(test)]
mod tests {
    //! The panic counter and payload drops, without etcd: events are published
    //! from the test thread. (tests/callbacks.rs covers the rest with etcd.)

    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A panic payload whose drop panics with another one, `depth` times.
    struct Chain {
        depth: usize,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Chain {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
            if self.depth > 0 && !thread::panicking() {
                std::panic::panic_any(Chain {
                    depth: self.depth - 1,
                    drops: self.drops.clone(),
                });
            }
        }
    }

    fn chain(depth: usize) -> (Box<dyn Any + Send>, Arc<AtomicUsize>) {
        let drops = Arc::new(AtomicUsize::new(0));
        let payload = Box::new(Chain {
            depth,
            drops: drops.clone(),
        });
        (payload, drops)
    }

    fn event(instances: &[&str]) -> Event {
        Event {
            instances: instances.iter().collect(),
            err: None,
        }
    }

    /// Polls `f` for up to 5 s.
    fn eventually(f: impl Fn() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        f()
    }

    #[test]
    fn nested_payload_panics_are_dropped_in_turn_and_an_endless_chain_is_leaked() {
        let (payload, drops) = chain(3);
        drop_payload(payload, true);
        assert_eq!(drops.load(Ordering::SeqCst), 4);

        let (payload, drops) = chain(1000);
        drop_payload(payload, false);
        assert_eq!(drops.load(Ordering::SeqCst), MAX_NESTED_PANICS);
    }

    #[test]
    fn panics_in_calls_and_closure_drops_are_counted_and_others_go_on() {
        let dispatcher = Dispatcher::start(Duration::from_secs(1)).unwrap();
        let topic = Topic::new("t".into(), dispatcher.clone());
        let bad = Box::new(|ev: &Event| {
            if ev.instances.contains("boom") {
                let (payload, _) = chain(2);
                std::panic::resume_unwind(payload);
            }
        });
        topic.add_callback(bad).unwrap();
        let (tx, rx) = cb::unbounded();
        topic
            .add_callback(Box::new(move |ev: &Event| {
                let _ = tx.send(ev.instances.to_vec());
            }))
            .unwrap();
        topic.publish(event(&["boom"]));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(vec!["boom".to_owned()])
        );
        // One panic of a call, however many its payload's drop adds.
        assert!(eventually(|| dispatcher.callback_panics() == 1));

        // A closure whose drop panics, removed from this thread.
        let (guard, drops) = chain(1);
        let id = topic
            .add_callback(Box::new(move |_: &Event| {
                let _keep = &guard;
            }))
            .unwrap();
        assert!(topic.remove_callback(id));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(dispatcher.callback_panics(), 2);

        // The dispatcher goes on.
        topic.publish(event(&["after"]));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(vec!["after".to_owned()])
        );
        topic.stop();
        dispatcher.shutdown();
    }
}
