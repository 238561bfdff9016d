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

use crate::dispatch::Dispatcher;
use crate::error::{from_etcd, Error, ErrorKind, Result};
use crate::options::ClientOptions;
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

/// What tasks on the runtime thread share: the etcd connection and the timeouts.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) etcd: etcd_client::Client,
    pub(crate) request_timeout: Duration,
}

/// The largest gRPC message we accept from etcd, as etcd's own Go client
/// (`MaxCallRecvMsgSize`): tonic's 4 MiB default would fail a page of large
/// values, or a watch catching up on many revisions at once, for good.
const MAX_MESSAGE: usize = i32::MAX as usize;

impl Ctx {
    /// A KV client that accepts messages up to [`MAX_MESSAGE`].
    pub(crate) fn kv(&self) -> etcd_client::KvClient {
        self.etcd.kv_client().max_decoding_message_size(MAX_MESSAGE)
    }

    /// A watch client that accepts messages up to [`MAX_MESSAGE`].
    pub(crate) fn watch(&self) -> etcd_client::WatchClient {
        self.etcd
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// After an `Auth` failure of a stream (a watch cancelled for an expired
    /// token), fetches a fresh token; unary calls refresh by themselves. A
    /// no-op without credentials; failures are only logged (the caller retries
    /// with backoff anyway).
    pub(crate) async fn refresh_auth(&self, after: &Error) {
        if after.kind() != ErrorKind::Auth {
            return;
        }
        match tokio::time::timeout(self.request_timeout, self.etcd.refresh_token()).await {
            Ok(Ok(())) => log::debug!(target: "etcd_sd::runtime", "auth token refreshed"),
            Ok(Err(e)) => {
                log::debug!(target: "etcd_sd::runtime", "auth token refresh failed: {}", from_etcd(e))
            }
            Err(_) => log::debug!(target: "etcd_sd::runtime", "auth token refresh timed out"),
        }
    }

    /// Runs one etcd request bounded by `request_timeout`, mapping errors.
    pub(crate) async fn bounded<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(from_etcd(e).context(what)),
            Err(_) => Err(Error::timeout(what)),
        }
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
        let dispatcher = Dispatcher::start()?;
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
        let etcd = match connect_and_check(&endpoints, connect, dial_timeout, tls).await {
            Ok(etcd) => etcd,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let ctx = Ctx {
            etcd,
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
                        let mut kv = ctx.kv();
                        let r = ctx
                            .bounded("delete", kv.delete(key, None))
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

async fn connect_and_check(
    endpoints: &[String],
    connect: etcd_client::ConnectOptions,
    dial_timeout: Duration,
    tls: bool,
) -> Result<etcd_client::Client> {
    let deadline = tokio::time::Instant::now() + dial_timeout;
    let attempt = async {
        let mut client = etcd_client::Client::connect(endpoints, Some(connect))
            .await
            .map_err(|e| from_etcd(e).context("connect"))?;
        client
            .status()
            .await
            .map_err(|e| from_etcd(e).context("status"))?;
        Ok::<_, Error>(client)
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Err(e)) if tls && closed_during_handshake(&e) => Err(Error::with_source(
            ErrorKind::Tls,
            "the server closed the connection right after the TLS handshake \
             (most likely it refused the client certificate, or asked for one)",
            e,
        )),
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("no etcd member at {endpoints:?} answered within {dial_timeout:?}"),
        )),
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
    let (_, kvs) = read_prefix(ctx, prefix).await?;
    Ok(kvs.into_iter().map(|(_, v)| v).collect())
}

/// Keys per Range request when reading a prefix.
const PAGE: i64 = 1000;

/// Reads every key under `prefix` at one revision, in pages of [`PAGE`] keys so
/// that very large prefixes stay under gRPC's message size limit. Returns the
/// revision and the (key, value) pairs in key order. Keys or values that are
/// not UTF-8 are converted lossily.
pub(crate) async fn read_prefix(ctx: &Ctx, prefix: &str) -> Result<(i64, Vec<(String, String)>)> {
    use etcd_client::GetOptions;
    let range_end = prefix_range_end(prefix.as_bytes());
    let mut kv = ctx.kv();
    let mut out = Vec::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = ctx
            .bounded("read prefix", kv.get(start.clone(), Some(opts)))
            .await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let kvs = resp.kvs();
        for kv in kvs {
            out.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
        match kvs.last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((revision, out))
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
