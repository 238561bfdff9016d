//! Picking one endpoint per call, and retrying (go-kit's `lb`).
//!
//! A [`Balancer`] picks an endpoint from an [`Endpointer`]:
//! [`RoundRobin`] in turn, [`Random`] at random (seeded). [`retry`] wraps a
//! balancer of [`Endpoint`]s into something you call like one endpoint: it
//! tries up to `max` endpoints within one deadline.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use etcd_sd::lb::{self, Endpoint, RoundRobin};
//! use etcd_sd::sd::{Endpointer, EndpointerOptions};
//! use etcd_sd::{Client, ClientOptions, Instancer};
//!
//! let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
//! let instancer = Instancer::new(&client, "/services/barsvc/")?;
//! // An endpoint per instance: here a closure that "calls" the instance.
//! let endpointer = Endpointer::new(
//!     &instancer,
//!     |instance: &str| {
//!         let url = instance.to_string();
//!         let endpoint: Endpoint<String, String> =
//!             Arc::new(move |req: String| Ok(format!("{url} answered {req}")));
//!         Ok((endpoint, None))
//!     },
//!     EndpointerOptions::default(),
//! );
//! let retry = lb::retry(3, Duration::from_secs(3), RoundRobin::new(endpointer));
//! match retry.call("hello".to_string()) {
//!     Ok(resp) => println!("{resp}"),
//!     Err(e) => eprintln!("all attempts failed: {e}"),
//! }
//! # Ok::<(), etcd_sd::Error>(())
//! ```

mod random;
mod retry;
mod round_robin;

use std::sync::Arc;

use crate::error::{BoxError, Result};
#[cfg(doc)]
use crate::sd::Endpointer;

pub use random::Random;
pub use retry::{retry, retry_with_callback, Retry, RetryError};
pub use round_robin::RoundRobin;

/// A callable endpoint (go-kit's `endpoint.Endpoint`): takes a request,
/// returns a response or an error. It should bound its own running time:
/// [`Retry`] does not interrupt a running call.
///
/// ```
/// use std::sync::Arc;
/// use etcd_sd::lb::Endpoint;
///
/// let base = "http://10.0.0.1:8080".to_string();
/// let endpoint: Endpoint<&str, String> = Arc::new(move |path| Ok(format!("GET {base}{path}")));
/// assert_eq!(endpoint("/health").unwrap(), "GET http://10.0.0.1:8080/health");
/// ```
pub type Endpoint<Req, Resp> =
    Arc<dyn Fn(Req) -> std::result::Result<Resp, BoxError> + Send + Sync>;

/// Picks one endpoint (go-kit's `lb.Balancer`).
///
/// [`RoundRobin`] and [`Random`] pick from an [`Endpointer`]; implement it
/// yourself for any other source, e.g. a fixed list, and [`retry`] works the
/// same over it:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use etcd_sd::lb::Balancer;
/// use etcd_sd::{Error, ErrorKind};
///
/// /// Round robin over a fixed list.
/// struct Fixed(Vec<String>, AtomicUsize);
///
/// impl Balancer<String> for Fixed {
///     fn endpoint(&self) -> etcd_sd::Result<String> {
///         if self.0.is_empty() {
///             return Err(Error::new(ErrorKind::NoEndpoints, "empty list"));
///         }
///         let i = self.1.fetch_add(1, Ordering::Relaxed) % self.0.len();
///         Ok(self.0[i].clone())
///     }
/// }
///
/// let b = Fixed(vec!["a:1".into(), "b:1".into()], AtomicUsize::new(0));
/// assert_eq!([b.endpoint()?, b.endpoint()?, b.endpoint()?], ["a:1", "b:1", "a:1"]);
/// let empty = Fixed(Vec::new(), AtomicUsize::new(0));
/// assert_eq!(empty.endpoint().unwrap_err().kind(), ErrorKind::NoEndpoints);
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub trait Balancer<E> {
    /// One endpoint for one call.
    ///
    /// # Errors
    /// `NoEndpoints` when there is none to offer; whatever the endpointer
    /// returns otherwise (`Closed`, or a discovery error after
    /// `invalidate_on_error`).
    fn endpoint(&self) -> Result<E>;
}

impl<E, B: Balancer<E> + ?Sized> Balancer<E> for &B {
    fn endpoint(&self) -> Result<E> {
        (**self).endpoint()
    }
}

impl<E, B: Balancer<E> + ?Sized> Balancer<E> for Arc<B> {
    fn endpoint(&self) -> Result<E> {
        (**self).endpoint()
    }
}

impl<E, B: Balancer<E> + ?Sized> Balancer<E> for Box<B> {
    fn endpoint(&self) -> Result<E> {
        (**self).endpoint()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fixed endpointer for the balancer tests.
    use std::sync::Arc;
    use std::time::Instant;

    use crate::sd::{Endpointer, Feed};
    use crate::{Event, Instances};

    /// An endpointer over `instances` whose endpoint is the instance string;
    /// keep the `Feed` alive (dropping it closes the endpointer).
    pub(crate) fn fixed(instances: &[&str]) -> (Endpointer<String>, Feed<String>) {
        let (e, feed) = Endpointer::detached(
            "/test/".into(),
            Box::new(|i: &str| Ok((i.to_string(), None))),
            Default::default(),
            Arc::new(Instant::now),
        );
        feed.send(&Event {
            instances: instances.iter().collect::<Instances>(),
            err: None,
        });
        (e, feed)
    }
}
