//! `etcd_sd_balancer`: one instance string per call (go-kit's `lb`), and
//! `etcd_sd_retry`.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::callback::{etcd_sd_attempt_fn, CAttempt};
use super::instancer::InstancerHandle;
use super::strings::to_c_string;
use super::{
    etcd_sd_instancer, etcd_sd_status, fail, ffi_boundary, free_box, set_boxed_mut_ptr,
    set_last_error, try_out, try_ref, try_status, ETCD_SD_ERR_BUFFER_TOO_SMALL,
    ETCD_SD_ERR_UNAVAILABLE, ETCD_SD_OK,
};
use crate::lb::{self, Balancer, Endpoint};
use crate::sd::{Endpointer, EndpointerOptions};
use crate::{Error, ErrorKind, Result};

/// What an `etcd_sd_balancer` points at.
pub(crate) struct BalancerHandle {
    balancer: Box<dyn Balancer<String> + Send + Sync>,
    /// The same endpointer the balancer reads (clones share it).
    endpointer: Endpointer<String>,
    /// The instance picked by a call whose buffer was too small, handed out
    /// by the next call so that asking for the size skips no instance.
    pending: Mutex<Option<String>>,
    /// The instancer's stop flag. The endpointer closes when the instancer's
    /// callback is released, which may come a little after stop returns (on
    /// the dispatcher thread); this makes `ETCD_SD_ERR_CLOSED` immediate.
    instancer_stopped: Arc<AtomicBool>,
}

impl BalancerHandle {
    fn new<B>(instancer: &InstancerHandle, make: impl FnOnce(Endpointer<String>) -> B) -> Self
    where
        B: Balancer<String> + Send + Sync + 'static,
    {
        let endpointer = string_endpointer(&instancer.inner);
        BalancerHandle {
            balancer: Box::new(make(endpointer.clone())),
            endpointer,
            pending: Mutex::new(None),
            instancer_stopped: instancer.stopped.clone(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.instancer_stopped.load(Ordering::SeqCst) {
            Err(Error::new(
                ErrorKind::Closed,
                "the balancer's instancer is stopped",
            ))
        } else {
            Ok(())
        }
    }

    /// One instance from the balancer.
    fn pick(&self) -> Result<String> {
        self.check_open()?;
        self.balancer.endpoint()
    }

    /// The next instance: the pending one if it is still current, else a
    /// fresh pick.
    fn next(&self) -> Result<String> {
        self.check_open()?;
        let pending = self.pending.lock().take();
        if let Some(instance) = pending {
            if self.endpointer.endpoints()?.contains(&instance) {
                return Ok(instance);
            }
        }
        self.balancer.endpoint()
    }
}

/// The endpointer of a C balancer: the endpoint of an instance is its string.
fn string_endpointer(instancer: &crate::Instancer) -> Endpointer<String> {
    Endpointer::new(
        instancer,
        |instance: &str| Ok((instance.to_owned(), None)),
        EndpointerOptions::default(),
    )
}

/// Picks one instance string per call from an instancer's current set.
///
/// Thread-safe: `etcd_sd_balancer_next` and `etcd_sd_retry` may be called
/// from several threads at once. It follows the instancer until the
/// instancer is stopped or freed; after that it returns
/// `ETCD_SD_ERR_CLOSED`. Discovery errors are ignored: while etcd is
/// unreachable it keeps offering the last good set.
pub struct etcd_sd_balancer {
    _private: [u8; 0],
}

/// The body of the balancer constructors: checks, builds, hands out.
fn new_balancer<B>(
    i: *mut etcd_sd_instancer,
    out: *mut *mut etcd_sd_balancer,
    make: impl FnOnce(Endpointer<String>) -> B,
) -> etcd_sd_status
where
    B: Balancer<String> + Send + Sync + 'static,
{
    let out = try_out!(out);
    let i = try_ref!(i);
    try_status!(i.check_open());
    set_boxed_mut_ptr(out, Ok(BalancerHandle::new(i, make)))
}

/// A round-robin balancer over the instances of `i` (go-kit's
/// `lb.NewRoundRobin`): each instance in turn, in sorted order, with one
/// atomic counter shared by all threads. On success `*out` is a new balancer
/// to free with `etcd_sd_balancer_free`; on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_CLOSED` on a stopped instancer.
#[no_mangle]
pub extern "C" fn etcd_sd_balancer_round_robin(
    i: *mut etcd_sd_instancer,
    out: *mut *mut etcd_sd_balancer,
) -> etcd_sd_status {
    ffi_boundary! {
        new_balancer(i, out, lb::RoundRobin::new)
    }
}

/// A random balancer over the instances of `i` (go-kit's `lb.NewRandom`),
/// deterministic for a given `seed`. On success `*out` is a new balancer to
/// free with `etcd_sd_balancer_free`; on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_CLOSED` on a stopped instancer.
#[no_mangle]
pub extern "C" fn etcd_sd_balancer_random(
    i: *mut etcd_sd_instancer,
    seed: u64,
    out: *mut *mut etcd_sd_balancer,
) -> etcd_sd_status {
    ffi_boundary! {
        new_balancer(i, out, |e| lb::Random::new(e, seed))
    }
}

/// Picks the next instance and copies it, NUL-terminated, into `buf` (`len`
/// bytes). `*out_len` is set to the length it needs, NUL included (0 on
/// other errors).
///
/// When `len` is too small (including `buf` NULL with `len` 0, to ask for the
/// size) it returns `ETCD_SD_ERR_BUFFER_TOO_SMALL`, writes `""` into `buf`
/// if `len` > 0, and keeps the instance for the next call: the next call with
/// a big enough buffer (from any thread) returns that same instance if it is
/// still in the set, so asking for the size skips no instance.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_BUFFER_TOO_SMALL`;
/// `ETCD_SD_ERR_NO_ENDPOINTS` when the set is empty; `ETCD_SD_ERR_CLOSED`
/// once the instancer is stopped or freed; `ETCD_SD_ERR_INVALID_ARGUMENT`
/// for NULL `b` or `out_len`, or NULL `buf` with `len` > 0.
#[no_mangle]
pub extern "C" fn etcd_sd_balancer_next(
    b: *mut etcd_sd_balancer,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> etcd_sd_status {
    ffi_boundary! {
        let out_len = try_out!(out_len, 0);
        let b = try_ref!(b);
        if buf.is_null() && len > 0 {
            return super::invalid_null("buf");
        }
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: C promises `buf` has room for `len` bytes.
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
        };
        let instance = match b.next() {
            Ok(instance) => instance,
            Err(e) => return fail(&e),
        };
        let c = to_c_string(&instance);
        let bytes = c.as_bytes_with_nul();
        *out_len = bytes.len();
        if dst.len() < bytes.len() {
            if !dst.is_empty() {
                dst[0] = 0;
            }
            *b.pending.lock() = Some(instance);
            set_last_error(format_args!(
                "buffer too small: the instance needs {} bytes, the buffer has {len}",
                bytes.len()
            ));
            return ETCD_SD_ERR_BUFFER_TOO_SMALL;
        }
        dst[..bytes.len()].copy_from_slice(bytes);
        ETCD_SD_OK
    }
}

/// Frees a balancer (it stops following its instancer). NULL is fine; never
/// free the same balancer twice, nor while another thread is using it.
#[no_mangle]
pub extern "C" fn etcd_sd_balancer_free(b: *mut etcd_sd_balancer) {
    ffi_boundary! { free_box(b) }
}

/// The balancer of instance strings seen as a balancer of endpoints that call
/// the C attempt function.
struct Attempts<'a> {
    balancer: &'a BalancerHandle,
    attempt: CAttempt,
}

impl Balancer<Endpoint<(), ()>> for Attempts<'_> {
    fn endpoint(&self) -> Result<Endpoint<(), ()>> {
        let instance = self.balancer.pick()?;
        let attempt = self.attempt;
        Ok(Arc::new(move |()| attempt.call(&instance)))
    }
}

/// Calls `fn(instance, context)` with instances picked by `b` until it returns
/// 0, at most `max` times (0 acts as 1), within `timeout_ms` for all attempts
/// together (`UINT64_MAX`: no limit; 0: no attempt at all) (go-kit's
/// `lb.Retry`).
///
/// Attempts run on the calling thread, one after the other; a running
/// attempt is not interrupted, so `fn` should bound its own work. An empty
/// set counts as a failed attempt and the next one waits a little (10 ms,
/// growing to 250 ms), never past the deadline.
///
/// Returns `ETCD_SD_OK` when an attempt returned 0; otherwise the last error
/// text reads `final (previously: e1; e2) after N attempts` and the status is
/// `ETCD_SD_ERR_TIMEOUT` when the deadline passed,
/// `ETCD_SD_ERR_NO_ENDPOINTS` when the last attempt found the set empty,
/// `ETCD_SD_ERR_CLOSED` once the instancer is stopped or freed, and
/// `ETCD_SD_ERR_UNAVAILABLE` when the last attempt's `fn` failed (its code is
/// in the text). `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL `b` or `fn`.
#[no_mangle]
pub extern "C" fn etcd_sd_retry(
    b: *mut etcd_sd_balancer,
    max: usize,
    timeout_ms: u64,
    r#fn: etcd_sd_attempt_fn,
    context: *mut c_void,
) -> etcd_sd_status {
    ffi_boundary! {
        let b = try_ref!(b);
        let Some(attempt) = r#fn else {
            return super::invalid_null("fn");
        };
        let attempts = Attempts {
            balancer: b,
            attempt: CAttempt::new(attempt, context),
        };
        let retry = lb::retry(max, Duration::from_millis(timeout_ms), attempts);
        match retry.call(()) {
            Ok(()) => ETCD_SD_OK,
            Err(e) => {
                set_last_error(&e);
                e.kind().map_or(ETCD_SD_ERR_UNAVAILABLE, super::error::status_of_kind)
            }
        }
    }
}
