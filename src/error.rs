//! The one error type of the crate: [`Error`], classified by [`ErrorKind`].
//!
//! Every failure from etcd, the transport or the runtime is mapped here, in one
//! place, so that no `etcd_client`, `tonic` or `tokio` type leaks into the public
//! API. The original error stays reachable through
//! [`std::error::Error::source`].

use std::fmt;
use std::sync::Arc;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A boxed error that can cross threads: what endpoint factories and endpoints
/// return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, for programs to branch on.
///
/// The kinds are stable; new ones may be added (the enum is
/// `#[non_exhaustive]`, so a `match` needs a `_` arm). The C API's statuses
/// `ETCD_SD_ERR_NO_KEY` (1) to `ETCD_SD_ERR_ETCD` (10) are these kinds, in
/// this order.
///
/// ```
/// use etcd_sd::{Error, ErrorKind};
///
/// /// Worth trying again later, or not?
/// fn transient(e: &Error) -> bool {
///     matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
/// }
///
/// assert!(transient(&ErrorKind::Unavailable.into()));
/// assert!(!transient(&Error::new(ErrorKind::Auth, "permission denied")));
/// assert_eq!(ErrorKind::NoKey.to_string(), "no key provided");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A service was given without a key (go-kit's `ErrNoKey`). Checked before
    /// any network traffic.
    NoKey,
    /// A service was given without a value (go-kit's `ErrNoValue`). Checked
    /// before any network traffic.
    NoValue,
    /// An argument was malformed: an empty or unparsable endpoint list, an
    /// empty prefix, a certificate without its key, a password without a
    /// user name, an invalid string from C, a key and value over etcd's
    /// request limit, and the like. Checked before any network traffic where
    /// possible; a request that etcd itself refuses for good (too large for
    /// its `--max-request-bytes`, malformed) is this kind too, and is not
    /// retried.
    InvalidArgument,
    /// A deadline passed: `dial_timeout` while connecting, `request_timeout`
    /// for any other blocking call, or the deadline of a retrying call.
    Timeout,
    /// etcd could not be reached, or the connection broke; also an endpoint
    /// that answers but does not speak etcd's gRPC (an HTTP/1 server, say:
    /// the message says so).
    Unavailable,
    /// The object was stopped, deregistered for good, or its client's runtime
    /// is gone.
    Closed,
    /// TLS failed: an unreadable certificate or key file, a wrong CA, a server
    /// that refused the client certificate.
    Tls,
    /// Authentication or authorisation failed: a wrong user name or password,
    /// or an etcd user without permission for the key or prefix.
    Auth,
    /// A load balancer had no endpoint to offer.
    NoEndpoints,
    /// etcd answered with an error that fits none of the kinds above.
    Etcd,
}

impl ErrorKind {
    /// A short lowercase description of the kind, with no final period
    /// (what `Display` prints, and what [`Error`]'s `Display` starts with).
    ///
    /// ```
    /// assert_eq!(etcd_sd::ErrorKind::Timeout.as_str(), "timed out");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoKey => "no key provided",
            ErrorKind::NoValue => "no value provided",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Unavailable => "etcd unavailable",
            ErrorKind::Closed => "closed",
            ErrorKind::Tls => "tls error",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::NoEndpoints => "no endpoints available",
            ErrorKind::Etcd => "etcd error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible call in this crate.
///
/// Cheap to clone (one `Arc`), so the same error can travel in every
/// [`Event`](crate::Event) of one update. Use [`Error::kind`] to branch,
/// `Display` to show it to people (`kind: message`) and
/// [`std::error::Error::source`] for the underlying cause (an etcd, gRPC,
/// transport or I/O error). Messages never contain passwords or key material.
/// `Send + Sync + 'static`, so it converts into a [`BoxError`] with `?`.
///
/// ```
/// use std::error::Error as _;
/// use etcd_sd::{Error, ErrorKind};
///
/// let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let e = Error::with_source(ErrorKind::Unavailable, "get entries", cause);
/// assert_eq!(e.kind(), ErrorKind::Unavailable);
/// assert_eq!(e.to_string(), "etcd unavailable: get entries");
/// assert_eq!(e.source().unwrap().to_string(), "connection refused");
/// let copy = e.clone(); // shares the same error
/// assert_eq!(copy.message(), "get entries");
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// Builds an error of `kind` with a message for people. Mostly for
    /// endpoint factories, balancers and tests of your own; the crate's
    /// errors come from its calls.
    ///
    /// ```
    /// use etcd_sd::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::NoEndpoints, "none under /services/barsvc/");
    /// assert_eq!(e.to_string(), "no endpoints available: none under /services/barsvc/");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    /// Builds an error of `kind` with a message and the error that caused it.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(source.into()),
            }),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message without the kind prefix (may be empty, as for an error
    /// made from a bare [`ErrorKind`]).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    pub(crate) fn closed(what: &str) -> Error {
        Error::new(ErrorKind::Closed, format!("{what} is closed"))
    }

    pub(crate) fn timeout(what: &str) -> Error {
        Error::new(ErrorKind::Timeout, format!("{what} timed out"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// The same error with `context: ` put before the message.
    pub(crate) fn context(&self, context: &str) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind: self.inner.kind,
                message: format!("{context}: {}", self.inner.message),
                source: Some(Box::new(self.clone())),
            }),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.message.is_empty() {
            f.write_str(self.inner.kind.as_str())
        } else {
            write!(f, "{}: {}", self.inner.kind.as_str(), self.inner.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind, "")
    }
}

/// Walks an error and its sources into one lowercase string, for classification.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    text.to_ascii_lowercase()
}

fn looks_like_tls(text: &str) -> bool {
    [
        "tls",
        "certificate",
        "handshake",
        "unknownissuer",
        "x509",
        "bad certificate",
        "alert",
    ]
    .iter()
    .any(|w| text.contains(w))
}

fn looks_like_auth(text: &str) -> bool {
    [
        "authentication failed",
        "invalid user id or password",
        "permission denied",
        "user name is empty",
        "invalid auth token",
        "user name not found",
        // etcd's ErrAuthOldRevision (code InvalidArgument): the token is
        // stale, a new one fixes it; not a request refused for good.
        "revision of auth store is old",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// True when the peer answered but does not speak etcd's gRPC: its first
/// bytes were no HTTP/2 (an HTTP/1 server, or a TLS port spoken to in plain
/// text: our HTTP/2 library itself found a frame too large or malformed,
/// `..._ERROR, Library`), or it spoke HTTP/2 without gRPC (no `grpc-status`)
/// or gRPC without etcd's services.
fn looks_like_not_etcd(text: &str) -> bool {
    let garbled_http2 = text.contains("h2 protocol error") && text.contains("_error, library)");
    garbled_http2
        || text.contains("grpc-status header missing")
        || text.contains("unknown service etcdserverpb")
}

/// True when etcd refused a request for its size: over `--max-request-bytes`
/// ("request is too large", code InvalidArgument) or, by more than gRPC's
/// allowance over that, refused by gRPC itself (ResourceExhausted,
/// "received message larger than max").
fn looks_like_too_large(text: &str) -> bool {
    text.contains("request is too large") || text.contains("received message larger than max")
}

/// What an endpoint that is not etcd's client URL is told (API.md §5.4).
const NOT_ETCD: &str = "the endpoint answered but does not speak etcd's gRPC \
                        (is it etcd's client URL? a TLS endpoint needs https:// or a CA)";

/// Classifies an `etcd_client` error. This is the only place that knows the
/// shapes of etcd, tonic and transport failures.
pub(crate) fn from_etcd(e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let text = chain_text(&e);
    if looks_like_not_etcd(&text) {
        // Not worth an `Etcd` kind: nothing etcd said, and another endpoint
        // (or the right URL) may well answer.
        let message = format!("{NOT_ETCD}: {}", text_for_people(&e));
        return Error::with_source(ErrorKind::Unavailable, message, e);
    }
    let kind = match &e {
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) => {
            ErrorKind::InvalidArgument
        }
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => {
            if looks_like_tls(&text) {
                ErrorKind::Tls
            } else {
                ErrorKind::Unavailable
            }
        }
        E::GRpcStatus(status) => {
            use tonic::Code;
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Auth,
                Code::DeadlineExceeded => ErrorKind::Timeout,
                _ if looks_like_auth(&text) => ErrorKind::Auth,
                // Refused for good: etcd would refuse it again (too large,
                // a malformed request). Never retried (API.md §5.4).
                Code::InvalidArgument => ErrorKind::InvalidArgument,
                _ if looks_like_too_large(&text) => ErrorKind::InvalidArgument,
                Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted
                    if looks_like_tls(&text) =>
                {
                    ErrorKind::Tls
                }
                Code::Unavailable | Code::Cancelled => ErrorKind::Unavailable,
                Code::Unknown if text.contains("transport") || text.contains("connect") => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Etcd,
            }
        }
        // etcd-client's own words when the first keep-alive finds no lease.
        E::LeaseKeepAliveError(msg) if msg.contains("lease not found") => ErrorKind::Etcd,
        E::WatchError(_) | E::LeaseKeepAliveError(_) => ErrorKind::Unavailable,
        _ if looks_like_auth(&text) => ErrorKind::Auth,
        _ => ErrorKind::Etcd,
    };
    let mut message = text_for_people(&e);
    if kind == ErrorKind::InvalidArgument && looks_like_too_large(&text) {
        message = format!(
            "request too large for etcd (its --max-request-bytes, 1.5 MiB by default): {message}"
        );
    }
    Error::with_source(kind, message, e)
}

/// A one-line description of an etcd error: its own text plus the innermost
/// cause, which is usually the informative part of a transport error.
fn text_for_people(e: &etcd_client::Error) -> String {
    let mut msg = e.to_string();
    let mut last = None;
    let mut cur = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = cur {
        last = Some(s.to_string());
        cur = s.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    if let Some(last) = last {
        if !msg.contains(&last) {
            msg.push_str(": ");
            msg.push_str(&last);
        }
    }
    msg
}

/// The error for a watch that etcd cancelled (other than for compaction):
/// `Auth` when the reason is about authentication or permissions (an expired
/// token, a user without read access), `Unavailable` otherwise (e.g. no
/// leader).
pub(crate) fn from_cancel_reason(reason: &str) -> Error {
    let text = reason.to_ascii_lowercase();
    let kind = if looks_like_auth(&text) || text.contains("auth") {
        ErrorKind::Auth
    } else {
        ErrorKind::Unavailable
    };
    Error::new(kind, format!("watch cancelled by etcd: {reason}"))
}

/// True when an etcd error says the lease does not exist (any more).
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    // etcd says "requested lease not found"; etcd-client's keep-alive says
    // "lease not found".
    e.kind() == ErrorKind::Etcd && e.message().contains("lease not found")
}

/// True for the ways a TLS 1.3 server's refusal of the client certificate
/// shows up when the alert loses the race with the connection's end.
pub(crate) fn closed_during_handshake(e: &Error) -> bool {
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

/// True when another member may well succeed where this error came from
/// one: the member is unreachable, hung, cut off from its leader or busy
/// electing one. Definite answers (permissions, bad requests, a lease that
/// does not exist) are the cluster's, and the same everywhere.
pub(crate) fn worth_another_member(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::Timeout => true,
        ErrorKind::Etcd => {
            let text = e.message().to_ascii_lowercase();
            [
                "no leader",
                "leader changed",
                "not capable",
                "too many requests",
                "stopped",
            ]
            .iter()
            .any(|w| text.contains(w))
        }
        _ => false,
    }
}

/// True when etcd says a revision asked for is past its own: the history it
/// holds is not the one the revision came from.
pub(crate) fn is_future_revision(e: &Error) -> bool {
    e.message()
        .contains("required revision is a future revision")
}

/// True when etcd says a revision asked for has been compacted away.
pub(crate) fn is_compacted(e: &Error) -> bool {
    e.message().contains("required revision has been compacted")
}

/// True when etcd says a lease granted with our id exists already (an
/// earlier attempt of the same grant got through).
pub(crate) fn is_lease_exists(e: &Error) -> bool {
    e.message().contains("lease already exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_and_message() {
        let e = Error::new(ErrorKind::Timeout, "get /a");
        assert_eq!(e.to_string(), "timed out: get /a");
        assert_eq!(Error::from(ErrorKind::Closed).to_string(), "closed");
    }

    #[test]
    fn context_keeps_kind_and_source() {
        let e = Error::new(ErrorKind::Unavailable, "connection refused").context("register /a");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("register /a: connection refused"));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn grpc_codes_map_to_kinds() {
        let cases = [
            (tonic::Code::Unauthenticated, "x", ErrorKind::Auth),
            (tonic::Code::PermissionDenied, "x", ErrorKind::Auth),
            (tonic::Code::DeadlineExceeded, "x", ErrorKind::Timeout),
            (
                tonic::Code::Unavailable,
                "connection refused",
                ErrorKind::Unavailable,
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
                ErrorKind::Auth,
            ),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found",
                ErrorKind::Etcd,
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
                ErrorKind::InvalidArgument,
            ),
            (
                tonic::Code::ResourceExhausted,
                "grpc: received message larger than max (2097204 vs. 2097152)",
                ErrorKind::InvalidArgument,
            ),
            (
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
                ErrorKind::Etcd,
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
                ErrorKind::Auth,
            ),
        ];
        for (code, msg, kind) in cases {
            let e = from_etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
                code, msg,
            )));
            assert_eq!(e.kind(), kind, "{code:?} {msg}");
        }
        let lease = from_etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        )));
        assert!(is_lease_not_found(&lease));
    }

    #[test]
    fn servers_that_do_not_speak_etcds_grpc_are_unavailable() {
        for (code, msg) in [
            (
                tonic::Code::Internal,
                "h2 protocol error: http2 error, source: hyper::Error(Http2, Error { kind: GoAway(b\"\", FRAME_SIZE_ERROR, Library) })",
            ),
            (
                tonic::Code::Unknown,
                "grpc-status header missing, mapped from HTTP status code 404",
            ),
            (
                tonic::Code::Unimplemented,
                "unknown service etcdserverpb.Maintenance",
            ),
        ] {
            let e = from_etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
                code, msg,
            )));
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{msg}");
            assert!(e.message().contains("does not speak etcd's gRPC"), "{e}");
        }
        // etcd itself closing a connection that pings too often is no sign
        // of another server.
        let e = from_etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::Unavailable,
            "h2 protocol error: GoAway(b\"too_many_pings\", ENHANCE_YOUR_CALM, Remote)",
        )));
        assert!(!e.message().contains("does not speak"), "{e}");
    }

    #[test]
    fn cancel_reasons_are_classified() {
        for (reason, kind) in [
            (
                "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
                ErrorKind::Auth,
            ),
            (
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
                ErrorKind::Auth,
            ),
            ("etcdserver: no leader", ErrorKind::Unavailable),
            ("", ErrorKind::Unavailable),
        ] {
            assert_eq!(from_cancel_reason(reason).kind(), kind, "{reason}");
        }
    }

    #[test]
    fn error_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Error>();
    }
}
