//! The registration state machine, one task per registration on the runtime
//! thread: grant a lease (an id of our choosing) and put the key under it,
//! with the watch on the key opened alongside; keep the lease alive at the
//! heartbeat on the member that answers; notice a lost lease, a deleted key or
//! a whole ttl without an answer; start again with backoff; revoke on
//! deregistration.
//!
//! ```text
//! Unregistered ─register()─▶ Registering ─key written─▶ Registered ◀──┐
//!                                                          │           │ key written
//!                                 lease expired/revoked,   ▼           │ again (backoff)
//!                                 key deleted ──────────▶ Lost ────────┘
//! any state ─pause()─▶ Paused (lease revoked, key gone, task ended)
//! any state ─deregister()/drop─▶ Deregistered (lease revoked, key gone)
//! ```
//!
//! A pause ends the task as a deregistration does; resuming starts a new
//! task, which grants a new lease. Before the client's first answer from
//! etcd (a lazy start), a task waiting out its backoff tries again at once
//! when the first member answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::backoff::{Backoff, SplitMix64};
use crate::error::{
    from_cancel_reason, from_etcd, is_lease_exists, is_lease_not_found, Error, ErrorKind, Result,
};
use crate::options::{Service, TtlOption};
use crate::registration::{Control, RegistrationState, Shared};
use crate::runtime::etcd::{kv, watch, Ctx};
use crate::runtime::members::{Conn, InUse};
use crate::stats::Counter;

const LOG: &str = "etcd_sd::registrar";

/// The registration state machine, run on the runtime thread.
pub(crate) struct Task {
    service: Service,
    shared: Arc<Shared>,
    control: mpsc::UnboundedReceiver<Control>,
    epoch: u64,
    /// Members that were sent the grant of the lease in force and did not
    /// answer: a copy may still land there (a stopped member resuming) and
    /// bring the lease back after its revoke.
    late_grant: Vec<usize>,
}

impl Task {
    /// The state machine of `service`, reporting to `shared` as `epoch`,
    /// told what to do by `control`.
    pub(crate) fn new(
        service: Service,
        shared: Arc<Shared>,
        control: mpsc::UnboundedReceiver<Control>,
        epoch: u64,
    ) -> Task {
        Task {
            service,
            shared,
            control,
            epoch,
            late_grant: Vec::new(),
        }
    }
}

/// Why the keep-alive phase ended.
enum Loss {
    /// The lease is gone (expired or revoked): grant a new one.
    Lease(Error),
    /// The key is gone but the lease may live: put again under it.
    Key(Error),
    /// No keep-alive was answered for a whole ttl (etcd unreachable, or a
    /// cluster busy electing a leader). The lease may have survived: the
    /// next attempt puts under it first and grants a new one only if etcd
    /// says it is gone.
    Silent(Error),
}

impl Task {
    /// Ends the task after etcd refused the registration for good
    /// (`InvalidArgument`: too large, malformed), where retrying cannot help:
    /// revokes `lease` (bounded; a failure only means it expires by its
    /// ttl), closes the control channel so the handle's next `register`
    /// starts a new task (answering a deregistration that raced in), and
    /// reports `Unregistered` with the error.
    async fn give_up(&mut self, ctx: &Ctx, lease: Option<i64>, error: Error) {
        if let Some(id) = lease {
            if let Err(e) = self.revoke(ctx, id).await {
                log::debug!(target: LOG, "{}: revoking lease {id:x} after a refusal: {e}", self.service.key);
            }
        }
        self.control.close();
        while let Ok(Control::Deregister(reply) | Control::Pause(reply)) = self.control.try_recv() {
            let _ = reply.send(Ok(()));
        }
        self.shared.set(
            Some(self.epoch),
            RegistrationState::Unregistered,
            None,
            Some(error),
        );
    }
}

impl Task {
    pub(crate) async fn run(mut self, ctx: Ctx) {
        let ttl = self.service.ttl_or_default();
        let mut backoff = Backoff::standard();
        let mut lease: Option<i64> = None;
        // A registration lost since this task started: the next one made is
        // a re-registration.
        let mut lost_before = false;
        loop {
            // Establish: (grant and) put.
            let mut late = None;
            let attempt = establish(&ctx, &self.service, ttl, lease, &mut late);
            let outcome = tokio::select! {
                r = attempt => r,
                c = self.control.recv() => return self.finish(&ctx, c, lease).await,
            };
            if let Some(late) = late {
                self.late_grant = late;
            }
            let (revision, watch) = match outcome {
                Ok(Established {
                    lease: id,
                    revision,
                    watch,
                }) => {
                    lease = Some(id);
                    backoff.reset();
                    ctx.counters.add(Counter::Registrations);
                    if lost_before {
                        ctx.counters.add(Counter::Reregistrations);
                    }
                    self.shared
                        .set(Some(self.epoch), RegistrationState::Registered, lease, None);
                    (revision, watch)
                }
                Err(NotEstablished {
                    error: e,
                    lease: known_lease,
                }) => {
                    lease = known_lease;
                    if e.kind() == ErrorKind::InvalidArgument {
                        return self.give_up(&ctx, lease, e).await;
                    }
                    self.shared.note_error(self.epoch, e);
                    if !self.back_off(&ctx, &mut backoff, lease).await {
                        return;
                    }
                    continue;
                }
            };
            // Keep alive until lost.
            let id = lease.expect("registered with a lease");
            // The streams live out here so that a deregister revokes the
            // lease before they are torn down (closing them first would put
            // their RST_STREAM frames ahead of the revoke on the connection).
            let mut streams = Streams {
                keeper: None,
                watch,
            };
            let loss = tokio::select! {
                l = keep_alive(&ctx, &self.service.key, id, ttl, revision, &mut streams) => l,
                c = self.control.recv() => {
                    self.finish(&ctx, c, lease).await;
                    drop(streams);
                    return;
                }
            };
            drop(streams);
            let error = match loss {
                Loss::Lease(e) => {
                    ctx.counters.add(Counter::LeasesLost);
                    lease = None;
                    e
                }
                Loss::Key(e) | Loss::Silent(e) => e,
            };
            lost_before = true;
            self.shared
                .set(Some(self.epoch), RegistrationState::Lost, None, Some(error));
            // The first attempt after a loss goes at once (etcd may well be
            // answering: a revoked lease, a deleted key); failures then back
            // off from 100 ms.
        }
    }

    /// Waits the next backoff step (cut short by the client's first answer
    /// from etcd); false when told to stop meanwhile (and then already
    /// finished).
    async fn back_off(&mut self, ctx: &Ctx, backoff: &mut Backoff, lease: Option<i64>) -> bool {
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = ctx.members.first_answer() => true,
            c = self.control.recv() => {
                self.finish(ctx, c, lease).await;
                false
            }
        }
    }

    /// Deregisters or pauses (revoking `lease` if known) and reports to
    /// whoever asked. A pause whose revoke failed (etcd down) keeps trying
    /// to revoke in the background, so the key goes as soon as etcd answers
    /// rather than a ttl later.
    async fn finish(&mut self, ctx: &Ctx, control: Option<Control>, lease: Option<i64>) {
        let result = match lease {
            Some(id) => self.revoke(ctx, id).await,
            None => Ok(()),
        };
        let (state, reply) = match control {
            Some(Control::Pause(reply)) => (RegistrationState::Paused, Some(reply)),
            Some(Control::Deregister(reply)) => (RegistrationState::Deregistered, Some(reply)),
            None => (RegistrationState::Deregistered, None),
        };
        if let (RegistrationState::Paused, Some(id), Err(_)) = (state, lease, &result) {
            tokio::spawn(revoke_until_gone(ctx.clone(), id));
        }
        self.shared
            .set(Some(self.epoch), state, None, result.clone().err());
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Revokes `id` again and again, with backoff, until etcd answers (the lease
/// revoked, or already gone), for at most [`LATE_GRANT_WINDOW`].
async fn revoke_until_gone(ctx: Ctx, id: i64) {
    let deadline = tokio::time::Instant::now() + LATE_GRANT_WINDOW;
    let mut backoff = Backoff::standard();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(backoff.next_delay()).await;
        match revoke(&ctx, id).await {
            Ok(()) => {
                log::debug!(target: LOG, "lease {id:x}: revoked after the pause");
                return;
            }
            Err(e) => log::debug!(target: LOG, "lease {id:x}: revoking after a pause: {e}"),
        }
    }
}

impl Task {
    /// Revokes the lease in force; if a copy of its grant may still land on a
    /// member that did not answer, revokes it again once that member is back.
    async fn revoke(&mut self, ctx: &Ctx, id: i64) -> Result<()> {
        let result = revoke(ctx, id).await;
        let late = std::mem::take(&mut self.late_grant);
        if result.is_ok() && !late.is_empty() {
            tokio::spawn(revoke_late_grant(ctx.clone(), id, late));
        }
        result
    }
}

/// How long a revoked lease is watched for a late copy of its grant.
const LATE_GRANT_WINDOW: Duration = Duration::from_secs(600);

/// Waits (at most [`LATE_GRANT_WINDOW`]) until every member in `late` has
/// answered again, then revokes `id` once more: a copy of its grant that was
/// held up there has been applied by then and made the lease anew, with no
/// key under it and nobody keeping it alive, but for a whole ttl.
async fn revoke_late_grant(ctx: Ctx, id: i64, late: Vec<usize>) {
    let deadline = tokio::time::Instant::now() + LATE_GRANT_WINDOW;
    while !ctx.members.all_answering(&late) {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the member had queued is applied within moments of its answer.
    for pause in [Duration::from_millis(300), Duration::from_secs(2)] {
        tokio::time::sleep(pause).await;
        if let Err(e) = revoke(&ctx, id).await {
            log::debug!(target: LOG, "lease {id:x}: revoking a late grant: {e}");
        }
    }
}

/// Revokes a lease; one that is gone already is fine.
async fn revoke(ctx: &Ctx, id: i64) -> Result<()> {
    ctx.call("revoke lease", move |c: Conn| async move {
        c.lease_client().revoke(id).await
    })
    .await
    .map(|_| ())
    .or_else(|e| {
        if is_lease_not_found(&e) {
            Ok(())
        } else {
            Err(e)
        }
    })
}

/// Grants a lease of `ttl` with an id of our choosing, so that a grant that
/// reaches etcd twice (sent again to another member when the first did not
/// answer in time) makes one lease, not two: the second attempt hears that
/// the lease exists, which is ours.
///
/// Returns the lease and the members that were sent the grant without
/// answering (see [`revoke_late_grant`]).
async fn grant(ctx: &Ctx, ttl: TtlOption) -> Result<(i64, Vec<usize>)> {
    let id = new_lease_id();
    let seconds = ttl.lease_seconds();
    let granted = ctx
        .call_within(
            "grant lease",
            ctx.request_timeout,
            move |c: Conn| async move {
                let options = etcd_client::LeaseGrantOptions::new().with_id(id);
                c.lease_client().grant(seconds, Some(options)).await
            },
        )
        .await;
    match granted {
        Ok(answer) => Ok((answer.value.id(), answer.unanswered)),
        // The earlier copy got through; which member holds a later one is
        // not known, so none is watched.
        Err(e) if is_lease_exists(&e) => Ok((id, Vec::new())),
        Err(e) => Err(e),
    }
}

/// A random positive lease id (etcd takes any but 0; 63 random bits make a
/// clash with another lease as good as impossible).
fn new_lease_id() -> i64 {
    thread_local! {
        static RNG: std::cell::RefCell<SplitMix64> = std::cell::RefCell::new(SplitMix64::from_entropy());
    }
    loop {
        let id = RNG.with(|r| (r.borrow_mut().next_u64() >> 1) as i64);
        if id != 0 {
            return id;
        }
    }
}

/// Writes the service's key under `lease`; returns the revision of the write.
async fn put(ctx: &Ctx, service: &Service, lease: i64) -> Result<i64> {
    let (key, value) = (service.key.clone(), service.value.clone());
    let resp = ctx
        .call("put", move |c: Conn| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                kv(&c)
                    .put(
                        key,
                        value,
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    )
                    .await
            }
        })
        .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}

/// A registration written: what [`establish`] returns.
struct Established {
    /// The lease the key is under.
    lease: i64,
    /// The revision of the write.
    revision: i64,
    /// The watch on the key, created before the write (when it could be
    /// opened; [`keep_alive`] opens it otherwise).
    watch: Option<OwnKeyWatch>,
}

/// A registration not written: why, and the lease known to exist (to reuse
/// or revoke).
struct NotEstablished {
    error: Error,
    lease: Option<i64>,
}

impl NotEstablished {
    fn new(error: Error, lease: Option<i64>) -> NotEstablished {
        NotEstablished { error, lease }
    }
}

/// Grants a lease (unless `lease` is given and still valid) and writes the key
/// under it. Returns the lease, the revision of the write and a watch on the
/// key that etcd created before the write; on failure, the error and the
/// lease that is known to exist (to reuse or revoke).
///
/// The watch is opened alongside the grant, so it costs the registration no
/// time, and it is in place before `register()` returns: a deregistration
/// right after never races etcd setting up the watch. A watch that cannot be
/// opened is not an error: [`keep_alive`] opens it again from the write's
/// revision, so no change to the key is missed either way.
async fn establish(
    ctx: &Ctx,
    service: &Service,
    ttl: TtlOption,
    lease: Option<i64>,
    late_grant: &mut Option<Vec<usize>>,
) -> std::result::Result<Established, NotEstablished> {
    let watch = watch_own_key(ctx, &service.key, WatchFrom::Now, open_bound(ctx, ttl));
    let (watch, granted) = match lease {
        Some(id) => {
            let watch = watch.await;
            match put(ctx, service, id).await {
                Ok(revision) => {
                    return Ok(Established {
                        lease: id,
                        revision,
                        watch,
                    })
                }
                Err(e) if is_lease_not_found(&e) => ctx.counters.add(Counter::LeasesLost),
                Err(e) => return Err(NotEstablished::new(e, Some(id))),
            }
            (watch, grant(ctx, ttl).await)
        }
        None => tokio::join!(watch, grant(ctx, ttl)),
    };
    let (id, late) = granted.map_err(|e| NotEstablished::new(e, None))?;
    *late_grant = Some(late);
    match put(ctx, service, id).await {
        Ok(revision) => Ok(Established {
            lease: id,
            revision,
            watch,
        }),
        Err(e) => Err(NotEstablished::new(e, Some(id))),
    }
}

/// How long opening one of a registration's streams may take.
fn open_bound(ctx: &Ctx, ttl: TtlOption) -> Duration {
    ctx.request_timeout
        .min(ttl.heartbeat().max(Duration::from_millis(500)))
}

/// Where a watch on a registrar's own key starts.
#[derive(Clone, Copy)]
enum WatchFrom {
    /// From the next revision; the watch is returned once etcd has created
    /// it, so every later change reaches it.
    Now,
    /// From the revision after this one (history is replayed). Its creation,
    /// or its cancellation (compaction), is the stream's first message, which
    /// [`keep_alive`] reads.
    After(i64),
}

/// A watch on a registrar's own key, and its member.
type OwnKeyWatch = (InUse, etcd_client::WatchStream);

/// A lease keep-alive stream, and its member.
type Keeper = (
    InUse,
    etcd_client::LeaseKeeper,
    etcd_client::LeaseKeepAliveStream,
);

/// Opens a watch on `key`; `None` if that fails within `bound` (logged).
async fn watch_own_key(
    ctx: &Ctx,
    key: &str,
    from: WatchFrom,
    bound: Duration,
) -> Option<OwnKeyWatch> {
    let owned = key.to_owned();
    let open = ctx.open("watch own key", bound, move |c: Conn| {
        let key = owned.clone();
        async move {
            let mut client = watch(&c);
            match from {
                WatchFrom::After(revision) => {
                    let opts = etcd_client::WatchOptions::new().with_start_revision(revision + 1);
                    client.watch(key, Some(opts)).await
                }
                WatchFrom::Now => {
                    let mut stream = client.watch(key, None).await?;
                    match stream.message().await? {
                        Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                        Some(resp) => Err(etcd_client::Error::WatchError(format!(
                            "watch cancelled by etcd: {}",
                            resp.cancel_reason()
                        ))),
                        None => Err(etcd_client::Error::WatchError("watch stream closed".into())),
                    }
                }
            }
        }
    });
    match open.await {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::debug!(target: LOG, "{key}: cannot watch own key: {e}");
            None
        }
    }
}

/// The keep-alive stream and the own-key watch of one registration.
#[derive(Default)]
struct Streams {
    keeper: Option<Keeper>,
    watch: Option<OwnKeyWatch>,
}

/// Keeps `lease` alive at the heartbeat and watches `key` for changes after
/// `revision` (the write); returns when the lease or the key is gone, or when
/// no keep-alive succeeded for a whole ttl (etcd has dropped the lease by
/// then).
async fn keep_alive(
    ctx: &Ctx,
    key: &str,
    lease: i64,
    ttl: TtlOption,
    revision: i64,
    streams: &mut Streams,
) -> Loss {
    let mut phase = KeepAlive {
        ctx,
        key,
        lease,
        ttl,
        written: revision,
        watched: revision,
        last_ok: tokio::time::Instant::now(),
        open_bound: open_bound(ctx, ttl),
    };
    phase.run(streams).await
}

/// The keep-alive phase of one registration, step by step.
struct KeepAlive<'a> {
    ctx: &'a Ctx,
    key: &'a str,
    lease: i64,
    ttl: TtlOption,
    /// The revision of our write: the key watch skips it and what came
    /// before.
    written: i64,
    /// The last revision the key watch delivered (to reopen it after).
    watched: i64,
    /// When etcd last answered a keep-alive.
    last_ok: tokio::time::Instant,
    open_bound: Duration,
}

impl KeepAlive<'_> {
    async fn run(&mut self, streams: &mut Streams) -> Loss {
        let heartbeat = self.ttl.heartbeat();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if streams.watch.is_none() {
            streams.watch = self.open_watch().await;
        }
        loop {
            let loss = tokio::select! {
                _ = tick.tick() => self.heartbeat(streams).await,
                msg = next_message(&mut streams.keeper) => self.on_keep_alive(msg, &mut streams.keeper),
                msg = next_message(&mut streams.watch) => self.on_key_watch(msg, &mut streams.watch).await,
            };
            if let Some(loss) = loss {
                return loss;
            }
        }
    }

    /// A missing or broken key watch is reopened from the last revision seen
    /// (the put's at first), so no change is missed.
    async fn open_watch(&self) -> Option<OwnKeyWatch> {
        watch_own_key(
            self.ctx,
            self.key,
            WatchFrom::After(self.watched),
            self.open_bound,
        )
        .await
    }

    /// Every heartbeat: reopen what is missing, give up after a silent ttl,
    /// send a keep-alive (opening the stream on the member that answers).
    async fn heartbeat(&mut self, streams: &mut Streams) -> Option<Loss> {
        if streams.watch.is_none() {
            streams.watch = self.open_watch().await;
        }
        if self.last_ok.elapsed() >= self.ttl.ttl() {
            return Some(Loss::Silent(Error::new(
                ErrorKind::Unavailable,
                format!("no keep-alive answered for {:?} (the ttl)", self.ttl.ttl()),
            )));
        }
        if let Some((_, keeper, _)) = &mut streams.keeper {
            if keeper.keep_alive().await.is_err() {
                streams.keeper = None;
            }
            return None;
        }
        let lease = self.lease;
        let open = self
            .ctx
            .open("keep-alive", self.open_bound, move |c: Conn| async move {
                c.lease_client().keep_alive(lease).await
            });
        match open.await {
            Ok((member, (keeper, stream))) => {
                // Opening sends and answers the first keep-alive.
                self.last_ok = tokio::time::Instant::now();
                streams.keeper = Some((member, keeper, stream));
                None
            }
            Err(e) if is_lease_not_found(&e) => Some(Loss::Lease(e)),
            Err(e) => {
                log::debug!(target: LOG, "{}: keep-alive stream failed: {e}", self.key);
                None
            }
        }
    }

    /// A keep-alive answer, or the end of the stream.
    fn on_keep_alive(
        &mut self,
        msg: std::result::Result<Option<etcd_client::LeaseKeepAliveResponse>, Error>,
        keeper: &mut Option<Keeper>,
    ) -> Option<Loss> {
        match msg {
            Ok(Some(resp)) if resp.ttl() <= 0 => Some(Loss::Lease(Error::new(
                ErrorKind::Etcd,
                "lease expired or revoked",
            ))),
            Ok(Some(_)) => {
                self.last_ok = tokio::time::Instant::now();
                None
            }
            // Broken, or its member hung: a new stream, on the member that
            // answers, at the next heartbeat.
            Ok(None) | Err(_) => {
                *keeper = None;
                None
            }
        }
    }

    /// A message of the key watch, or its end.
    async fn on_key_watch(
        &mut self,
        msg: std::result::Result<Option<etcd_client::WatchResponse>, Error>,
        watch: &mut Option<OwnKeyWatch>,
    ) -> Option<Loss> {
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => {
                *watch = None;
                return None;
            }
        };
        if resp.canceled() {
            *watch = None;
            // An expired auth token cancels watches; refresh it before the
            // next heartbeat reopens this one.
            self.ctx
                .refresh_auth(&from_cancel_reason(resp.cancel_reason()))
                .await;
            if resp.compact_revision() > 0 {
                return self.after_compaction(resp.compact_revision()).await;
            }
            return None;
        }
        if let Some(h) = resp.header() {
            self.watched = self.watched.max(h.revision());
        }
        self.check_events(&resp)
    }

    /// The key's history was compacted away: a read tells whether the key is
    /// still there, and the watch reopens from that read's revision.
    async fn after_compaction(&mut self, compact_revision: i64) -> Option<Loss> {
        self.watched = compact_revision - 1;
        let owned = self.key.to_owned();
        let get = self.ctx.call("get own key", move |c: Conn| {
            let key = owned.clone();
            async move { kv(&c).get(key, None).await }
        });
        let read = get.await.ok()?;
        self.watched = read.header().map(|h| h.revision()).unwrap_or(self.watched);
        if read.kvs().is_empty() {
            return Some(Loss::Key(Error::new(
                ErrorKind::Etcd,
                "key deleted by someone else",
            )));
        }
        None
    }

    /// Changes to the key after our write: a delete is a loss; a put under
    /// another lease is someone else's, which we wait out.
    fn check_events(&mut self, resp: &etcd_client::WatchResponse) -> Option<Loss> {
        use etcd_client::EventType;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            // A watch opened before the write also sees the write itself, and
            // whatever came before it.
            if kv.mod_revision() <= self.written {
                continue;
            }
            self.watched = self.watched.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Delete => {
                    return Some(Loss::Key(Error::new(
                        ErrorKind::Etcd,
                        "key deleted by someone else",
                    )));
                }
                EventType::Put if kv.lease() != self.lease => {
                    log::warn!(target: LOG, "{}: overwritten by someone else (lease {:x}); waiting for it to go", self.key, kv.lease());
                }
                EventType::Put => {}
            }
        }
        None
    }
}

/// The next message of a stream held with its member: `Err` when the stream
/// broke or its member was declared hung (which the caller treats alike: a
/// new stream, where etcd answers).
async fn next_message<S: NextMessage>(
    slot: &mut Option<S>,
) -> std::result::Result<Option<S::Message>, Error> {
    match slot {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A stream of a registration, held with its member.
trait NextMessage {
    type Message;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error>;
}

/// Waits for `stream`'s next message, or for `member` to be declared hung.
async fn message_or_hung<T>(
    member: &mut InUse,
    stream: impl std::future::Future<Output = std::result::Result<Option<T>, etcd_client::Error>>,
) -> std::result::Result<Option<T>, Error> {
    tokio::select! {
        m = stream => m.map_err(|e| {
            let e = from_etcd(e);
            member.failed(&e);
            e
        }),
        _ = member.hung() => Err(Error::new(ErrorKind::Unavailable,
            format!("member {} stopped answering", member.endpoint()))),
    }
}

impl NextMessage for Keeper {
    type Message = etcd_client::LeaseKeepAliveResponse;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error> {
        let (member, _, stream) = self;
        message_or_hung(member, stream.message()).await
    }
}

impl NextMessage for OwnKeyWatch {
    type Message = etcd_client::WatchResponse;
    async fn next(&mut self) -> std::result::Result<Option<Self::Message>, Error> {
        let (member, stream) = self;
        message_or_hung(member, stream.message()).await
    }
}
