//! One Instancer's current snapshot, its generation and its subscribers.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel as cb;
use parking_lot::Mutex;

use crate::error::Error;
use crate::instances::Event;

use super::panics::log_quietly;
use super::slot::{CallbackSlot, Called};
use super::{Callback, Dispatcher, LOG};

/// Identifies a subscriber within its topic.
pub(crate) type SubscriberId = u64;

/// One Instancer's current snapshot and its subscribers.
pub(crate) struct Topic {
    pub(super) name: String,
    dispatcher: Dispatcher,
    state: Mutex<TopicState>,
}

pub(super) struct TopicState {
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
    pub(super) fn send_to_channels(&mut self) -> bool {
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
    pub(super) fn callbacks_behind(&self) -> Vec<SubscriberId> {
        self.subscribers
            .iter()
            .filter(|s| matches!(s.sink, Sink::Callback(_)) && s.delivered < self.generation)
            .map(|s| s.id)
            .collect()
    }

    pub(super) fn has_callbacks(&self) -> bool {
        self.subscribers
            .iter()
            .any(|s| matches!(s.sink, Sink::Callback(_)))
    }

    /// Marks the dispatcher as woken; true when the caller must wake it.
    pub(super) fn take_deliver_turn(&mut self) -> bool {
        !std::mem::replace(&mut self.deliver_queued, true)
    }

    /// Marks the topic as held by the retry thread; true when the caller must
    /// hand it over.
    pub(super) fn take_retry_turn(&mut self) -> bool {
        !std::mem::replace(&mut self.retry_queued, true)
    }
}

pub(super) struct Subscriber {
    id: SubscriberId,
    sink: Sink,
    /// The generation this subscriber has last been given.
    delivered: u64,
}

pub(super) enum Sink {
    Channel(cb::Sender<Event>),
    Callback(Arc<CallbackSlot>),
}

/// What a stopped topic reports.
pub(super) fn closed_event(last: &Event) -> Event {
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
        self.publish_if(event, |_| true)
    }

    /// [`publish`](Topic::publish), when `when(generation)` holds (checked
    /// under the same lock).
    fn publish_if(self: &Arc<Topic>, event: Event, when: impl FnOnce(u64) -> bool) -> bool {
        let (retry, deliver) = {
            let mut st = self.state.lock();
            if st.stopped
                || !when(st.generation)
                || (st.generation > 0 && st.current.same_as(&event))
            {
                return false;
            }
            st.current = event;
            st.generation += 1;
            self.dispatcher.published();
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

    /// Publishes `event` only when nothing was published yet (so it never
    /// hides a state published meanwhile). Returns whether it was published.
    pub(crate) fn publish_first(self: &Arc<Topic>, event: Event) -> bool {
        self.publish_if(event, |generation| generation == 0)
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
    pub(super) fn deliver(&self) {
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
    pub(super) fn deliver_to(&self, id: SubscriberId, event: &Event, generation: u64) {
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
    pub(super) fn retry_channels(&self) -> bool {
        let mut st = self.state.lock();
        let full = !st.stopped && st.send_to_channels();
        // Cleared under the lock: a publish that finds a full channel after
        // this hands the topic over again.
        st.retry_queued = full;
        full
    }

    /// When a release must stop waiting for a running call.
    pub(super) fn release_deadline(&self) -> Instant {
        Instant::now() + self.dispatcher.shared.request_timeout
    }

    /// Releases a removed callback: no call starts after this. A call running
    /// on the dispatcher is waited for until `deadline`, and then the closure
    /// is dropped here, before this returns; a call that outlasts the wait
    /// drops it when it ends. On the dispatcher thread (from inside a
    /// callback) there is nothing to wait for: a running call is this one.
    pub(super) fn release(&self, slot: &CallbackSlot, deadline: Instant) {
        slot.release(!self.dispatcher.on_dispatch_thread(), deadline);
    }
}
