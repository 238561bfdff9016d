//! etcd's naming format (`etcd_sd::naming`): encode and decode the values
//! that Go's `endpoints.Manager` and gRPC's etcd resolver read and write, and
//! `etcd_sd_string_free` for the strings they return.

use std::ffi::{c_char, CString};

use super::strings::opt_str_from_c;
use super::{
    etcd_sd_status, fail, ffi_boundary, invalid_arg, invalid_null, out_ptr, try_out, try_str,
    ETCD_SD_OK,
};
use crate::naming::Endpoint;

/// A string made by the library, handed to C.
fn to_c_owned(s: &str) -> *mut c_char {
    match CString::new(s) {
        Ok(c) => c.into_raw(),
        // Callers check for NUL first; never reached.
        Err(_) => std::ptr::null_mut(),
    }
}

/// Encodes an endpoint in etcd's naming format: writes to `*out` the etcd
/// value `{"Op":0,"Addr":"<addr>","Metadata":<metadata>}`, to be registered
/// at a key `TARGET/<anything>` (Go's `endpoints.Manager` and gRPC's
/// `etcd:///TARGET` resolver find it there).
///
/// `metadata` is JSON text, or NULL for none (written as `null`); it is kept
/// as written, without the whitespace around it. Free `*out` with
/// `etcd_sd_string_free`.
///
/// Returns `ETCD_SD_ERR_INVALID_ARGUMENT` (with `*out` NULL) when `addr` or
/// `out` is NULL, a string is not UTF-8, or `metadata` is not one valid JSON
/// value or is too large for etcd (1.5 MiB).
///
/// gRPC-Go dialers on etcd 3.4's resolver (gRPC-Go up to 1.33) crash on
/// metadata that is a JSON object or array; give them none, or a string.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn etcd_sd_naming_encode(
    addr: *const c_char,
    metadata: *const c_char,
    out: *mut *mut c_char,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let addr = try_str!(addr);
        let metadata = match opt_str_from_c(metadata) {
            Ok(m) => m,
            Err(why) => return invalid_arg("metadata", why),
        };
        let mut endpoint = Endpoint::new(addr);
        if let Some(json) = metadata {
            endpoint = match endpoint.with_metadata(json) {
                Ok(e) => e,
                Err(e) => return fail(&e),
            };
        }
        // JSON escapes every control character: the value holds no NUL.
        *out = to_c_owned(&endpoint.encode());
        ETCD_SD_OK
    }
}

/// Decodes an etcd value in etcd's naming format (as Go's `endpoints.Manager`
/// writes it, or `etcd_sd_naming_encode`): writes the address to
/// `*out_addr` and the metadata's JSON text, exactly as written, to
/// `*out_metadata`, which is NULL when the value has no metadata (absent or
/// `null`). Free both with `etcd_sd_string_free`.
///
/// The value's `Op` is checked (an integer from 0 to 255) and otherwise
/// ignored, as Go ignores it; unknown fields are ignored; field names match
/// as in Go (exactly, else ignoring ASCII case; the last one given wins).
///
/// Returns `ETCD_SD_ERR_INVALID_ARGUMENT` (with both out-pointers NULL)
/// when an argument is NULL or not UTF-8, the value is not a JSON object,
/// has no string `Addr` or a bad `Op`, or the address holds a NUL character
/// (`\u0000`), which a C string cannot carry.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn etcd_sd_naming_decode(
    value: *const c_char,
    out_addr: *mut *mut c_char,
    out_metadata: *mut *mut c_char,
) -> etcd_sd_status {
    ffi_boundary! {
        // Both cleared first, so that both are NULL on every failure.
        let (addr_slot, metadata_slot) = (
            out_ptr(out_addr, std::ptr::null_mut()),
            out_ptr(out_metadata, std::ptr::null_mut()),
        );
        let Some(out_addr) = addr_slot else {
            return invalid_null("out_addr");
        };
        let Some(out_metadata) = metadata_slot else {
            return invalid_null("out_metadata");
        };
        let value = try_str!(value);
        let endpoint = match Endpoint::decode(value) {
            Ok(e) => e,
            Err(e) => return fail(&e),
        };
        if endpoint.addr.contains('\0') {
            return invalid_arg(
                "value",
                "has an \"Addr\" with a NUL character, which a C string cannot hold",
            );
        }
        *out_addr = to_c_owned(&endpoint.addr);
        if let Some(m) = &endpoint.metadata {
            // JSON text: a NUL can only appear escaped.
            *out_metadata = to_c_owned(m);
        }
        ETCD_SD_OK
    }
}

/// Frees a string returned by `etcd_sd_naming_encode` or
/// `etcd_sd_naming_decode`. NULL is fine; never free the same string twice,
/// nor one the library lends (instances, `etcd_sd_strings_get`).
#[no_mangle]
pub extern "C" fn etcd_sd_string_free(s: *mut c_char) {
    ffi_boundary! {
        if !s.is_null() {
            // SAFETY: non-NULL strings given here come from `CString::into_raw`
            // in `to_c_owned`, and C gives each back once.
            drop(unsafe { CString::from_raw(s) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{etcd_sd_last_error, ETCD_SD_ERR_INVALID_ARGUMENT};
    use std::ffi::CStr;

    fn last_error() -> String {
        let mut buf = [0u8; 512];
        let n = etcd_sd_last_error(buf.as_mut_ptr().cast(), buf.len());
        String::from_utf8_lossy(&buf[..n.min(511)]).into_owned()
    }

    fn take(s: *mut c_char) -> Option<String> {
        if s.is_null() {
            return None;
        }
        // SAFETY: a string the library just made.
        let text = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
        etcd_sd_string_free(s);
        Some(text)
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut out = std::ptr::null_mut();
        let st = etcd_sd_naming_encode(c"10.0.0.1:80".as_ptr(), c" {\"a\": 1} ".as_ptr(), &mut out);
        assert_eq!(st, ETCD_SD_OK);
        let value = take(out).unwrap();
        assert_eq!(
            value,
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"a": 1}}"#
        );
        let c = CString::new(value).unwrap();
        let (mut addr, mut meta) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(
            etcd_sd_naming_decode(c.as_ptr(), &mut addr, &mut meta),
            ETCD_SD_OK
        );
        assert_eq!(take(addr).as_deref(), Some("10.0.0.1:80"));
        assert_eq!(take(meta).as_deref(), Some(r#"{"a": 1}"#));
        // No metadata: NULL in, null written, NULL out.
        let mut out = std::ptr::null_mut();
        assert_eq!(
            etcd_sd_naming_encode(c"h:1".as_ptr(), std::ptr::null(), &mut out),
            ETCD_SD_OK
        );
        let c = CString::new(take(out).unwrap()).unwrap();
        let (mut addr, mut meta) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(
            etcd_sd_naming_decode(c.as_ptr(), &mut addr, &mut meta),
            ETCD_SD_OK
        );
        assert_eq!(take(addr).as_deref(), Some("h:1"));
        assert!(meta.is_null());
    }

    #[test]
    fn bad_arguments() {
        let mut out = std::ptr::null_mut();
        let st = etcd_sd_naming_encode(c"h:1".as_ptr(), c"{bad".as_ptr(), &mut out);
        assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT);
        assert!(out.is_null());
        assert!(last_error().contains("not valid JSON"), "{}", last_error());
        let st = etcd_sd_naming_encode(std::ptr::null(), std::ptr::null(), &mut out);
        assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT);
        assert!(
            last_error().contains("`addr` must not be NULL"),
            "{}",
            last_error()
        );
        let st = etcd_sd_naming_encode(c"h:1".as_ptr(), std::ptr::null(), std::ptr::null_mut());
        assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT);

        let (mut addr, mut meta) = (
            std::ptr::dangling_mut::<c_char>(),
            std::ptr::dangling_mut::<c_char>(),
        );
        for (value, why) in [
            (c"not json", "not a naming endpoint"),
            (c"{\"Metadata\":1}", "no \"Addr\""),
            (c"{\"Addr\":1}", "must be a JSON string"),
            (c"{\"Addr\":\"a\\u0000b\"}", "NUL"),
        ] {
            let st = etcd_sd_naming_decode(value.as_ptr(), &mut addr, &mut meta);
            assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT, "{value:?}");
            assert!(addr.is_null() && meta.is_null());
            assert!(last_error().contains(why), "{value:?}: {}", last_error());
            (addr, meta) = (
                std::ptr::dangling_mut::<c_char>(),
                std::ptr::dangling_mut::<c_char>(),
            );
        }
        // A NULL out-pointer: the other one is still cleared.
        let st = etcd_sd_naming_decode(
            c"{\"Addr\":\"a\"}".as_ptr(),
            std::ptr::null_mut(),
            &mut meta,
        );
        assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT);
        assert!(meta.is_null());
        assert!(last_error().contains("out_addr"), "{}", last_error());
        let st = etcd_sd_naming_decode(std::ptr::null(), &mut addr, &mut meta);
        assert_eq!(st, ETCD_SD_ERR_INVALID_ARGUMENT);
        assert!(addr.is_null());
        etcd_sd_string_free(std::ptr::null_mut());
    }
}
