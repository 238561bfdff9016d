//! [`RoundRobin`]: each endpoint in turn.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Balancer;
use crate::error::Result;
use crate::sd::Endpointer;

/// Hands out the endpoints in turn (go-kit's `lb.NewRoundRobin`).
///
/// One atomic counter, shared by every thread: calls from any number of
/// threads spread evenly, with no lock. When the set changes, the turn goes
/// on from the same counter over the new set.
///
/// ```no_run
/// use etcd_sd::lb::{Balancer, RoundRobin};
/// use etcd_sd::sd::{Endpointer, EndpointerOptions};
/// use etcd_sd::{Client, ClientOptions, Instancer};
/// let client = Client::connect(&["127.0.0.1:2379"], ClientOptions::default())?;
/// let instancer = Instancer::new(&client, "/services/barsvc/")?;
/// let endpointer = Endpointer::new(&instancer, |i: &str| Ok((i.to_string(), None)), EndpointerOptions::default());
/// let balancer = RoundRobin::new(endpointer);
/// let url: String = balancer.endpoint()?; // NoEndpoints when there is none
/// println!("calling {url}");
/// # Ok::<(), etcd_sd::Error>(())
/// ```
pub struct RoundRobin<E> {
    endpointer: Endpointer<E>,
    next: AtomicU64,
}

impl<E> RoundRobin<E> {
    /// A round-robin balancer over `e`'s endpoints, starting with the first.
    pub fn new(e: Endpointer<E>) -> Self {
        RoundRobin {
            endpointer: e,
            next: AtomicU64::new(0),
        }
    }
}

impl<E> fmt::Debug for RoundRobin<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoundRobin")
            .field("endpointer", &self.endpointer)
            .field("next", &self.next.load(Ordering::Relaxed))
            .finish()
    }
}

impl<E: Clone + Send + Sync + 'static> Balancer<E> for RoundRobin<E> {
    fn endpoint(&self) -> Result<E> {
        self.endpointer.pick(|n| {
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            (turn % n as u64) as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::lb::testing::fixed;
    use crate::ErrorKind;

    #[test]
    fn goes_round_in_instance_order() {
        let (e, _feed) = fixed(&["c", "a", "b"]);
        let rr = RoundRobin::new(e);
        let got: Vec<String> = (0..7).map(|_| rr.endpoint().unwrap()).collect();
        assert_eq!(got, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn empty_set_is_no_endpoints() {
        let (e, _feed) = fixed(&[]);
        let err = RoundRobin::new(e).endpoint().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoEndpoints);
        assert!(err.to_string().contains("/test/"), "{err}");
    }

    #[test]
    fn closed_endpointer_is_closed() {
        let (e, _feed) = fixed(&["a"]);
        let rr = RoundRobin::new(e.clone());
        e.close();
        assert_eq!(rr.endpoint().unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn threads_share_one_counter_evenly() {
        let (e, _feed) = fixed(&["a", "b", "c"]);
        let rr = Arc::new(RoundRobin::new(e));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || {
                    (0..300).map(|_| rr.endpoint().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in threads {
            for s in t.join().unwrap() {
                *counts.entry(s).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n == 400), "{counts:?}");
    }
}
