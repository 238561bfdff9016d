//! The dispatcher: one std thread per `Client` (`etcd-sd-dispatch`) that hands
//! discovery snapshots to subscribers, so user code never runs on the runtime
//! thread and a slow subscriber never stalls a watch.
//!
//! Each Instancer owns a [`Topic`]: its current [`Event`], a generation number
//! and its subscribers. The watcher replaces the event and bumps the
//! generation ([`Topic::publish`]), handing it straight to channel subscribers
//! that have room (a `try_send`, no user code); the dispatcher then brings
//! every other subscriber (callbacks, full channels) up to that generation. Because every event is a full snapshot, a subscriber
//! that is behind only ever needs the latest one.
//!
//! Guarantees, each tested:
//! * one subscriber's callbacks run in order, on the dispatcher thread;
//! * a channel that is full is skipped, never waited on; it gets the latest
//!   snapshot once it has room again (retried on a short, growing tick);
//! * no lock of the topic is held during a callback, so a callback may remove
//!   itself, deregister a channel or stop its instancer;
//! * once `remove` (or `stop`) returns, the callback is not called again and
//!   its closure has been dropped: a call running on the dispatcher is waited
//!   for first. Removed from inside its own call, it is dropped when that call
//!   returns;
//! * a callback's closure is dropped exactly once, after its last call;
//! * a panicking callback is caught, logged and removed.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel as cb;
use parking_lot::{Mutex, ReentrantMutex};

use crate::error::{Error, ErrorKind, Result};
use crate::instances::Event;

/// A subscriber callback.
pub(crate) type Callback = Box<dyn Fn(&Event) + Send + 'static>;

enum Msg {
    /// A topic has something new for some subscriber.
    Publish(Arc<Topic>),
    /// Stop the thread.
    Shutdown,
}

/// Handle to the dispatcher thread; clones share it.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    tx: cb::Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    thread_id: ThreadId,
}

impl Dispatcher {
    pub(crate) fn start() -> Result<Dispatcher> {
        let (tx, rx) = cb::unbounded();
        let handle = thread::Builder::new()
            .name("etcd-sd-dispatch".into())
            .spawn(move || run(rx))
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Unavailable,
                    "cannot start the dispatcher thread",
                    e,
                )
            })?;
        Ok(Dispatcher {
            tx,
            thread_id: handle.thread().id(),
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    fn kick(&self, topic: &Arc<Topic>) {
        // After shutdown nobody listens, and nothing is left to deliver to.
        let _ = self.tx.send(Msg::Publish(topic.clone()));
    }

    /// Stops the thread and joins it, unless called from it.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            if thread::current().id() == self.thread_id {
                log::debug!(target: "etcd_sd::dispatch", "shutdown from the dispatcher thread; not joining it");
            } else if handle.join().is_err() {
                log::error!(target: "etcd_sd::dispatch", "the dispatcher thread panicked");
            }
        }
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
}

impl TopicState {
    /// Gives every channel subscriber that is behind the current snapshot,
    /// dropping those whose receiver is gone. Callback subscribers that are
    /// behind are pushed to `callbacks` when given. Returns true when the
    /// dispatcher has work: a channel was full, or (with `callbacks` absent) a
    /// callback is behind.
    fn send_to_channels(&mut self, mut callbacks: Option<&mut Vec<SubscriberId>>) -> bool {
        let generation = self.generation;
        let event = &self.current;
        let mut more = false;
        self.subscribers.retain_mut(|s| {
            if s.delivered >= generation {
                return true;
            }
            match &s.sink {
                Sink::Channel(tx) => match tx.try_send(event.clone()) {
                    Ok(()) => {
                        s.delivered = generation;
                        true
                    }
                    Err(cb::TrySendError::Full(_)) => {
                        more = true;
                        true
                    }
                    Err(cb::TrySendError::Disconnected(_)) => false,
                },
                Sink::Callback(_) => {
                    match callbacks.as_deref_mut() {
                        Some(list) => list.push(s.id),
                        None => more = true,
                    }
                    true
                }
            }
        });
        more
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

/// A callback and its "removed" flag behind a re-entrant gate: the dispatcher
/// holds the gate during a call, so removal from another thread waits for a
/// running call, while removal from inside the call (same thread) goes through.
struct CallbackSlot {
    gate: ReentrantMutex<(Cell<bool>, Callback)>,
}

impl CallbackSlot {
    /// Calls the callback unless removed; returns `false` if it panicked.
    fn call(&self, event: &Event) -> bool {
        let guard = self.gate.lock();
        if guard.0.get() {
            return true;
        }
        catch_unwind(AssertUnwindSafe(|| (guard.1)(event))).is_ok()
    }

    fn mark_removed(&self) {
        self.gate.lock().0.set(true);
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
            }),
        })
    }

    /// Makes `event` the current snapshot and schedules delivery, unless it is
    /// the same as the current one (then subscribers hear nothing). Returns
    /// whether it was published.
    pub(crate) fn publish(self: &Arc<Topic>, event: Event) -> bool {
        {
            let mut st = self.state.lock();
            if st.stopped || (st.generation > 0 && st.current.same_as(&event)) {
                return false;
            }
            st.current = event;
            st.generation += 1;
            // Channels are served right here (a `try_send` runs no user
            // code), saving a thread hop; the dispatcher is woken only for
            // callbacks and for channels that were full.
            if !st.send_to_channels(None) {
                return true;
            }
        }
        self.dispatcher.kick(self);
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
        let mut retry = false;
        if st.generation > 0 {
            match tx.try_send(st.current.clone()) {
                Ok(()) => delivered = st.generation,
                Err(cb::TrySendError::Full(_)) => retry = true,
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
        drop(st);
        if retry {
            self.dispatcher.kick(self);
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
        let slot = Arc::new(CallbackSlot {
            gate: ReentrantMutex::new((Cell::new(false), f)),
        });
        let id = {
            let mut st = self.state.lock();
            if st.stopped {
                None
            } else {
                let id = st.next_id;
                st.next_id += 1;
                st.subscribers.push(Subscriber {
                    id,
                    sink: Sink::Callback(slot.clone()),
                    delivered: 0,
                });
                Some(id)
            }
        };
        if id.is_some() {
            self.dispatcher.kick(self);
        }
        // On a stopped topic `slot` (and so `f`) is dropped here, outside the lock.
        id
    }

    /// Removes a callback. Returns whether it was there. Once this returns the
    /// callback is not called again (a running call on another thread is
    /// waited for); its closure is dropped after its last call.
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
                    self.release(slot);
                }
                true
            }
            None => false,
        }
    }

    /// Stops the topic: channels get the latest snapshot if they have room,
    /// then are dropped (their receivers disconnect after the last event);
    /// callbacks are removed. Idempotent.
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
        for s in subscribers {
            if let Sink::Callback(slot) = s.sink {
                self.release(slot);
            }
        }
        log::debug!(target: "etcd_sd::dispatch", "{}: stopped, {n} subscribers released", self.name);
    }

    /// Brings every subscriber up to the current generation. Returns true when
    /// some channel was full and needs another try later.
    fn deliver(&self) -> bool {
        let (event, generation, callbacks, retry) = {
            let mut st = self.state.lock();
            if st.stopped || st.generation == 0 {
                return false;
            }
            let mut callbacks = Vec::new();
            let retry = st.send_to_channels(Some(&mut callbacks));
            (st.current.clone(), st.generation, callbacks, retry)
        };
        for id in callbacks {
            // Take the slot out of the list afresh for each call, so the
            // dispatcher holds at most one slot at a time: one removed
            // meanwhile is not called, and `release` can wait for this one.
            let slot = {
                let st = self.state.lock();
                st.subscribers.iter().find_map(|s| match &s.sink {
                    Sink::Callback(slot) if s.id == id && s.delivered < generation => {
                        Some(slot.clone())
                    }
                    _ => None,
                })
            };
            let Some(slot) = slot else { continue };
            let ok = slot.call(&event);
            // `slot` may be the last reference: the closure is dropped here,
            // after its last call, with no lock held.
            drop(slot);
            if ok {
                let mut st = self.state.lock();
                if let Some(s) = st.subscribers.iter_mut().find(|s| s.id == id) {
                    s.delivered = s.delivered.max(generation);
                }
            } else {
                log::error!(target: "etcd_sd::dispatch", "{}: a subscriber callback panicked; it is removed", self.name);
                self.remove_callback(id);
            }
        }
        retry
    }

    /// Releases a removed callback: no call starts after this; a call running
    /// on the dispatcher is waited for, and then the closure is dropped here,
    /// before this returns. Called from inside the callback itself (on the
    /// dispatcher), the closure is dropped when that call returns.
    fn release(&self, slot: Arc<CallbackSlot>) {
        slot.mark_removed();
        if thread::current().id() == self.dispatcher.thread_id {
            return;
        }
        // The dispatcher drops its clone right after the call it was in; the
        // bound only guards against the impossible.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&slot) > 1 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_micros(50));
        }
        drop(slot);
    }
}

/// The dispatcher loop: deliver what is published; retry full channels on a
/// tick that starts at 1 ms and grows to 100 ms while nothing changes.
fn run(rx: cb::Receiver<Msg>) {
    const MIN_TICK: Duration = Duration::from_millis(1);
    const MAX_TICK: Duration = Duration::from_millis(100);
    let mut waiting: Vec<Arc<Topic>> = Vec::new();
    let mut tick = MIN_TICK;
    loop {
        let msg = if waiting.is_empty() {
            rx.recv().map_err(|_| cb::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(tick)
        };
        match msg {
            Ok(Msg::Publish(topic)) => {
                if topic.deliver() && !waiting.iter().any(|t| Arc::ptr_eq(t, &topic)) {
                    waiting.push(topic);
                }
                tick = MIN_TICK;
            }
            Ok(Msg::Shutdown) | Err(cb::RecvTimeoutError::Disconnected) => break,
            Err(cb::RecvTimeoutError::Timeout) => {
                waiting.retain(|t| t.deliver());
                tick = (tick * 2).min(MAX_TICK);
            }
        }
    }
    log::debug!(target: "etcd_sd::dispatch", "dispatcher stopped");
}
