//! Service registration and discovery on etcd v3, as plain blocking Rust.
//!
//! `etcd-sd` is a port of go-kit's `sd/etcdv3` ([`Client`], [`ClientOptions`],
//! [`Registrar`], [`Service`], [`TtlOption`], [`Instancer`], the `NoKey` and
//! `NoValue` errors) for programs that are not async, and, through its C API,
//! for C and C++ services. It fixes go-kit's known defects: one lease per
//! registered service, registrations that come back after every loss, watches
//! that resume from the last revision seen, and no call that can hang.
//!
//! # The model
//! * **A hidden runtime.** Each [`Client`] starts one thread,
//!   `etcd-sd-runtime`, running a tokio runtime that owns the etcd connection.
//!   Your calls send it a command and wait for the answer with a deadline
//!   (`request_timeout`, 5 s by default). Nothing here needs, or conflicts
//!   with, a runtime of yours.
//! * **Delivery on one thread.** Discovery updates reach subscribers through
//!   [`channel`] (crossbeam) channels or callbacks, run in order on a second
//!   thread, `etcd-sd-dispatch`. User code never runs on the runtime thread,
//!   so a slow callback cannot stall a keep-alive.
//! * **Fixed threads.** Those two threads serve any number of Registrars and
//!   Instancers made from the client (and its clones). They are joined when the
//!   last handle is dropped.
//! * **Snapshots.** Every [`Event`] carries the whole set of instances as an
//!   [`Instances`] snapshot that all subscribers share; a subscriber that falls
//!   behind simply gets the latest.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use etcd_sd::{Client, ClientOptions, Instancer, Registrar, Service, TtlOption};
//!
//! let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
//!
//! // Register this instance; it stays registered until dropped.
//! let service = Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080")
//!     .with_ttl(TtlOption::new(Duration::from_secs(3), Duration::from_secs(10)));
//! let registrar = Registrar::new(&client, service);
//! registrar.register()?;
//!
//! // Discover the instances of another service.
//! let instancer = Instancer::new(&client, "/services/barsvc/")?;
//! let updates = instancer.subscribe();
//! if let Ok(event) = updates.recv_timeout(Duration::from_secs(1)) {
//!     println!("barsvc: {:?} (error: {:?})", event.instances, event.err);
//! }
//! # Ok::<(), etcd_sd::Error>(())
//! ```
//!
//! # Errors
//! Every fallible call returns [`Error`]; [`Error::kind`] says what happened
//! ([`ErrorKind`]). Passwords and key material never appear in errors, logs or
//! `Debug` output.
//!
//! # Logging
//! The crate logs through [`log`] with one target per module
//! (`etcd_sd::registrar`, `etcd_sd::instancer`, ...): state changes at `info`,
//! losses and outages at `warn`, retries at `debug`.
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]

mod backoff;
mod chunks;
mod client;
mod dispatch;
mod error;
mod instancer;
mod instances;
mod options;
mod registrar;
mod runtime;
mod watch_prefix;

/// The channels updates arrive on: a re-export of `crossbeam_channel`.
pub use crossbeam_channel as channel;

pub use client::Client;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use instancer::{CallbackId, Instancer};
pub use chunks::Iter;
pub use instances::{Event, Instances};
pub use options::{ClientOptions, Service, TtlOption};
pub use registrar::{Registrar, RegistrationEvent, RegistrationState};

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
