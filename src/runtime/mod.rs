//! The hidden runtime: one std thread (`etcd-sd-runtime`) running a
//! current-thread tokio runtime that owns the connections to etcd, and
//! everything that runs on it. Nothing in this folder knows the public
//! handles; they sit above it and talk to it through [`Core`].
//!
//! Public handles never touch tokio. They send a [`Command`] over an unbounded
//! channel and, when they need an answer, wait on a crossbeam channel with a
//! deadline. Nothing here calls `block_on` on a caller's thread, so the blocking
//! API may be used from inside another tokio runtime.
//!
//! * [`etcd`]: connecting, the context of every task (calls, streams, auth),
//!   the paged prefix read;
//! * [`members`]: one connection per endpoint, failover, the prober;
//! * [`watch`]: the resumable prefix watch session;
//! * [`lease`]: the registration state machine;
//! * [`discover`]: the discovery watch loop and its view;
//! * [`notify`]: go-kit's `WatchPrefix` notifier.

pub(crate) mod discover;
pub(crate) mod etcd;
pub(crate) mod lease;
pub(crate) mod members;
pub(crate) mod notify;
mod sigpipe;
pub(crate) mod watch;

use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel as cb;
use tokio::sync::mpsc;

use crate::dispatch::Dispatcher;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ClientOptions;
use crate::registration::DropGate;
use crate::stats::Counters;
use etcd::{connect_and_check, connect_options, get_entries, kv, Ctx};
use members::{Conn, Members};

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
    /// Delete one key (go-kit's `Deregister` of a key the client did not register).
    DeleteKey { key: String, reply: Reply<()> },
    /// Start the state machine of one registration.
    Register(lease::Task),
    /// Start the watch loop of one instancer.
    Watch(discover::Task),
    /// Start a go-kit `WatchPrefix` notifier.
    WatchPrefix(notify::Task),
}

/// The runtime and dispatcher threads of one client, shared by every handle
/// made from it. Dropping the last reference stops and joins both threads.
pub(crate) struct Core {
    commands: Option<mpsc::UnboundedSender<Command>>,
    runtime_thread: Option<JoinHandle<()>>,
    runtime_thread_id: ThreadId,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) options: ClientOptions,
    pub(crate) endpoints: Vec<String>,
    pub(crate) drop_gate: std::sync::Arc<DropGate>,
    /// The client's counters (what `stats()` reads).
    pub(crate) counters: Arc<Counters>,
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
    ///
    /// With `lazy`, returns as soon as the runtime runs (only the options'
    /// own errors, such as unreadable TLS files, fail it) and dials in the
    /// background, with backoff, until a member answers (see [`dial`]).
    pub(crate) fn start(
        endpoints: Vec<String>,
        options: ClientOptions,
        lazy: bool,
    ) -> Result<Core> {
        let connect = connect_options(&options)?;
        let dial_timeout = options.effective_dial_timeout();
        let counters = Arc::new(Counters::default());
        let dispatcher = Dispatcher::start(options.effective_request_timeout(), counters.clone())?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = cb::bounded::<Result<()>>(1);
        let startup = Startup {
            endpoints: endpoints.clone(),
            connect,
            request_timeout: options.effective_request_timeout(),
            dial_timeout,
            tls: options.uses_tls(),
            counters: counters.clone(),
            lazy,
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
            counters,
        };
        // The runtime bounds the dial itself (a lazy start does not wait for
        // it); the margin covers thread start-up.
        let wait = if lazy { Duration::ZERO } else { dial_timeout };
        match started_rx.recv_timeout(wait.saturating_add(Duration::from_secs(2))) {
            Ok(Ok(())) => Ok(core),
            Ok(Err(e)) => Err(e),
            Err(cb::RecvTimeoutError::Timeout) if lazy => Err(Error::new(
                ErrorKind::Timeout,
                "the runtime thread did not start within 2 s",
            )),
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

/// The largest key [`delete_key`] guards: the transaction holds the key twice.
const GUARDED_KEY_MAX: usize = 512 * 1024;

/// Deletes `key` as it is now, never a later write of it. A call may reach
/// etcd twice (sent again to another member when the first did not answer in
/// time), and a copy held up in a stopped member could land after someone
/// registered the key anew. So the delete is a transaction that holds only
/// while the key's last write is no later than the revision read first.
async fn delete_key(ctx: &Ctx, key: String) -> Result<()> {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    let read_key = key.clone();
    let read = ctx
        .call("delete", move |c: Conn| {
            let key = read_key.clone();
            async move {
                kv(&c)
                    .get(key, Some(GetOptions::new().with_keys_only()))
                    .await
            }
        })
        .await?;
    if read.kvs().is_empty() {
        return Ok(()); // nothing to delete
    }
    let seen = read.header().map(|h| h.revision()).unwrap_or(0);
    if key.len() > GUARDED_KEY_MAX {
        // The guard names the key a second time; a key this large would push
        // the transaction past etcd's request limit.
        return ctx
            .call("delete", move |c: Conn| {
                let key = key.clone();
                async move { kv(&c).delete(key, None).await }
            })
            .await
            .map(|_| ());
    }
    ctx.call("delete", move |c: Conn| {
        let key = key.clone();
        async move {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Less,
                    seen + 1,
                )])
                .and_then([TxnOp::delete(key, None)]);
            kv(&c).txn(txn).await
        }
    })
    .await
    .map(|_| ())
}

/// What the runtime thread needs to connect.
struct Startup {
    endpoints: Vec<String>,
    connect: etcd_client::ConnectOptions,
    request_timeout: Duration,
    dial_timeout: Duration,
    tls: bool,
    counters: Arc<Counters>,
    /// Answer `started` at once and dial in the background.
    lazy: bool,
}

/// Dials until a member answers a status call (each attempt bounded by
/// `dial_timeout`), waiting between attempts with the standard backoff
/// (100 ms doubling to 5 s, jittered), so a member that starts is found
/// within 5 s. Each new kind of failure is logged once. After the first
/// answer the client is as one made by a connect that succeeded; losses
/// after that are the tasks' business, as for any client.
async fn dial(members: Arc<Members>, endpoints: Vec<String>, dial_timeout: Duration, tls: bool) {
    let mut backoff = crate::backoff::Backoff::standard();
    let mut last_kind = None;
    loop {
        match connect_and_check(&members, &endpoints, dial_timeout, tls).await {
            Ok(()) => {
                log::info!(target: "etcd_sd::runtime", "connected to etcd at {endpoints:?}");
                return;
            }
            Err(e) => {
                if last_kind != Some(e.kind()) {
                    log::warn!(target: "etcd_sd::runtime", "etcd not answering yet ({e}); dialling in the background");
                    last_kind = Some(e.kind());
                } else {
                    log::debug!(target: "etcd_sd::runtime", "dial failed again: {e}");
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
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
        counters,
        lazy,
    } = startup;
    sigpipe::block_on_this_thread();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .thread_name("etcd-sd-blocking")
        .on_thread_start(sigpipe::block_on_this_thread)
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
        let members = Arc::new(Members::new(&endpoints, connect, counters.clone()));
        if lazy {
            tokio::spawn(dial(members.clone(), endpoints.clone(), dial_timeout, tls));
        } else if let Err(e) = connect_and_check(&members, &endpoints, dial_timeout, tls).await {
            let _ = started.send(Err(e));
            return;
        }
        tokio::spawn(members.clone().probe_loop());
        let ctx = Ctx {
            members,
            request_timeout,
            counters,
        };
        if started.send(Ok(())).is_err() {
            return; // the caller gave up waiting
        }
        if !lazy {
            log::info!(target: "etcd_sd::runtime", "connected to etcd at {endpoints:?}");
        }
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
                        let _ = reply.send(delete_key(&ctx, key).await);
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
