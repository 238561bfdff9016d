//! A sorted set of shared strings stored as copy-on-write chunks, the storage
//! behind [`Instances`](crate::Instances).
//!
//! The set is a list of sorted chunks of at most [`MAX_CHUNK`] strings. A
//! snapshot is a clone of the outer `Arc` (O(1)). Changing a set that has been
//! snapshotted copies only the chunk index (one pointer and one offset per
//! chunk) and the one chunk touched, so an update costs O(n / chunk + chunk)
//! instead of rebuilding all n entries: at 10,000 instances about 20 index
//! entries and up to 512 string pointers, not 10,000.

use std::cmp::Ordering;
use std::sync::Arc;

/// Strings per chunk when building in bulk.
const CHUNK: usize = 256;
/// A chunk that grows past this is split in two.
const MAX_CHUNK: usize = 2 * CHUNK;

type Chunk = Arc<Vec<Arc<str>>>;

#[derive(Clone, Default)]
pub(crate) struct SortedChunks {
    /// Each chunk with the index of its first string in the whole set.
    chunks: Arc<Vec<(usize, Chunk)>>,
    len: usize,
}

impl SortedChunks {
    /// Builds from strings already sorted and unique.
    pub(crate) fn from_sorted(items: impl IntoIterator<Item = Arc<str>>) -> SortedChunks {
        let mut chunks = Vec::new();
        let mut cur: Vec<Arc<str>> = Vec::with_capacity(CHUNK);
        let mut len = 0;
        for item in items {
            debug_assert!(cur.last().is_none_or(|l| *l < item));
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

    pub(crate) fn ptr_eq(&self, other: &SortedChunks) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// The chunk that holds, or would hold, `value`.
    fn chunk_for(&self, value: &str) -> usize {
        // The last chunk whose first string is <= value (or the first chunk).
        let p = self.chunks.partition_point(|(_, c)| &*c[0] <= value);
        p.saturating_sub(1)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        if i >= self.len {
            return None;
        }
        let c = self.chunks.partition_point(|(start, _)| *start <= i) - 1;
        let (start, chunk) = &self.chunks[c];
        chunk.get(i - start).map(|s| &**s)
    }

    pub(crate) fn contains(&self, value: &str) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let (_, chunk) = &self.chunks[self.chunk_for(value)];
        chunk.binary_search_by(|p| (**p).cmp(value)).is_ok()
    }

    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            chunks: self.chunks.iter(),
            current: [].iter(),
            remaining: self.len,
        }
    }

    /// Inserts `value`; false if it was already there.
    pub(crate) fn insert(&mut self, value: Arc<str>) -> bool {
        let chunks = Arc::make_mut(&mut self.chunks);
        if chunks.is_empty() {
            chunks.push((0, Arc::new(vec![value])));
            self.len = 1;
            return true;
        }
        let c = {
            let p = chunks.partition_point(|(_, ch)| *ch[0] <= *value);
            p.saturating_sub(1)
        };
        let chunk = Arc::make_mut(&mut chunks[c].1);
        let pos = match chunk.binary_search(&value) {
            Ok(_) => return false,
            Err(pos) => pos,
        };
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

    /// Removes `value`; false if it was not there.
    pub(crate) fn remove(&mut self, value: &str) -> bool {
        if !self.contains(value) {
            return false;
        }
        let c = self.chunk_for(value);
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[c].1);
        let pos = chunk
            .binary_search_by(|p| (**p).cmp(value))
            .expect("checked by contains");
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

    fn shift_starts(chunks: &mut [(usize, Chunk)], from: usize, by: isize) {
        for (start, _) in &mut chunks[from..] {
            *start = start.wrapping_add_signed(by);
        }
    }
}

/// Iterator over the instances of an [`Instances`](crate::Instances), in
/// sorted order.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    chunks: std::slice::Iter<'a, (usize, Chunk)>,
    current: std::slice::Iter<'a, Arc<str>>,
    remaining: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
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

impl ExactSizeIterator for Iter<'_> {}

impl std::iter::FusedIterator for Iter<'_> {}

impl PartialEq for SortedChunks {
    fn eq(&self, other: &SortedChunks) -> bool {
        self.ptr_eq(other)
            || (self.len == other.len && self.iter().cmp(other.iter()) == Ordering::Equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::SplitMix64;
    use std::collections::BTreeSet;

    fn check(set: &SortedChunks, model: &BTreeSet<String>) {
        assert_eq!(set.len(), model.len());
        let all: Vec<&str> = set.iter().collect();
        let want: Vec<&str> = model.iter().map(String::as_str).collect();
        assert_eq!(all, want);
        for (i, v) in want.iter().enumerate() {
            assert_eq!(set.get(i), Some(*v), "get({i})");
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

    #[test]
    fn random_operations_match_a_btreeset() {
        let mut rng = SplitMix64::new(42);
        let mut set = SortedChunks::default();
        let mut model = BTreeSet::new();
        let mut snapshots = Vec::new();
        for round in 0..6000 {
            let v = format!("10.0.{}.{}:80", rng.below(8), rng.below(300));
            if rng.below(3) == 0 {
                assert_eq!(set.remove(&v), model.remove(&v));
            } else {
                assert_eq!(set.insert(Arc::from(v.as_str())), model.insert(v));
            }
            assert!(!set.contains("zzz") && !set.contains(""));
            if round % 500 == 0 {
                check(&set, &model);
                snapshots.push((set.clone(), model.clone()));
            }
        }
        check(&set, &model);
        // Snapshots are unaffected by later changes.
        for (snap, model) in &snapshots {
            check(snap, model);
        }
    }

    #[test]
    fn bulk_build_and_equality() {
        let items: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("{i:05}"))).collect();
        let a = SortedChunks::from_sorted(items.clone());
        let mut b = SortedChunks::default();
        for i in items.iter().rev() {
            b.insert(i.clone());
        }
        assert!(a == b && !a.ptr_eq(&b));
        let model: BTreeSet<String> = items.iter().map(|s| s.to_string()).collect();
        check(&a, &model);
        check(&b, &model);
        assert!(SortedChunks::default() == SortedChunks::from_sorted(Vec::new()));
    }
}
