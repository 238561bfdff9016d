//! `etcd_sd_client`: a connection to etcd, and its options.

use std::ffi::c_char;
use std::path::PathBuf;
use std::time::Duration;

use super::error::ETCD_SD_OK;
use super::strings::{opt_str_from_c, str_from_c, StringList};
use super::{
    etcd_sd_status, etcd_sd_strings, ffi_boundary, free_box, invalid_arg, set_boxed_mut_ptr,
    try_out, try_ref, try_str,
};
use crate::{Client, ClientOptions};

/// What an `etcd_sd_client` points at. The `Client` is itself a shared handle:
/// registrars and instancers made from it hold clones of it.
pub(crate) type ClientHandle = Client;

/// A connection to an etcd cluster (go-kit's `etcdv3.Client`).
///
/// Thread-safe: every function taking a client may be called from several
/// threads at once. Registrars, instancers and balancers made from it hold
/// their own reference and keep working after `etcd_sd_client_free`; the
/// client's three threads end when the last of them is freed.
pub struct etcd_sd_client {
    _private: [u8; 0],
}

/// How to reach and authenticate with etcd (go-kit's `ClientOptions`).
///
/// Initialise with `etcd_sd_client_options_init`, then set what you need.
/// String fields are UTF-8 and may be NULL (unset); they are copied by
/// `etcd_sd_client_new`. A zero duration means its default.
#[repr(C)]
pub struct etcd_sd_client_options {
    /// Client certificate (PEM file path) for mutual TLS; needs `key` too.
    pub cert: *const c_char,
    /// Private key (PEM file path) of `cert`.
    pub key: *const c_char,
    /// CA certificate (PEM file path). Setting any of the three TLS files
    /// makes plain `host:port` endpoints use TLS.
    pub ca_cert: *const c_char,
    /// etcd user name, for clusters with authentication enabled.
    pub username: *const c_char,
    /// Password of `username`; never logged or put in an error text.
    pub password: *const c_char,
    /// How long `etcd_sd_client_new` may take; 0 means 3000.
    pub dial_timeout_ms: u64,
    /// Interval of keep-alive pings on the connection; 0 means 3000.
    pub dial_keep_alive_ms: u64,
    /// Bound of every other blocking call; 0 means 5000.
    pub request_timeout_ms: u64,
}

/// Sets every field of `o` to its default: NULL strings and zero durations.
/// Does nothing when `o` is NULL (but sets the last error).
#[no_mangle]
pub extern "C" fn etcd_sd_client_options_init(o: *mut etcd_sd_client_options) {
    ffi_boundary! {
        let o = try_out!(o, etcd_sd_client_options {
            cert: std::ptr::null(),
            key: std::ptr::null(),
            ca_cert: std::ptr::null(),
            username: std::ptr::null(),
            password: std::ptr::null(),
            dial_timeout_ms: 0,
            dial_keep_alive_ms: 0,
            request_timeout_ms: 0,
        });
        let _ = o;
    }
}

/// Converts C options to Rust ones; the error names the bad field.
pub(crate) fn options_from_c(
    o: &etcd_sd_client_options,
) -> Result<ClientOptions, (&'static str, super::strings::BadString)> {
    let path = |name: &'static str, p: *const c_char| {
        opt_str_from_c(p)
            .map(|s| s.map(PathBuf::from))
            .map_err(|e| (name, e))
    };
    let text = |name: &'static str, p: *const c_char| {
        opt_str_from_c(p)
            .map(|s| s.map(str::to_owned))
            .map_err(|e| (name, e))
    };
    Ok(ClientOptions {
        cert: path("cert", o.cert)?,
        key: path("key", o.key)?,
        ca_cert: path("ca_cert", o.ca_cert)?,
        username: text("username", o.username)?,
        password: text("password", o.password)?,
        dial_timeout: Duration::from_millis(o.dial_timeout_ms),
        dial_keep_alive: Duration::from_millis(o.dial_keep_alive_ms),
        request_timeout: Duration::from_millis(o.request_timeout_ms),
    })
}

/// Connects to etcd and checks that the cluster answers.
///
/// `endpoints` is an array of `n` UTF-8 strings, each `host:port`,
/// `http://host:port` or `https://host:port`. `o` may be NULL for the
/// defaults. Blocks until a member answered, at most `dial_timeout_ms`.
/// On success `*out` is a new client to free with `etcd_sd_client_free`; on
/// failure it is NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL `endpoints`
/// or `out`, a NULL or non-UTF-8 string, `n` == 0, a malformed endpoint,
/// `http://` with TLS files, a certificate without its key;
/// `ETCD_SD_ERR_TLS` for unreadable TLS files or a failed handshake;
/// `ETCD_SD_ERR_TIMEOUT` / `ETCD_SD_ERR_UNAVAILABLE` when no member answered;
/// `ETCD_SD_ERR_AUTH` for a wrong user name or password.
#[no_mangle]
pub extern "C" fn etcd_sd_client_new(
    endpoints: *const *const c_char,
    n: usize,
    o: *const etcd_sd_client_options,
    out: *mut *mut etcd_sd_client,
) -> etcd_sd_status {
    ffi_boundary! { client_new(endpoints, n, o, out, false) }
}

/// Makes a client without waiting for etcd (`Client::connect_lazy` in
/// Rust): checks the arguments as `etcd_sd_client_new` does, returns at
/// once, and dials in the background, with backoff (100 ms doubling to 5 s),
/// until a member answers (within about 5 s of one starting). After that it
/// is exactly a client made by `etcd_sd_client_new`.
///
/// Before the first answer, calls that need etcd (`etcd_sd_client_get_entries`,
/// `etcd_sd_instancer_new`) fail within `request_timeout_ms` with
/// `ETCD_SD_ERR_TIMEOUT` or `ETCD_SD_ERR_UNAVAILABLE`; a registrar whose
/// `etcd_sd_registrar_register` failed then keeps trying and is registered
/// once etcd answers, with no further call. Freeing the client never waits
/// for etcd.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` and `ETCD_SD_ERR_TLS`
/// (unreadable or unparsable TLS files) as `etcd_sd_client_new`; never an
/// error because etcd does not answer.
#[no_mangle]
pub extern "C" fn etcd_sd_client_new_lazy(
    endpoints: *const *const c_char,
    n: usize,
    o: *const etcd_sd_client_options,
    out: *mut *mut etcd_sd_client,
) -> etcd_sd_status {
    ffi_boundary! { client_new(endpoints, n, o, out, true) }
}

/// `etcd_sd_client_new` and (with `lazy`) `etcd_sd_client_new_lazy`: the
/// arguments from C, then the client.
fn client_new(
    endpoints: *const *const c_char,
    n: usize,
    o: *const etcd_sd_client_options,
    out: *mut *mut etcd_sd_client,
    lazy: bool,
) -> etcd_sd_status {
    {
        let out = try_out!(out);
        if endpoints.is_null() {
            return super::invalid_null("endpoints");
        }
        if n > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
            return invalid_arg("n", "is too large");
        }
        // SAFETY: C promises `endpoints` points at `n` string pointers.
        let raw = unsafe { std::slice::from_raw_parts(endpoints, n) };
        let mut list = Vec::with_capacity(n);
        for (i, &p) in raw.iter().enumerate() {
            match str_from_c(p) {
                Ok(s) => list.push(s),
                Err(why) => return invalid_arg(&format!("endpoints[{i}]"), why),
            }
        }
        let options = match super::try_from_ptr::<etcd_sd_client_options>(o) {
            None => ClientOptions::default(),
            Some(o) => match options_from_c(o) {
                Ok(options) => options,
                Err((field, why)) => return invalid_arg(&format!("o->{field}"), why),
            },
        };
        let client = if lazy {
            Client::connect_lazy(&list, options)
        } else {
            Client::connect(&list, options)
        };
        set_boxed_mut_ptr(out, client)
    }
}

/// Frees a client. Objects made from it keep working (they hold their own
/// reference). NULL is fine; never free the same client twice, nor while
/// another thread is using it.
#[no_mangle]
pub extern "C" fn etcd_sd_client_free(c: *mut etcd_sd_client) {
    ffi_boundary! { free_box(c) }
}

/// The values of all keys under `prefix`, in key order (go-kit's
/// `GetEntries`). On success `*out` is a new list to free with
/// `etcd_sd_strings_free`; on failure NULL.
///
/// Blocks at most `request_timeout_ms`. Returns `ETCD_SD_OK`;
/// `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL argument, a non-UTF-8 or empty
/// prefix; `ETCD_SD_ERR_TIMEOUT`, `ETCD_SD_ERR_UNAVAILABLE`,
/// `ETCD_SD_ERR_AUTH` or `ETCD_SD_ERR_ETCD` when etcd cannot answer.
#[no_mangle]
pub extern "C" fn etcd_sd_client_get_entries(
    c: *const etcd_sd_client,
    prefix: *const c_char,
    out: *mut *mut etcd_sd_strings,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let client = try_ref!(c);
        let prefix = try_str!(prefix);
        set_boxed_mut_ptr(out, client.get_entries(prefix).map(StringList::new))
    }
}

/// A client's counters (`Client::stats` in Rust), as `etcd_sd_client_stats`
/// fills them. Every field is a `uint64_t`; `connected` is 0 or 1. Fields are
/// only ever appended, never reordered or removed: pass `sizeof` of the
/// struct your program was built with, and a newer library fills only that
/// much.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct etcd_sd_stats {
    /// 1 when the last call to etcd got an answer, else 0.
    pub connected: u64,
    /// Registrars alive on this client.
    pub registrars: u64,
    /// Of those, the ones now registered.
    pub registered: u64,
    /// Keys written: first registrations and re-registrations.
    pub registrations: u64,
    /// Registrations made again after a loss.
    pub reregistrations: u64,
    /// Leases found expired or revoked.
    pub leases_lost: u64,
    /// Instancers alive.
    pub instancers: u64,
    /// Broken watches resumed from their revision.
    pub watch_resumes: u64,
    /// Full re-reads of a prefix (compaction, etcd lost its data).
    pub rereads: u64,
    /// Events published, one per change of an instancer's state.
    pub events: u64,
    /// Panics caught in subscriber callbacks and their drops.
    pub callback_panics: u64,
}

impl From<crate::Stats> for etcd_sd_stats {
    fn from(s: crate::Stats) -> etcd_sd_stats {
        etcd_sd_stats {
            connected: u64::from(s.connected),
            registrars: s.registrars,
            registered: s.registered,
            registrations: s.registrations,
            reregistrations: s.reregistrations,
            leases_lost: s.leases_lost,
            instancers: s.instancers,
            watch_resumes: s.watch_resumes,
            rereads: s.rereads,
            events: s.events,
            callback_panics: s.callback_panics,
        }
    }
}

/// Copies the client's counters into `out`: the first `out_size` bytes of an
/// `etcd_sd_stats` (the caller's `sizeof(etcd_sd_stats)`; a smaller struct
/// from an older header gets the fields it knows; an `out_size` of 0 writes
/// nothing). Never blocks: it reads atomics, even while etcd is stuck.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL client,
/// or a NULL `out` with a non-zero `out_size`.
#[no_mangle]
pub extern "C" fn etcd_sd_client_stats(
    c: *const etcd_sd_client,
    out: *mut etcd_sd_stats,
    out_size: usize,
) -> etcd_sd_status {
    ffi_boundary! {
        let client = try_ref!(c);
        if out_size == 0 {
            return ETCD_SD_OK;
        }
        if out.is_null() {
            return invalid_arg("out", "is NULL with a non-zero out_size");
        }
        let stats = etcd_sd_stats::from(client.stats());
        let n = out_size.min(std::mem::size_of::<etcd_sd_stats>());
        // SAFETY: `out` is non-NULL and, by the contract above, points at
        // `out_size` writable bytes; `n` is at most that and at most the size
        // of `stats`, and the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&stats as *const etcd_sd_stats).cast::<u8>(),
                out.cast::<u8>(),
                n,
            );
        }
        ETCD_SD_OK
    }
}
