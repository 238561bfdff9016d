//! Turning discovered instances into endpoints (go-kit's `sd.NewEndpointer`).
//!
//! An [`Endpointer`] follows an [`Instancer`](crate::Instancer): for every
//! instance string it asks a factory of yours for an endpoint (a client, a
//! connection, a URL, a closure) once, keeps it while the instance stays, and
//! runs the endpoint's [`Closer`] when the instance goes. A load balancer from
//! [`lb`](crate::lb) then picks one endpoint per call.
//!
//! ```no_run
//! use std::time::Duration;
//! use etcd_sd::sd::{Endpointer, EndpointerOptions};
//! use etcd_sd::{Client, ClientOptions, Instancer};
//!
//! let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
//! let instancer = Instancer::new(&client, "/services/barsvc/")?;
//! // One endpoint per instance: here simply the URL, with no closer.
//! let endpointer = Endpointer::new(
//!     &instancer,
//!     |instance: &str| Ok((instance.to_string(), None)),
//!     EndpointerOptions { invalidate_on_error: Some(Duration::from_secs(30)) },
//! );
//! for url in endpointer.endpoints()? {
//!     println!("barsvc at {url}");
//! }
//! # Ok::<(), etcd_sd::Error>(())
//! ```

mod endpointer;

use std::time::Duration;

pub use endpointer::Endpointer;

/// Releases what an endpoint holds (go-kit's `io.Closer`): run once, when its
/// instance goes away or the [`Endpointer`] closes, on the thread that
/// applies the change (usually the client's dispatcher thread). A closer that
/// panics is caught and logged.
///
/// ```
/// use std::net::TcpStream;
/// use etcd_sd::sd::Closer;
///
/// fn closer_for(conn: TcpStream) -> Closer {
///     Box::new(move || {
///         let _ = conn.shutdown(std::net::Shutdown::Both);
///     })
/// }
/// # let _ = closer_for;
/// ```
pub type Closer = Box<dyn FnOnce() + Send>;

/// How an [`Endpointer`] treats discovery errors (go-kit's
/// `sd.EndpointerOption`s).
#[derive(Clone, Debug, Default)]
pub struct EndpointerOptions {
    /// What to do when the [`Instancer`](crate::Instancer) reports an error
    /// (etcd unreachable):
    /// * `None` (the default): ignore it and keep serving the last endpoints;
    /// * `Some(t)`: keep serving the last endpoints for `t`; if no good update
    ///   arrives by then, [`Endpointer::endpoints`] returns that error and
    ///   every closer runs. A later good update builds the endpoints again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use etcd_sd::sd::EndpointerOptions;
    /// // Give up on the old endpoints after 30 s of etcd being unreachable.
    /// let options = EndpointerOptions { invalidate_on_error: Some(Duration::from_secs(30)) };
    /// # let _ = options;
    /// ```
    pub invalidate_on_error: Option<Duration>,
}

#[cfg(test)]
pub(crate) use endpointer::Feed;
