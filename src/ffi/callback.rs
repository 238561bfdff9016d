//! C callbacks: every place where Rust calls back into C through a function
//! pointer, and the promises made to the C side about those calls.
//!
//! A C closure is the triple `{call, drop, context}` (as in zenoh-c): `call`
//! is run with its arguments and `context`, `drop(context)` releases
//! `context`. The C API takes two kinds:
//!
//! * **Update callbacks** (`etcd_sd_instancer_on_update`): an
//!   [`etcd_sd_event_fn`], an [`etcd_sd_drop_fn`] and a `context`, held as a
//!   [`CCallback`] whose [`DropGuard`] owns the `drop` half.
//! * **Retry attempts** (`etcd_sd_retry`): an [`etcd_sd_attempt_fn`] and a
//!   `context` with no `drop`, held as a [`CAttempt`]: `context` is only
//!   borrowed for the length of the `etcd_sd_retry` call.
//!
//! What C is promised:
//!
//! * **`drop` runs exactly once, after the last `call` has returned.** The
//!   [`DropGuard`] is made before anything else in
//!   `etcd_sd_instancer_on_update`, so `drop` also runs when that function
//!   fails, whatever the status (a NULL argument, a stopped instancer, a
//!   caught panic): `context` is always released. Afterwards the guard is
//!   owned by the closure handed to the dispatcher, which drops each closure
//!   exactly once, after its last call (`src/dispatch/`).
//! * **Calls of one callback never overlap**, and come in order. Update
//!   callbacks run on the client's dispatcher thread, `etcd-sd-dispatch`.
//!   `drop` runs on the thread that removed the callback (remove, stop, free,
//!   or the failing `on_update`), or on the dispatcher thread when a call was
//!   under way then. Attempts run on the thread that called `etcd_sd_retry`,
//!   one after the other.
//! * **Panics.** A Rust panic around a call or a drop (ours, not C's) is
//!   caught: on the dispatcher thread it is logged and counted, and the
//!   callback is removed (its `drop` still runs once); inside an export it
//!   becomes `ETCD_SD_ERR_PANIC`. The function pointers have the `"C"` ABI,
//!   not `"C-unwind"`: `call`, `drop` and attempts must return normally
//!   (catch C++ exceptions inside them; no `longjmp` out of them).
//! * **NULL.** A NULL `call` (or attempt `fn`) is refused with
//!   `ETCD_SD_ERR_INVALID_ARGUMENT`, and `drop` still runs. A NULL `drop`
//!   means there is nothing to release: `context` is simply not used after
//!   the last `call`. `context` itself may be anything, NULL included: it is
//!   never dereferenced, only handed back.

use std::ffi::{c_char, c_int, c_void};

use super::event::EventHandle;
use super::strings::to_c_string;
use super::{as_const_ptr, etcd_sd_event};
use crate::{BoxError, Event};

/// A callback for discovery updates: called with an event lent for the
/// duration of the call, and the `context` given to
/// `etcd_sd_instancer_on_update`.
pub type etcd_sd_event_fn =
    Option<unsafe extern "C" fn(ev: *const etcd_sd_event, context: *mut c_void)>;

/// Releases a callback's `context`; called exactly once.
pub type etcd_sd_drop_fn = Option<unsafe extern "C" fn(context: *mut c_void)>;

/// One attempt of `etcd_sd_retry`: called with an instance (valid during the
/// call) and the `context`; returns 0 on success, anything else on failure.
pub type etcd_sd_attempt_fn =
    Option<unsafe extern "C" fn(instance: *const c_char, context: *mut c_void) -> c_int>;

/// A C `void *context` that may cross threads: by handing it over, the C
/// caller accepted that it is used from the threads the docs name.
#[derive(Clone, Copy)]
pub(crate) struct Context(pub(crate) *mut c_void);

impl Context {
    /// The pointer. (A method, so that closures capture the whole `Context`,
    /// which is `Send`, rather than its field, which is not.)
    pub(crate) fn get(self) -> *mut c_void {
        self.0
    }
}

// SAFETY: contexts are opaque to us and never dereferenced; the docs of the
// functions that accept one say on which threads it is passed back to C.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

/// Calls `drop(context)` when dropped: the C half of a callback's lifetime.
pub(crate) struct DropGuard {
    drop: etcd_sd_drop_fn,
    context: Context,
}

impl DropGuard {
    /// Takes charge of releasing `context` with `drop` (NULL: nothing to do).
    pub(crate) fn new(drop: etcd_sd_drop_fn, context: *mut c_void) -> DropGuard {
        DropGuard {
            drop,
            context: Context(context),
        }
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(drop) = self.drop {
            // SAFETY: C gave us this function for this context, to be called
            // once: this is the only place that calls it, and `Drop` runs once.
            unsafe { drop(self.context.get()) }
        }
    }
}

/// A C update callback as a Rust closure: `call` per event, `drop` when the
/// closure is dropped (the core drops it exactly once, after its last call).
pub(crate) struct CCallback {
    call: unsafe extern "C" fn(*const etcd_sd_event, *mut c_void),
    guard: DropGuard,
}

impl CCallback {
    /// `call` with the context (and `drop`) held by `guard`.
    pub(crate) fn new(
        call: unsafe extern "C" fn(*const etcd_sd_event, *mut c_void),
        guard: DropGuard,
    ) -> CCallback {
        CCallback { call, guard }
    }

    /// Calls C with `event`, lent for the duration of the call.
    pub(crate) fn call(&self, event: &Event) {
        let lent = EventHandle::lent(event.clone());
        // SAFETY: C gave us `call` for this context; the event outlives the call.
        unsafe {
            (self.call)(
                as_const_ptr::<etcd_sd_event>(&lent),
                self.guard.context.get(),
            )
        }
    }
}

/// The C attempt function of `etcd_sd_retry` with its `context` (borrowed
/// for the length of that call: there is no `drop`).
#[derive(Clone, Copy)]
pub(crate) struct CAttempt {
    attempt: unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
    context: Context,
}

impl CAttempt {
    pub(crate) fn new(
        attempt: unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
        context: *mut c_void,
    ) -> CAttempt {
        CAttempt {
            attempt,
            context: Context(context),
        }
    }

    /// One attempt on `instance`: `Ok` when C returned 0, else an error
    /// naming the instance and the code.
    pub(crate) fn call(self, instance: &str) -> Result<(), BoxError> {
        let c = to_c_string(instance);
        // SAFETY: C gave us this function for this context; `c` outlives
        // the call. Attempts run on the thread that called etcd_sd_retry.
        let code = unsafe { (self.attempt)(c.as_ptr(), self.context.get()) };
        if code == 0 {
            Ok(())
        } else {
            Err(BoxError::from(format!(
                "attempt on {instance} failed with code {code}"
            )))
        }
    }
}
