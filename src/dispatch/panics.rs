//! Panics of user code on the delivery threads (and on the threads that
//! remove callbacks): caught, logged, counted, and their payloads dropped
//! without letting a second panic out.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Callback, LOG, MAX_NESTED_PANICS};

/// Counts the panics caught in user code; clones share the count.
#[derive(Clone, Default)]
pub(super) struct PanicCounter(Arc<AtomicU64>);

impl PanicCounter {
    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts and logs a panic of `what` (a callback of `topic`), then drops
    /// its payload without letting that drop unwind.
    pub(super) fn caught(&self, topic: &str, what: &str, payload: Box<dyn Any + Send>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        crate::stats::callback_panicked();
        let text = payload_text(payload.as_ref());
        log_quietly(|| log::error!(target: LOG, "{topic}: {what} panicked: {text}"));
        drop_payload(payload, true);
    }

    /// Drops a callback closure (user code: its drop may panic), counting and
    /// logging a panic.
    pub(super) fn drop_closure(&self, topic: &str, f: Callback) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(f))) {
            self.caught(topic, "the drop of a callback", payload);
        }
    }
}

/// The message of a panic payload, when it is a string.
pub(super) fn payload_text(payload: &(dyn Any + Send)) -> &str {
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
pub(super) fn drop_payload(mut payload: Box<dyn Any + Send>, report: bool) {
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
pub(super) fn log_quietly(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        drop_payload(payload, false);
    }
}
