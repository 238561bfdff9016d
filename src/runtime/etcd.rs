//! The runtime's side of etcd: connecting (our options mapped onto
//! etcd-client's, TLS files read and checked), the context every task gets
//! ([`Ctx`]: calls and streams over the members, auth refresh) and the paged
//! prefix read.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{closed_during_handshake, from_etcd, Error, ErrorKind, Result};
use crate::options::ClientOptions;
use crate::runtime::members::{Answered, Conn, InUse, Members, Request};
use crate::stats::Counters;

/// What tasks on the runtime thread share: the members and the timeouts.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) members: Arc<Members>,
    pub(crate) request_timeout: Duration,
    /// The client's counters (what `stats()` reads).
    pub(crate) counters: Arc<Counters>,
}

/// The largest gRPC message we accept from etcd, as etcd's own Go client
/// (`MaxCallRecvMsgSize`): tonic's 4 MiB default would fail a page of large
/// values, or a watch catching up on many revisions at once, for good.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// A KV client on `c` that accepts messages up to [`MAX_MESSAGE`].
pub(crate) fn kv(c: &Conn) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// A watch client on `c` that accepts messages up to [`MAX_MESSAGE`].
pub(crate) fn watch(c: &Conn) -> etcd_client::WatchClient {
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
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        what: &str,
        op: impl Request<T>,
    ) -> Result<T> {
        self.call_within(what, self.request_timeout, op)
            .await
            .map(|a| a.value)
    }

    /// As [`call`](Ctx::call), within `bound`, also saying which member
    /// answered and which were sent the request without answering.
    pub(crate) async fn call_within<T: Send + 'static>(
        &self,
        what: &str,
        bound: Duration,
        op: impl Request<T>,
    ) -> Result<Answered<T>> {
        self.members
            .call(what, bound, op)
            .await
            .map_err(|e| e.context(what))
    }

    /// Opens a stream with `op` on the first member that answers within
    /// `bound`, and holds that member for it (see [`InUse`]).
    pub(crate) async fn open<T: Send + 'static>(
        &self,
        what: &str,
        bound: Duration,
        op: impl Request<T>,
    ) -> Result<(InUse, T)> {
        let answered = self.call_within(what, bound, op).await?;
        Ok((self.members.in_use(answered.member), answered.value))
    }
}

/// Checks that some member answers a status call within `dial_timeout`.
pub(crate) async fn connect_and_check(
    members: &Arc<Members>,
    endpoints: &[String],
    dial_timeout: Duration,
    tls: bool,
) -> Result<()> {
    let status = members
        .call("status", dial_timeout, |c: Conn| async move {
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

/// Reads the values under `prefix` in key order, a page at a time, every page
/// at the revision of the first.
pub(crate) async fn get_entries(ctx: &Ctx, prefix: &str) -> Result<Vec<String>> {
    let read = read_prefix(ctx, prefix, 0).await?;
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
    /// The id of the cluster that answered.
    pub(crate) cluster_id: u64,
}

/// Reads every key under `prefix` at one revision (`at`, or the current one
/// when `at` is 0), in pages of [`PAGE`] keys so that very large prefixes
/// stay under gRPC's message size limit.
pub(crate) async fn read_prefix(ctx: &Ctx, prefix: &str, at: i64) -> Result<PrefixRead> {
    use etcd_client::GetOptions;
    let range_end = prefix_range_end(prefix.as_bytes());
    let mut read = PrefixRead {
        revision: at,
        kvs: Vec::new(),
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
            .call("read prefix", move |c: Conn| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { kv(&c).get(key, Some(opts)).await }
            })
            .await?;
        if read.cluster_id == 0 {
            read.cluster_id = resp.header().map(|h| h.cluster_id()).unwrap_or(0);
        }
        if read.revision == 0 {
            read.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let (true, Some(last)) = (more, kvs.last()) {
            start = last.key().to_vec();
            start.push(0);
        }
        for kv in kvs {
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

/// The shortest HTTP/2 ping interval we use. etcd's default server policy
/// (`--grpc-keepalive-min-time`) accepts one ping per 5 s and closes the
/// connection of a client that pings more often; etcd's Go client (through
/// gRPC) raises anything under 10 s to 10 s, and so do we. A hung member is
/// found by the application-level probes of `members.rs` instead.
pub(crate) const MIN_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Maps our options onto etcd-client's, for the connection to each member:
/// HTTP/2 pings every `max(dial_keep_alive, 10 s)` while streams are open
/// (never on an idle connection, which etcd's policy does not permit either),
/// answered within `dial_keep_alive`; `require_leader` (so a member cut off
/// from its cluster fails watches instead of going silent), token refresh,
/// TLS and user.
pub(crate) fn connect_options(options: &ClientOptions) -> Result<etcd_client::ConnectOptions> {
    let keep_alive = options.effective_dial_keep_alive();
    let mut connect = etcd_client::ConnectOptions::new()
        .with_connect_timeout(options.effective_dial_timeout())
        .with_keep_alive(keep_alive.max(MIN_PING_INTERVAL), keep_alive)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(keep_alive)
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    match (&options.username, &options.password) {
        (Some(user), password) => {
            connect = connect.with_user(user.clone(), password.clone().unwrap_or_default());
        }
        (None, Some(_)) => return Err(Error::invalid("a password without a username")),
        (None, None) => {}
    }
    if options.uses_tls() {
        connect = connect.with_tls(tls_options(options)?);
    }
    Ok(connect)
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::with_source(
            ErrorKind::Tls,
            format!("cannot read {what} {}", path.display()),
            e,
        )
    })
}

/// Checks that a file holds a PEM block whose label ends with `label`
/// (`CERTIFICATE`, or `PRIVATE KEY` for any key type). The contents are never
/// put in the error.
fn require_pem(pem: &[u8], path: &std::path::Path, label: &str) -> Result<()> {
    let text = String::from_utf8_lossy(pem);
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|name| name.ends_with(label))
    });
    if found {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Tls,
            format!("{} holds no PEM {}", path.display(), label.to_lowercase()),
        ))
    }
}

fn tls_options(options: &ClientOptions) -> Result<etcd_client::TlsOptions> {
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &options.ca_cert {
        let pem = read_pem(ca, "CA certificate")?;
        require_pem(&pem, ca, "CERTIFICATE")?;
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
    }
    match (&options.cert, &options.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem(cert_path, "client certificate")?;
            let key = read_pem(key_path, "client key")?;
            require_pem(&cert, cert_path, "CERTIFICATE")?;
            require_pem(&key, key_path, "PRIVATE KEY")?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "a client certificate needs its key, and a key its certificate",
            ))
        }
    }
    Ok(tls)
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

    #[test]
    fn tls_file_errors() {
        let o = ClientOptions {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert_eq!(tls_options(&o).unwrap_err().kind(), ErrorKind::Tls);
        let o = ClientOptions {
            cert: Some("/nonexistent/c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            tls_options(&o).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        // Files that exist but hold no PEM of the right kind.
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let o = ClientOptions {
            cert: Some(junk.clone()),
            key: Some(junk.clone()),
            ..Default::default()
        };
        assert_eq!(tls_options(&o).unwrap_err().kind(), ErrorKind::Tls);
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(require_pem(&std::fs::read(&key).unwrap(), &key, "PRIVATE KEY").is_ok());
        assert!(require_pem(&std::fs::read(&key).unwrap(), &key, "CERTIFICATE").is_err());
    }
}
