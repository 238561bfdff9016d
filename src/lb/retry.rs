//! [`Retry`]: call through a balancer, trying again on failure, within one
//! deadline (go-kit's `lb.Retry` and `lb.RetryWithCallback`).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{Balancer, Endpoint};
use crate::error::{BoxError, Error, ErrorKind};

/// The first wait after a `NoEndpoints` answer; it doubles up to
/// [`MAX_PAUSE`] while there is still no endpoint.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// How many attempts' errors a [`RetryError`] keeps: the most recent ones.
/// A call with a huge `max` and a long deadline must not keep every error
/// of an endpoint that always fails (that grew to hundreds of megabytes).
const MAX_RAW_ERRORS: usize = 64;

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
/// assert_eq!(
///     err.to_string(),
///     "gave up after 2 (previously: attempt with 7 failed) after 2 attempts"
/// );
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
    /// A [`RetryError`] whose `raw` holds the errors of the last 64
    /// attempts, in order, and `attempts` their number:
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
        let mut raw = Kept::default();
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0usize;
        loop {
            if passed() {
                return Err(self.timed_out(raw.0, attempt));
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
                return Err(self.timed_out(raw.0, attempt));
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
                return Err(RetryError {
                    raw: raw.0.into(),
                    final_error,
                    attempts: attempt,
                });
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

    /// The error for a passed deadline after `attempts` attempts (the
    /// [`RetryError`] message gives their number).
    fn timed_out(&self, raw: VecDeque<BoxError>, attempts: usize) -> RetryError {
        let mut message = format!("retry deadline of {:?} passed", self.timeout);
        if let Some(last) = raw.back() {
            message.push_str(&format!("; last error: {last}"));
        }
        RetryError {
            raw: raw.into(),
            final_error: Box::new(Error::new(ErrorKind::Timeout, message)),
            attempts,
        }
    }
}

/// The errors of the most recent attempts, at most [`MAX_RAW_ERRORS`]:
/// pushing one more drops the oldest.
#[derive(Default)]
struct Kept(VecDeque<BoxError>);

impl Kept {
    fn push(&mut self, e: BoxError) {
        if self.0.len() == MAX_RAW_ERRORS {
            self.0.pop_front();
        }
        self.0.push_back(e);
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
/// `Display` reads like go-kit's: the final error, then the earlier ones
/// that were kept, then the number of attempts:
/// `final (previously: e1; e2) after 3 attempts`. When more attempts were
/// made than errors kept, the list starts with how many were dropped:
/// `final (previously: 936 earlier errors not kept; e937; …; e999) after
/// 1000 attempts`, so the message stays bounded too. `source()` is the final
/// error.
#[derive(Debug)]
pub struct RetryError {
    /// The errors of the most recent attempts, in order, the last included:
    /// at most 64, so memory stays bounded however many
    /// attempts were made. When the last one is also `final_error`, this
    /// holds a copy (a clone for an [`Error`](crate::Error), else its text)
    /// and `final_error` the original.
    pub raw: Vec<BoxError>,
    /// Why it ended: the last attempt's error, the callback's replacement, or
    /// an [`Error`](crate::Error) of kind `Timeout` when the deadline passed.
    pub final_error: BoxError,
    /// How many attempts were made (0 when the deadline had passed before
    /// the first); more than `raw.len()` when older errors were dropped.
    pub attempts: usize,
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
        // The last raw error is the final one (go-kit's rule).
        let earlier = &self.raw[..self.raw.len().saturating_sub(1)];
        let dropped = self.attempts.saturating_sub(self.raw.len());
        if !earlier.is_empty() || dropped > 0 {
            f.write_str(" (previously: ")?;
            let mut sep = "";
            if dropped > 0 {
                write!(f, "{dropped} earlier error{} not kept", plural(dropped))?;
                sep = "; ";
            }
            for e in earlier {
                write!(f, "{sep}{e}")?;
                sep = "; ";
            }
            f.write_str(")")?;
        }
        write!(
            f,
            " after {} attempt{}",
            self.attempts,
            plural(self.attempts)
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.final_error)
    }
}

#[cfg(test)]
mod tests;
