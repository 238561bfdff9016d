//! [`Retry`]: call through a balancer, trying again on failure, within one
//! deadline (go-kit's `lb.Retry` and `lb.RetryWithCallback`).

use std::fmt;
use std::time::{Duration, Instant};

use super::{Balancer, Endpoint};
use crate::error::{BoxError, Error, ErrorKind};

/// The first wait after a `NoEndpoints` answer; it doubles up to
/// [`MAX_PAUSE`] while there is still no endpoint.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Decides after each failed attempt: go on?, and an optional replacement for
/// the error.
type Callback = dyn Fn(usize, &BoxError) -> (bool, Option<BoxError>) + Send + Sync;

/// Calls endpoints picked by a balancer until one succeeds, at most `max`
/// times, within `timeout` for all attempts together (go-kit's `lb.Retry`).
///
/// Each attempt asks the balancer for an endpoint and calls it with a clone of
/// the request. A balancer error counts as a failed attempt; after a
/// `NoEndpoints` error the next attempt waits a little (10 ms, doubling to
/// 250 ms, never past the deadline), so an empty set is never busy-polled.
/// At least one attempt is made when `timeout` is not zero (a `max` of 0
/// acts as 1).
///
/// See [`Retry::call`] for the errors.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use etcd_sd::lb::{retry, Balancer, Endpoint};
///
/// // Two endpoints in turn: the first always fails, the second answers.
/// struct Two(AtomicUsize);
/// impl Balancer<Endpoint<u32, u32>> for Two {
///     fn endpoint(&self) -> etcd_sd::Result<Endpoint<u32, u32>> {
///         Ok(if self.0.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
///             Arc::new(|_| Err("connection refused".into()))
///         } else {
///             Arc::new(|n| Ok(n * 2))
///         })
///     }
/// }
///
/// let r = retry(3, Duration::from_secs(1), Two(AtomicUsize::new(0)));
/// assert_eq!(r.call(21).unwrap(), 42); // the second attempt succeeded
/// ```
pub fn retry<B>(max: usize, timeout: Duration, balancer: B) -> Retry<B> {
    retry_with_callback(timeout, balancer, move |attempt, _| (attempt < max, None))
}

/// Like [`retry`], but `cb` decides after each failed attempt (go-kit's
/// `lb.RetryWithCallback`).
///
/// `cb(attempt, &error)` gets the attempt number, starting at 1, and the
/// attempt's error; it returns whether to go on and, optionally, an error to
/// report instead of that one if this is the last attempt. The deadline
/// still applies.
///
/// ```
/// use std::time::Duration;
/// use etcd_sd::lb::{retry_with_callback, Balancer, Endpoint};
///
/// // A balancer with one endpoint that always fails.
/// struct Failing;
/// impl Balancer<Endpoint<u32, u32>> for Failing {
///     fn endpoint(&self) -> etcd_sd::Result<Endpoint<u32, u32>> {
///         Ok(std::sync::Arc::new(|n: u32| Err(format!("attempt with {n} failed").into())))
///     }
/// }
///
/// // Stop after the second attempt, and say why.
/// let r = retry_with_callback(Duration::from_secs(1), Failing, |attempt, _err| {
///     if attempt < 2 { (true, None) } else { (false, Some("gave up after 2".into())) }
/// });
/// let err = r.call(7).unwrap_err();
/// assert_eq!(err.raw.len(), 2);
/// assert_eq!(err.to_string(), "gave up after 2 (previously: attempt with 7 failed)");
/// ```
pub fn retry_with_callback<B, C>(timeout: Duration, balancer: B, cb: C) -> Retry<B>
where
    C: Fn(usize, &BoxError) -> (bool, Option<BoxError>) + Send + Sync + 'static,
{
    Retry {
        balancer,
        timeout,
        callback: Box::new(cb),
    }
}

/// A balancer wrapped with a retry policy: call it like one endpoint. Made by
/// [`retry`] or [`retry_with_callback`]; `Send + Sync` when the balancer is,
/// so one `Retry` can serve many threads.
pub struct Retry<B> {
    balancer: B,
    timeout: Duration,
    callback: Box<Callback>,
}

impl<B: fmt::Debug> fmt::Debug for Retry<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("balancer", &self.balancer)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<B> Retry<B> {
    /// Calls endpoints from the balancer with clones of `req` until one
    /// succeeds, the policy gives up or the deadline passes.
    ///
    /// The deadline (`timeout` from now) is checked before each attempt and
    /// after each failed one; a running attempt is not interrupted, so an
    /// endpoint should bound its own calls. A success is returned even if it
    /// came after the deadline.
    ///
    /// # Errors
    /// A [`RetryError`] whose `raw` holds every attempt's error, in order:
    /// * the policy gave up: `final_error` is the last attempt's error (or
    ///   the callback's replacement);
    /// * the deadline passed: `final_error` is an [`Error`] of kind
    ///   `Timeout` (see [`RetryError::kind`]).
    pub fn call<Req: Clone, Resp>(&self, req: Req) -> std::result::Result<Resp, RetryError>
    where
        B: Balancer<Endpoint<Req, Resp>>,
    {
        let deadline = Instant::now().checked_add(self.timeout);
        let passed = || deadline.is_some_and(|d| Instant::now() >= d);
        let mut raw: Vec<BoxError> = Vec::new();
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0usize;
        loop {
            if passed() {
                return Err(self.timed_out(raw, attempt));
            }
            attempt += 1;
            let (err, no_endpoints) = match self.balancer.endpoint() {
                Ok(endpoint) => match endpoint(req.clone()) {
                    Ok(resp) => return Ok(resp),
                    Err(e) => (e, false),
                },
                Err(e) => {
                    let none = e.kind() == ErrorKind::NoEndpoints;
                    (Box::new(e) as BoxError, none)
                }
            };
            if passed() {
                raw.push(err);
                return Err(self.timed_out(raw, attempt));
            }
            let (go_on, replacement) = (self.callback)(attempt, &err);
            if !go_on {
                let final_error = match replacement {
                    Some(r) => {
                        raw.push(err);
                        r
                    }
                    None => {
                        raw.push(duplicate(&err));
                        err
                    }
                };
                return Err(RetryError { raw, final_error });
            }
            raw.push(err);
            if no_endpoints {
                let wait = match deadline {
                    Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
                    None => pause,
                };
                std::thread::sleep(wait);
                pause = (pause * 2).min(MAX_PAUSE);
            } else {
                pause = FIRST_PAUSE;
            }
        }
    }

    /// The error for a passed deadline after `attempts` attempts.
    fn timed_out(&self, raw: Vec<BoxError>, attempts: usize) -> RetryError {
        let mut message = format!(
            "retry deadline of {:?} passed after {attempts} attempt{}",
            self.timeout,
            if attempts == 1 { "" } else { "s" }
        );
        if let Some(last) = raw.last() {
            message.push_str(&format!("; last error: {last}"));
        }
        RetryError {
            raw,
            final_error: Box::new(Error::new(ErrorKind::Timeout, message)),
        }
    }
}

/// A second copy of an error, for `raw` when the same error is also
/// `final_error`: a clone for this crate's [`Error`], else a copy of its
/// `Display` and `Debug` text.
fn duplicate(e: &BoxError) -> BoxError {
    match e.downcast_ref::<Error>() {
        Some(e) => Box::new(e.clone()),
        None => Box::new(Copied {
            display: e.to_string(),
            debug: format!("{e:?}"),
        }),
    }
}

/// The text of an error that cannot be cloned.
struct Copied {
    display: String,
    debug: String,
}

impl fmt::Debug for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
}

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl std::error::Error for Copied {}

/// Every attempt of a [`Retry::call`] failed (go-kit's `lb.RetryError`).
///
/// `Display` reads like go-kit's: the final error, then the earlier ones:
/// `final (previously: e1; e2)`. `source()` is the final error.
#[derive(Debug)]
pub struct RetryError {
    /// Every attempt's error, in order, the last included. When the last one
    /// is also `final_error`, this holds a copy (a clone for an
    /// [`Error`](crate::Error), else its text) and `final_error` the original.
    pub raw: Vec<BoxError>,
    /// Why it ended: the last attempt's error, the callback's replacement, or
    /// an [`Error`](crate::Error) of kind `Timeout` when the deadline passed.
    pub final_error: BoxError,
}

impl RetryError {
    /// The kind of `final_error` when it is an [`Error`](crate::Error)
    /// (`Timeout` for a passed deadline, `NoEndpoints`, ...); `None` for an
    /// error of another type.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.final_error.downcast_ref::<Error>().map(Error::kind)
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.final_error)?;
        if self.raw.len() > 1 {
            // The last raw error is the final one (go-kit's rule).
            f.write_str(" (previously: ")?;
            for (i, e) in self.raw[..self.raw.len() - 1].iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{e}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.final_error)
    }
}

#[cfg(test)]
mod tests;
