//! go-kit's `Client.WatchPrefix`: a notifier that sends `()` once at start and
//! then once per batch of changes under a prefix (coalesced: at most one
//! notification waits in the channel).

use crossbeam_channel as cb;

use crate::backoff::Backoff;
use crate::error::from_etcd;

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

    pub(crate) async fn run(self, ctx: crate::runtime::Ctx) {
        use etcd_client::WatchOptions;
        let mut backoff = Backoff::standard();
        let mut revision = 0i64;
        loop {
            let mut opts = WatchOptions::new().with_prefix();
            if revision > 0 {
                opts = opts.with_start_revision(revision + 1);
            }
            let mut client = ctx.watch();
            match ctx
                .bounded("watch", client.watch(self.prefix.clone(), Some(opts)))
                .await
            {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.created() {
                                backoff.reset();
                                if let Some(h) = resp.header() {
                                    revision = revision.max(h.revision());
                                }
                            }
                            if resp.canceled() {
                                // Compacted or refused: start over from now and
                                // say something may have changed.
                                revision = 0;
                                if !self.notify() {
                                    return;
                                }
                                break;
                            }
                            if !resp.events().is_empty() {
                                for ev in resp.events() {
                                    if let Some(kv) = ev.kv() {
                                        revision = revision.max(kv.mod_revision());
                                    }
                                }
                                if !self.notify() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::debug!(target: LOG, "{}: watch broke: {}", self.prefix, from_etcd(e));
                            break;
                        }
                    }
                },
                Err(e) => log::debug!(target: LOG, "{}: cannot watch: {e}", self.prefix),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}
