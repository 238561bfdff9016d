//! `etcd_sd_instancer` and its two kinds of delivery: callbacks and polled
//! subscriptions (`etcd_sd_subscription`).

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::callback::{etcd_sd_drop_fn, etcd_sd_event_fn, CCallback, DropGuard};
use super::event::EventHandle;
use super::{
    etcd_sd_client, etcd_sd_event, etcd_sd_status, fail, ffi_boundary, free_box, set_boxed_mut_ptr,
    set_last_error, try_out, try_ref, try_status, try_str, ETCD_SD_ERR_CLOSED, ETCD_SD_ERR_TIMEOUT,
    ETCD_SD_NODATA, ETCD_SD_OK,
};
use parking_lot::Mutex;

use crate::channel::{RecvTimeoutError, TryRecvError};
use crate::{CallbackId, Error, ErrorKind, Event, Instancer, InstancerOptions};

/// What an `etcd_sd_instancer` points at.
#[derive(Debug)]
pub(crate) struct InstancerHandle {
    /// Shared only for the length of an `etcd_sd_instancer_on_update` call,
    /// so that a callback freeing the instancer from the dispatcher thread
    /// cannot pull it from under that call; the handle's `Drop` stops it
    /// either way.
    pub(crate) inner: Arc<Instancer>,
    /// Set by stop (and free); shared with the balancers made from it, so
    /// that they report `ETCD_SD_ERR_CLOSED` as soon as stop returns.
    pub(crate) stopped: Arc<AtomicBool>,
    /// The callbacks added from C, by the number C was given. Needed, not
    /// just a way back from number to `CallbackId`: the topic numbers every
    /// subscriber from one counter, so the channel of an
    /// `etcd_sd_subscription` and the callback feeding a balancer's
    /// endpointer have ids too. Going through this map,
    /// `etcd_sd_instancer_remove_callback` removes only callbacks that
    /// `etcd_sd_instancer_on_update` added to this instancer and ignores any
    /// other number, as documented, instead of cutting off a subscription or
    /// a balancer that happens to share it. Shared so that
    /// `etcd_sd_instancer_on_update` can record the id without touching the
    /// handle after the callback may have run (and freed it).
    ids: Arc<Mutex<HashMap<u64, CallbackId>>>,
}

impl InstancerHandle {
    pub(crate) fn new(inner: Instancer) -> InstancerHandle {
        InstancerHandle {
            inner: Arc::new(inner),
            stopped: Arc::new(AtomicBool::new(false)),
            ids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Removes the callback C knows as `id`; unknown ids are ignored.
    pub(crate) fn remove_callback(&self, id: u64) {
        let removed = self.ids.lock().remove(&id);
        if let Some(id) = removed {
            self.inner.remove_callback(id);
        }
    }

    /// True once `etcd_sd_instancer_stop` ran, or the instancer reports itself
    /// closed.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
            || matches!(&self.inner.current().err, Some(e) if e.kind() == ErrorKind::Closed)
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.inner.stop();
        self.ids.lock().clear();
    }

    /// `ETCD_SD_ERR_CLOSED` (with the last error set) when stopped.
    pub(crate) fn check_open(&self) -> Result<(), etcd_sd_status> {
        if self.is_stopped() {
            Err(fail(&Error::new(ErrorKind::Closed, "instancer is stopped")))
        } else {
            Ok(())
        }
    }
}

impl Drop for InstancerHandle {
    /// Freeing stops the instancer even while an `on_update` call on another
    /// thread still holds a reference to it.
    fn drop(&mut self) {
        self.inner.stop();
    }
}

/// Watches a prefix and keeps its subscribers up to date with the set of
/// values under it (go-kit's `Instancer`).
///
/// Thread-safe: every function taking an instancer may be called from several
/// threads at once, and from inside its own callbacks (including
/// `etcd_sd_instancer_remove_callback` and `etcd_sd_instancer_stop`). It holds
/// its own reference to the client.
pub struct etcd_sd_instancer {
    _private: [u8; 0],
}

/// A polled stream of events from one instancer (`etcd_sd_instancer_subscribe`).
///
/// Thread-safe: several threads may receive from it at once (each event goes
/// to one of them). It stays valid after its instancer is stopped or freed:
/// the events already delivered can still be received, then receiving
/// returns `ETCD_SD_ERR_CLOSED`.
pub struct etcd_sd_subscription {
    _private: [u8; 0],
}

/// Reads the instances under `prefix` and starts watching it. End the prefix
/// with `/`: it is used as given, so `/services/foo` also matches
/// `/services/foo2/...`.
///
/// Blocks until the first read is done, at most `request_timeout_ms`. On
/// success `*out` is a new instancer to free with `etcd_sd_instancer_free`;
/// on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL argument, a
/// non-UTF-8 or empty prefix; `ETCD_SD_ERR_TIMEOUT`,
/// `ETCD_SD_ERR_UNAVAILABLE`, `ETCD_SD_ERR_AUTH`, `ETCD_SD_ERR_ETCD` when the
/// first read failed; `ETCD_SD_ERR_CLOSED` when the client's runtime is gone.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_new(
    c: *const etcd_sd_client,
    prefix: *const c_char,
    out: *mut *mut etcd_sd_instancer,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let client = try_ref!(c);
        let prefix = try_str!(prefix);
        set_boxed_mut_ptr(out, Instancer::new(client, prefix).map(InstancerHandle::new))
    }
}

/// Like `etcd_sd_instancer_new`, but never fails because etcd does not
/// answer, and optionally keeps a snapshot file to start from (the C side of
/// `Instancer::with_options`).
///
/// Waits for the first read at most `request_timeout_ms`. When etcd answers
/// it is `etcd_sd_instancer_new`: the first event is etcd's state. When it
/// does not, it returns `ETCD_SD_OK` anyway: the instancer's first event has
/// the error (`ETCD_SD_ERR_UNAVAILABLE` or `ETCD_SD_ERR_TIMEOUT` from
/// `etcd_sd_event_error`) and the instances of the snapshot file (none
/// without a usable one); it keeps trying, and an event without error and
/// with etcd's state follows when etcd answers.
///
/// `snapshot_path` (NULL: no file) is written within 1 s of every change
/// etcd reports, atomically (a temporary file in the same directory, fsync,
/// rename, fsync of the directory), from a thread of its own. A relative
/// path is taken from the current directory now. A file that is unreadable,
/// corrupt, of another prefix or format version, or older than `max_age_ms`
/// (0: 24 hours) is ignored with one warning in the log; a place that
/// cannot be written is one warning, and discovery goes on. On Unix the path
/// is taken as bytes; elsewhere it must be UTF-8.
///
/// On success `*out` is a new instancer to free with
/// `etcd_sd_instancer_free`; on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL `c`,
/// `prefix` or `out`, a non-UTF-8 or empty prefix; `ETCD_SD_ERR_CLOSED` when
/// the client's runtime is gone. Never an error because of etcd or of the
/// snapshot file.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_new_with_snapshot(
    c: *const etcd_sd_client,
    prefix: *const c_char,
    snapshot_path: *const c_char,
    max_age_ms: u64,
    out: *mut *mut etcd_sd_instancer,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let client = try_ref!(c);
        let prefix = try_str!(prefix);
        let mut options = InstancerOptions::new();
        if !snapshot_path.is_null() {
            let path = try_status!(path_from_c(snapshot_path));
            options = options.snapshot_file(path);
        }
        if max_age_ms > 0 {
            options = options.snapshot_max_age(Duration::from_millis(max_age_ms));
        }
        set_boxed_mut_ptr(
            out,
            Instancer::with_options(client, prefix, options).map(InstancerHandle::new),
        )
    }
}

/// A path argument (not NULL): its bytes on Unix, UTF-8 elsewhere; never
/// empty.
fn path_from_c(ptr: *const c_char) -> Result<std::path::PathBuf, etcd_sd_status> {
    // SAFETY: the caller passes a NUL-terminated string (checked non-NULL).
    let bytes = unsafe { std::ffi::CStr::from_ptr(ptr) }.to_bytes();
    if bytes.is_empty() {
        return Err(fail(&Error::new(
            ErrorKind::InvalidArgument,
            "snapshot_path is empty (pass NULL for no snapshot file)",
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(bytes).into())
    }
    #[cfg(not(unix))]
    {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.into()),
            Err(_) => Err(fail(&Error::new(
                ErrorKind::InvalidArgument,
                "snapshot_path is not UTF-8",
            ))),
        }
    }
}

/// Stops watching: cancels the etcd watch, removes every callback (each
/// `drop` runs after its last call) and ends every subscription (after the
/// events it already holds). Never blocks on etcd; calling it twice is fine.
/// Afterwards every call on the instancer returns `ETCD_SD_ERR_CLOSED`. Does
/// nothing for NULL (but sets the last error).
///
/// A call running on another thread is waited for, at most the client's
/// `request_timeout_ms` (after that this returns and that callback's `drop`
/// runs when its call ends); called from inside a callback, it returns at
/// once and that callback's `drop` runs when the call returns.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_stop(i: *mut etcd_sd_instancer) {
    ffi_boundary! {
        let i = try_ref!(i);
        i.stop();
    }
}

/// Stops the instancer (as `etcd_sd_instancer_stop`) and frees it. NULL is
/// fine; never free the same instancer twice, nor use it afterwards; this
/// includes its callbacks, which may free it from inside a call as their last
/// use of it. Subscriptions and balancers made from it stay valid.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_free(i: *mut etcd_sd_instancer) {
    ffi_boundary! { free_box(i) }
}

/// Adds a callback: `call(event, context)` runs with the current state, then
/// with every change, on the client's dispatcher thread (`etcd-sd-dispatch`),
/// in order, never two calls of one callback at once. A slow callback delays
/// the other callbacks of the same client, never the watch.
///
/// `drop(context)` (if `drop` is not NULL) runs exactly once, after the last
/// `call` has returned: when the callback is removed, when the instancer is
/// stopped or freed, and also when this function fails (whatever the
/// status), so `context` is always released. It runs on the thread that
/// removed the callback, or on the dispatcher thread if a call was under way.
///
/// The first call may run before this function returns. A call may remove
/// its callback, or stop or free the instancer (as its last use of it), even
/// then.
///
/// On success `*out_id` is the callback's id for
/// `etcd_sd_instancer_remove_callback` (never 0); on failure 0.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL `i`, `call`
/// or `out_id`; `ETCD_SD_ERR_CLOSED` on a stopped instancer.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_on_update(
    i: *mut etcd_sd_instancer,
    call: etcd_sd_event_fn,
    drop: etcd_sd_drop_fn,
    context: *mut c_void,
    out_id: *mut u64,
) -> etcd_sd_status {
    // Made first, so that every early return (and a panic) releases `context`.
    let guard = DropGuard::new(drop, context);
    ffi_boundary! {
        let out_id = try_out!(out_id, 0);
        let i = try_ref!(i);
        let Some(call) = call else {
            return super::invalid_null("call");
        };
        try_status!(i.check_open());
        let callback = CCallback::new(call, guard);
        // The callback may run on the dispatcher before `on_update` returns
        // and free the handle as its last use of it: from here on only these
        // clones are touched, never `i`.
        let (inner, ids) = (i.inner.clone(), i.ids.clone());
        let id = inner.on_update(move |event: &Event| callback.call(event));
        if id.as_u64() == 0 {
            // Stopped meanwhile: the closure, and so `context`, is already dropped.
            return fail(&Error::new(ErrorKind::Closed, "instancer is stopped"));
        }
        ids.lock().insert(id.as_u64(), id);
        *out_id = id.as_u64();
        ETCD_SD_OK
    }
}

/// Removes a callback. Once this returns it is not called again: a call
/// running on another thread is waited for (at most the client's
/// `request_timeout_ms`; a call still running then ends by itself), unless
/// this is called from inside that very call. Its `drop` runs after its last
/// call. An unknown or already removed id is ignored.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_CLOSED` on a stopped instancer (whose callbacks are already
/// removed).
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_remove_callback(
    i: *mut etcd_sd_instancer,
    id: u64,
) -> etcd_sd_status {
    ffi_boundary! {
        let i = try_ref!(i);
        try_status!(i.check_open());
        i.remove_callback(id);
        ETCD_SD_OK
    }
}

/// Subscribes for polled delivery. The subscription holds the current state
/// at once, then every change; it holds up to 16 events, after which updates
/// wait, coalesced into the latest, until you receive. On success `*out` is a
/// new subscription to free with `etcd_sd_subscription_free`; on failure
/// NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_CLOSED` on a stopped instancer.
#[no_mangle]
pub extern "C" fn etcd_sd_instancer_subscribe(
    i: *mut etcd_sd_instancer,
    out: *mut *mut etcd_sd_subscription,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let i = try_ref!(i);
        try_status!(i.check_open());
        set_boxed_mut_ptr(out, Ok(i.inner.subscribe()))
    }
}

/// The deadline `timeout_ms` from now; `None` (no deadline) for `u64::MAX` or
/// one too far away to represent.
pub(crate) fn deadline_after(timeout_ms: u64) -> Option<Instant> {
    if timeout_ms == u64::MAX {
        return None;
    }
    Instant::now().checked_add(Duration::from_millis(timeout_ms))
}

/// Receives the next event, waiting at most `timeout_ms` milliseconds
/// (`UINT64_MAX`: no limit; 0: only what is already waiting). An event
/// already waiting is returned even when the timeout is 0. On success `*out`
/// is a new event to free with `etcd_sd_event_free`; on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_TIMEOUT` when nothing came in time;
/// `ETCD_SD_ERR_CLOSED` once the instancer is stopped or freed and every
/// event delivered before has been received; `ETCD_SD_ERR_INVALID_ARGUMENT`
/// for NULL.
#[no_mangle]
pub extern "C" fn etcd_sd_subscription_recv(
    s: *mut etcd_sd_subscription,
    timeout_ms: u64,
    out: *mut *mut etcd_sd_event,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let s = try_ref!(s);
        let received = match deadline_after(timeout_ms) {
            Some(deadline) => s.recv_deadline(deadline),
            None => s.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => set_boxed_mut_ptr(out, Ok(EventHandle::owned(event))),
            Err(RecvTimeoutError::Timeout) => {
                set_last_error(format_args!("timed out: no event within {timeout_ms} ms"));
                ETCD_SD_ERR_TIMEOUT
            }
            Err(RecvTimeoutError::Disconnected) => subscription_closed(),
        }
    }
}

/// Receives the event waiting, if any, without blocking. On success `*out` is
/// a new event to free with `etcd_sd_event_free`; otherwise NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_NODATA` when nothing is waiting;
/// `ETCD_SD_ERR_CLOSED` once the instancer is stopped or freed and every
/// event delivered before has been received; `ETCD_SD_ERR_INVALID_ARGUMENT`
/// for NULL.
#[no_mangle]
pub extern "C" fn etcd_sd_subscription_try_recv(
    s: *mut etcd_sd_subscription,
    out: *mut *mut etcd_sd_event,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let s = try_ref!(s);
        match s.try_recv() {
            Ok(event) => set_boxed_mut_ptr(out, Ok(EventHandle::owned(event))),
            Err(TryRecvError::Empty) => {
                set_last_error("no event waiting");
                ETCD_SD_NODATA
            }
            Err(TryRecvError::Disconnected) => subscription_closed(),
        }
    }
}

fn subscription_closed() -> etcd_sd_status {
    set_last_error("closed: the instancer was stopped and every event was received");
    ETCD_SD_ERR_CLOSED
}

/// Frees a subscription (the instancer stops delivering to it). NULL is fine;
/// never free the same subscription twice, nor while another thread is
/// receiving from it.
#[no_mangle]
pub extern "C" fn etcd_sd_subscription_free(s: *mut etcd_sd_subscription) {
    ffi_boundary! { free_box(s) }
}
