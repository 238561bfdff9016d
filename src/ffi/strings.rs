//! Strings across the boundary: C strings in (checked for UTF-8), lists of C
//! strings out (`etcd_sd_strings`).

use std::ffi::{c_char, CStr, CString};
use std::fmt;

use super::{ffi_boundary, free_box, try_ref};

/// Why a C string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadString {
    Null,
    NotUtf8 { valid_up_to: usize },
}

impl fmt::Display for BadString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadString::Null => f.write_str("must not be NULL"),
            BadString::NotUtf8 { valid_up_to } => {
                write!(f, "is not valid UTF-8 (bad byte at offset {valid_up_to})")
            }
        }
    }
}

/// Reads a NUL-terminated C string as UTF-8.
///
/// The caller promises that a non-NULL `ptr` points at a NUL-terminated string
/// that stays valid and unchanged for `'a`.
pub(crate) fn str_from_c<'a>(ptr: *const c_char) -> Result<&'a str, BadString> {
    if ptr.is_null() {
        return Err(BadString::Null);
    }
    // SAFETY: non-NULL, NUL-terminated and alive for 'a, as C promises.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| BadString::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// Like [`str_from_c`], but NULL means `None`.
pub(crate) fn opt_str_from_c<'a>(ptr: *const c_char) -> Result<Option<&'a str>, BadString> {
    if ptr.is_null() {
        Ok(None)
    } else {
        str_from_c(ptr).map(Some)
    }
}

/// A C copy of `s`. etcd values may contain NUL bytes, which C cannot see
/// past: the copy ends at the first one.
pub(crate) fn to_c_string(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(&s[..end]).expect("no NUL before `end`")
}

/// Owned list of C strings: what `etcd_sd_strings` points at.
#[derive(Debug, Default)]
pub(crate) struct StringList {
    items: Vec<CString>,
}

impl StringList {
    pub(crate) fn new<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> StringList {
        StringList {
            items: items.into_iter().map(|s| to_c_string(s.as_ref())).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&CStr> {
        self.items.get(i).map(CString::as_c_str)
    }
}

/// An immutable list of strings returned by `etcd_sd_client_get_entries`.
///
/// Thread-safe to read from several threads at once; free it once with
/// `etcd_sd_strings_free`.
pub struct etcd_sd_strings {
    _private: [u8; 0],
}

/// The number of strings in `s`; 0 for NULL.
#[no_mangle]
pub extern "C" fn etcd_sd_strings_len(s: *const etcd_sd_strings) -> usize {
    ffi_boundary! {
        let s = try_ref!(s);
        s.len()
    }
}

/// The `i`-th string of `s` (UTF-8, NUL-terminated), valid until `s` is
/// freed; NULL when `i` is out of range or `s` is NULL. A value that contains
/// a NUL byte is cut at that byte.
#[no_mangle]
pub extern "C" fn etcd_sd_strings_get(s: *const etcd_sd_strings, i: usize) -> *const c_char {
    ffi_boundary! {
        let s = try_ref!(s);
        match s.get(i) {
            Some(c) => c.as_ptr(),
            None => std::ptr::null(),
        }
    }
}

/// Frees a list and its strings. NULL is fine; never free the same list
/// twice.
#[no_mangle]
pub extern "C" fn etcd_sd_strings_free(s: *mut etcd_sd_strings) {
    ffi_boundary! { free_box(s) }
}
