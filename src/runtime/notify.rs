//! go-kit's `WatchPrefix`: a notifier that sends `()` once at start and
//! then once per batch of changes under a prefix (coalesced: at most one
//! notification waits in the channel).

use std::ops::ControlFlow;

use crossbeam_channel as cb;

use crate::backoff::Backoff;
use crate::runtime::etcd::Ctx;
use crate::runtime::watch::{self as prefix_watch, End, Position};

const LOG: &str = "etcd_sd::watch_prefix";

/// The notifier loop, run on the runtime thread until its receiver is gone.
pub(crate) struct Task {
    pub(crate) prefix: String,
    pub(crate) tx: cb::Sender<()>,
}

impl Task {
    /// Sends one notification; false once the receiver is gone.
    fn notify(&self) -> bool {
        !matches!(
            self.tx.try_send(()),
            Err(cb::TrySendError::Disconnected(()))
        )
    }

    pub(crate) async fn run(self, ctx: Ctx) {
        let mut backoff = Backoff::standard();
        // From now; then after the last revision seen, so that a broken watch
        // resumes after it and no change goes unnotified.
        let mut position = Position::from_now();
        // No session was ever created (etcd not answering since the start,
        // as for a lazy client before its first answer): changes made since
        // the initial `()` were not watched, so the first creation notifies.
        let mut unwatched = false;
        loop {
            // After a break etcd may hold another history, even one that got
            // past our revision (wiped, then written again): the creation of
            // the resumed watch says "something may have changed", which is
            // all a notifier can say, and its receiver reads again.
            let resumed = position.needs_check();
            let end = prefix_watch::session(&ctx, &self.prefix, &mut position, |resp| {
                if resp.created() {
                    backoff.reset();
                    if (resumed || std::mem::take(&mut unwatched)) && !self.notify() {
                        return ControlFlow::Break(());
                    }
                }
                // Changes are notified. So are progress notifications (no
                // events, not the creation; etcd sends one every 10 minutes
                // by default): sending is the only way to learn that the
                // receiver is gone, so this is when an idle watch ends. The
                // extra `()` is what go-kit's WatchPrefix sends too, for
                // every watch response.
                let changes = !resp.events().is_empty();
                let progress = !changes && !resp.created();
                if (changes || progress) && !self.notify() {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .await;
            match end {
                End::Stopped => return,
                End::HistoryGone(why) => {
                    // Changes may be lost with the history: start over from
                    // now and say something may have changed.
                    log::debug!(target: LOG, "{}: {why}; watching from now", self.prefix);
                    position = Position::from_now();
                    if !self.notify() {
                        return;
                    }
                }
                End::Broken(e) => {
                    log::debug!(target: LOG, "{}: watch broke: {e}", self.prefix);
                    ctx.refresh_auth(&e).await;
                    unwatched |= position.revision == 0;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = ctx.members.first_answer() => {}
                    }
                }
            }
        }
    }
}
