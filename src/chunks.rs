//! A sorted set stored as copy-on-write chunks: the storage behind
//! [`Instances`](crate::Instances) (chunks of [`Name`]s) and behind the
//! [`Endpointer`](crate::sd::Endpointer)'s endpoint list.
//!
//! The set is a list of sorted chunks of at most [`MAX_CHUNK`] items, ordered
//! by each item's [`Keyed::key`]. A snapshot is a clone of the outer `Arc`
//! (O(1)). Changing a set that has been snapshotted copies only the chunk
//! index (one pointer and one offset per chunk) and the one chunk touched, so
//! an update costs O(n / chunk + chunk) instead of rebuilding all n entries:
//! at 10,000 items about 40 index entries and up to 512 items, not 10,000.
//!
//! Two sets that share chunks are compared (and [`diff`](SortedChunks::diff)ed)
//! chunk by chunk: a chunk both hold is skipped by one pointer comparison, so
//! telling what one update changed costs about one chunk, not n items.
//!
//! [`Name`]: crate::name::Name

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Items per chunk when building in bulk.
const CHUNK: usize = 256;
/// A chunk that grows past this is split in two.
const MAX_CHUNK: usize = 2 * CHUNK;

/// What a [`SortedChunks`] is sorted and searched by.
pub(crate) trait Keyed {
    /// The item's key; unique within one set.
    fn key(&self) -> &str;
}

type Chunk<T> = Arc<Vec<T>>;

/// A sorted set of `T`, unique by key, in copy-on-write chunks.
pub(crate) struct SortedChunks<T> {
    /// Each chunk with the index of its first item in the whole set.
    chunks: Arc<Vec<(usize, Chunk<T>)>>,
    len: usize,
}

impl<T> Clone for SortedChunks<T> {
    fn clone(&self) -> Self {
        SortedChunks {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for SortedChunks<T> {
    fn default() -> Self {
        SortedChunks {
            chunks: Arc::new(Vec::new()),
            len: 0,
        }
    }
}

/// One difference found by [`SortedChunks::diff`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change<'a, T> {
    /// In the old set only.
    Removed(&'a T),
    /// In the new set only.
    Added(&'a T),
}

impl<T: Keyed> SortedChunks<T> {
    /// Builds from items already sorted and unique by key.
    pub(crate) fn from_sorted(items: impl IntoIterator<Item = T>) -> SortedChunks<T> {
        let mut chunks = Vec::new();
        let mut cur: Vec<T> = Vec::with_capacity(CHUNK);
        let mut len = 0;
        for item in items {
            debug_assert!(cur.last().is_none_or(|l| l.key() < item.key()));
            cur.push(item);
            if cur.len() == CHUNK {
                let full = std::mem::replace(&mut cur, Vec::with_capacity(CHUNK));
                chunks.push((len, Arc::new(full)));
                len += CHUNK;
            }
        }
        if !cur.is_empty() {
            let n = cur.len();
            chunks.push((len, Arc::new(cur)));
            len += n;
        }
        SortedChunks {
            chunks: Arc::new(chunks),
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn ptr_eq(&self, other: &SortedChunks<T>) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// The chunk that holds, or would hold, `key` (the set is not empty).
    fn chunk_for(chunks: &[(usize, Chunk<T>)], key: &str) -> usize {
        // The last chunk whose first key is <= key (or the first chunk).
        chunks
            .partition_point(|(_, c)| c[0].key() <= key)
            .saturating_sub(1)
    }

    /// The `i`-th item in key order, in O(log(n / chunk)).
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let c = self.chunks.partition_point(|(start, _)| *start <= i) - 1;
        let (start, chunk) = &self.chunks[c];
        chunk.get(i - start)
    }

    /// The item with `key`, in O(log n).
    pub(crate) fn find(&self, key: &str) -> Option<&T> {
        if self.chunks.is_empty() {
            return None;
        }
        let (_, chunk) = &self.chunks[Self::chunk_for(&self.chunks, key)];
        let pos = chunk.binary_search_by(|p| p.key().cmp(key)).ok()?;
        Some(&chunk[pos])
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    pub(crate) fn iter(&self) -> Iter<'_, T> {
        Iter {
            chunks: self.chunks.iter(),
            current: [].iter(),
            remaining: self.len,
        }
    }

    /// Calls `f` with each difference between `old` and `new`, by key, in key
    /// order; `f` returns false to stop early. Chunks the two sets share are
    /// skipped without looking inside.
    pub(crate) fn diff<'a>(
        old: &'a SortedChunks<T>,
        new: &'a SortedChunks<T>,
        mut f: impl FnMut(Change<'a, T>) -> bool,
    ) {
        if old.ptr_eq(new) {
            return;
        }
        let mut a = Cursor::new(&old.chunks);
        let mut b = Cursor::new(&new.chunks);
        loop {
            while a.at_chunk_start() && b.at_chunk_start() && a.same_chunk(&b) {
                a.skip_chunk();
                b.skip_chunk();
            }
            let go_on = match (a.peek(), b.peek()) {
                (None, None) => return,
                (Some(x), None) => {
                    a.advance();
                    f(Change::Removed(x))
                }
                (None, Some(y)) => {
                    b.advance();
                    f(Change::Added(y))
                }
                (Some(x), Some(y)) => match x.key().cmp(y.key()) {
                    Ordering::Less => {
                        a.advance();
                        f(Change::Removed(x))
                    }
                    Ordering::Greater => {
                        b.advance();
                        f(Change::Added(y))
                    }
                    Ordering::Equal => {
                        a.advance();
                        b.advance();
                        true
                    }
                },
            };
            if !go_on {
                return;
            }
        }
    }
}

impl<T: Keyed + Clone> SortedChunks<T> {
    /// Inserts `value`; false (and no change) if its key was already there.
    pub(crate) fn insert(&mut self, value: T) -> bool {
        if self.chunks.is_empty() {
            Arc::make_mut(&mut self.chunks).push((0, Arc::new(vec![value])));
            self.len = 1;
            return true;
        }
        let c = Self::chunk_for(&self.chunks, value.key());
        let pos = match self.chunks[c]
            .1
            .binary_search_by(|p| p.key().cmp(value.key()))
        {
            Ok(_) => return false,
            Err(pos) => pos,
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[c].1);
        chunk.insert(pos, value);
        let mut next = c + 1;
        if chunk.len() > MAX_CHUNK {
            let tail = chunk.split_off(chunk.len() / 2);
            let start = chunks[c].0 + chunks[c].1.len();
            chunks.insert(c + 1, (start, Arc::new(tail)));
            next = c + 2; // the new chunk's start is already right
        }
        self.len += 1;
        Self::shift_starts(chunks, next, 1);
        true
    }

    /// Removes the item with `key`; false if there was none.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let c = Self::chunk_for(&self.chunks, key);
        let Ok(pos) = self.chunks[c].1.binary_search_by(|p| p.key().cmp(key)) else {
            return false;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[c].1);
        chunk.remove(pos);
        if chunk.is_empty() {
            chunks.remove(c);
            Self::shift_starts(chunks, c, -1);
        } else {
            Self::shift_starts(chunks, c + 1, -1);
        }
        self.len -= 1;
        true
    }

    fn shift_starts(chunks: &mut [(usize, Chunk<T>)], from: usize, by: isize) {
        for (start, _) in &mut chunks[from..] {
            *start = start.wrapping_add_signed(by);
        }
    }
}

/// A position in a [`SortedChunks`], for [`SortedChunks::diff`].
struct Cursor<'a, T> {
    chunks: &'a [(usize, Chunk<T>)],
    chunk: usize,
    item: usize,
}

impl<'a, T> Cursor<'a, T> {
    fn new(chunks: &'a [(usize, Chunk<T>)]) -> Self {
        Cursor {
            chunks,
            chunk: 0,
            item: 0,
        }
    }

    fn at_chunk_start(&self) -> bool {
        self.item == 0 && self.chunk < self.chunks.len()
    }

    fn same_chunk(&self, other: &Cursor<'a, T>) -> bool {
        Arc::ptr_eq(&self.chunks[self.chunk].1, &other.chunks[other.chunk].1)
    }

    fn skip_chunk(&mut self) {
        self.chunk += 1;
        self.item = 0;
    }

    fn peek(&self) -> Option<&'a T> {
        self.chunks.get(self.chunk).map(|(_, c)| &c[self.item])
    }

    fn advance(&mut self) {
        self.item += 1;
        if self.item == self.chunks[self.chunk].1.len() {
            self.skip_chunk();
        }
    }
}

/// Iterator over a [`SortedChunks`] in key order.
pub(crate) struct Iter<'a, T> {
    chunks: std::slice::Iter<'a, (usize, Chunk<T>)>,
    current: std::slice::Iter<'a, T>,
    remaining: usize,
}

impl<T> Clone for Iter<'_, T> {
    fn clone(&self) -> Self {
        Iter {
            chunks: self.chunks.clone(),
            current: self.current.clone(),
            remaining: self.remaining,
        }
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        loop {
            if let Some(s) = self.current.next() {
                self.remaining -= 1;
                return Some(s);
            }
            self.current = self.chunks.next()?.1.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

impl<T> std::iter::FusedIterator for Iter<'_, T> {}

impl<T: Keyed> PartialEq for SortedChunks<T> {
    /// Same keys: one pointer comparison for a shared set, and one per shared
    /// chunk otherwise.
    fn eq(&self, other: &SortedChunks<T>) -> bool {
        if self.ptr_eq(other) {
            return true;
        }
        if self.len != other.len {
            return false;
        }
        let mut same = true;
        SortedChunks::diff(self, other, |_| {
            same = false;
            false
        });
        same
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::SplitMix64;
    use std::collections::BTreeSet;

    impl Keyed for String {
        fn key(&self) -> &str {
            self
        }
    }

    type Set = SortedChunks<String>;

    fn check(set: &Set, model: &BTreeSet<String>) {
        assert_eq!(set.len(), model.len());
        let all: Vec<&str> = set.iter().map(String::as_str).collect();
        let want: Vec<&str> = model.iter().map(String::as_str).collect();
        assert_eq!(all, want);
        for (i, v) in want.iter().enumerate() {
            assert_eq!(set.get(i).map(String::as_str), Some(*v), "get({i})");
            assert!(set.contains(v));
        }
        assert_eq!(set.get(model.len()), None);
        let mut start = 0;
        for (s, c) in set.chunks.iter() {
            assert_eq!(*s, start);
            assert!(!c.is_empty() && c.len() <= MAX_CHUNK);
            start += c.len();
        }
    }

    /// `diff` as two sorted lists, checked against the models.
    fn check_diff(
        old: &Set,
        new: &Set,
        old_model: &BTreeSet<String>,
        new_model: &BTreeSet<String>,
    ) {
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        SortedChunks::diff(old, new, |c| {
            match c {
                Change::Removed(s) => removed.push(s.clone()),
                Change::Added(s) => added.push(s.clone()),
            }
            true
        });
        let want_removed: Vec<String> = old_model.difference(new_model).cloned().collect();
        let want_added: Vec<String> = new_model.difference(old_model).cloned().collect();
        assert_eq!(removed, want_removed);
        assert_eq!(added, want_added);
        assert_eq!(old == new, old_model == new_model);
    }

    #[test]
    fn random_operations_match_a_btreeset() {
        let mut rng = SplitMix64::new(42);
        let mut set = Set::default();
        let mut model = BTreeSet::new();
        let mut snapshots = Vec::new();
        let mut prev = (set.clone(), model.clone());
        for round in 0..6000 {
            let v = format!("10.0.{}.{}:80", rng.below(8), rng.below(300));
            if rng.below(3) == 0 {
                assert_eq!(set.remove(&v), model.remove(&v));
            } else {
                assert_eq!(set.insert(v.clone()), model.insert(v));
            }
            assert!(!set.contains("zzz") && !set.contains(""));
            if round % 7 == 0 {
                check_diff(&prev.0, &set, &prev.1, &model);
                check_diff(&set, &prev.0, &model, &prev.1);
                prev = (set.clone(), model.clone());
            }
            if round % 500 == 0 {
                check(&set, &model);
                snapshots.push((set.clone(), model.clone()));
            }
        }
        check(&set, &model);
        // Snapshots are unaffected by later changes, and diff across any two.
        for (snap, snap_model) in &snapshots {
            check(snap, snap_model);
            check_diff(snap, &set, snap_model, &model);
        }
    }

    #[test]
    fn bulk_build_equality_and_diff_of_unshared_sets() {
        let items: Vec<String> = (0..1000).map(|i| format!("{i:05}")).collect();
        let a = Set::from_sorted(items.clone());
        let mut b = Set::default();
        for i in items.iter().rev() {
            b.insert(i.clone());
        }
        assert!(a == b && !a.ptr_eq(&b));
        let model: BTreeSet<String> = items.iter().cloned().collect();
        check(&a, &model);
        check(&b, &model);
        assert!(Set::default() == Set::from_sorted(Vec::new()));
        // Sets built apart share no chunk: diff walks them item by item.
        let odd: BTreeSet<String> = model.iter().skip(1).step_by(2).cloned().collect();
        let c = Set::from_sorted(odd.iter().cloned());
        check_diff(&a, &c, &model, &odd);
        check_diff(&c, &a, &odd, &model);
        check_diff(&Set::default(), &c, &BTreeSet::new(), &odd);
        assert_eq!(a.find("00007").map(String::as_str), Some("00007"));
        assert!(a.find("x").is_none() && Set::default().find("a").is_none());
    }

    #[test]
    fn diff_of_one_change_looks_at_about_one_chunk() {
        let items: Vec<String> = (0..10_000).map(|i| format!("{i:05}")).collect();
        let old = Set::from_sorted(items);
        let mut new = old.clone();
        new.insert("05000x".to_string());
        new.remove("09999");
        // Only the touched chunks differ by pointer.
        let shared = old
            .chunks
            .iter()
            .zip(new.chunks.iter())
            .filter(|(a, b)| Arc::ptr_eq(&a.1, &b.1))
            .count();
        assert!(
            shared >= old.chunks.len() - 2,
            "{shared} of {}",
            old.chunks.len()
        );
        let mut seen = Vec::new();
        SortedChunks::diff(&old, &new, |c| {
            seen.push(match c {
                Change::Removed(s) => format!("-{s}"),
                Change::Added(s) => format!("+{s}"),
            });
            true
        });
        assert_eq!(seen, ["+05000x", "-09999"]);
        // Stopping early.
        let mut calls = 0;
        SortedChunks::diff(&old, &new, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1);
    }
}
