//! Status codes, their names, and this thread's last error text.

use std::ffi::c_char;

use super::{ffi_boundary, with_last_error};
use crate::ErrorKind;

/// The result of every fallible call: `ETCD_SD_OK` (0) or one of the
/// `ETCD_SD_ERR_*` codes (or `ETCD_SD_NODATA`). The numbers are fixed and only
/// ever appended to; a retired number is never reused.
///
/// Every call that returns a status other than `ETCD_SD_OK` also sets this
/// thread's last error text (see `etcd_sd_last_error`).
pub type etcd_sd_status = i32;

/// Success.
pub const ETCD_SD_OK: etcd_sd_status = 0;
/// A service key is empty (go-kit's `ErrNoKey`).
pub const ETCD_SD_ERR_NO_KEY: etcd_sd_status = 1;
/// A service value is empty (go-kit's `ErrNoValue`).
pub const ETCD_SD_ERR_NO_VALUE: etcd_sd_status = 2;
/// A NULL handle, string or out-pointer; a string that is not UTF-8; an empty
/// or malformed endpoint or prefix; a certificate without its key.
pub const ETCD_SD_ERR_INVALID_ARGUMENT: etcd_sd_status = 3;
/// A deadline passed (`dial_timeout`, `request_timeout`, a `recv` timeout, a
/// retry's deadline).
pub const ETCD_SD_ERR_TIMEOUT: etcd_sd_status = 4;
/// etcd could not be reached, or the connection broke; also: every attempt of
/// `etcd_sd_retry` failed.
pub const ETCD_SD_ERR_UNAVAILABLE: etcd_sd_status = 5;
/// The object was stopped, or its subscription ended.
pub const ETCD_SD_ERR_CLOSED: etcd_sd_status = 6;
/// TLS failed: unreadable files, wrong CA, refused certificate.
pub const ETCD_SD_ERR_TLS: etcd_sd_status = 7;
/// Authentication or permission failure.
pub const ETCD_SD_ERR_AUTH: etcd_sd_status = 8;
/// A balancer had no instance to offer.
pub const ETCD_SD_ERR_NO_ENDPOINTS: etcd_sd_status = 9;
/// etcd answered with another error.
pub const ETCD_SD_ERR_ETCD: etcd_sd_status = 10;
/// A bug: a Rust panic was caught at the C boundary.
pub const ETCD_SD_ERR_PANIC: etcd_sd_status = 11;
/// `etcd_sd_subscription_try_recv`: nothing is waiting.
pub const ETCD_SD_NODATA: etcd_sd_status = 12;
/// The caller's buffer is too small; the needed size was reported.
pub const ETCD_SD_ERR_BUFFER_TOO_SMALL: etcd_sd_status = 13;

/// The status for an error kind. The match is exhaustive on purpose: a kind
/// added to the Rust API does not compile until it is given a status here
/// (a new, appended number, or the closest existing one).
pub(crate) fn status_of_kind(kind: ErrorKind) -> etcd_sd_status {
    match kind {
        ErrorKind::NoKey => ETCD_SD_ERR_NO_KEY,
        ErrorKind::NoValue => ETCD_SD_ERR_NO_VALUE,
        ErrorKind::InvalidArgument => ETCD_SD_ERR_INVALID_ARGUMENT,
        ErrorKind::Timeout => ETCD_SD_ERR_TIMEOUT,
        ErrorKind::Unavailable => ETCD_SD_ERR_UNAVAILABLE,
        ErrorKind::Closed => ETCD_SD_ERR_CLOSED,
        ErrorKind::Tls => ETCD_SD_ERR_TLS,
        ErrorKind::Auth => ETCD_SD_ERR_AUTH,
        ErrorKind::NoEndpoints => ETCD_SD_ERR_NO_ENDPOINTS,
        ErrorKind::Etcd => ETCD_SD_ERR_ETCD,
    }
}

/// The static, NUL-terminated description of a status.
fn status_text(status: etcd_sd_status) -> &'static str {
    match status {
        ETCD_SD_OK => "ok\0",
        ETCD_SD_ERR_NO_KEY => "no key provided\0",
        ETCD_SD_ERR_NO_VALUE => "no value provided\0",
        ETCD_SD_ERR_INVALID_ARGUMENT => "invalid argument\0",
        ETCD_SD_ERR_TIMEOUT => "timed out\0",
        ETCD_SD_ERR_UNAVAILABLE => "unavailable\0",
        ETCD_SD_ERR_CLOSED => "closed\0",
        ETCD_SD_ERR_TLS => "tls error\0",
        ETCD_SD_ERR_AUTH => "authentication failed\0",
        ETCD_SD_ERR_NO_ENDPOINTS => "no endpoints available\0",
        ETCD_SD_ERR_ETCD => "etcd error\0",
        ETCD_SD_ERR_PANIC => "panic inside etcd-sd\0",
        ETCD_SD_NODATA => "no data waiting\0",
        ETCD_SD_ERR_BUFFER_TOO_SMALL => "buffer too small\0",
        _ => "unknown status\0",
    }
}

/// A short, static, lowercase description of a status, e.g. `"timed out"`;
/// `"unknown status"` for a number this version does not know. Never NULL;
/// never free it.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn etcd_sd_status_str(s: etcd_sd_status) -> *const c_char {
    ffi_boundary! { status_text(s).as_ptr().cast() }
}

/// Copies this thread's last error text into `buf` and returns its full
/// length in bytes, without the terminating NUL.
///
/// The text is set by every call that returns a status other than
/// `ETCD_SD_OK` (and by calls that return NULL or 0 because of a NULL
/// argument); a successful call leaves it as it was, as `errno` does. It is
/// `""` before the first failure on this thread.
///
/// At most `len - 1` bytes are copied, never splitting a UTF-8 character, and
/// a NUL is always written when `len > 0`; so the text is complete when the
/// result is less than `len`. `buf` may be NULL with `len` 0 to ask for the
/// length. Never fails; never sets the last error itself.
///
/// Thread-safe: each thread has its own text.
#[no_mangle]
pub extern "C" fn etcd_sd_last_error(buf: *mut c_char, len: usize) -> usize {
    ffi_boundary! {
        with_last_error(|text| {
            if !buf.is_null() && len > 0 {
                // SAFETY: C promises `buf` has room for `len` bytes.
                let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
                copy_truncated(text, dst);
            }
            text.len()
        })
    }
}

/// Copies as much of `text` as fits into `dst` with a terminating NUL,
/// cutting at a character boundary. `dst` must not be empty. Returns the
/// number of bytes copied (without the NUL).
pub(crate) fn copy_truncated(text: &str, dst: &mut [u8]) -> usize {
    let mut n = text.len().min(dst.len() - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&text.as_bytes()[..n]);
    dst[n] = 0;
    n
}
