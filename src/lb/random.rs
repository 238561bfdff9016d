//! [`Random`]: a seeded random endpoint per call.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Balancer;
use crate::backoff::SplitMix64;
use crate::error::Result;
use crate::sd::Endpointer;

/// SplitMix64's increment: the generator's state advances by this per number.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Picks an endpoint at random (go-kit's `lb.NewRandom`).
///
/// Deterministic for a seed: the same seed over the same set gives the same
/// sequence of picks. Safe to share between threads without a lock: the
/// generator's state is one atomic, advanced once per pick (a SplitMix64
/// stream, so concurrent callers each get a distinct number of it).
///
/// ```no_run
/// use etcd_sd::lb::{Balancer, Random};
/// use etcd_sd::sd::{Endpointer, EndpointerOptions};
/// use etcd_sd::{Client, ClientOptions, Instancer};
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let instancer = Instancer::new(&client, "/services/barsvc/")?;
/// let endpointer = Endpointer::new(&instancer, |i: &str| Ok((i.to_string(), None)), EndpointerOptions::default());
/// let balancer = Random::new(endpointer, 42);
/// let url: String = balancer.endpoint()?;
/// println!("calling {url}");
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub struct Random<E> {
    endpointer: Endpointer<E>,
    state: AtomicU64,
}

impl<E> Random<E> {
    /// A random balancer over `e`'s endpoints, seeded with `seed`.
    pub fn new(e: Endpointer<E>, seed: u64) -> Self {
        Random {
            endpointer: e,
            state: AtomicU64::new(seed),
        }
    }

    /// The next number of the stream, whatever the thread.
    fn below(&self, n: usize) -> usize {
        let state = self.state.fetch_add(GAMMA, Ordering::Relaxed);
        // `SplitMix64::new(s).next_u64()` advances `s` by GAMMA and mixes it:
        // exactly the number that follows `state` in the stream.
        SplitMix64::new(state).below(n as u64) as usize
    }
}

impl<E> fmt::Debug for Random<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Random")
            .field("endpointer", &self.endpointer)
            .finish_non_exhaustive()
    }
}

impl<E: Clone + Send + Sync + 'static> Balancer<E> for Random<E> {
    fn endpoint(&self) -> Result<E> {
        self.endpointer.pick(|n| self.below(n))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::lb::testing::fixed;
    use crate::ErrorKind;

    fn picks(seed: u64, n: usize) -> Vec<String> {
        let (e, _feed) = fixed(&["a", "b", "c", "d", "e"]);
        let r = Random::new(e, seed);
        (0..n).map(|_| r.endpoint().unwrap()).collect()
    }

    #[test]
    fn same_seed_same_picks() {
        assert_eq!(picks(7, 50), picks(7, 50));
        assert_ne!(picks(7, 50), picks(8, 50));
    }

    #[test]
    fn follows_the_splitmix64_stream() {
        let (e, _feed) = fixed(&["a", "b", "c"]);
        let r = Random::new(e, 123);
        let mut reference = SplitMix64::new(123);
        for _ in 0..100 {
            let want = ["a", "b", "c"][reference.below(3) as usize];
            assert_eq!(r.endpoint().unwrap(), want);
        }
    }

    #[test]
    fn picks_every_endpoint_and_only_those() {
        let got = picks(1, 500);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for s in &got {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), 5, "{counts:?}");
        // 100 expected each; far from both 0 and 500.
        assert!(
            counts.values().all(|&n| (40..=200).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn empty_and_closed() {
        let (e, _feed) = fixed(&[]);
        let r = Random::new(e.clone(), 1);
        assert_eq!(r.endpoint().unwrap_err().kind(), ErrorKind::NoEndpoints);
        e.close();
        assert_eq!(r.endpoint().unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn shared_between_threads_draws_the_same_numbers() {
        // Four threads together draw exactly the numbers one thread would:
        // each step of the stream goes to exactly one caller.
        let (e, _feed) = fixed(&["a", "b", "c", "d", "e"]);
        let r = Arc::new(Random::new(e, 99));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..250).map(|_| r.endpoint().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut together: HashMap<String, usize> = HashMap::new();
        for t in threads {
            for s in t.join().unwrap() {
                *together.entry(s).or_default() += 1;
            }
        }
        let mut alone: HashMap<String, usize> = HashMap::new();
        for s in picks(99, 1000) {
            *alone.entry(s).or_default() += 1;
        }
        assert_eq!(together, alone);
    }
}
