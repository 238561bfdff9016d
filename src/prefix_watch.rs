//! One watch session over a prefix that can be resumed where it broke: what
//! the Instancer and `Client::watch_prefix` both run, each with its own
//! handling of the responses.
//!
//! The session keeps the revision of the last change seen (and of progress
//! notifications, which say everything up to them was sent), so the next
//! session starts right after it: no change is missed and none repeated.
//! Only the loss of that history ends the chain ([`End::HistoryGone`]): a
//! compaction past the revision, or an etcd whose revisions went back (it
//! lost its data, or the cluster was rebuilt), where a watch resumed after
//! the old revision would wait for revisions that never come.

use etcd_client::{WatchOptions, WatchResponse};

use crate::error::{from_cancel_reason, from_etcd, Error, ErrorKind};
use crate::runtime::Ctx;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The handler asked to stop.
    Stopped,
    /// The history to resume from is gone: compacted away, or replaced (etcd
    /// is at a revision below the one to resume from). Read again.
    HistoryGone,
    /// The stream could not be opened, broke, or was cancelled by etcd.
    Broken(Error),
}

/// What the handler wants after a response.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Watches `prefix` after `*revision`, or from now when it is 0, with
/// progress notifications, and calls `on` with every response that is not a
/// cancellation (the creation, changes, progress). Keeps `*revision` at the
/// last revision known to be delivered in full. Opening is bounded by the
/// request timeout; an open session runs until it ends (drop it to stop it).
pub(crate) async fn session(
    ctx: &Ctx,
    prefix: &str,
    revision: &mut i64,
    mut on: impl FnMut(&WatchResponse) -> Flow,
) -> End {
    let mut opts = WatchOptions::new().with_prefix().with_progress_notify();
    if *revision > 0 {
        opts = opts.with_start_revision(*revision + 1);
    }
    let mut client = ctx.watch();
    let mut stream = match ctx.bounded("watch", client.watch(prefix, Some(opts))).await {
        Ok(s) => s,
        Err(e) => return End::Broken(e),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return End::Broken(Error::new(ErrorKind::Unavailable, "watch stream closed"))
            }
            Err(e) => return End::Broken(from_etcd(e).context("watch")),
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return End::HistoryGone;
            }
            return End::Broken(from_cancel_reason(resp.cancel_reason()));
        }
        let header = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.created() {
            if header < *revision {
                // etcd is behind what we saw from it: a new history.
                return End::HistoryGone;
            }
            // From now: everything after the creation's revision comes. (A
            // resumed watch must not jump ahead: the changes it missed are
            // still to come after the creation.)
            if *revision == 0 {
                *revision = header;
            }
        } else if resp.events().is_empty() {
            // A progress notification: everything up to here was sent.
            *revision = (*revision).max(header);
        }
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                *revision = (*revision).max(kv.mod_revision());
            }
        }
        if let Flow::Stop = on(&resp) {
            return End::Stopped;
        }
    }
}
