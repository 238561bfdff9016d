//! The watch loop of one discovery, a task on the runtime thread: read the
//! prefix at a revision R, watch from R + 1 and apply each change to a
//! [`View`] (key bytes → value, value → count, and the sorted set of distinct
//! values); publish a new snapshot to the subscribers' [`Topic`] only when the
//! visible set changes. A broken watch resumes after the last revision seen
//! (at once and quietly when it had been up); a history that is gone
//! (compaction, a wiped etcd, another cluster) means reading again.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::chunks::SortedChunks;
use crate::dispatch::Topic;
use crate::error::{is_compacted, is_future_revision, Error};
use crate::instances::{Event, Instances};
use crate::name::Name;
use crate::runtime::etcd::{read_prefix, Ctx};
use crate::runtime::watch::{self as prefix_watch, End, Position};
use crate::runtime::Reply;
use crate::snapshot::Feed;
use crate::stats::{self, Counter};

const LOG: &str = "etcd_sd::instancer";

/// The set of values under the prefix, kept up to date change by change:
/// key → value, value → number of keys holding it, and the visible set of
/// distinct values (copy-on-write chunks, so a snapshot is O(1)). Each
/// distinct value is one shared [`Name`], whoever holds it.
///
/// Keys are kept as etcd's bytes: two keys that differ only in bytes that are
/// not UTF-8 are two instances. Values are converted lossily for the `&str`
/// API.
#[derive(Default)]
struct View {
    by_key: HashMap<Vec<u8>, Name>,
    counts: HashMap<Name, usize>,
    set: SortedChunks<Name>,
}

impl View {
    fn reset(&mut self, kvs: Vec<(Vec<u8>, String)>) {
        self.by_key.clear();
        self.counts.clear();
        for (k, v) in kvs {
            let value = match self.counts.get_key_value(v.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => Name::from_string(v),
            };
            *self.counts.entry(value.clone()).or_insert(0) += 1;
            if let Some(old) = self.by_key.insert(k, value) {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        let mut values: Vec<Name> = self.counts.keys().cloned().collect();
        values.sort_unstable();
        self.set = SortedChunks::from_sorted(values);
    }

    /// The `Name` of `value`: the one already held, or a new one.
    fn shared(&self, value: &str) -> Name {
        match self.counts.get_key_value(value) {
            Some((shared, _)) => shared.clone(),
            None => Name::new(value),
        }
    }

    /// Applies a put; true when the visible set changed.
    fn put(&mut self, key: Vec<u8>, value: &str) -> bool {
        if let Some(old) = self.by_key.get(&key) {
            if old.as_str() == value {
                return false;
            }
        }
        let value = self.shared(value);
        let mut changed = false;
        if let Some(old) = self.by_key.insert(key, value.clone()) {
            changed |= self.dec(&old);
        }
        let count = self.counts.entry(value.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.set.insert(value);
            changed = true;
        }
        changed
    }

    /// Applies a delete; true when the visible set changed.
    fn delete(&mut self, key: &[u8]) -> bool {
        match self.by_key.remove(key) {
            Some(old) => self.dec(&old),
            None => false,
        }
    }

    fn dec(&mut self, value: &Name) -> bool {
        match self.counts.get_mut(value) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(value);
                self.set.remove(value.as_str());
                true
            }
            None => false,
        }
    }

    /// True when `kvs` (key order or not) is exactly the state this view
    /// holds: the same keys with the same values.
    fn holds(&self, kvs: &[(Vec<u8>, String)]) -> bool {
        kvs.len() == self.by_key.len()
            && kvs
                .iter()
                .all(|(k, v)| self.by_key.get(k).is_some_and(|n| n.as_str() == v))
    }

    fn snapshot(&self) -> Instances {
        Instances::from_set(self.set.clone())
    }
}

/// How often a broken watch may be resumed at once, without an error Event
/// and without backoff.
const QUIET_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The watch loop of one discovery, run on the runtime thread.
pub(crate) struct Task {
    prefix: String,
    topic: Arc<Topic>,
    stop: watch::Receiver<bool>,
    ready: Option<Reply<()>>,
    /// Keep going when the first read fails (it is reported as an error
    /// Event with `initial`, then `ready` hears it).
    tolerant: bool,
    /// The last good set before etcd answers (a snapshot file's).
    initial: Instances,
    /// Where every state etcd gives goes, for the snapshot file.
    feed: Option<Feed>,
}

impl Task {
    /// The loop for `prefix`, publishing to `topic`, until `stop` says so;
    /// `ready` gets the outcome of the first read.
    pub(crate) fn new(
        prefix: String,
        topic: Arc<Topic>,
        stop: watch::Receiver<bool>,
        ready: Reply<()>,
    ) -> Task {
        Task {
            prefix,
            topic,
            stop,
            ready: Some(ready),
            tolerant: false,
            initial: Instances::default(),
            feed: None,
        }
    }

    /// Never gives up: a failed first read is an error Event holding
    /// `initial` (the last good set known, from a snapshot file), and the
    /// loop goes on with backoff. Every state etcd gives goes to `feed`.
    pub(crate) fn tolerant(mut self, initial: Instances, feed: Option<Feed>) -> Task {
        self.tolerant = true;
        self.initial = initial;
        self.feed = feed;
        self
    }

    /// Hands the state etcd gave to the snapshot writer, if any.
    fn offer(&self, revision: i64, set: &Instances) {
        if let Some(feed) = &self.feed {
            feed.offer(revision, set);
        }
    }

    pub(crate) async fn run(mut self, ctx: Ctx) {
        let mut view = View::default();
        let mut snapshot = std::mem::take(&mut self.initial);
        let mut position = Position::default();
        let mut need_read = true;
        let mut backoff = Backoff::standard();
        // A session that broke after it was up is opened again at once (on
        // another member, when its own stopped answering) before anyone is
        // told: only when that fails do subscribers get an error Event. At
        // most once per QUIET_RETRY_EVERY, so a stream that etcd keeps
        // cancelling right after creating it still backs off.
        let mut last_quiet_retry: Option<tokio::time::Instant> = None;
        loop {
            if need_read {
                let read = tokio::select! {
                    r = read_prefix(&ctx, &self.prefix, 0) => r,
                    _ = stopped(&mut self.stop) => return,
                };
                match read {
                    Ok(read) => {
                        position = Position::after_read(&read);
                        view.reset(read.kvs);
                        snapshot = view.snapshot();
                        need_read = false;
                        self.topic.publish(Event {
                            instances: snapshot.clone(),
                            err: None,
                        });
                        self.offer(position.revision, &snapshot);
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        if !self.tolerant {
                            if let Some(ready) = self.ready.take() {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        }
                        // Subscribers (and `current`) hold the error before
                        // the caller hears of it.
                        self.report(&snapshot, e.clone());
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Err(e));
                        }
                        if !self.pause(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut established = false;
            let end = match self.check_history(&ctx, &mut position, &view).await {
                Some(end) => end,
                None => {
                    self.watch(
                        &ctx,
                        &mut view,
                        &mut snapshot,
                        &mut position,
                        &mut backoff,
                        &mut established,
                    )
                    .await
                }
            };
            match end {
                End::Stopped => return,
                End::HistoryGone(why) => {
                    log::info!(target: LOG, "{}: {why} (after revision {}); reading again", self.prefix, position.revision);
                    ctx.counters.add(Counter::Rereads);
                    need_read = true;
                }
                End::Broken(e) => {
                    // An expired token cancels watches; get a fresh one.
                    ctx.refresh_auth(&e).await;
                    let quiet_ok =
                        last_quiet_retry.is_none_or(|t| t.elapsed() >= QUIET_RETRY_EVERY);
                    if established && quiet_ok {
                        last_quiet_retry = Some(tokio::time::Instant::now());
                        log::debug!(target: LOG, "{}: watch broke ({e}); resuming at once", self.prefix);
                        continue;
                    }
                    self.report(&snapshot, e);
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a break, before resuming: reads the prefix at the revision to
    /// resume after and compares it with the view. The same: resume (`None`).
    /// Not the same, or not there any more, means etcd holds another history
    /// (it lost its data and wrote again, maybe the very same keys at the very
    /// same revisions; another cluster answers; a compaction): read again.
    /// Reading it where this history left it is the one check that no
    /// replay can pass by chance, and it costs what a re-read would.
    async fn check_history(
        &mut self,
        ctx: &Ctx,
        position: &mut Position,
        view: &View,
    ) -> Option<End> {
        if !position.needs_check() {
            return None;
        }
        let read = tokio::select! {
            r = read_prefix(ctx, &self.prefix, position.revision) => r,
            _ = stopped(&mut self.stop) => return Some(End::Stopped),
        };
        match read {
            Ok(read) if !position.same_cluster_id(read.cluster_id) => {
                Some(End::HistoryGone("another cluster answers"))
            }
            Ok(read) if view.holds(&read.kvs) => {
                position.checked();
                ctx.counters.add(Counter::WatchResumes);
                None
            }
            Ok(_) => Some(End::HistoryGone(
                "etcd holds another history (it lost its data)",
            )),
            Err(e) if is_future_revision(&e) => Some(End::HistoryGone(
                "etcd's revision went back (it lost its data)",
            )),
            Err(e) if is_compacted(&e) => Some(End::HistoryGone(
                "compacted past the revision to resume from",
            )),
            Err(e) => Some(End::Broken(e)),
        }
    }

    /// Tells subscribers the watch is down, keeping the last good set.
    fn report(&self, snapshot: &Instances, e: Error) {
        log::debug!(target: LOG, "{}: {e}", self.prefix);
        if self.topic.publish(Event {
            instances: snapshot.clone(),
            err: Some(e.clone()),
        }) {
            log::warn!(target: LOG, "{}: watch down, keeping the last good set: {e}", self.prefix);
        }
    }

    /// Sleeps the next backoff step; false when stopped meanwhile.
    async fn pause(&mut self, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }

    /// One watch session from `revision + 1`, applying changes as they come.
    async fn watch(
        &mut self,
        ctx: &Ctx,
        view: &mut View,
        snapshot: &mut Instances,
        position: &mut Position,
        backoff: &mut Backoff,
        established: &mut bool,
    ) -> End {
        use etcd_client::EventType;
        let prefix = &self.prefix;
        let topic = &self.topic;
        let feed = self.feed.as_ref();
        let mut revision = position.revision;
        let session = prefix_watch::session(ctx, prefix, position, |resp| {
            let arrived = std::time::Instant::now();
            let header = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.events().is_empty() && !resp.created() {
                // Progress: etcd confirms the set up to here.
                revision = revision.max(header);
                if let Some(feed) = feed {
                    feed.offer(revision, snapshot);
                }
            }
            if resp.created() {
                *established = true;
                backoff.reset();
                // Back after an outage: say so, even if nothing changed.
                let was_down = topic.current().err.is_some();
                if topic.publish(Event {
                    instances: snapshot.clone(),
                    err: None,
                }) && was_down
                {
                    log::info!(target: LOG, "{prefix}: watch is back");
                }
                if let Some(feed) = feed {
                    feed.offer(revision, snapshot);
                }
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                changed |= match ev.event_type() {
                    EventType::Put => {
                        view.put(kv.key().to_vec(), &String::from_utf8_lossy(kv.value()))
                    }
                    EventType::Delete => view.delete(kv.key()),
                };
            }
            if changed {
                *snapshot = view.snapshot();
                topic.publish(Event {
                    instances: snapshot.clone(),
                    err: None,
                });
                stats::event_delay(prefix, arrived.elapsed());
            }
            if !resp.events().is_empty() {
                if let Some(feed) = feed {
                    feed.offer(revision, snapshot);
                }
            }
            ControlFlow::Continue(())
        });
        tokio::select! {
            end = session => end,
            _ = stopped(&mut self.stop) => End::Stopped,
        }
    }
}

/// Resolves once the instancer is stopped or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_dedups_and_reports_visible_changes() {
        let mut v = View::default();
        assert!(v.put(b"/a".to_vec(), "x"));
        assert!(!v.put(b"/b".to_vec(), "x"), "same value under a second key");
        assert!(!v.put(b"/a".to_vec(), "x"), "identical re-put");
        assert!(!v.delete(b"/a"), "x still under /b");
        assert!(v.delete(b"/b"));
        assert!(!v.delete(b"/nope"));
        assert!(v.put(b"/a".to_vec(), "y"));
        assert!(v.put(b"/a".to_vec(), "z"), "value replaced");
        assert_eq!(v.snapshot().to_vec(), ["z"]);
        v.reset(vec![
            (b"/1".to_vec(), "b".into()),
            (b"/2".to_vec(), "a".into()),
            (b"/3".to_vec(), "a".into()),
        ]);
        assert_eq!(v.snapshot().to_vec(), ["a", "b"]);
        assert!(v.holds(&[
            (b"/3".to_vec(), "a".into()),
            (b"/1".to_vec(), "b".into()),
            (b"/2".to_vec(), "a".into()),
        ]));
        assert!(!v.holds(&[(b"/1".to_vec(), "b".into()), (b"/2".to_vec(), "a".into())]));
        assert!(!v.holds(&[
            (b"/1".to_vec(), "b".into()),
            (b"/2".to_vec(), "a".into()),
            (b"/3".to_vec(), "c".into()),
        ]));
    }

    #[test]
    fn keys_that_differ_only_in_invalid_utf8_stay_two_instances() {
        let mut v = View::default();
        assert!(v.put(b"/p/\xff".to_vec(), "one"));
        assert!(
            v.put(b"/p/\xfe".to_vec(), "two"),
            "another key, not a replacement"
        );
        assert_eq!(v.snapshot().to_vec(), ["one", "two"]);
        assert!(v.delete(b"/p/\xff"));
        assert_eq!(v.snapshot().to_vec(), ["two"]);
        v.reset(vec![
            (b"/p/\xff".to_vec(), "one".into()),
            (b"/p/\xfe".to_vec(), "two".into()),
        ]);
        assert_eq!(v.snapshot().len(), 2);
    }
}
