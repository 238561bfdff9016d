//! The C API: `extern "C"` functions over the Rust API, declared in the
//! generated header `include/etcd_sd.h`.
//!
//! Everything unsafe in the crate lives under this module. The rules every
//! function here follows, and the helpers that enforce them:
//!
//! * **Panics never cross the boundary.** Each body runs inside
//!   [`ffi_boundary!`] (`catch_unwind`); a panic becomes
//!   `ETCD_SD_ERR_PANIC`, or NULL / 0 / nothing by return type
//!   ([`Fallback::on_panic`]).
//! * **NULL is an error, not a crash.** [`try_ref!`], [`try_str!`] and
//!   [`try_out!`] turn a NULL handle, string or out-pointer (and a string that
//!   is not UTF-8) into `ETCD_SD_ERR_INVALID_ARGUMENT`, or NULL / 0 by return
//!   type ([`Fallback::on_invalid`]).
//! * **Out-pointers are cleared first**, so they are NULL (or 0) on every
//!   failure.
//! * **Every non-OK status sets this thread's last error text**
//!   ([`set_last_error`]), read back with `etcd_sd_last_error`.
//! * **New handles are handed out in one place**: [`set_boxed_mut_ptr`]
//!   stores a constructor's value in its out-pointer, or reports its error.
//! * **C callbacks are called from one module**, [`callback`], whose
//!   documentation states what C is promised about `call`, `drop` and
//!   `context`.
//! * **One place knows how each handle is owned**: the [`Castable`] impls
//!   below. Every handle is a `Box` of its Rust value; the Rust values that
//!   share state (the client's runtime, an instancer's topic) hold their own
//!   `Arc`s, which is why objects made from a client outlive
//!   `etcd_sd_client_free`.
//!
//! The opaque C types are zero-sized Rust structs that are never
//! instantiated: a `*mut etcd_sd_client` really points at the `Box`ed Rust
//! value named by its `Castable::RustType`.

// The crate denies `unsafe_code`; the C boundary needs it (raw pointers, #[no_mangle]).
#![allow(unsafe_code)]
// The C names are the contract (`etcd_sd_client`, not `EtcdSdClient`).
#![allow(non_camel_case_types)]
// The exports are safe `extern "C" fn`s that take raw pointers from C: the C
// caller's obligations are in each function's documentation, and the module
// is private, so safe Rust cannot reach them (the rustls-ffi convention).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_char;
use std::fmt::Display;

// In the order the header declares them (one group each, so that rustfmt
// keeps the order).
// Status codes, status names, the last error.
mod error;

// etcd_sd_client and its options.
mod client;

// etcd_sd_strings (lists returned by get_entries).
mod strings;

// etcd_sd_registrar.
mod registrar;

// The C closures (etcd_sd_event_fn, etcd_sd_drop_fn, etcd_sd_attempt_fn) and
// every call back into C.
mod callback;

// etcd_sd_instancer, callbacks, etcd_sd_subscription.
mod instancer;

// etcd_sd_event.
mod event;

// etcd_sd_balancer and etcd_sd_retry.
mod balancer;

// etcd's naming format: etcd_sd_naming_encode / _decode, etcd_sd_string_free.
mod naming;

pub use self::balancer::*;
pub use self::client::*;
pub use self::error::*;
pub use self::event::*;
pub use self::instancer::*;
pub use self::registrar::*;
pub use self::strings::*;

// ---------------------------------------------------------------------------
// Ownership of the opaque types: the one place that knows.

/// Marks a handle owned through `Box::into_raw` / `Box::from_raw`.
pub(crate) struct OwnershipBox;

/// Marks a plain C struct that C owns and lends to us.
pub(crate) struct OwnershipRef;

/// Ties an opaque C type to the Rust value behind its pointers and to how that
/// value is owned.
pub(crate) trait Castable {
    /// Who owns it: [`OwnershipBox`] for handles, [`OwnershipRef`] for C's
    /// own structs.
    type Ownership;
    /// The Rust value a pointer to the C type points at.
    type RustType;
}

impl Castable for etcd_sd_client {
    type Ownership = OwnershipBox;
    type RustType = client::ClientHandle;
}

impl Castable for etcd_sd_client_options {
    type Ownership = OwnershipRef;
    type RustType = etcd_sd_client_options;
}

impl Castable for etcd_sd_strings {
    type Ownership = OwnershipBox;
    type RustType = strings::StringList;
}

impl Castable for etcd_sd_registrar {
    type Ownership = OwnershipBox;
    type RustType = crate::Registrar;
}

impl Castable for etcd_sd_instancer {
    type Ownership = OwnershipBox;
    type RustType = instancer::InstancerHandle;
}

impl Castable for etcd_sd_subscription {
    type Ownership = OwnershipBox;
    type RustType = crate::channel::Receiver<crate::Event>;
}

/// Events are boxed when returned by `recv`; during a callback the pointer is
/// to a value on the dispatcher's stack, which [`event::EventHandle`] marks
/// as borrowed so that `etcd_sd_event_free` leaves it alone.
impl Castable for etcd_sd_event {
    type Ownership = OwnershipBox;
    type RustType = event::EventHandle;
}

impl Castable for etcd_sd_balancer {
    type Ownership = OwnershipBox;
    type RustType = balancer::BalancerHandle;
}

/// Moves `value` to the heap and hands its pointer to C.
pub(crate) fn to_boxed_mut_ptr<C>(value: C::RustType) -> *mut C
where
    C: Castable<Ownership = OwnershipBox>,
{
    Box::into_raw(Box::new(value)).cast::<C>()
}

/// Hands a constructor's outcome to C, the tail of every export that makes a
/// handle: on `Ok`, moves the value to the heap, stores its pointer in `*out`
/// and returns `ETCD_SD_OK`; on `Err`, leaves `*out` as [`try_out!`] cleared
/// it (NULL) and returns the error's status, its text recorded as the last
/// error ([`fail`]).
pub(crate) fn set_boxed_mut_ptr<C>(
    out: &mut *mut C,
    result: crate::Result<C::RustType>,
) -> etcd_sd_status
where
    C: Castable<Ownership = OwnershipBox>,
{
    match result {
        Ok(value) => {
            *out = to_boxed_mut_ptr(value);
            ETCD_SD_OK
        }
        Err(e) => fail(&e),
    }
}

/// Takes back and drops a value made by [`to_boxed_mut_ptr`]; NULL is fine.
///
/// The caller promises that `ptr` is NULL or came from [`to_boxed_mut_ptr`]
/// for the same `C` and is not used again.
pub(crate) fn free_box<C>(ptr: *mut C)
where
    C: Castable<Ownership = OwnershipBox>,
{
    if ptr.is_null() {
        return;
    }
    // SAFETY: non-NULL pointers of type `C` are only made by
    // `to_boxed_mut_ptr::<C>`, from a `Box<C::RustType>`; C gives each back once.
    drop(unsafe { Box::from_raw(ptr.cast::<C::RustType>()) });
}

/// Takes back a value made by [`to_boxed_mut_ptr`] without dropping it.
pub(crate) fn take_box<C>(ptr: *mut C) -> Option<Box<C::RustType>>
where
    C: Castable<Ownership = OwnershipBox>,
{
    if ptr.is_null() {
        return None;
    }
    // SAFETY: as in `free_box`.
    Some(unsafe { Box::from_raw(ptr.cast::<C::RustType>()) })
}

/// Borrows the Rust value behind a C handle; `None` for NULL.
pub(crate) fn try_from_ptr<'a, C: Castable>(ptr: *const C) -> Option<&'a C::RustType> {
    // SAFETY: non-NULL handles point at a live `C::RustType` (see
    // `to_boxed_mut_ptr`); C promises not to free it while it is in use.
    unsafe { ptr.cast::<C::RustType>().as_ref() }
}

/// A C pointer to a value that lives as long as `'a` (for events lent to a
/// callback).
pub(crate) fn as_const_ptr<C: Castable>(value: &C::RustType) -> *const C {
    (value as *const C::RustType).cast::<C>()
}

// ---------------------------------------------------------------------------
// Fallback values for panics and invalid arguments.

/// What an export returns when its body panicked or an argument was invalid.
pub(crate) trait Fallback {
    /// After a caught panic.
    fn on_panic() -> Self;
    /// For a NULL or otherwise invalid argument.
    fn on_invalid() -> Self;
}

impl Fallback for etcd_sd_status {
    fn on_panic() -> Self {
        ETCD_SD_ERR_PANIC
    }
    fn on_invalid() -> Self {
        ETCD_SD_ERR_INVALID_ARGUMENT
    }
}

impl<T> Fallback for *const T {
    fn on_panic() -> Self {
        std::ptr::null()
    }
    fn on_invalid() -> Self {
        std::ptr::null()
    }
}

impl<T> Fallback for *mut T {
    fn on_panic() -> Self {
        std::ptr::null_mut()
    }
    fn on_invalid() -> Self {
        std::ptr::null_mut()
    }
}

impl Fallback for usize {
    fn on_panic() -> Self {
        0
    }
    fn on_invalid() -> Self {
        0
    }
}

impl Fallback for i64 {
    fn on_panic() -> Self {
        0
    }
    fn on_invalid() -> Self {
        0
    }
}

impl Fallback for () {
    fn on_panic() -> Self {}
    fn on_invalid() -> Self {}
}

/// Runs an export's body with panics caught: a panic sets the last error and
/// yields [`Fallback::on_panic`] for the function's return type.
macro_rules! ffi_boundary {
    ($($body:tt)*) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(value) => value,
            Err(payload) => {
                $crate::ffi::note_panic(&*payload);
                $crate::ffi::Fallback::on_panic()
            }
        }
    };
}

/// Borrows the value behind a handle argument, or returns
/// [`Fallback::on_invalid`] (with the last error set) when it is NULL.
macro_rules! try_ref {
    ($ptr:ident) => {
        match $crate::ffi::try_from_ptr($ptr) {
            Some(value) => value,
            None => return $crate::ffi::invalid_null(stringify!($ptr)),
        }
    };
}

/// Unwraps a `Result<T, etcd_sd_status>`, returning the status on `Err`.
macro_rules! try_status {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(status) => return status,
        }
    };
}

/// Reads a string argument as `&str`, or returns [`Fallback::on_invalid`] when
/// it is NULL or not UTF-8.
macro_rules! try_str {
    ($ptr:ident) => {
        match $crate::ffi::strings::str_from_c($ptr) {
            Ok(value) => value,
            Err(why) => return $crate::ffi::invalid_arg(stringify!($ptr), why),
        }
    };
}

/// Checks an out-pointer and clears it (NULL, or `$empty`), or returns
/// [`Fallback::on_invalid`] when it is NULL. Yields the out-pointer as
/// `&mut`.
macro_rules! try_out {
    ($ptr:ident) => {
        try_out!($ptr, ::std::ptr::null_mut())
    };
    ($ptr:ident, $empty:expr) => {
        match $crate::ffi::out_ptr($ptr, $empty) {
            Some(out) => out,
            None => return $crate::ffi::invalid_null(stringify!($ptr)),
        }
    };
}

pub(crate) use {ffi_boundary, try_out, try_ref, try_status, try_str};

/// Clears a non-NULL out-pointer to `empty` and lends it out.
pub(crate) fn out_ptr<'a, T>(ptr: *mut T, empty: T) -> Option<&'a mut T> {
    // SAFETY: C passes NULL or a pointer to writable storage for one `T`.
    let out = unsafe { ptr.as_mut() }?;
    *out = empty;
    Some(out)
}

// ---------------------------------------------------------------------------
// The last error, per thread.

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sets this thread's last error text. NUL characters (which C could not see
/// past) are written as `\0`.
pub(crate) fn set_last_error(message: impl Display) {
    let mut text = message.to_string();
    if text.contains('\0') {
        text = text.replace('\0', "\\0");
    }
    // A thread being torn down has no storage left; nothing to report to then.
    let _ = LAST_ERROR.try_with(|cell| *cell.borrow_mut() = text);
}

/// Runs `f` on this thread's last error text.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    let text = LAST_ERROR
        .try_with(|cell| cell.borrow().clone())
        .unwrap_or_default();
    f(&text)
}

/// Records a caught panic as the last error.
pub(crate) fn note_panic(payload: &(dyn Any + Send)) {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    set_last_error(format_args!("panic inside etcd-sd: {what}"));
}

/// Reports a NULL argument.
pub(crate) fn invalid_null<T: Fallback>(name: &str) -> T {
    set_last_error(format_args!("invalid argument: `{name}` must not be NULL"));
    T::on_invalid()
}

/// Reports an invalid argument.
pub(crate) fn invalid_arg<T: Fallback>(name: &str, why: impl Display) -> T {
    set_last_error(format_args!("invalid argument: `{name}` {why}"));
    T::on_invalid()
}

/// The status for `e`, with its text recorded as the last error.
pub(crate) fn fail(e: &crate::Error) -> etcd_sd_status {
    set_last_error(e);
    error::status_of_kind(e.kind())
}

/// `ETCD_SD_OK`, or the status of the error (recorded as the last error).
pub(crate) fn status_of(r: crate::Result<()>) -> etcd_sd_status {
    match r {
        Ok(()) => ETCD_SD_OK,
        Err(e) => fail(&e),
    }
}

// ---------------------------------------------------------------------------
// Version.

/// The version of the library, as a static NUL-terminated string such as
/// `"0.1.0"`; equals the crate version and the `ETCD_SD_VERSION_*` macros of
/// the header it was built with.
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn etcd_sd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests;
