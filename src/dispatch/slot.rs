//! A callback's slot: the closure is taken out for each call (no lock held
//! while user code runs) and put back after it, unless it was removed
//! meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::instances::Event;

use super::panics::{log_quietly, PanicCounter};
use super::{Callback, LOG};

/// A callback and what its callers and removers agree on. The closure is
/// taken out of the slot for a call, so no lock is held while it runs, and put
/// back after it unless it was removed meanwhile: then the dispatcher drops it.
pub(super) struct CallbackSlot {
    state: Mutex<SlotState>,
    /// Signalled when a call (and the drop that may follow it) ends.
    idle: Condvar,
    /// The topic's name, for logs.
    topic: String,
    panics: PanicCounter,
}

pub(super) struct SlotState {
    /// `None` while the dispatcher holds it, and once dropped.
    f: Option<Callback>,
    removed: bool,
    /// The dispatcher holds `f`: calling it, or dropping it after the call.
    busy: bool,
}

/// How a call went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Called {
    /// Removed before it could start.
    Skipped,
    Returned,
    /// It panicked; the callback is now removed and its closure dropped.
    Panicked,
}

impl CallbackSlot {
    pub(super) fn new(f: Callback, topic: &str, panics: PanicCounter) -> CallbackSlot {
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
    pub(super) fn call(&self, event: &Event) -> Called {
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
    pub(super) fn end_call(&self, f: Callback, called: Called) {
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
    pub(super) fn release(&self, wait: bool, deadline: Instant) {
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
