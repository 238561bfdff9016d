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
//!
//! Files: this one holds the handle ([`Dispatcher`]) and the two thread
//! loops; `topic.rs` one Instancer's snapshot and subscribers; `slot.rs` a
//! callback's slot (the re-entry and removal rules); `panics.rs` how user
//! panics, and the drops of their payloads, are caught and counted.

mod panics;
mod slot;
mod topic;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel as cb;
use parking_lot::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::instances::Event;
use crate::stats::{Counter, Counters};

use panics::{drop_payload, log_quietly, PanicCounter};
pub(crate) use topic::Topic;

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
    /// The client's counters: `events` is kept here.
    counters: Arc<Counters>,
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
    pub(crate) fn start(request_timeout: Duration, counters: Arc<Counters>) -> Result<Dispatcher> {
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
                counters,
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
    pub(crate) fn callback_panics(&self) -> u64 {
        self.shared.panics.get()
    }

    /// Counts one more published Event.
    pub(super) fn published(&self) {
        self.shared.counters.add(Counter::Events);
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

    use super::panics::drop_payload;
    use super::*;
    use std::any::Any;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let dispatcher = Dispatcher::start(Duration::from_secs(1), Default::default()).unwrap();
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
