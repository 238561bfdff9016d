//! `etcd_sd_registrar`: keeps one service registered.

use std::ffi::c_char;
use std::time::Duration;

use super::{
    error::ETCD_SD_OK, etcd_sd_client, etcd_sd_status, ffi_boundary, free_box, set_boxed_mut_ptr,
    status_of, try_out, try_ref, try_str,
};
use crate::options::check_key_value;
use crate::{Registrar, RegistrationState, Service, TtlOption};

/// Keeps one service registered under its own lease (go-kit's `Registrar`).
///
/// Thread-safe: register, deregister and lease_id may be called from several
/// threads at once. It holds its own reference to the client.
pub struct etcd_sd_registrar {
    _private: [u8; 0],
}

/// The service for a key, a value and C's heartbeat/ttl pair (0, 0 = the
/// default 3 s heartbeat and 10 s ttl), checked as go-kit checks it.
pub(crate) fn service_from_c(
    key: &str,
    value: &str,
    heartbeat_ms: u64,
    ttl_ms: u64,
) -> crate::Result<Service> {
    check_key_value(key, value)?;
    let service = Service::new(key, value);
    Ok(if heartbeat_ms == 0 && ttl_ms == 0 {
        service
    } else {
        service.with_ttl(TtlOption::new(
            Duration::from_millis(heartbeat_ms),
            Duration::from_millis(ttl_ms),
        ))
    })
}

/// Makes a registrar for the service `key` = `value` on client `c`. Nothing is
/// sent to etcd until `etcd_sd_registrar_register`.
///
/// `heartbeat_ms` and `ttl_ms` are go-kit's `TTLOption`: 0 and 0 mean a 3 s
/// heartbeat and a 10 s ttl; otherwise a zero heartbeat means 3 s, one under
/// 500 ms is raised to 500 ms, and a ttl not greater than the heartbeat
/// becomes 3 × heartbeat. On success `*out` is a new registrar to free with
/// `etcd_sd_registrar_free`; on failure NULL.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_NO_KEY` for an empty key, then
/// `ETCD_SD_ERR_NO_VALUE` for an empty value (checked here, before any
/// network traffic, rather than at register time);
/// `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL argument or non-UTF-8 string.
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_new(
    c: *const etcd_sd_client,
    key: *const c_char,
    value: *const c_char,
    heartbeat_ms: u64,
    ttl_ms: u64,
    out: *mut *mut etcd_sd_registrar,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out);
        let client = try_ref!(c);
        let key = try_str!(key);
        let value = try_str!(value);
        let service = service_from_c(key, value, heartbeat_ms, ttl_ms);
        set_boxed_mut_ptr(out, service.map(|s| Registrar::new(client, s)))
    }
}

/// Registers the service and keeps it registered.
///
/// Blocks until the key is written, at most `request_timeout_ms`. Whether it
/// succeeds or not, the registrar stays active: it retries with backoff and
/// keeps the key alive, re-registering after every loss, until
/// `etcd_sd_registrar_deregister` or `etcd_sd_registrar_free`. Calling it
/// while registered returns `ETCD_SD_OK` at once.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_TIMEOUT`, `ETCD_SD_ERR_UNAVAILABLE`, `ETCD_SD_ERR_AUTH`,
/// `ETCD_SD_ERR_ETCD` when the key could not be written in time (retries go
/// on); `ETCD_SD_ERR_CLOSED` when deregistered by another thread meanwhile.
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_register(r: *mut etcd_sd_registrar) -> etcd_sd_status {
    ffi_boundary! {
        let r = try_ref!(r);
        status_of(r.register())
    }
}

/// Deregisters: revokes the lease (the key goes at once) and stops keeping it
/// alive. Calling it twice, or before registering, is fine. The registrar may
/// be registered again afterwards.
///
/// Returns within `request_timeout_ms`: `ETCD_SD_OK`;
/// `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL; `ETCD_SD_ERR_TIMEOUT` or
/// `ETCD_SD_ERR_UNAVAILABLE` with etcd unreachable (the registration is
/// stopped anyway and the key expires after its ttl).
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_deregister(r: *mut etcd_sd_registrar) -> etcd_sd_status {
    ffi_boundary! {
        let r = try_ref!(r);
        status_of(r.deregister())
    }
}

/// Drains: revokes the lease (the key goes at once) and stops keeping it
/// alive; the registrar stays, paused (`ETCD_SD_STATE_PAUSED`), and nothing
/// registers the key again, not even after an etcd outage or restart, until
/// `etcd_sd_registrar_resume`. The pre-stop step of a graceful shutdown.
/// Calling it twice, before registering, or after deregistering is fine;
/// `etcd_sd_registrar_deregister` after it is fine too.
///
/// Returns within `request_timeout_ms`, paused whatever the status:
/// `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for NULL;
/// `ETCD_SD_ERR_TIMEOUT` or `ETCD_SD_ERR_UNAVAILABLE` with etcd unreachable
/// (the key then goes by itself after its ttl, or as soon as etcd answers a
/// revoke retried in the background).
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_pause(r: *mut etcd_sd_registrar) -> etcd_sd_status {
    ffi_boundary! {
        let r = try_ref!(r);
        status_of(r.pause())
    }
}

/// Ends a pause: registers the service again under a new lease, exactly as
/// `etcd_sd_registrar_register` (which it is, also when not paused).
///
/// Returns as `etcd_sd_registrar_register`.
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_resume(r: *mut etcd_sd_registrar) -> etcd_sd_status {
    ffi_boundary! {
        let r = try_ref!(r);
        status_of(r.resume())
    }
}

/// A registrar's state, as `etcd_sd_registrar_state` returns it. The numbers
/// are fixed and only ever appended to.
pub type etcd_sd_registration_state = i32;

/// Made, never registered; or refused for good by etcd (nothing running).
pub const ETCD_SD_STATE_UNREGISTERED: etcd_sd_registration_state = 0;
/// First attempt under way, or retrying it.
pub const ETCD_SD_STATE_REGISTERING: etcd_sd_registration_state = 1;
/// The key is written under a live lease that is kept alive.
pub const ETCD_SD_STATE_REGISTERED: etcd_sd_registration_state = 2;
/// The lease or the key was lost; re-registering with backoff.
pub const ETCD_SD_STATE_LOST: etcd_sd_registration_state = 3;
/// Deregistered: lease revoked, nothing running.
pub const ETCD_SD_STATE_DEREGISTERED: etcd_sd_registration_state = 4;
/// Paused by `etcd_sd_registrar_pause`: lease revoked, nothing running until
/// `etcd_sd_registrar_resume`.
pub const ETCD_SD_STATE_PAUSED: etcd_sd_registration_state = 5;

/// The number of a state. The match is exhaustive on purpose: a state added
/// to the Rust API does not compile until it is given a new, appended number.
fn state_number(state: RegistrationState) -> etcd_sd_registration_state {
    match state {
        RegistrationState::Unregistered => ETCD_SD_STATE_UNREGISTERED,
        RegistrationState::Registering => ETCD_SD_STATE_REGISTERING,
        RegistrationState::Registered => ETCD_SD_STATE_REGISTERED,
        RegistrationState::Lost => ETCD_SD_STATE_LOST,
        RegistrationState::Deregistered => ETCD_SD_STATE_DEREGISTERED,
        RegistrationState::Paused => ETCD_SD_STATE_PAUSED,
    }
}

/// Writes the registrar's current state (an `ETCD_SD_STATE_*` number) to
/// `*out`; never blocks.
///
/// Returns `ETCD_SD_OK`; `ETCD_SD_ERR_INVALID_ARGUMENT` for a NULL argument.
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_state(
    r: *const etcd_sd_registrar,
    out: *mut etcd_sd_registration_state,
) -> etcd_sd_status {
    ffi_boundary! {
        let out = try_out!(out, ETCD_SD_STATE_UNREGISTERED);
        let r = try_ref!(r);
        *out = state_number(r.state());
        ETCD_SD_OK
    }
}

/// The etcd lease currently holding the key, 0 if none (not registered, or
/// NULL).
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_lease_id(r: *const etcd_sd_registrar) -> i64 {
    ffi_boundary! {
        let r = try_ref!(r);
        r.lease_id().unwrap_or(0)
    }
}

/// Deregisters (blocking at most `request_timeout_ms`) and frees the
/// registrar. NULL is fine; never free the same registrar twice.
#[no_mangle]
pub extern "C" fn etcd_sd_registrar_free(r: *mut etcd_sd_registrar) {
    ffi_boundary! { free_box(r) }
}
