//! Plain configuration values: [`ClientOptions`], [`Service`] and [`TtlOption`].
//!
//! Nothing here does I/O; the defaults and clamping rules of go-kit live here.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Default `dial_timeout` and `dial_keep_alive`.
pub(crate) const DEFAULT_DIAL: Duration = Duration::from_secs(3);
/// Default `request_timeout`.
pub(crate) const DEFAULT_REQUEST: Duration = Duration::from_secs(5);
/// Default heartbeat of a [`Service`] without a [`TtlOption`].
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);
/// Default ttl of a [`Service`] without a [`TtlOption`].
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// The shortest heartbeat [`TtlOption::new`] accepts.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// The longest lease etcd grants (`MaxLeaseTTL`, 9,000,000,000 s); longer
/// ttls are cut to it.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);
/// The longest wait any timeout stands for: longer values (up to
/// `Duration::MAX`, or `UINT64_MAX` ms from C) mean "no practical deadline"
/// and are cut to this, so no deadline arithmetic can overflow.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// Bounds of the HTTP/2 keep-alive interval: faster pings are refused by
/// etcd (it closes connections that ping too often), slower ones would not
/// detect a dead link in any useful time.
pub(crate) const MIN_KEEP_ALIVE: Duration = Duration::from_secs(1);
pub(crate) const MAX_KEEP_ALIVE: Duration = Duration::from_secs(2 * 60 * 60);
/// etcd's default request limit (`--max-request-bytes`, 1.5 MiB): a put
/// whose request is larger is refused, whatever is retried.
pub(crate) const ETCD_REQUEST_LIMIT: usize = 1_572_864;
/// What a put request carries besides its key and value, with room to
/// spare: the request header (member and request ids, user name, auth
/// revision), the lease id and the field tags and lengths (under 100 bytes
/// for a user name of 32).
pub(crate) const REQUEST_ENVELOPE: usize = 1024;
/// The most bytes of key and value together that [`Service::validate`]
/// accepts: etcd's default limit less the envelope (1,571,840).
pub(crate) const MAX_KEY_AND_VALUE: usize = ETCD_REQUEST_LIMIT - REQUEST_ENVELOPE;

/// How to reach and authenticate with etcd (go-kit's `ClientOptions`).
///
/// Zero durations mean "use the default", so `ClientOptions::default()` is a
/// plain-text, unauthenticated client with 3 s to connect and 5 s per call.
/// Nothing is checked or read until [`Client::connect`](crate::Client::connect).
/// `Debug` never prints the password.
///
/// ```
/// use std::time::Duration;
/// let options = etcd_sd::ClientOptions {
///     dial_timeout: Duration::from_secs(3),
///     dial_keep_alive: Duration::from_secs(3),
///     request_timeout: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert_eq!(options.effective_request_timeout(), Duration::from_secs(5));
/// assert_eq!(etcd_sd::ClientOptions::default().effective_dial_timeout(), Duration::from_secs(3));
/// ```
///
/// Mutual TLS and a user, with the password kept out of `Debug`:
///
/// ```
/// let options = etcd_sd::ClientOptions {
///     ca_cert: Some("/etc/etcd/ca.pem".into()),
///     cert: Some("/etc/etcd/client.pem".into()),
///     key: Some("/etc/etcd/client-key.pem".into()),
///     username: Some("foosvc".into()),
///     password: Some("s3cret-passw0rd".into()),
///     ..Default::default()
/// };
/// let shown = format!("{options:?}");
/// assert!(shown.contains("foosvc") && !shown.contains("s3cret-passw0rd"));
/// ```
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Client certificate (PEM) for mutual TLS; needs `key` too.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the servers' certificates. Setting any
    /// of the three TLS files makes plain `host:port` endpoints use TLS.
    pub ca_cert: Option<PathBuf>,
    /// How long [`Client::connect`](crate::Client::connect) may take, and the
    /// bound of each TCP connect (reconnections included). `ZERO` means 3 s; values over 24 h are cut
    /// to 24 h (true of every timeout here, so none can overflow).
    pub dial_timeout: Duration,
    /// HTTP/2 keep-alive of each connection (etcd's Go client's
    /// `DialKeepAliveTime`/`DialKeepAliveTimeout` in one): how long to wait
    /// for a ping's answer before the link is declared dead, and the ping
    /// interval, which is raised to at least 10 s as etcd's Go client does,
    /// because etcd closes connections that ping more often than its
    /// `--grpc-keepalive-min-time` (5 s by default). Pings go only while a
    /// connection carries streams. `ZERO` means 3 s; kept between 1 s and 2 h.
    ///
    /// A member that hangs (stopped, overloaded, cut off) is not left to the
    /// pings: the client probes the members it uses every second with a
    /// bounded status call and moves watches and keep-alives off one that
    /// does not answer within 1 s.
    pub dial_keep_alive: Duration,
    /// Bound of every other blocking call, and of each request the
    /// background tasks make. `ZERO` means 5 s.
    pub request_timeout: Duration,
    /// etcd user name, for clusters with authentication enabled. The token
    /// it gets is refreshed by itself.
    pub username: Option<String>,
    /// Password of `username`; setting it without `username` is an
    /// `InvalidArgument` error at connect. Never printed or logged.
    pub password: Option<String>,
}

fn or_default(d: Duration, default: Duration) -> Duration {
    if d.is_zero() {
        default
    } else {
        d.min(MAX_WAIT)
    }
}

impl ClientOptions {
    /// `dial_timeout`, with zero replaced by its default of 3 s (and anything
    /// over 24 h cut to 24 h, as for every timeout here).
    pub fn effective_dial_timeout(&self) -> Duration {
        or_default(self.dial_timeout, DEFAULT_DIAL)
    }

    /// `dial_keep_alive`, with zero replaced by its default of 3 s, and kept
    /// between 1 s and 2 h.
    pub fn effective_dial_keep_alive(&self) -> Duration {
        or_default(self.dial_keep_alive, DEFAULT_DIAL).clamp(MIN_KEEP_ALIVE, MAX_KEEP_ALIVE)
    }

    /// `request_timeout`, with zero replaced by its default of 5 s.
    pub fn effective_request_timeout(&self) -> Duration {
        or_default(self.request_timeout, DEFAULT_REQUEST)
    }

    /// True when any TLS file is set.
    pub(crate) fn uses_tls(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca_cert.is_some()
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("ca_cert", &self.ca_cert)
            .field("dial_timeout", &self.dial_timeout)
            .field("dial_keep_alive", &self.dial_keep_alive)
            .field("request_timeout", &self.request_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How often a registration is refreshed and how long etcd keeps it without
/// refresh (go-kit's `TTLOption`).
///
/// The registrar sends a keep-alive every `heartbeat`; etcd deletes the key
/// when no keep-alive reached it for `ttl`, which is also how long a
/// crashed process stays registered. A [`Service`] without one uses a 3 s
/// heartbeat and a 10 s ttl ([`TtlOption::default`]). etcd counts leases in
/// whole seconds: the lease is granted for `ttl` rounded **up**.
///
/// ```
/// use std::time::Duration;
/// use etcd_sd::TtlOption;
///
/// let t = TtlOption::new(Duration::from_secs(1), Duration::from_secs(5));
/// assert_eq!((t.heartbeat(), t.ttl()), (Duration::from_secs(1), Duration::from_secs(5)));
///
/// // go-kit's clamping: a zero heartbeat means 3 s, a ttl not above the
/// // heartbeat becomes 3 × heartbeat ...
/// let t = TtlOption::new(Duration::ZERO, Duration::ZERO);
/// assert_eq!(t.heartbeat(), Duration::from_secs(3));
/// assert_eq!(t.ttl(), Duration::from_secs(9));
/// // ... and a heartbeat under 500 ms is raised to 500 ms.
/// let t = TtlOption::new(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(t.heartbeat(), Duration::from_millis(500));
///
/// assert_eq!(TtlOption::default(), TtlOption::new(Duration::from_secs(3), Duration::from_secs(10)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlOption {
    heartbeat: Duration,
    ttl: Duration,
}

impl TtlOption {
    /// Builds the option, clamped as go-kit does: a zero heartbeat means 3 s, a
    /// non-zero heartbeat under 500 ms is raised to 500 ms, and a ttl not
    /// greater than the heartbeat becomes 3 × heartbeat. Beyond go-kit, the
    /// ttl is cut to the longest lease etcd grants (9,000,000,000 s) and the
    /// heartbeat to a third of that.
    pub fn new(heartbeat: Duration, ttl: Duration) -> TtlOption {
        let heartbeat = if heartbeat.is_zero() {
            DEFAULT_HEARTBEAT
        } else {
            heartbeat.clamp(MIN_HEARTBEAT, MAX_TTL / 3)
        };
        let ttl = if ttl <= heartbeat {
            heartbeat.saturating_mul(3)
        } else {
            ttl
        };
        TtlOption {
            heartbeat,
            ttl: ttl.min(MAX_TTL),
        }
    }

    /// The interval between keep-alives (the clamped value).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// How long etcd keeps the key without a keep-alive (the clamped value;
    /// the lease gets it rounded up to whole seconds).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The ttl in whole seconds as granted to the etcd lease: rounded up, never
    /// down, and capped at what etcd accepts.
    pub(crate) fn lease_seconds(&self) -> i64 {
        let secs = self
            .ttl
            .as_secs()
            .saturating_add(u64::from(self.ttl.subsec_nanos() > 0));
        secs.clamp(1, MAX_TTL.as_secs()) as i64
    }
}

impl Default for TtlOption {
    fn default() -> TtlOption {
        TtlOption {
            heartbeat: DEFAULT_HEARTBEAT,
            ttl: DEFAULT_TTL,
        }
    }
}

/// One instance to register: a key, the value discovery returns, and an
/// optional [`TtlOption`] (go-kit's `Service`).
///
/// The key should be unique to the instance and sit under the prefix that
/// [`Instancer`](crate::Instancer)s watch (`/services/<name>/<instance>`);
/// the value is what they report, typically the address to call. Neither is
/// checked here: registering an empty key is a `NoKey` error, an empty value
/// a `NoValue` error, and a key and value of more than 1,571,840 bytes
/// together (etcd's default request limit of 1.5 MiB, less 1 KiB for the
/// rest of the request) an `InvalidArgument` error, all before any network
/// traffic. An etcd started with a smaller `--max-request-bytes` refuses
/// smaller ones: that too is `InvalidArgument`, and is not retried.
///
/// ```
/// use std::time::Duration;
/// use etcd_sd::{Service, TtlOption};
/// let s = Service::new("/services/foosvc/1.2.3.4:8080", "http://1.2.3.4:8080")
///     .with_ttl(TtlOption::new(Duration::from_secs(1), Duration::from_secs(5)));
/// assert_eq!(s.ttl.unwrap().ttl(), Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct Service {
    /// The etcd key, e.g. `/services/foosvc/1.2.3.4:8080`.
    pub key: String,
    /// The value Instancers report, e.g. `http://1.2.3.4:8080`.
    pub value: String,
    /// Heartbeat and ttl; `None` means 3 s heartbeat and 10 s ttl.
    pub ttl: Option<TtlOption>,
}

impl Service {
    /// A service with the default ttl (3 s heartbeat, 10 s ttl).
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Service {
        Service {
            key: key.into(),
            value: value.into(),
            ttl: None,
        }
    }

    /// The same service with `ttl` instead of the default.
    pub fn with_ttl(mut self, ttl: TtlOption) -> Service {
        self.ttl = Some(ttl);
        self
    }

    /// The ttl in force: the given one or the default.
    pub(crate) fn ttl_or_default(&self) -> TtlOption {
        self.ttl.unwrap_or_default()
    }

    /// go-kit's checks: `NoKey` for an empty key, then `NoValue` for an empty
    /// value; then `InvalidArgument` when key and value together are over
    /// [`MAX_KEY_AND_VALUE`] bytes, which etcd would refuse (after a round
    /// trip, or a whole `request_timeout` when gRPC cuts the stream).
    pub(crate) fn validate(&self) -> crate::Result<()> {
        use crate::Error;
        check_key_value(&self.key, &self.value)?;
        let size = self.key.len().saturating_add(self.value.len());
        if size > MAX_KEY_AND_VALUE {
            return Err(Error::invalid(format!(
                "key and value of {size} bytes together are over etcd's request limit \
                 ({MAX_KEY_AND_VALUE} bytes: its default 1.5 MiB less {REQUEST_ENVELOPE} \
                 for the rest of the request)"
            )));
        }
        Ok(())
    }
}

/// Checks a prefix for reading or watching.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid(
            "empty prefix (it would match every key); use \"/\" for all keys under /",
        ));
    }
    Ok(())
}

/// go-kit's `ErrNoKey` check: `NoKey` when `key` is empty.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(ErrorKind::NoKey, "service key is empty"));
    }
    Ok(())
}

/// go-kit's checks of a service, in its order: `NoKey` when `key` is empty,
/// then `NoValue` when `value` is empty.
pub(crate) fn check_key_value(key: &str, value: &str) -> Result<()> {
    check_key(key)?;
    if value.is_empty() {
        return Err(Error::new(ErrorKind::NoValue, "service value is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ttl_clamping() {
        let cases = [
            ((0, 0), (3000, 9000)),
            ((100, 10_000), (500, 10_000)),
            ((500, 500), (500, 1500)),
            ((1000, 999), (1000, 3000)),
            ((1000, 1001), (1000, 1001)),
            ((2000, 5000), (2000, 5000)),
        ];
        for ((hb, ttl), (want_hb, want_ttl)) in cases {
            let t = TtlOption::new(ms(hb), ms(ttl));
            assert_eq!(
                (t.heartbeat(), t.ttl()),
                (ms(want_hb), ms(want_ttl)),
                "{hb} {ttl}"
            );
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(TtlOption::new(ms(500), ms(1500)).lease_seconds(), 2);
        assert_eq!(TtlOption::new(ms(500), ms(2000)).lease_seconds(), 2);
        assert_eq!(TtlOption::new(ms(500), ms(2001)).lease_seconds(), 3);
        for (hb, ttl) in [
            (Duration::MAX / 4, Duration::MAX / 2),
            (Duration::MAX, Duration::MAX),
            (Duration::MAX, Duration::ZERO),
            (Duration::ZERO, Duration::MAX),
        ] {
            let t = TtlOption::new(hb, ttl);
            assert_eq!(t.lease_seconds(), 9_000_000_000, "{hb:?} {ttl:?}");
            assert!(t.heartbeat() < t.ttl());
        }
    }

    #[test]
    fn huge_and_tiny_timeouts_are_bounded() {
        let o = ClientOptions {
            dial_timeout: Duration::MAX,
            request_timeout: Duration::MAX,
            dial_keep_alive: Duration::from_nanos(1),
            ..Default::default()
        };
        assert_eq!(o.effective_dial_timeout(), MAX_WAIT);
        assert_eq!(o.effective_request_timeout(), MAX_WAIT);
        assert_eq!(o.effective_dial_keep_alive(), MIN_KEEP_ALIVE);
        let o = ClientOptions {
            dial_keep_alive: Duration::MAX,
            ..Default::default()
        };
        assert_eq!(o.effective_dial_keep_alive(), MAX_KEEP_ALIVE);
    }

    #[test]
    fn default_service_ttl() {
        let s = Service::new("k", "v");
        assert_eq!(s.ttl_or_default().heartbeat(), Duration::from_secs(3));
        assert_eq!(s.ttl_or_default().ttl(), Duration::from_secs(10));
    }

    #[test]
    fn validate_order() {
        use crate::ErrorKind;
        assert_eq!(
            Service::new("", "").validate().unwrap_err().kind(),
            ErrorKind::NoKey
        );
        assert_eq!(
            Service::new("k", "").validate().unwrap_err().kind(),
            ErrorKind::NoValue
        );
        assert!(Service::new("k", "v").validate().is_ok());
    }

    #[test]
    fn key_and_value_together_must_fit_etcds_request_limit() {
        use crate::ErrorKind;
        let at_limit = Service::new("k", "v".repeat(MAX_KEY_AND_VALUE - 1));
        assert!(at_limit.validate().is_ok());
        let over = Service::new("kk", "v".repeat(MAX_KEY_AND_VALUE - 1));
        let e = over.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("request limit"), "{e}");
        let e = Service::new("k".repeat(2 << 20), "v")
            .validate()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        // go-kit's checks come first.
        let e = Service::new("k".repeat(2 << 20), "")
            .validate()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoValue);
    }

    #[test]
    fn debug_hides_password() {
        let o = ClientOptions {
            username: Some("root".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(s.contains("root") && !s.contains("hunter2"), "{s}");
    }
}
