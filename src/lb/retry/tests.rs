use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::error::Result;
use crate::lb::RoundRobin;

type Ep = Endpoint<u32, String>;

/// A balancer that plays a script: each call takes the next entry (the last
/// one repeats); `Ok(Ok(s))` is an endpoint answering `s`, `Ok(Err(s))` one
/// failing with `s`, `Err(kind)` a balancer error.
struct Script {
    steps: Mutex<
        VecDeque<std::result::Result<std::result::Result<&'static str, &'static str>, ErrorKind>>,
    >,
    calls: AtomicUsize,
    endpoint_delay: Duration,
}

impl Script {
    fn new(
        steps: Vec<std::result::Result<std::result::Result<&'static str, &'static str>, ErrorKind>>,
    ) -> Script {
        Script {
            steps: Mutex::new(steps.into()),
            calls: AtomicUsize::new(0),
            endpoint_delay: Duration::ZERO,
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Balancer<Ep> for Script {
    fn endpoint(&self) -> Result<Ep> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut steps = self.steps.lock().unwrap();
        let step = if steps.len() > 1 {
            steps.pop_front().unwrap()
        } else {
            *steps.front().unwrap()
        };
        let delay = self.endpoint_delay;
        match step {
            Err(kind) => Err(Error::new(kind, "scripted")),
            Ok(outcome) => Ok(Arc::new(move |req: u32| {
                std::thread::sleep(delay);
                match outcome {
                    Ok(s) => Ok(format!("{s}:{req}")),
                    Err(s) => Err(s.into()),
                }
            })),
        }
    }
}

#[test]
fn first_success_is_returned() {
    let b = Script::new(vec![Ok(Ok("a"))]);
    let r = retry(3, Duration::from_secs(5), &b);
    assert_eq!(r.call(1).unwrap(), "a:1");
    assert_eq!(b.calls(), 1);
}

#[test]
fn failures_are_retried_until_a_success() {
    let b = Script::new(vec![Ok(Err("e1")), Ok(Err("e2")), Ok(Ok("c"))]);
    let r = retry(3, Duration::from_secs(5), &b);
    assert_eq!(r.call(9).unwrap(), "c:9");
    assert_eq!(b.calls(), 3);
}

#[test]
fn gives_up_after_max_with_go_kit_message() {
    let b = Script::new(vec![
        Ok(Err("e1")),
        Ok(Err("e2")),
        Ok(Err("e3")),
        Ok(Ok("late")),
    ]);
    let err = retry(3, Duration::from_secs(5), &b).call(0).unwrap_err();
    assert_eq!(b.calls(), 3);
    assert_eq!(err.to_string(), "e3 (previously: e1; e2) after 3 attempts");
    assert_eq!(err.final_error.to_string(), "e3");
    let raw: Vec<String> = err.raw.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        raw,
        ["e1", "e2", "e3"],
        "raw holds every error, the last included"
    );
    assert_eq!(err.kind(), None);
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn one_failure_has_no_previously() {
    let b = Script::new(vec![Ok(Err("only"))]);
    let err = retry(1, Duration::from_secs(5), &b).call(0).unwrap_err();
    assert_eq!(err.to_string(), "only after 1 attempt");
    assert_eq!(err.raw.len(), 1);
}

#[test]
fn max_zero_still_makes_one_attempt() {
    let b = Script::new(vec![Ok(Err("e"))]);
    let err = retry(0, Duration::from_secs(5), &b).call(0).unwrap_err();
    assert_eq!(b.calls(), 1);
    assert_eq!(err.raw.len(), 1);
}

#[test]
fn callback_sees_attempts_from_one_and_may_replace_the_error() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let b = Script::new(vec![Ok(Err("boom"))]);
    let r = retry_with_callback(Duration::from_secs(5), &b, move |n, e| {
        s.lock().unwrap().push((n, e.to_string()));
        if n < 4 {
            (true, Some("ignored while going on".into()))
        } else {
            (false, Some("replaced".into()))
        }
    });
    let err = r.call(0).unwrap_err();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(seen.iter().all(|(_, e)| e == "boom"));
    assert_eq!(
        err.to_string(),
        "replaced (previously: boom; boom; boom) after 4 attempts"
    );
    assert_eq!(err.raw.len(), 4);
    assert!(err.raw.iter().all(|e| e.to_string() == "boom"));
}

#[test]
fn etcd_sd_errors_are_cloned_into_raw() {
    let b = Script::new(vec![Err(ErrorKind::Closed)]);
    let err = retry(2, Duration::from_secs(5), &b).call(0).unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Closed));
    let last = err.raw.last().unwrap().downcast_ref::<Error>().unwrap();
    assert_eq!(last.kind(), ErrorKind::Closed);
}

#[test]
fn deadline_gives_a_timeout_error() {
    let mut b = Script::new(vec![Ok(Err("slow failure"))]);
    b.endpoint_delay = Duration::from_millis(100);
    let started = Instant::now();
    let err = retry(1_000, Duration::from_millis(300), &b)
        .call(0)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), Some(ErrorKind::Timeout));
    let fin = err.final_error.downcast_ref::<Error>().unwrap();
    assert_eq!(fin.kind(), ErrorKind::Timeout);
    assert!(
        fin.to_string().contains("last error: slow failure"),
        "{fin}"
    );
    assert!(b.calls() >= 1 && b.calls() < 50, "{} attempts", b.calls());
    assert_eq!(err.raw.len(), b.calls());
    assert_eq!(err.attempts, b.calls());
    assert!(
        err.to_string()
            .ends_with(&format!(" after {} attempts", b.calls())),
        "{err}"
    );
}

#[test]
fn zero_timeout_times_out_without_an_attempt() {
    let b = Script::new(vec![Ok(Ok("a"))]);
    let err = retry(3, Duration::ZERO, &b).call(0).unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Timeout));
    assert_eq!(b.calls(), 0);
    assert!(err.raw.is_empty());
    assert_eq!(err.attempts, 0);
}

#[test]
fn no_endpoints_waits_instead_of_spinning() {
    let b = Script::new(vec![Err(ErrorKind::NoEndpoints)]);
    let r = retry_with_callback(Duration::from_millis(500), &b, |_, _| (true, None));
    let started = Instant::now();
    let err = r.call(0).unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Waits of 10, 20, 40, ... ms: a handful of attempts in 500 ms, not
    // thousands.
    assert!(b.calls() >= 2 && b.calls() <= 20, "{} attempts", b.calls());
}

#[test]
fn no_endpoints_then_an_endpoint_succeeds() {
    let b = Script::new(vec![
        Err(ErrorKind::NoEndpoints),
        Err(ErrorKind::NoEndpoints),
        Ok(Ok("up")),
    ]);
    let r = retry(5, Duration::from_secs(5), &b);
    assert_eq!(r.call(3).unwrap(), "up:3");
    assert_eq!(b.calls(), 3);
}

#[test]
fn over_a_round_robin_endpointer() {
    // Two instances, the first always fails: retry moves on to the second.
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let (endpointer, feed) = crate::sd::Endpointer::<Ep>::detached(
        "/test/".into(),
        Box::new(move |i: &str| {
            let i = i.to_string();
            let log = l.clone();
            let f: Ep = Arc::new(move |req: u32| {
                log.lock().unwrap().push(i.clone());
                if i == "bad" {
                    Err("bad instance".into())
                } else {
                    Ok(format!("{i}:{req}"))
                }
            });
            Ok((f, None))
        }),
        Default::default(),
        Arc::new(Instant::now),
    );
    feed.send(&crate::Event {
        instances: ["bad", "good"].iter().collect(),
        err: None,
    });
    let r = retry(3, Duration::from_secs(5), RoundRobin::new(endpointer));
    assert_eq!(r.call(1).unwrap(), "good:1");
    assert_eq!(r.call(2).unwrap(), "good:2");
    assert_eq!(*log.lock().unwrap(), ["bad", "good", "bad", "good"]);
}

#[test]
fn retry_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Retry<RoundRobin<Ep>>>();
    check::<Retry<crate::lb::Random<Ep>>>();
    check::<RetryError>();
}

/// How many [`Counted`] errors are alive now, and the most ever alive at
/// once: what a long retry keeps in memory.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// An error that counts its live copies in [`LIVE`] and [`PEAK`].
#[derive(Debug)]
struct Counted(usize);

impl Counted {
    fn new(n: usize) -> Counted {
        let live = LIVE.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(live, Ordering::SeqCst);
        Counted(n)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl std::error::Error for Counted {}

/// One endpoint that fails at once, numbering its errors from 1.
struct AlwaysFailing(Arc<AtomicUsize>);

impl Balancer<Endpoint<u32, u32>> for AlwaysFailing {
    fn endpoint(&self) -> Result<Endpoint<u32, u32>> {
        let n = self.0.clone();
        Ok(Arc::new(move |_| {
            Err(Counted::new(n.fetch_add(1, Ordering::Relaxed) + 1).into())
        }))
    }
}

#[test]
fn a_million_attempts_keep_only_the_last_64_errors() {
    const ATTEMPTS: usize = 1_000_000;
    let calls = Arc::new(AtomicUsize::new(0));
    let r = retry(
        ATTEMPTS,
        Duration::from_secs(600),
        AlwaysFailing(calls.clone()),
    );
    let err = r.call(0).unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
    assert_eq!(err.attempts, ATTEMPTS);
    assert_eq!(err.raw.len(), 64, "raw keeps the 64 most recent errors");
    let raw: Vec<String> = err.raw.iter().map(|e| e.to_string()).collect();
    let want: Vec<String> = (ATTEMPTS - 63..=ATTEMPTS)
        .map(|n| format!("e{n}"))
        .collect();
    assert_eq!(
        raw, want,
        "the most recent ones, in order, the last included"
    );
    assert_eq!(err.final_error.to_string(), format!("e{ATTEMPTS}"));
    // Memory stays bounded: never more than the kept errors (plus the one
    // in hand and the final one) were alive at once.
    let peak = PEAK.load(Ordering::SeqCst);
    assert!(peak <= 66, "{peak} errors alive at once");
    // The message: the go-kit form, bounded, with the attempt count.
    let text = err.to_string();
    assert!(
        text.starts_with("e1000000 (previously: 999936 earlier errors not kept; e999937; e999938;"),
        "{text}"
    );
    assert!(
        text.ends_with("; e999999) after 1000000 attempts"),
        "{text}"
    );
    assert!(text.len() < 2_000, "message of {} bytes", text.len());
}
