//! The hidden runtime: one std thread (`etcd-sd-runtime`) running a
//! current-thread tokio runtime that owns the `etcd_client` connection.
//!
//! Public handles never touch tokio. They send a [`Command`] over an unbounded
//! channel and, when they need an answer, wait on a crossbeam channel with a
//! deadline. Nothing here calls `block_on` on a caller's thread, so the blocking
//! API may be used from inside another tokio runtime.

use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel as cb;
use tokio::sync::mpsc;

use std::sync::Arc;

use crate::dispatch::Dispatcher;
use crate::error::{from_etcd, Error, ErrorKind, Result};
use crate::members::{InUse, Members};
use crate::options::ClientOptions;
use crate::prefix_watch::Anchor;
use crate::{instancer, registrar, watch_prefix};

/// Where a task sends its one answer.
pub(crate) type Reply<T> = cb::Sender<Result<T>>;

/// Everything the runtime thread can be asked to do: a closed set, so all the
/// work that reaches etcd is visible here.
pub(crate) enum Command {
    /// Read the values under a prefix, in key order.
    GetEntries {
        prefix: String,
        reply: Reply<Vec<String>>,
    },
    /// Delete one key (the seed `Client::deregister` of a key it did not register).
    DeleteKey { key: String, reply: Reply<()> },
    /// Start the state machine of one registration.
    Register(registrar::Task),
    /// Start the watch loop of one instancer.
    Watch(instancer::Task),
    /// Start a go-kit `WatchPrefix` notifier.
    WatchPrefix(watch_prefix::Task),
}

/// What tasks on the runtime thread share: the members and the timeouts.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) members: Arc<Members>,
    pub(crate) request_timeout: Duration,
}

/// The largest gRPC message we accept from etcd, as etcd's own Go client
/// (`MaxCallRecvMsgSize`): tonic's 4 MiB default would fail a page of large
/// values, or a watch catching up on many revisions at once, for good.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// A KV client on `c` that accepts messages up to [`MAX_MESSAGE`].
pub(crate) fn kv(c: &etcd_client::Client) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// A watch client on `c` that accepts messages up to [`MAX_MESSAGE`].
pub(crate) fn watch(c: &etcd_client::Client) -> etcd_client::WatchClient {
    c.watch_client().max_decoding_message_size(MAX_MESSAGE)
}

impl Ctx {
    /// After an `Auth` failure of a stream (a watch cancelled for an expired
    /// token), fetches fresh tokens; unary calls refresh by themselves. A
    /// no-op without credentials; failures are only logged (the caller retries
    /// with backoff anyway).
    pub(crate) async fn refresh_auth(&self, after: &Error) {
        if after.kind() != ErrorKind::Auth {
            return;
        }
        for client in self.members.connected() {
            match tokio::time::timeout(self.request_timeout, client.refresh_token()).await {
                Ok(Ok(())) => log::debug!(target: "etcd_sd::runtime", "auth token refreshed"),
                Ok(Err(e)) => {
                    log::debug!(target: "etcd_sd::runtime", "auth token refresh failed: {}", from_etcd(e))
                }
                Err(_) => log::debug!(target: "etcd_sd::runtime", "auth token refresh timed out"),
            }
        }
    }

    /// Runs one etcd request on the members, moving to another member when
    /// one fails or hangs, all within `request_timeout` (see
    /// [`Members::call`] for which requests may go through here).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(etcd_client::Client) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>
            + Send
            + 'static,
    {
        self.call_within(what, self.request_timeout, op)
            .await
            .map(|(_, v)| v)
    }

    /// As [`call`](Ctx::call), within `bound`, also saying which member
    /// answered.
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        what: &str,
        bound: Duration,
        op: F,
    ) -> Result<(usize, T)>
    where
        T: Send + 'static,
        F: Fn(etcd_client::Client) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>
            + Send
            + 'static,
    {
        self.members
            .call(what, bound, op)
            .await
            .map_err(|e| e.context(what))
    }

    /// Opens a stream with `op` on the first member that answers within
    /// `bound`, and holds that member for it (see [`InUse`]).
    pub(crate) async fn open<T, F, Fut>(
        &self,
        what: &str,
        bound: Duration,
        op: F,
    ) -> Result<(InUse, T)>
    where
        T: Send + 'static,
        F: Fn(etcd_client::Client) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>
            + Send
            + 'static,
    {
        let (i, v) = self.call_within(what, bound, op).await?;
        Ok((self.members.in_use(i), v))
    }
}

/// The runtime and dispatcher threads of one `Client`, shared by every handle
/// made from it. Dropping the last reference stops and joins both threads.
pub(crate) struct Core {
    commands: Option<mpsc::UnboundedSender<Command>>,
    runtime_thread: Option<JoinHandle<()>>,
    runtime_thread_id: ThreadId,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) options: ClientOptions,
    pub(crate) endpoints: Vec<String>,
    pub(crate) drop_gate: std::sync::Arc<registrar::DropGate>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Starts both threads and connects; returns once etcd answered a status
    /// call, or with the error that prevented it, within `dial_timeout`.
    pub(crate) fn start(
        endpoints: Vec<String>,
        connect: etcd_client::ConnectOptions,
        options: ClientOptions,
    ) -> Result<Core> {
        let dial_timeout = options.effective_dial_timeout();
        let dispatcher = Dispatcher::start(options.effective_request_timeout())?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = cb::bounded::<Result<()>>(1);
        let startup = Startup {
            endpoints: endpoints.clone(),
            connect,
            request_timeout: options.effective_request_timeout(),
            dial_timeout,
            tls: options.uses_tls(),
        };
        let handle = thread::Builder::new()
            .name("etcd-sd-runtime".into())
            .spawn(move || run_runtime(startup, cmd_rx, started_tx))
            .map_err(|e| {
                Error::with_source(ErrorKind::Unavailable, "cannot start the runtime thread", e)
            })?;
        let runtime_thread_id = handle.thread().id();
        let core = Core {
            commands: Some(cmd_tx),
            runtime_thread: Some(handle),
            runtime_thread_id,
            dispatcher,
            options,
            endpoints,
            drop_gate: Default::default(),
        };
        // The runtime bounds the dial itself; the margin covers thread start-up.
        match started_rx.recv_timeout(dial_timeout.saturating_add(Duration::from_secs(2))) {
            Ok(Ok(())) => Ok(core),
            Ok(Err(e)) => Err(e),
            Err(cb::RecvTimeoutError::Timeout) => Err(Error::new(
                ErrorKind::Timeout,
                format!("etcd did not answer within {dial_timeout:?}"),
            )),
            Err(cb::RecvTimeoutError::Disconnected) => {
                Err(Error::closed("runtime thread (it stopped during start-up)"))
            }
        }
    }

    /// Hands a command to the runtime thread.
    pub(crate) fn send(&self, cmd: Command) -> Result<()> {
        match &self.commands {
            Some(tx) => tx.send(cmd).map_err(|_| Error::closed("client runtime")),
            None => Err(Error::closed("client runtime")),
        }
    }

    /// Sends a command that answers once, and waits at most `timeout` for the
    /// answer.
    pub(crate) fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = cb::bounded(1);
        self.send(make(tx))?;
        wait_reply(&rx, timeout, what)
    }

    /// The request timeout in force.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.options.effective_request_timeout()
    }
}

/// Waits for a task's answer: its own result, `Timeout` after `timeout`, or
/// `Closed` when the task went away without answering (runtime gone).
pub(crate) fn wait_reply<T>(
    rx: &cb::Receiver<Result<T>>,
    timeout: Duration,
    what: &str,
) -> Result<T> {
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(cb::RecvTimeoutError::Timeout) => Err(Error::timeout(what)),
        Err(cb::RecvTimeoutError::Disconnected) => Err(Error::closed("client runtime")),
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Closing the command channel ends the runtime loop; the runtime then
        // drops every task and the connection.
        drop(self.commands.take());
        if let Some(handle) = self.runtime_thread.take() {
            if thread::current().id() == self.runtime_thread_id {
                log::error!(target: "etcd_sd::runtime", "last client handle dropped on the runtime thread; not joining it");
            } else if handle.join().is_err() {
                log::error!(target: "etcd_sd::runtime", "the runtime thread panicked");
            }
        }
        self.dispatcher.shutdown();
    }
}

/// What the runtime thread needs to connect.
struct Startup {
    endpoints: Vec<String>,
    connect: etcd_client::ConnectOptions,
    request_timeout: Duration,
    dial_timeout: Duration,
    tls: bool,
}

fn run_runtime(
    startup: Startup,
    mut commands: mpsc::UnboundedReceiver<Command>,
    started: cb::Sender<Result<()>>,
) {
    let Startup {
        endpoints,
        connect,
        request_timeout,
        dial_timeout,
        tls,
    } = startup;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .thread_name("etcd-sd-blocking")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = started.send(Err(Error::with_source(
                ErrorKind::Unavailable,
                "cannot build the tokio runtime",
                e,
            )));
            return;
        }
    };
    rt.block_on(async move {
        let members = Arc::new(Members::new(&endpoints, connect));
        if let Err(e) = connect_and_check(&members, &endpoints, dial_timeout, tls).await {
            let _ = started.send(Err(e));
            return;
        }
        tokio::spawn(members.clone().probe_loop());
        let ctx = Ctx {
            members,
            request_timeout,
        };
        if started.send(Ok(())).is_err() {
            return; // the caller gave up waiting
        }
        log::info!(target: "etcd_sd::runtime", "connected to etcd at {endpoints:?}");
        while let Some(cmd) = commands.recv().await {
            let ctx = ctx.clone();
            match cmd {
                Command::GetEntries { prefix, reply } => {
                    tokio::spawn(async move {
                        let _ = reply.send(get_entries(&ctx, &prefix).await);
                    });
                }
                Command::DeleteKey { key, reply } => {
                    tokio::spawn(async move {
                        let r = ctx
                            .call("delete", move |c| {
                                let key = key.clone();
                                async move { kv(&c).delete(key, None).await }
                            })
                            .await
                            .map(|_| ());
                        let _ = reply.send(r);
                    });
                }
                Command::Register(task) => {
                    tokio::spawn(task.run(ctx));
                }
                Command::Watch(task) => {
                    tokio::spawn(task.run(ctx));
                }
                Command::WatchPrefix(task) => {
                    tokio::spawn(task.run(ctx));
                }
            }
        }
        log::debug!(target: "etcd_sd::runtime", "command channel closed; runtime stopping");
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Checks that some member answers a status call within `dial_timeout`.
async fn connect_and_check(
    members: &Arc<Members>,
    endpoints: &[String],
    dial_timeout: Duration,
    tls: bool,
) -> Result<()> {
    let status = members
        .call("status", dial_timeout, |c| async move {
            c.maintenance_client().status().await
        })
        .await;
    match status {
        Ok(_) => Ok(()),
        Err(e) if tls && closed_during_handshake(&e) => Err(Error::with_source(
            ErrorKind::Tls,
            "the server closed the connection right after the TLS handshake \
             (most likely it refused the client certificate, or asked for one)",
            e,
        )),
        Err(e) if e.kind() == ErrorKind::Timeout => Err(Error::with_source(
            ErrorKind::Timeout,
            format!("no etcd member at {endpoints:?} answered within {dial_timeout:?}"),
            e,
        )),
        Err(e) => Err(e.context("connect")),
    }
}

/// True for the ways a TLS 1.3 server's refusal of the client certificate
/// shows up when the alert loses the race with the connection's end.
fn closed_during_handshake(e: &Error) -> bool {
    if e.kind() != ErrorKind::Unavailable {
        return false;
    }
    let text = e.message().to_ascii_lowercase();
    [
        "connection closed",
        "broken pipe",
        "connection reset",
        "unexpected eof",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Reads the values under `prefix` in key order, a page at a time, every page
/// at the revision of the first.
pub(crate) async fn get_entries(ctx: &Ctx, prefix: &str) -> Result<Vec<String>> {
    let read = read_prefix(ctx, prefix).await?;
    Ok(read.kvs.into_iter().map(|(_, v)| v).collect())
}

/// Keys per Range request when reading a prefix.
const PAGE: i64 = 1000;

/// What [`read_prefix`] read.
pub(crate) struct PrefixRead {
    /// The revision every page was read at.
    pub(crate) revision: i64,
    /// (key, value) in key order; keys as etcd holds them (bytes), values
    /// converted lossily where they are not UTF-8.
    pub(crate) kvs: Vec<(Vec<u8>, String)>,
    /// The key written last, to check later that etcd still holds this
    /// history.
    pub(crate) anchor: Option<Anchor>,
    /// The id of the cluster that answered.
    pub(crate) cluster_id: u64,
}

/// Reads every key under `prefix` at one revision, in pages of [`PAGE`] keys so
/// that very large prefixes stay under gRPC's message size limit.
pub(crate) async fn read_prefix(ctx: &Ctx, prefix: &str) -> Result<PrefixRead> {
    use etcd_client::GetOptions;
    let range_end = prefix_range_end(prefix.as_bytes());
    let mut read = PrefixRead {
        revision: 0,
        kvs: Vec::new(),
        anchor: None,
        cluster_id: 0,
    };
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let mut opts = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(PAGE);
        if read.revision > 0 {
            opts = opts.with_revision(read.revision);
        }
        let key = start.clone();
        let mut resp = ctx
            .call("read prefix", move |c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { kv(&c).get(key, Some(opts)).await }
            })
            .await?;
        if read.revision == 0 {
            read.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            read.cluster_id = resp.header().map(|h| h.cluster_id()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let (true, Some(last)) = (more, kvs.last()) {
            start = last.key().to_vec();
            start.push(0);
        }
        for kv in kvs {
            Anchor::keep_latest(&mut read.anchor, &kv);
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            let (key, _) = kv.into_key_value();
            read.kvs.push((key, value));
        }
        if !more || read.kvs.is_empty() {
            break;
        }
    }
    Ok(read)
}

/// The end of the key range of a prefix: the prefix with its last byte below
/// 0xff incremented, or `\0` (to the end of the key space) for an empty prefix.
pub(crate) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_of_prefix() {
        assert_eq!(prefix_range_end(b"/a"), b"/b");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b""), b"\0");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    }
}
