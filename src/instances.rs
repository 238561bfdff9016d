//! [`Instances`], the immutable snapshot every subscriber of one update shares,
//! and [`Event`], what subscribers receive.

use std::ffi::c_char;
use std::fmt;

use crate::chunks::{self, SortedChunks};
use crate::name::Name;
use crate::Error;

/// An immutable, sorted, de-duplicated snapshot of instance strings, shared by
/// every subscriber of one update: `clone` is O(1) and never copies the strings.
///
/// ```
/// let a = etcd_sd::Instances::from_iter(["b", "a", "b"]);
/// assert_eq!(a.len(), 2);
/// assert_eq!(a.get(0), Some("a"));
/// assert!(a.contains("b") && !a.contains("c"));
/// assert_eq!(a.iter().collect::<Vec<_>>(), ["a", "b"]);
/// let b = a.clone(); // shares the strings
/// assert_eq!(a, b);
/// ```
///
/// Build one yourself with `collect()` or [`Instances::from_iter`], e.g. for
/// tests; the crate builds them from etcd's keys.
///
/// Inside, the strings sit in sorted copy-on-write chunks, so that the watcher
/// builds the next snapshot by copying one chunk, not the whole set: an update
/// costs about the same at 100 or 100,000 instances.
#[derive(Clone, Default)]
pub struct Instances {
    set: SortedChunks<Name>,
}

impl Instances {
    /// Wraps a set; the watcher's way of making a snapshot (O(1)).
    pub(crate) fn from_set(set: SortedChunks<Name>) -> Instances {
        Instances { set }
    }

    /// The set inside, for comparing snapshots chunk by chunk.
    pub(crate) fn set(&self) -> &SortedChunks<Name> {
        &self.set
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when there is no instance.
    pub fn is_empty(&self) -> bool {
        self.set.len() == 0
    }

    /// The `i`-th instance in sorted order, in O(log n).
    pub fn get(&self, i: usize) -> Option<&str> {
        self.set.get(i).map(Name::as_str)
    }

    /// The `i`-th instance as a NUL-terminated C string, valid as long as
    /// this snapshot (or a clone) lives: the C API lends it without a copy.
    pub(crate) fn c_str(&self, i: usize) -> Option<*const c_char> {
        self.set.get(i).map(Name::as_c_ptr)
    }

    /// The instances in sorted order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.set.iter())
    }

    /// Whether `instance` is in the snapshot, in O(log n).
    pub fn contains(&self, instance: &str) -> bool {
        self.set.contains(instance)
    }

    /// The instances as owned strings, in sorted order (this copies them;
    /// [`iter`](Instances::iter) does not).
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl<S: AsRef<str>> FromIterator<S> for Instances {
    /// Sorts and de-duplicates.
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Instances {
        let mut v: Vec<Name> = iter.into_iter().map(|s| Name::new(s.as_ref())).collect();
        v.sort_unstable();
        v.dedup();
        Instances::from_set(SortedChunks::from_sorted(v))
    }
}

impl PartialEq for Instances {
    fn eq(&self, other: &Instances) -> bool {
        self.set == other.set
    }
}

impl Eq for Instances {}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Instances {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the instances of an [`Instances`], in sorted order.
#[derive(Clone, Debug)]
pub struct Iter<'a>(chunks::Iter<'a, Name>);

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.0.next().map(Name::as_str)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl std::iter::FusedIterator for Iter<'_> {}

/// One discovery update (go-kit's `sd.Event`): the full set of instances, and
/// an error while etcd cannot be watched.
///
/// While `err` is set, `instances` holds the **last good** set, so a client
/// can keep using it; the next event without `err` means discovery is back.
/// Cloning an event is cheap: the snapshot and the error are shared.
///
/// ```
/// use etcd_sd::{ErrorKind, Event, Instances};
///
/// fn on_event(event: &Event) {
///     match &event.err {
///         None => println!("{} instance(s): {:?}", event.instances.len(), event.instances),
///         // `instances` is still the last good set: keep using it.
///         Some(e) if e.kind() != ErrorKind::Closed => eprintln!("discovery stale: {e}"),
///         Some(_) => eprintln!("instancer stopped"),
///     }
/// }
///
/// on_event(&Event { instances: Instances::from_iter(["http://10.0.0.1:8080"]), err: None });
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    /// The instances under the prefix: sorted, de-duplicated, shared.
    pub instances: Instances,
    /// Why the set may be stale, or `None` when it is current.
    pub err: Option<Error>,
}

impl Event {
    /// True when both carry the same instances and the same error state.
    pub(crate) fn same_as(&self, other: &Event) -> bool {
        self.instances == other.instances
            && match (&self.err, &other.err) {
                (None, None) => true,
                // Subscribers hear of an outage once, however its errors
                // alternate between timing out and refused connections; a
                // different kind of failure (say, permission denied) is news.
                (Some(a), Some(b)) => outage_class(a.kind()) == outage_class(b.kind()),
                _ => false,
            }
    }
}

/// Errors that all mean "etcd cannot be reached" count as one.
fn outage_class(kind: crate::ErrorKind) -> Option<crate::ErrorKind> {
    match kind {
        crate::ErrorKind::Timeout | crate::ErrorKind::Unavailable => None,
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_shared() {
        let a: Instances = ["c", "a", "b", "a"].into_iter().collect();
        assert_eq!(a.to_vec(), ["a", "b", "c"]);
        let b = a.clone();
        assert_eq!(a, b);
        assert_eq!(a.get(3), None);
        let collected: Vec<&str> = (&a).into_iter().collect();
        assert_eq!(collected, ["a", "b", "c"]);
        assert!(Instances::default().is_empty());
    }

    #[test]
    fn event_sameness() {
        let a = Event {
            instances: ["x"].into_iter().collect(),
            err: None,
        };
        let b = Event {
            instances: ["x"].into_iter().collect(),
            err: None,
        };
        let c = Event {
            instances: ["x"].into_iter().collect(),
            err: Some(crate::ErrorKind::Unavailable.into()),
        };
        assert!(a.same_as(&b));
        assert!(!a.same_as(&c));
        let d = Event {
            instances: ["x"].into_iter().collect(),
            err: Some(crate::ErrorKind::Timeout.into()),
        };
        let e = Event {
            instances: ["x"].into_iter().collect(),
            err: Some(crate::ErrorKind::Auth.into()),
        };
        assert!(c.same_as(&d), "timeouts and refusals are one outage");
        assert!(!d.same_as(&e), "a permission error is news");
    }
}
