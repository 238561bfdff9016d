//! The members of the cluster the client was given, and the choice among them.
//!
//! etcd-client's multi-endpoint channel balances every request over all
//! endpoints, dead or alive, so one dead member made a share of all calls
//! fail. Here each endpoint gets a connection of its own and the runtime
//! chooses, as etcd's Go client does:
//!
//! * **Calls** ([`Members::call`]) go to the preferred member first; a member
//!   that fails with an error another member may not have (refused, reset,
//!   no leader, timed out) is marked suspect and the call moves to the next
//!   member at once. A member that does not answer within the hedge delay
//!   gets company: the same call starts on the next member and the first
//!   answer wins. All of it within the call's own bound (`request_timeout`).
//!   Suspect members are tried last; the member that answered becomes the
//!   preferred one.
//! * **Streams** (watches, lease keep-alives) are opened the same way and hold
//!   an [`InUse`] guard on their member. The prober ([`Members::probe_loop`])
//!   sends a bounded status call every [`PROBE_INTERVAL`] to each member that
//!   carries streams (and to suspect ones, to notice that they are back); a
//!   member that does not answer within [`PROBE_TIMEOUT`] is declared hung,
//!   and [`InUse::hung`] tells every stream on it to move. This is the
//!   application-level probe that finds a stopped or hung member; HTTP/2
//!   pings stay at etcd's accepted rate (see `client::connect_options`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{from_etcd, worth_another_member, Error, ErrorKind, Result};
use crate::stats::Counters;

const LOG: &str = "etcd_sd::members";

/// How often a member in use (or suspect) is probed.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe may take before its member is declared hung. With
/// [`PROBE_INTERVAL`], a member that stops answering is found within about
/// 2 s, which keeps a change written through the others visible within 3 s.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One endpoint and its connection.
struct Member {
    endpoint: String,
    /// Made on first use: with credentials, making it authenticates, which
    /// needs the member to answer.
    client: Mutex<Option<etcd_client::Client>>,
    /// Failed or found slow lately: tried after the others.
    suspect: AtomicBool,
    /// Answers for another cluster than the others: never used while a
    /// member of the client's cluster is there.
    foreign: AtomicBool,
    /// Streams open on this member (what the prober watches over).
    streams: AtomicUsize,
    /// Bumped when the member is declared hung: streams on it move.
    hung: watch::Sender<u64>,
}

/// The members of one client, shared by the runtime's tasks.
pub(crate) struct Members {
    members: Vec<Member>,
    preferred: AtomicUsize,
    connect: etcd_client::ConnectOptions,
    /// The id of the client's cluster: the first one a member answered for
    /// (0 before that). With several endpoints, a member that answers for
    /// another is foreign.
    cluster_id: AtomicU64,
    /// The client's counters: `connected` is kept here.
    counters: Arc<Counters>,
    /// Becomes true at the first answer from any member, and stays so.
    answered_once: watch::Sender<bool>,
}

impl Members {
    /// Members for `endpoints` (normalised URLs); nothing is dialled yet.
    pub(crate) fn new(
        endpoints: &[String],
        connect: etcd_client::ConnectOptions,
        counters: Arc<Counters>,
    ) -> Members {
        let members = endpoints
            .iter()
            .map(|e| Member {
                endpoint: e.clone(),
                client: Mutex::new(None),
                suspect: AtomicBool::new(false),
                foreign: AtomicBool::new(false),
                streams: AtomicUsize::new(0),
                hung: watch::channel(0).0,
            })
            .collect();
        Members {
            members,
            preferred: AtomicUsize::new(0),
            connect,
            cluster_id: AtomicU64::new(0),
            counters,
            answered_once: watch::channel(false).0,
        }
    }

    /// Resolves when a member answers for the first time since the members
    /// were made; never, once one has answered. Tasks waiting out a backoff
    /// before the client's first answer try again at once then.
    pub(crate) async fn first_answer(&self) {
        let mut rx = self.answered_once.subscribe();
        if *rx.borrow_and_update() || rx.wait_for(|&v| v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Some member answered: records the first answer.
    fn note_answer(&self) {
        self.counters.set_connected(true);
        self.answered_once
            .send_if_modified(|v| !std::mem::replace(v, true));
    }

    /// The endpoint of member `i`.
    pub(crate) fn endpoint(&self, i: usize) -> &str {
        &self.members[i].endpoint
    }

    /// The connection to member `i`, made on first use. With several
    /// endpoints a new connection first asks the member which cluster it
    /// belongs to: an endpoint of another cluster in the list must not
    /// answer for this one.
    async fn client(&self, i: usize) -> Result<Conn> {
        if let Some(c) = self.members[i].client.lock().clone() {
            return Ok(c);
        }
        let member = &self.members[i];
        let client =
            etcd_client::Client::connect([member.endpoint.as_str()], Some(self.connect.clone()))
                .await
                .map_err(from_etcd)?;
        if self.members.len() > 1 {
            let status = client
                .maintenance_client()
                .status()
                .await
                .map_err(from_etcd)?;
            let id = status.header().map(|h| h.cluster_id()).unwrap_or(0);
            self.check_cluster(i, id)?;
        }
        *member.client.lock() = Some(client.clone());
        Ok(client)
    }

    /// Checks that member `i` answers for the client's cluster (adopting
    /// `id` as the client's when none is known yet); marks it foreign if not.
    fn check_cluster(&self, i: usize, id: u64) -> Result<()> {
        if id == 0 || self.members.len() == 1 {
            return Ok(());
        }
        match self
            .cluster_id
            .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Ok(()),
            Err(ours) if ours == id => Ok(()),
            Err(ours) => {
                let member = &self.members[i];
                if !member.foreign.swap(true, Ordering::Relaxed) {
                    log::error!(target: LOG, "member {} answers for another etcd cluster (id {id:x}, not {ours:x}); not using it", member.endpoint);
                }
                member.hung.send_modify(|g| *g += 1);
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{} belongs to another etcd cluster (id {id:x}, not {ours:x})",
                        member.endpoint
                    ),
                ))
            }
        }
    }

    /// The connections made so far (to refresh their auth tokens).
    pub(crate) fn connected(&self) -> Vec<Conn> {
        self.members
            .iter()
            .filter_map(|m| m.client.lock().clone())
            .collect()
    }

    /// The order to try members in: the preferred one, then the others in
    /// turn, suspect ones last; foreign ones not at all. When every member
    /// is foreign, the whole cluster was replaced: follow the new one.
    fn order(&self) -> Vec<usize> {
        let n = self.members.len();
        let ours: Vec<usize> = (0..n)
            .filter(|&i| !self.members[i].foreign.load(Ordering::Relaxed))
            .collect();
        if ours.is_empty() {
            log::warn!(target: LOG, "every member answers for another etcd cluster; following it");
            self.cluster_id.store(0, Ordering::Relaxed);
            for m in &self.members {
                m.foreign.store(false, Ordering::Relaxed);
            }
            return self.order();
        }
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let (mut healthy, suspect): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (first + k) % n)
            .filter(|i| ours.contains(i))
            .partition(|&i| !self.members[i].suspect.load(Ordering::Relaxed));
        healthy.extend(suspect);
        healthy
    }

    /// Member `i` answered: prefer it.
    fn answered(&self, i: usize) {
        self.note_answer();
        if self.members[i].suspect.swap(false, Ordering::Relaxed) && self.members.len() > 1 {
            log::info!(target: LOG, "member {} answers again", self.members[i].endpoint);
        }
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// Member `i` failed or was slow: try the others first from now on.
    fn suspect(&self, i: usize, why: &dyn std::fmt::Display) {
        if !self.members[i].suspect.swap(true, Ordering::Relaxed) && self.members.len() > 1 {
            log::warn!(target: LOG, "member {} is not answering ({why}); using the others first", self.members[i].endpoint);
        }
        if self.preferred.load(Ordering::Relaxed) == i {
            let next = self.order()[0];
            self.preferred.store(next, Ordering::Relaxed);
        }
    }

    /// Member `i` did not answer a probe: suspect it and move its streams.
    fn declare_hung(&self, i: usize, why: &dyn std::fmt::Display) {
        self.suspect(i, why);
        self.members[i].hung.send_modify(|g| *g += 1);
    }

    /// A stream on member `i` failed with `e`: when another member may do
    /// better, try the others first.
    pub(crate) fn stream_failed(&self, i: usize, e: &Error) {
        if worth_another_member(e) {
            self.suspect(i, e);
        }
    }

    /// Runs `op` on one member after another, within `bound`, as the module
    /// docs say; returns the first answer and the member that gave it.
    ///
    /// Only for requests that may safely reach etcd twice, even late (a copy
    /// held up in a stopped member lands when it resumes): reads, puts under
    /// a lease (a late one fails once the lease is revoked), revokes, grants
    /// with an id of our choosing, transactions guarded by a revision, and
    /// the opening of streams (the losers are dropped, which cancels them).
    pub(crate) async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        what: &str,
        bound: Duration,
        op: impl Request<T>,
    ) -> Result<Answered<T>> {
        let deadline = tokio::time::Instant::now() + bound;
        let order = self.order();
        let hedge = hedge_delay(bound);
        let op = Arc::new(op);
        let mut attempts: JoinSet<(usize, Result<T>)> = JoinSet::new();
        let mut next = 0;
        let mut last_error: Option<Error> = None;
        let mut running: Vec<usize> = Vec::new();
        let mut hedge_at = tokio::time::Instant::now();
        loop {
            let start_one = next < order.len()
                && (attempts.is_empty() || tokio::time::Instant::now() >= hedge_at);
            if start_one {
                let i = order[next];
                next += 1;
                running.push(i);
                let members = self.clone();
                let op = op.clone();
                attempts.spawn(async move {
                    let r = match members.client(i).await {
                        Ok(c) => op.send(c).await.map_err(from_etcd),
                        Err(e) => Err(e),
                    };
                    (i, r)
                });
                hedge_at = tokio::time::Instant::now() + hedge;
                continue;
            }
            if attempts.is_empty() {
                // Every member failed with an error worth trying another for.
                self.counters.set_connected(false);
                return Err(last_error.unwrap_or_else(|| Error::timeout(what)));
            }
            let more = next < order.len();
            tokio::select! {
                joined = attempts.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (i, r) = match joined {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Only a panic in etcd-client gets here.
                            last_error = Some(Error::with_source(ErrorKind::Unavailable, format!("{what}: attempt failed"), e));
                            continue;
                        }
                    };
                    running.retain(|&r| r != i);
                    match r {
                        Ok(v) => {
                            self.answered(i);
                            return Ok(Answered {
                                member: i,
                                value: v,
                                unanswered: running,
                            });
                        }
                        Err(e) if worth_another_member(&e) => {
                            self.suspect(i, &e);
                            last_error = Some(self.at(i, e));
                            // The next member starts at once.
                            hedge_at = tokio::time::Instant::now();
                        }
                        Err(e) => return Err(self.at(i, e)),
                    }
                }
                _ = tokio::time::sleep_until(hedge_at), if more => {
                    for &i in &running {
                        self.suspect(i, &format_args!("no answer to {what} within {hedge:?}"));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.counters.set_connected(false);
                    for &i in &running {
                        self.suspect(i, &format_args!("no answer to {what} within {bound:?}"));
                    }
                    return Err(match last_error {
                        Some(e) if e.kind() != ErrorKind::Timeout => e.context(&format!("{what} timed out after {bound:?}; earlier")),
                        _ => Error::timeout(what),
                    });
                }
            }
        }
    }

    /// `e`, naming the member when there are several.
    fn at(&self, i: usize, e: Error) -> Error {
        if self.members.len() > 1 {
            e.context(&self.members[i].endpoint)
        } else {
            e
        }
    }

    /// True when none of `members` is suspect: each has answered since it
    /// failed or hung (the prober asks suspect members every second).
    pub(crate) fn all_answering(&self, members: &[usize]) -> bool {
        members
            .iter()
            .all(|&i| !self.members[i].suspect.load(Ordering::Relaxed))
    }

    /// Marks a stream open on member `i` until the guard is dropped.
    pub(crate) fn in_use(self: &Arc<Self>, i: usize) -> InUse {
        let member = &self.members[i];
        member.streams.fetch_add(1, Ordering::Relaxed);
        InUse {
            members: self.clone(),
            index: i,
            hung: member.hung.subscribe(),
        }
    }

    /// Probes members in use and suspect ones, forever (the runtime drops it
    /// at shutdown).
    pub(crate) async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let wanted: Vec<usize> = (0..self.members.len())
                .filter(|&i| {
                    let m = &self.members[i];
                    if m.foreign.load(Ordering::Relaxed) {
                        return false;
                    }
                    m.streams.load(Ordering::Relaxed) > 0
                        || (self.members.len() > 1 && m.suspect.load(Ordering::Relaxed))
                })
                .collect();
            let mut probes = JoinSet::new();
            for i in wanted {
                let members = self.clone();
                probes.spawn(async move { (i, members.probe(i).await) });
            }
            while let Some(done) = probes.join_next().await {
                let Ok((i, r)) = done else { continue };
                match r {
                    Ok(()) => self.answered_probe(i),
                    Err(e) => {
                        if self.members[i].streams.load(Ordering::Relaxed) > 0 {
                            log::debug!(target: LOG, "member {}: probe failed: {e}", self.members[i].endpoint);
                            self.declare_hung(i, &e);
                        } else {
                            self.suspect(i, &e);
                        }
                    }
                }
            }
        }
    }

    /// A probe answered: a suspect member is back (but not preferred: the
    /// streams stay where they are).
    fn answered_probe(&self, i: usize) {
        self.note_answer();
        if self.members[i].suspect.swap(false, Ordering::Relaxed) && self.members.len() > 1 {
            log::info!(target: LOG, "member {} answers again", self.members[i].endpoint);
        }
    }

    /// One bounded status call to member `i`.
    async fn probe(&self, i: usize) -> Result<()> {
        let attempt = async {
            let c = self.client(i).await?;
            let status = c.maintenance_client().status().await.map_err(from_etcd)?;
            self.check_cluster(i, status.header().map(|h| h.cluster_id()).unwrap_or(0))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no answer to a status probe within {PROBE_TIMEOUT:?}"),
            )),
        }
    }
}

/// A connection to one member.
pub(crate) type Conn = etcd_client::Client;

/// The first answer to a [`Members::call`].
pub(crate) struct Answered<T> {
    /// The member that gave it.
    pub(crate) member: usize,
    pub(crate) value: T,
    /// Members the same request was sent to that had not answered: a copy
    /// may still be applied there, late (when a stopped member resumes).
    pub(crate) unanswered: Vec<usize>,
}

/// One request, as [`Members::call`] runs it on one member after another:
/// given a member's connection, the future of its answer. Any closure
/// `Fn(Conn) -> impl Future<Output = Result<T, etcd_client::Error>>` is one.
pub(crate) trait Request<T>: Send + Sync + 'static {
    /// The answer's future.
    type Answer: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static;

    /// Sends the request to the member behind `conn`.
    fn send(&self, conn: Conn) -> Self::Answer;
}

impl<T, F, Fut> Request<T> for F
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
{
    type Answer = Fut;

    fn send(&self, conn: Conn) -> Fut {
        self(conn)
    }
}

/// How long a call waits for one member before starting on the next as well:
/// a quarter of its bound, between 200 ms and 1 s. A healthy member answers
/// in milliseconds; the delay is what one hung member costs the first call
/// that meets it (later calls try it last).
fn hedge_delay(bound: Duration) -> Duration {
    (bound / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// A stream's hold on its member: counted for the prober, and told when the
/// member is declared hung.
pub(crate) struct InUse {
    members: Arc<Members>,
    index: usize,
    hung: watch::Receiver<u64>,
}

impl InUse {
    /// Resolves when the member is declared hung after this guard was made.
    pub(crate) async fn hung(&mut self) {
        if self.hung.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The stream failed with `e`: suspect the member when that may help.
    pub(crate) fn failed(&self, e: &Error) {
        self.members.stream_failed(self.index, e);
    }

    /// The endpoint of this stream's member.
    pub(crate) fn endpoint(&self) -> &str {
        self.members.endpoint(self.index)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.members.members[self.index]
            .streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let eps: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        Members::new(&eps, etcd_client::ConnectOptions::new(), Default::default())
    }

    #[test]
    fn order_puts_the_preferred_first_and_suspects_last() {
        let m = members(3);
        assert_eq!(m.order(), [0, 1, 2]);
        m.suspect(0, &"x");
        assert_eq!(m.order(), [1, 2, 0]);
        m.suspect(2, &"x");
        assert_eq!(m.order(), [1, 2, 0]);
        m.answered(2);
        assert_eq!(m.order(), [2, 1, 0]);
        m.answered(0);
        assert_eq!(m.order(), [0, 1, 2]);
    }

    #[test]
    fn hedge_delay_is_bounded() {
        assert_eq!(hedge_delay(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(
            hedge_delay(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            hedge_delay(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
    }
}
