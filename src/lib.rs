//! Service registration and discovery on etcd v3, as plain blocking Rust.
//!
//! `etcd-sd` is a port of go-kit's `sd/etcdv3` ([`Client`], [`ClientOptions`],
//! [`Registrar`], [`Service`], [`TtlOption`], [`Instancer`], the `NoKey` and
//! `NoValue` errors, plus `sd.NewEndpointer`, `lb.NewRoundRobin` and
//! `lb.Retry`) for programs that are not async, and, through its C API, for
//! C and C++ services. It keeps go-kit's shape and fixes its known defects:
//! one lease per registered service, registrations that come back by
//! themselves after every loss, watches that resume from the last revision
//! seen, subscribers that cannot block the watcher, and no call that can hang.
//!
//! # Example
//! Register this instance, and discover the instances of another service
//! (this needs an etcd on `127.0.0.1:2379`; `examples/quickstart.rs` is a
//! complete program that also balances calls):
//!
//! ```no_run
//! use std::time::Duration;
//! use etcd_sd::{Client, ClientOptions, Instancer, Registrar, Service, TtlOption};
//!
//! let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
//!
//! // Register this instance under its own lease; it stays registered, and
//! // comes back after every loss, until it is deregistered or dropped.
//! let service = Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080")
//!     .with_ttl(TtlOption::new(Duration::from_secs(3), Duration::from_secs(10)));
//! let registrar = Registrar::new(&client, service);
//! registrar.register()?;
//!
//! // Discover another service: the current set at once, then every change.
//! let instancer = Instancer::new(&client, "/services/barsvc/")?;
//! let updates = instancer.subscribe();
//! while let Ok(event) = updates.recv_timeout(Duration::from_secs(10)) {
//!     match &event.err {
//!         None => println!("barsvc: {:?}", event.instances),
//!         Some(e) => println!("etcd unreachable ({e}); still using {:?}", event.instances),
//!     }
//! }
//! # Ok::<(), etcd_sd::Error>(())
//! ```
//!
//! # The model
//! **A hidden runtime.** [`Client::connect`] starts a thread,
//! `etcd-sd-runtime`, which runs a current-thread tokio runtime that owns the
//! etcd connection. A blocking call sends it a command and waits for the
//! answer on a channel, with a deadline; nothing calls `block_on` on your
//! thread, so the API may be used from inside a tokio runtime of yours (it
//! then blocks that runtime's thread while it waits). No tokio, tonic or
//! etcd-client type appears in the API.
//!
//! **Registrations and watches are tasks, not threads.** A [`Registrar`] is a
//! small state machine on the runtime thread: grant a lease, put the key,
//! keep the lease alive at the heartbeat, watch its own key, and start again
//! with backoff when the lease or the key is lost. An [`Instancer`] reads its
//! prefix at a revision R, watches from R + 1 and applies each change to its
//! view; it reads again only when that history is gone (a compaction, or an
//! etcd that lost its data).
//!
//! **Delivery.** Every update is an [`Event`] holding the whole set of
//! instances as an [`Instances`] snapshot, built once and shared by every
//! subscriber. Subscribers are channels ([`Instancer::subscribe`],
//! [`Instancer::register`]; the channels are crossbeam's, re-exported as
//! [`channel`]) or callbacks ([`Instancer::on_update`]). The runtime thread
//! hands events to channels with room (a `try_send`, which never blocks);
//! callbacks are run by a second thread, `etcd-sd-dispatch`, and channels that
//! were full are retried by a third, `etcd-sd-retry`, which runs no user code.
//! So user code never runs on the runtime thread: a slow callback delays other
//! callbacks of the same client, never a keep-alive, a watch or a channel.
//!
//! **Threads.** Those three threads serve the client, its clones and every
//! Registrar and Instancer made from them, whatever their number. Endpoints
//! given by host name may add one more, `etcd-sd-blocking`, which tokio
//! starts to resolve names and ends when it is idle. All handles are `Send +
//! Sync`; [`Client`] is `Clone`, and clones share the connection.
//!
//! # Guarantees
//! Each of these is checked by a test against a real etcd (the README lists
//! which test proves which):
//!
//! * **Bounded calls.** [`Client::connect`] returns within `dial_timeout`
//!   (3 s by default); every other blocking call within `request_timeout`
//!   (5 s by default), with an error of kind `Timeout` or `Unavailable` when
//!   etcd cannot answer.
//! * **One lease per registered service**, so registrations on one client do
//!   not disturb each other.
//! * **Registrations come back.** A registration lost to an outage longer
//!   than its ttl, a revoked lease or a deleted key is made again, with
//!   jittered backoff (100 ms doubling to 5 s), forever, with
//!   [`RegistrationState::Lost`] then [`RegistrationState::Registered`]
//!   events. [`Registrar::register`] returning an error does not stop this.
//! * **No change is lost.** An Instancer misses no change between its read
//!   and its watch, resumes a broken watch from the last revision it saw and
//!   reads again after a compaction or when etcd comes back with its data
//!   lost; its subscribers end up with etcd's exact state. An identical set
//!   is not sent twice.
//! * **Outages are reported once.** While etcd is unreachable subscribers get
//!   one Event with `err` set and the **last good** instances, then an Event
//!   without `err` when it is back.
//! * **Cold starts.** [`Instancer::with_options`] never fails because etcd
//!   is unreachable: it starts from a snapshot file
//!   ([`InstancerOptions::snapshot_file`]) with `err` set, and the file,
//!   written atomically within 1 s of every change, is never left partial.
//! * **Subscribers cannot block.** A channel that is full is skipped and
//!   given the latest snapshot once it has room (intermediate states may be
//!   coalesced). A callback may remove itself or stop its instancer; one that
//!   panics is removed and logged, and the others go on.
//! * **No secret is shown.** Passwords and key material never appear in
//!   errors, log records or `Debug` output.
//!
//! # Shutdown
//! * Dropping a [`Registrar`] deregisters it: it revokes the lease, so the key
//!   goes at once (waiting at most `request_timeout`), or, when it is not
//!   registered at that moment, tells its task to stop and lets the key
//!   expire by its ttl. [`Registrar::deregister`] does the same, reports the
//!   outcome, and may be called any number of times.
//! * To drain before a planned shutdown, [`Registrar::pause`] revokes the
//!   lease (the key goes at once) and keeps the registrar
//!   [`Paused`](RegistrationState::Paused): nothing registers the key again
//!   until [`Registrar::resume`]. `examples/drain.rs` shows the pattern.
//! * A service that must start while etcd is down uses
//!   [`Client::connect_lazy`], which returns at once and connects in the
//!   background; its Registrars register by themselves once etcd answers.
//! * Dropping an [`Instancer`] stops it, as [`Instancer::stop`] does: the
//!   watch is cancelled, `subscribe` receivers disconnect after the events
//!   they already hold, registered senders are dropped, callbacks are removed
//!   (a running one is waited for). Calls on a stopped Instancer, and on an
//!   [`sd::Endpointer`] that follows it, report an error of kind `Closed`;
//!   none hangs.
//! * The client's threads run until the last handle that needs them is
//!   dropped: the [`Client`] and its clones, and every Registrar and
//!   Instancer made from them. Dropping that last handle stops and joins
//!   them; doing so inside a callback, on the dispatcher thread itself, is
//!   fine (no thread joins itself). Services registered with
//!   [`Client::register`] are deregistered when the last clone of the client
//!   is dropped.
//!
//! # Errors
//! Every fallible call returns [`Error`]: cheap to clone, with a [`kind`]
//! to branch on, a message for people and the underlying cause as its
//! [`source`]. Each method's `# Errors` section lists the kinds it returns.
//!
//! ```
//! use etcd_sd::{Error, ErrorKind};
//!
//! fn advice(e: &Error) -> &'static str {
//!     match e.kind() {
//!         // etcd is down or too slow: background work retries by itself.
//!         ErrorKind::Timeout | ErrorKind::Unavailable => "retry later",
//!         // Configuration: no retry will help.
//!         ErrorKind::Tls | ErrorKind::Auth | ErrorKind::InvalidArgument => "fix the configuration",
//!         ErrorKind::NoKey | ErrorKind::NoValue => "fix the service",
//!         ErrorKind::Closed => "the object was stopped",
//!         _ => "see the message",
//!     }
//! }
//!
//! let e = Error::new(ErrorKind::Timeout, "register /services/foosvc/1.2.3.4:8080");
//! assert_eq!(advice(&e), "retry later");
//! assert_eq!(e.to_string(), "timed out: register /services/foosvc/1.2.3.4:8080");
//! ```
//!
//! [`kind`]: Error::kind
//! [`source`]: std::error::Error::source
//!
//! # Endpoints and load balancing
//! [`sd::Endpointer`] turns the instances an [`Instancer`] finds into
//! endpoints of yours (one per instance, made by your factory, closed when
//! the instance goes); [`lb::RoundRobin`] or [`lb::Random`] picks one per
//! call, and [`lb::retry`] tries again on failure within one deadline
//! (go-kit's `sd.NewEndpointer`, `lb.NewRoundRobin` and `lb.Retry`).
//! `examples/quickstart.rs` puts them together; `examples/demo.rs` (`make
//! demo`) runs them against a private etcd.
//!
//! # etcd's naming format
//! [`naming::Endpoint`] reads and writes the values of etcd's own naming
//! format, which Go's `endpoints.Manager` and gRPC's `etcd:///` resolver use:
//! register `Endpoint::encode()` at `TARGET/<anything>` and Go and gRPC
//! clients find the instance; decode what Go services register
//! (`examples/grpc_naming.rs`; the README's "Mixed Go/gRPC deployments").
//!
//! # Logging
//! The crate logs through the [`log`] facade and nothing else, with one
//! target per module:
//!
//! | target | logs |
//! | --- | --- |
//! | `etcd_sd::runtime` | connected (info); auth token refreshes, shutdown (debug) |
//! | `etcd_sd::registrar` | `Registering`, `Registered`, `Deregistered` (info); `Lost`, and the first failure of each kind (warn); repeated failures (debug) |
//! | `etcd_sd::instancer` | a prefix without a final `/`, the watch going down (warn, once per outage); a re-read after compaction or lost data (info); each failed attempt (debug) |
//! | `etcd_sd::dispatch` | a callback that panicked (error); stops (debug) |
//! | `etcd_sd::sd` | a factory that failed (warn) or panicked (error); invalidation (warn); recovery (info) |
//! | `etcd_sd::client`, `etcd_sd::watch_prefix` | retries and replacements (debug) |
//!
//! In short: state changes at `info`, losses and outages at `warn`, retries
//! at `debug`. `examples/logging.rs` shows them with `env_logger`
//! (`RUST_LOG=etcd_sd=debug cargo run --example logging`).
//!
//! # C and C++
//! The `cdylib` (`libetcd_sd.so`, soname `libetcd_sd.so.0`) and `staticlib`
//! export the same things to C through `include/etcd_sd.h` (generated by
//! cbindgen, committed), and to C++17 through the header-only RAII wrapper
//! `bindings/cpp/etcd_sd.hpp`. Every C function is panic-safe and null-safe,
//! returns an `etcd_sd_status` and sets a per-thread error text
//! (`etcd_sd_last_error`) on failure; callbacks come as `{call, drop,
//! context}` with `drop` run exactly once, after the last `call`. In a
//! checkout of the repository, `make install` installs both headers, the
//! libraries and `etcd_sd.pc`; `examples/c/`, `examples/cpp/` and
//! `examples/cmake/` show their use. All `unsafe` code of the crate is in the
//! private `ffi` module.
//!
//! # Cargo features
//! * `cli` (off by default): the `etcd-sd` command-line tool (`register`,
//!   `watch`, `list`, `pick`); `cargo install --path . --features cli` in a
//!   checkout. The library does not depend on it.
//!
//! # Versions
//! * Rust: `rust-version` is 1.88, what tonic 0.14 (under `etcd-client`)
//!   declares; tested with 1.95. Building needs `protoc` (Debian
//!   `protobuf-compiler`) for `etcd-client`'s build script.
//! * etcd: tested against 3.4.23 and 3.5.1.
#![deny(missing_docs)]
// Unsafe code is denied everywhere; src/ffi/ allows it for the C boundary
// (raw pointers, exported symbols), and nothing else needs it.
#![deny(unsafe_code)]
#![warn(unsafe_op_in_unsafe_fn)]
// Doc examples are code users copy: hold them to the same standard.
#![doc(test(attr(deny(warnings))))]

mod backoff;
mod chunks;
mod client;
mod dispatch;
mod error;
/// The C API (`include/etcd_sd.h`); its symbols are exported from the
/// `cdylib` and `staticlib`, not part of the Rust API.
mod ffi;
mod instancer;
mod instances;
pub mod lb;
mod name;
pub mod naming;
mod options;
mod registrar;
mod registration;
mod runtime;
pub mod sd;
mod snapshot;
mod stats;

/// The channels updates arrive on: a re-export of `crossbeam_channel`.
pub use crossbeam_channel as channel;

pub use client::Client;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use instancer::{CallbackId, Instancer, InstancerOptions};
pub use instances::{Event, Instances, Iter};
pub use options::{ClientOptions, Service, TtlOption};
pub use registrar::Registrar;
pub use registration::{RegistrationEvent, RegistrationState};
pub use stats::Stats;

#[cfg(test)]
mod tests {
    /// Compiles only if the public handles can be shared across threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Client>();
        check::<crate::Registrar>();
        check::<crate::Instancer>();
        check::<crate::Event>();
        check::<crate::Instances>();
        check::<crate::Error>();
        fn clone<T: Clone>() {}
        clone::<crate::Client>();
    }
}

/// The Rust examples of README.md, compiled (and the runnable ones run) by
/// `cargo test --doc`, so that the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
