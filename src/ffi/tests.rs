//! Unit tests of the C layer that need no etcd: conversions, the boundary
//! helpers, NULL handling, the header. The end-to-end C tests are in
//! `tests/c/`, driven by `tests/c_api.rs`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

use super::error::{copy_truncated, status_of_kind};
use super::instancer::deadline_after;
use super::registrar::service_from_c;
use super::strings::{opt_str_from_c, str_from_c, to_c_string, BadString, StringList};
use super::*;
use crate::ErrorKind;

fn last_error() -> String {
    let n = etcd_sd_last_error(ptr::null_mut(), 0);
    let mut buf = vec![0u8; n + 1];
    let m = etcd_sd_last_error(buf.as_mut_ptr().cast(), buf.len());
    assert_eq!(m, n);
    CStr::from_bytes_until_nul(&buf)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn committed_header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/etcd_sd.h"));
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/etcd_sd.h"))
            .expect("include/etcd_sd.h exists");
    assert!(
        generated == committed,
        "include/etcd_sd.h is out of date with src/ffi/: run `make header` and commit it"
    );
}

#[test]
fn header_declares_the_fixed_statuses() {
    let header = include_str!(concat!(env!("OUT_DIR"), "/etcd_sd.h"));
    let fixed = [
        ("ETCD_SD_OK", 0),
        ("ETCD_SD_ERR_NO_KEY", 1),
        ("ETCD_SD_ERR_NO_VALUE", 2),
        ("ETCD_SD_ERR_INVALID_ARGUMENT", 3),
        ("ETCD_SD_ERR_TIMEOUT", 4),
        ("ETCD_SD_ERR_UNAVAILABLE", 5),
        ("ETCD_SD_ERR_CLOSED", 6),
        ("ETCD_SD_ERR_TLS", 7),
        ("ETCD_SD_ERR_AUTH", 8),
        ("ETCD_SD_ERR_NO_ENDPOINTS", 9),
        ("ETCD_SD_ERR_ETCD", 10),
        ("ETCD_SD_ERR_PANIC", 11),
        ("ETCD_SD_NODATA", 12),
        ("ETCD_SD_ERR_BUFFER_TOO_SMALL", 13),
    ];
    for (name, value) in fixed {
        let line = format!("#define {name} {value}\n");
        assert!(header.contains(&line), "missing {line:?}");
    }
    assert!(header.contains("typedef int32_t etcd_sd_status;"));
    assert!(header.contains("#ifdef __cplusplus\nextern \"C\" {"));
    assert!(header.contains("#ifndef ETCD_SD_H\n#define ETCD_SD_H"));
}

#[test]
fn version_is_the_crate_version() {
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(etcd_sd_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn status_numbers_and_texts() {
    let kinds = [
        (ErrorKind::NoKey, ETCD_SD_ERR_NO_KEY),
        (ErrorKind::NoValue, ETCD_SD_ERR_NO_VALUE),
        (ErrorKind::InvalidArgument, ETCD_SD_ERR_INVALID_ARGUMENT),
        (ErrorKind::Timeout, ETCD_SD_ERR_TIMEOUT),
        (ErrorKind::Unavailable, ETCD_SD_ERR_UNAVAILABLE),
        (ErrorKind::Closed, ETCD_SD_ERR_CLOSED),
        (ErrorKind::Tls, ETCD_SD_ERR_TLS),
        (ErrorKind::Auth, ETCD_SD_ERR_AUTH),
        (ErrorKind::NoEndpoints, ETCD_SD_ERR_NO_ENDPOINTS),
        (ErrorKind::Etcd, ETCD_SD_ERR_ETCD),
    ];
    for (kind, status) in kinds {
        assert_eq!(status_of_kind(kind), status, "{kind:?}");
    }
    for s in -1..=20 {
        // SAFETY: static NUL-terminated strings.
        let text = unsafe { CStr::from_ptr(etcd_sd_status_str(s)) }
            .to_str()
            .unwrap();
        assert!(!text.is_empty());
        if (0..=13).contains(&s) {
            assert_ne!(text, "unknown status", "{s}");
        } else {
            assert_eq!(text, "unknown status", "{s}");
        }
    }
    // SAFETY: as above.
    let timeout = unsafe { CStr::from_ptr(etcd_sd_status_str(ETCD_SD_ERR_TIMEOUT)) };
    assert_eq!(timeout.to_str().unwrap(), "timed out");
}

#[test]
fn c_strings_in() {
    let ok = CString::new("/services/é/").unwrap();
    assert_eq!(str_from_c(ok.as_ptr()), Ok("/services/é/"));
    assert_eq!(str_from_c(ptr::null()), Err(BadString::Null));
    assert_eq!(opt_str_from_c(ptr::null()), Ok(None));
    let bad = CString::new(vec![b'a', 0xff, b'b']).unwrap();
    assert_eq!(
        str_from_c(bad.as_ptr()),
        Err(BadString::NotUtf8 { valid_up_to: 1 })
    );
    assert_eq!(
        BadString::NotUtf8 { valid_up_to: 1 }.to_string(),
        "is not valid UTF-8 (bad byte at offset 1)"
    );
    let empty = CString::new("").unwrap();
    assert_eq!(str_from_c(empty.as_ptr()), Ok(""));
}

#[test]
fn c_strings_out() {
    assert_eq!(to_c_string("abc").as_bytes(), b"abc");
    assert_eq!(to_c_string("ab\0cd").as_bytes(), b"ab");
    assert_eq!(to_c_string("").as_bytes(), b"");
    let list = StringList::new(["x", "y\0z"]);
    assert_eq!(list.len(), 2);
    assert_eq!(list.get(1).unwrap().to_bytes(), b"y");
    assert!(list.get(2).is_none());
}

#[test]
fn truncated_copies_keep_characters_whole() {
    let mut buf = [0xAAu8; 4];
    assert_eq!(copy_truncated("abcdef", &mut buf), 3);
    assert_eq!(&buf, b"abc\0");
    // "é" is two bytes: only one byte is left after "ab", so it is left out.
    let mut buf = [0xAAu8; 4];
    assert_eq!(copy_truncated("abé", &mut buf), 2);
    assert_eq!(&buf[..3], b"ab\0");
    let mut buf = [0xAAu8; 1];
    assert_eq!(copy_truncated("abc", &mut buf), 0);
    assert_eq!(buf, [0]);
    let mut buf = [0xAAu8; 8];
    assert_eq!(copy_truncated("abc", &mut buf), 3);
    assert_eq!(&buf[..4], b"abc\0");
}

#[test]
fn last_error_is_per_thread_and_sized() {
    set_last_error("first");
    assert_eq!(last_error(), "first");
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
    set_last_error("with\0nul");
    assert_eq!(last_error(), "with\\0nul");
    set_last_error("0123456789");
    let mut small = [0x55u8; 5];
    assert_eq!(
        etcd_sd_last_error(small.as_mut_ptr().cast(), small.len()),
        10
    );
    assert_eq!(&small, b"0123\0");
    // NULL with a length is not written to.
    assert_eq!(etcd_sd_last_error(ptr::null_mut(), 16), 10);
}

#[test]
fn panics_become_statuses_and_nulls() {
    fn status() -> etcd_sd_status {
        ffi_boundary! { panic!("boom") }
    }
    fn pointer() -> *const c_char {
        ffi_boundary! { panic!("boom {}", 2) }
    }
    fn number() -> usize {
        ffi_boundary! { std::panic::panic_any(7u8) }
    }
    assert_eq!(status(), ETCD_SD_ERR_PANIC);
    assert_eq!(last_error(), "panic inside etcd-sd: boom");
    assert!(pointer().is_null());
    assert_eq!(last_error(), "panic inside etcd-sd: boom 2");
    assert_eq!(number(), 0);
    assert_eq!(last_error(), "panic inside etcd-sd: (no message)");
}

#[test]
fn deadlines_never_overflow() {
    assert!(deadline_after(u64::MAX).is_none());
    // Far, but representable or not: either way no panic.
    let _ = deadline_after(u64::MAX - 1);
    assert!(deadline_after(0).is_some());
    assert!(deadline_after(1000).is_some());
}

#[test]
fn services_from_c() {
    assert_eq!(
        service_from_c("", "", 0, 0).unwrap_err().kind(),
        ErrorKind::NoKey
    );
    assert_eq!(
        service_from_c("k", "", 0, 0).unwrap_err().kind(),
        ErrorKind::NoValue
    );
    assert!(service_from_c("k", "v", 0, 0).unwrap().ttl.is_none());
    let ttl = service_from_c("k", "v", 100, 0).unwrap().ttl.unwrap();
    assert_eq!(ttl.heartbeat().as_millis(), 500);
    assert_eq!(ttl.ttl().as_millis(), 1500);
    let ttl = service_from_c("k", "v", u64::MAX, u64::MAX)
        .unwrap()
        .ttl
        .unwrap();
    assert!(ttl.ttl() >= ttl.heartbeat());
}

#[test]
fn options_from_c_strings() {
    let mut o = std::mem::MaybeUninit::<etcd_sd_client_options>::uninit();
    etcd_sd_client_options_init(o.as_mut_ptr());
    // SAFETY: initialised just above.
    let mut o = unsafe { o.assume_init() };
    let parsed = client::options_from_c(&o).unwrap();
    assert!(parsed.cert.is_none() && parsed.password.is_none());
    assert!(parsed.dial_timeout.is_zero());
    let user = CString::new("root").unwrap();
    let bad = CString::new(vec![0xc3, 0x28]).unwrap();
    o.username = user.as_ptr();
    o.password = bad.as_ptr();
    o.request_timeout_ms = 1500;
    let (field, why) = client::options_from_c(&o).unwrap_err();
    assert_eq!(field, "password");
    assert!(matches!(why, BadString::NotUtf8 { .. }));
    o.password = user.as_ptr();
    let parsed = client::options_from_c(&o).unwrap();
    assert_eq!(parsed.username.as_deref(), Some("root"));
    assert_eq!(parsed.request_timeout.as_millis(), 1500);
}

#[test]
fn null_arguments_are_refused_without_etcd() {
    // Non-NULL garbage in the out-pointers: failures must clear them.
    let mut garbage = [0u8; 8];
    let mut client: *mut etcd_sd_client = garbage.as_mut_ptr().cast();
    let endpoint = CString::new("127.0.0.1:1").unwrap();
    let endpoints = [endpoint.as_ptr()];
    assert_eq!(
        etcd_sd_client_new(ptr::null(), 1, ptr::null(), &mut client),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert!(client.is_null(), "out-pointer cleared on failure");
    assert!(last_error().contains("`endpoints` must not be NULL"));
    assert_eq!(
        etcd_sd_client_new(endpoints.as_ptr(), 1, ptr::null(), ptr::null_mut()),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    let null_entry = [ptr::null::<c_char>()];
    assert_eq!(
        etcd_sd_client_new(null_entry.as_ptr(), 1, ptr::null(), &mut client),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("endpoints[0]"));
    assert_eq!(
        etcd_sd_client_new(endpoints.as_ptr(), 0, ptr::null(), &mut client),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );

    let mut strings: *mut etcd_sd_strings = ptr::null_mut();
    let prefix = CString::new("/p/").unwrap();
    assert_eq!(
        etcd_sd_client_get_entries(ptr::null(), prefix.as_ptr(), &mut strings),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(etcd_sd_strings_len(ptr::null()), 0);
    assert!(etcd_sd_strings_get(ptr::null(), 0).is_null());
    etcd_sd_strings_free(ptr::null_mut());

    let mut registrar: *mut etcd_sd_registrar = ptr::null_mut();
    assert_eq!(
        etcd_sd_registrar_new(
            ptr::null(),
            prefix.as_ptr(),
            prefix.as_ptr(),
            0,
            0,
            &mut registrar
        ),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        etcd_sd_registrar_register(ptr::null_mut()),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        etcd_sd_registrar_deregister(ptr::null_mut()),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(etcd_sd_registrar_lease_id(ptr::null()), 0);
    etcd_sd_registrar_free(ptr::null_mut());

    let mut instancer: *mut etcd_sd_instancer = ptr::null_mut();
    assert_eq!(
        etcd_sd_instancer_new(ptr::null(), prefix.as_ptr(), &mut instancer),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    etcd_sd_instancer_stop(ptr::null_mut());
    etcd_sd_instancer_free(ptr::null_mut());
    assert_eq!(
        etcd_sd_instancer_remove_callback(ptr::null_mut(), 1),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    let mut sub: *mut etcd_sd_subscription = ptr::null_mut();
    assert_eq!(
        etcd_sd_instancer_subscribe(ptr::null_mut(), &mut sub),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    let mut ev: *mut etcd_sd_event = garbage.as_mut_ptr().cast();
    assert_eq!(
        etcd_sd_subscription_recv(ptr::null_mut(), u64::MAX, &mut ev),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert!(ev.is_null());
    assert_eq!(
        etcd_sd_subscription_try_recv(ptr::null_mut(), &mut ev),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    etcd_sd_subscription_free(ptr::null_mut());
    assert_eq!(etcd_sd_event_len(ptr::null()), 0);
    assert!(etcd_sd_event_instance(ptr::null(), 0).is_null());
    assert_eq!(
        etcd_sd_event_error(ptr::null()),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    etcd_sd_event_free(ptr::null_mut());

    let mut balancer: *mut etcd_sd_balancer = ptr::null_mut();
    assert_eq!(
        etcd_sd_balancer_round_robin(ptr::null_mut(), &mut balancer),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        etcd_sd_balancer_random(ptr::null_mut(), 1, &mut balancer),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    let mut n = 99usize;
    assert_eq!(
        etcd_sd_balancer_next(ptr::null_mut(), ptr::null_mut(), 0, &mut n),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(n, 0);
    etcd_sd_balancer_free(ptr::null_mut());
    extern "C" fn attempt(_: *const c_char, _: *mut c_void) -> std::ffi::c_int {
        0
    }
    assert_eq!(
        etcd_sd_retry(ptr::null_mut(), 1, 10, Some(attempt), ptr::null_mut()),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    etcd_sd_client_options_init(ptr::null_mut());
    etcd_sd_client_free(ptr::null_mut());
}

#[test]
fn on_update_releases_the_context_on_failure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn call(_: *const etcd_sd_event, _: *mut c_void) {}
    extern "C" fn drop_ctx(ctx: *mut c_void) {
        assert_eq!(ctx as usize, 42);
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
    let mut id = 5u64;
    assert_eq!(
        etcd_sd_instancer_on_update(
            ptr::null_mut(),
            Some(call),
            Some(drop_ctx),
            42 as *mut c_void,
            &mut id
        ),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(id, 0);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    assert_eq!(
        etcd_sd_instancer_on_update(
            ptr::null_mut(),
            None,
            None,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        ETCD_SD_ERR_INVALID_ARGUMENT
    );
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
}

#[test]
fn events_lent_to_callbacks_are_not_freed() {
    use crate::{Event, Instances};
    let event = Event {
        instances: ["b", "a\0x"].into_iter().collect::<Instances>(),
        err: Some(crate::Error::new(ErrorKind::Unavailable, "etcd is down")),
    };
    let lent = event::EventHandle::lent(event.clone());
    let p = as_const_ptr::<etcd_sd_event>(&lent);
    assert_eq!(etcd_sd_event_len(p), 2);
    // SAFETY: valid while `lent` lives.
    let first = unsafe { CStr::from_ptr(etcd_sd_event_instance(p, 0)) };
    assert_eq!(first.to_bytes(), b"a");
    assert!(etcd_sd_event_instance(p, 2).is_null());
    assert_eq!(etcd_sd_event_error(p), ETCD_SD_ERR_UNAVAILABLE);
    assert_eq!(last_error(), "etcd unavailable: etcd is down");
    etcd_sd_event_free(p.cast_mut());
    assert!(last_error().contains("lent to a callback"));
    assert_eq!(etcd_sd_event_len(p), 2, "still alive");

    let owned = to_boxed_mut_ptr::<etcd_sd_event>(event::EventHandle::owned(Event {
        instances: Instances::default(),
        err: None,
    }));
    assert_eq!(etcd_sd_event_len(owned), 0);
    assert_eq!(etcd_sd_event_error(owned), ETCD_SD_OK);
    etcd_sd_event_free(owned);
}
