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
pub type Endpoint<Req, Resp> =
    Arc<dyn Fn(Req) -> std::result::Result<Resp, BoxError> + Send + Sync>;

/// Picks one endpoint (go-kit's `lb.Balancer`).
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
