//! `etcd_sd_event`: one discovery update, owned (from `recv`) or lent (to a
//! callback).

use std::ffi::c_char;

use super::{etcd_sd_status, fail, ffi_boundary, set_last_error, take_box, try_ref, ETCD_SD_OK};
use crate::Event;

/// What an `etcd_sd_event` points at: the Rust event and whether C owns it.
/// The instance strings are lent to C in place: each is stored with a NUL
/// after it, so an event costs no copy however many instances it holds.
#[derive(Debug)]
pub(crate) struct EventHandle {
    event: Event,
    owned: bool,
}

impl EventHandle {
    /// An event for C to own and free (from `recv`).
    pub(crate) fn owned(event: Event) -> EventHandle {
        EventHandle { event, owned: true }
    }

    /// An event lent to a callback for the duration of the call.
    pub(crate) fn lent(event: Event) -> EventHandle {
        EventHandle {
            owned: false,
            ..EventHandle::owned(event)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.event.instances.len()
    }

    /// The `i`-th instance as a C string, alive as long as the event.
    pub(crate) fn instance(&self, i: usize) -> Option<*const c_char> {
        self.event.instances.c_str(i)
    }

    pub(crate) fn event(&self) -> &Event {
        &self.event
    }
}

/// One discovery update: the whole sorted, de-duplicated set of instances
/// under the prefix, and an error while etcd cannot be watched (the instances
/// are then the last good set).
///
/// Immutable and thread-safe to read. An event from
/// `etcd_sd_subscription_recv` / `_try_recv` is yours: free it with
/// `etcd_sd_event_free`. An event passed to a callback is lent: it and its
/// strings are valid only during the call; copy what you need.
pub struct etcd_sd_event {
    _private: [u8; 0],
}

/// The number of instances in `e`; 0 for NULL.
#[no_mangle]
pub extern "C" fn etcd_sd_event_len(e: *const etcd_sd_event) -> usize {
    ffi_boundary! {
        let e = try_ref!(e);
        e.len()
    }
}

/// The `i`-th instance of `e`, in sorted order (UTF-8, NUL-terminated), valid
/// as long as the event; NULL when `i` is out of range or `e` is NULL. A value
/// that contains a NUL byte is cut at that byte.
#[no_mangle]
pub extern "C" fn etcd_sd_event_instance(e: *const etcd_sd_event, i: usize) -> *const c_char {
    ffi_boundary! {
        let e = try_ref!(e);
        e.instance(i).unwrap_or(std::ptr::null())
    }
}

/// `ETCD_SD_OK` when the event carries no error; otherwise the status of its
/// error (`ETCD_SD_ERR_UNAVAILABLE` while etcd is unreachable,
/// `ETCD_SD_ERR_CLOSED` once the instancer was stopped, ...), with the error's
/// text set as this thread's last error. `ETCD_SD_ERR_INVALID_ARGUMENT` for
/// NULL.
#[no_mangle]
pub extern "C" fn etcd_sd_event_error(e: *const etcd_sd_event) -> etcd_sd_status {
    ffi_boundary! {
        let e = try_ref!(e);
        match &e.event().err {
            None => ETCD_SD_OK,
            Some(err) => fail(err),
        }
    }
}

/// Frees an event received with `etcd_sd_subscription_recv` or
/// `etcd_sd_subscription_try_recv`. NULL is fine; never free an event twice.
/// An event lent to a callback is not freed (the call is ignored and the last
/// error set).
#[no_mangle]
pub extern "C" fn etcd_sd_event_free(e: *mut etcd_sd_event) {
    ffi_boundary! {
        if let Some(handle) = super::try_from_ptr::<etcd_sd_event>(e) {
            if !handle.owned {
                set_last_error("invalid argument: etcd_sd_event_free on an event lent to a callback; ignored");
                return;
            }
        }
        drop(take_box(e));
    }
}
