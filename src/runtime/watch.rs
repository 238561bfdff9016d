//! One watch session over a prefix that can be resumed where it broke: what
//! discovery (`discover`) and the `WatchPrefix` notifier (`notify`) both run,
//! each with its own handling of the responses.
//!
//! A [`Position`] carries the chain from one session to the next: the
//! revision of the last change seen (and of progress notifications, which
//! say everything up to them was sent), so the next session starts right
//! after it and no change is missed or repeated, and the id of the cluster
//! it comes from. After a break the caller checks that etcd still holds the
//! same history before resuming ([`Position::needs_check`]): discovery reads
//! the prefix at the revision and compares it with what it holds. Only the
//! loss of that history ends the chain ([`End::HistoryGone`]): a compaction
//! past the revision, an etcd whose revisions went back, another cluster on
//! the same address, or an etcd that lost its data and has since written
//! past the revision.

use std::ops::ControlFlow;

use etcd_client::{WatchOptions, WatchResponse};

use crate::error::{from_cancel_reason, from_etcd, Error, ErrorKind};
use crate::runtime::etcd::{watch, Ctx, PrefixRead};
use crate::runtime::members::Conn;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The handler asked to stop (`ControlFlow::Break`).
    Stopped,
    /// The history to resume from is gone (the text says why). Read again.
    HistoryGone(&'static str),
    /// The stream could not be opened, broke, was cancelled by etcd, or its
    /// member stopped answering.
    Broken(Error),
}

/// Where a chain of sessions stands.
#[derive(Debug, Default)]
pub(crate) struct Position {
    /// The last revision known to be delivered in full; 0: start from now.
    pub(crate) revision: i64,
    /// The history is known to be the one `revision` belongs to (just read,
    /// or checked since the last break).
    checked: bool,
    /// The id of the cluster the chain comes from; 0 until known.
    cluster_id: u64,
}

impl Position {
    /// Right after a read of the prefix.
    pub(crate) fn after_read(read: &PrefixRead) -> Position {
        Position {
            revision: read.revision,
            checked: true,
            cluster_id: read.cluster_id,
        }
    }

    /// From now on, knowing nothing of the past.
    pub(crate) fn from_now() -> Position {
        Position {
            revision: 0,
            checked: true,
            cluster_id: 0,
        }
    }

    /// True after a break, until [`checked`](Position::checked): the next
    /// session would resume after `revision`, and etcd may hold another
    /// history by now (restarted empty, another cluster, another member).
    pub(crate) fn needs_check(&self) -> bool {
        self.revision > 0 && !self.checked
    }

    /// etcd was found to hold the chain's history: resume.
    pub(crate) fn checked(&mut self) {
        self.checked = true;
    }

    /// Checks the cluster of an answer: false when another cluster answers
    /// than the one the chain comes from.
    fn same_cluster(&mut self, header: Option<&etcd_client::ResponseHeader>) -> bool {
        self.same_cluster_id(header.map(|h| h.cluster_id()).unwrap_or(0))
    }

    pub(crate) fn same_cluster_id(&mut self, id: u64) -> bool {
        match id {
            0 => true,
            id if self.cluster_id == 0 => {
                self.cluster_id = id;
                true
            }
            id => id == self.cluster_id,
        }
    }
}

/// Watches `prefix` after `pos.revision`, or from now when it is 0, with
/// progress notifications, and calls `on` with every response that is not a
/// cancellation (the creation, changes, progress). Keeps `pos` up to date.
/// After a break the caller checks the history first
/// ([`Position::needs_check`]). Opening is bounded by the request timeout and moves between members as
/// every call does; an open session runs until it ends (drop it to stop it),
/// and ends when its member is declared hung.
pub(crate) async fn session(
    ctx: &Ctx,
    prefix: &str,
    pos: &mut Position,
    on: impl FnMut(&WatchResponse) -> ControlFlow<()>,
) -> End {
    let end = run(ctx, prefix, pos, on).await;
    if let End::Broken(_) = end {
        // Until checked again, the next member or a restarted etcd may hold
        // another history.
        pos.checked = false;
    }
    end
}

async fn run(
    ctx: &Ctx,
    prefix: &str,
    pos: &mut Position,
    mut on: impl FnMut(&WatchResponse) -> ControlFlow<()>,
) -> End {
    let mut opts = WatchOptions::new().with_prefix().with_progress_notify();
    if pos.revision > 0 {
        opts = opts.with_start_revision(pos.revision + 1);
    }
    let key = prefix.to_owned();
    let open = ctx
        .open("watch", ctx.request_timeout, move |c: Conn| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { watch(&c).watch(key, Some(opts)).await }
        })
        .await;
    let (mut member, mut stream) = match open {
        Ok(pair) => pair,
        Err(e) => return End::Broken(e),
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = member.hung() => {
                return End::Broken(Error::new(ErrorKind::Unavailable,
                    format!("member {} stopped answering", member.endpoint())));
            }
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                let e = Error::new(ErrorKind::Unavailable, "watch stream closed");
                member.failed(&e);
                return End::Broken(e);
            }
            Err(e) => {
                let e = from_etcd(e).context("watch");
                member.failed(&e);
                return End::Broken(e);
            }
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return End::HistoryGone("compacted past the revision to resume from");
            }
            let e = from_cancel_reason(resp.cancel_reason());
            member.failed(&e);
            return End::Broken(e);
        }
        let header = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.created() {
            if !pos.same_cluster(resp.header()) {
                return End::HistoryGone("another cluster answers");
            }
            if header < pos.revision {
                return End::HistoryGone("etcd's revision went back (it lost its data)");
            }
            // From now: everything after the creation's revision comes. (A
            // resumed watch must not jump ahead: the changes it missed are
            // still to come after the creation.)
            if pos.revision == 0 {
                pos.revision = header;
            }
        } else if resp.events().is_empty() {
            // A progress notification: everything up to here was sent.
            pos.revision = pos.revision.max(header);
        }
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                pos.revision = pos.revision.max(kv.mod_revision());
            }
        }
        if on(&resp).is_break() {
            return End::Stopped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_cluster_id_is_another_history() {
        let mut pos = Position::from_now();
        assert!(pos.same_cluster_id(0), "no id: nothing to compare");
        assert!(pos.same_cluster_id(7), "the first id seen is the chain's");
        assert!(pos.same_cluster_id(7));
        assert!(!pos.same_cluster_id(9), "another cluster");
        assert!(pos.same_cluster_id(0));
    }
}
