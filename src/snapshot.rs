//! Snapshot files: the last set of instances etcd gave a discovery, kept on
//! disk so that a process started while etcd is down has somewhere to start.
//!
//! A file is one line of JSON and one checksum line:
//!
//! ```text
//! {"format":"etcd-sd-snapshot","version":1,"prefix":"/services/x/","revision":42,"written_unix_ms":1765000000000,"instances":["a","b"]}
//! crc32 1a2b3c4d
//! ```
//!
//! The CRC-32 (IEEE) covers every byte before the checksum line (the JSON
//! and its newline), and the checksum line must be exactly that: so the
//! checksum covers the whole file. Instances are the strings subscribers
//! were given (values that are not UTF-8 already converted, sorted and
//! de-duplicated), so a loaded file gives back the very same list.
//!
//! Writing ([`Writer`]) happens on a thread of its own, one per Instancer
//! with a snapshot file, never on the runtime thread: the discovery task
//! hands the latest state to a [`Feed`] (O(1), no I/O) and the writer
//! coalesces what came within [`DEBOUNCE`] into one write. A write is atomic:
//! a temporary file in the same directory, fsync, rename over the file,
//! fsync of the directory. A process killed at any moment leaves the old
//! file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::instances::Instances;

const LOG: &str = "etcd_sd::snapshot";

/// What the `format` field holds.
const FORMAT: &str = "etcd-sd-snapshot";
/// The format version written and the only one read.
pub(crate) const VERSION: u32 = 1;
/// The default of `snapshot_max_age`.
pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Changes within this time of the first one are written together.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);
/// An unchanged set confirmed by etcd is written again (with a new time)
/// at most this often, so that a long-lived process keeps its file fresh.
const REFRESH_CAP: Duration = Duration::from_secs(3600);
/// A larger file is not read (ignored with a warning): far above any real
/// prefix's snapshot, and it keeps a huge or sparse file from costing the
/// caller of `with_options` its memory and time.
const MAX_FILE: u64 = 256 << 20;
/// A failed write is tried again after this, then after twice as long, and
/// so on up to [`RETRY_CAP`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Out<'a> {
    format: &'a str,
    version: u32,
    prefix: &'a str,
    revision: i64,
    written_unix_ms: u64,
    instances: Vec<&'a str>,
}

#[derive(Deserialize)]
struct In {
    format: String,
    version: u32,
    prefix: String,
    revision: i64,
    written_unix_ms: u64,
    instances: Vec<String>,
}

/// A snapshot read back from a file.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) instances: Instances,
    pub(crate) revision: i64,
    pub(crate) age: Duration,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The bytes of a snapshot file.
pub(crate) fn encode(prefix: &str, revision: i64, written: SystemTime, set: &Instances) -> Vec<u8> {
    let out = Out {
        format: FORMAT,
        version: VERSION,
        prefix,
        revision,
        written_unix_ms: unix_ms(written),
        instances: set.iter().collect(),
    };
    let mut bytes = serde_json::to_vec(&out).expect("strings and numbers always serialize");
    bytes.push(b'\n');
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("crc32 {crc:08x}\n").as_bytes());
    bytes
}

/// Checks and reads the bytes of a snapshot file for `prefix`; the error
/// says why it cannot be used.
pub(crate) fn decode(
    bytes: &[u8],
    prefix: &str,
    max_age: Duration,
    now: SystemTime,
) -> Result<Loaded, String> {
    // The checksum line: the last line, "crc32 " and 8 hex digits.
    let body_end = bytes
        .strip_suffix(b"\n")
        .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        .map(|i| i + 1)
        .ok_or("truncated: no checksum line")?;
    let (body, trailer) = bytes.split_at(body_end);
    let hex = trailer
        .strip_prefix(b"crc32 ")
        .and_then(|t| t.strip_suffix(b"\n"))
        .filter(|h| h.len() == 8 && h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("truncated or corrupt: no valid checksum line")?;
    if crc32fast::hash(body) != hex {
        return Err("corrupt: checksum mismatch".into());
    }
    let file: In = serde_json::from_slice(body).map_err(|e| format!("corrupt: {e}"))?;
    if file.format != FORMAT {
        return Err(format!("not a snapshot file (format {:?})", file.format));
    }
    if file.version != VERSION {
        return Err(format!(
            "unknown format version {} (this library reads {VERSION})",
            file.version
        ));
    }
    if file.prefix != prefix {
        return Err(format!(
            "written for prefix {:?}, not {prefix:?}",
            file.prefix
        ));
    }
    let written = UNIX_EPOCH + Duration::from_millis(file.written_unix_ms);
    // A file from the future (a clock set back) counts as just written.
    let age = now.duration_since(written).unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(format!(
            "too old: written {}s ago, max age {}s",
            age.as_secs(),
            max_age.as_secs()
        ));
    }
    if file.instances.windows(2).any(|w| w[0] >= w[1]) {
        return Err("corrupt: instances not sorted and distinct".into());
    }
    Ok(Loaded {
        instances: file.instances.iter().collect(),
        revision: file.revision,
        age,
    })
}

/// What [`load`] found.
#[derive(Debug)]
pub(crate) enum Found {
    /// A usable snapshot.
    Loaded(Loaded),
    /// No file (normal at a first start; a debug record).
    Nothing,
    /// A file that cannot be used (one `warn` record logged).
    Ignored,
    /// A directory where the file should be: one `warn` record logged, which
    /// also says that no file will be written while it is there.
    DirectoryInTheWay,
}

/// Reads the snapshot at `path` for `prefix`. Anything that makes it unusable
/// (unreadable, corrupt, truncated, another prefix or format version, older
/// than `max_age`) is one `warn` record and never partly used; a file that
/// does not exist (or a parent that is not a directory, where no file can
/// exist) is normal at a first start (debug; the writer speaks up).
pub(crate) fn load(path: &Path, prefix: &str, max_age: Duration) -> Found {
    let bytes = match read_regular(path) {
        Ok(b) => b,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            log::debug!(target: LOG, "{prefix}: no snapshot file at {}: {e}", path.display());
            return Found::Nothing;
        }
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            log::warn!(target: LOG, "{prefix}: ignoring snapshot file {}: a directory is in the way; it is left as it is and no snapshot is written while it is there", path.display());
            return Found::DirectoryInTheWay;
        }
        Err(e) => {
            log::warn!(target: LOG, "{prefix}: ignoring snapshot file {}: cannot read it: {e}", path.display());
            return Found::Ignored;
        }
    };
    match decode(&bytes, prefix, max_age, SystemTime::now()) {
        Ok(loaded) => {
            log::info!(target: LOG, "{prefix}: loaded {} instances from snapshot file {} (revision {}, {}s old)",
                loaded.instances.len(), path.display(), loaded.revision, loaded.age.as_secs());
            Found::Loaded(loaded)
        }
        Err(why) => {
            log::warn!(target: LOG, "{prefix}: ignoring snapshot file {}: {why}", path.display());
            Found::Ignored
        }
    }
}

/// Reads the regular file at `path` (following symlinks). Anything else is
/// refused without blocking or reading it: a FIFO (whose open would wait for a
/// writer for ever), a device (/dev/zero never ends), a socket. A directory is
/// `IsADirectory`.
fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut open = OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO without a writer returns at once instead of waiting.
        open.custom_flags(libc_o_nonblock());
    }
    let f = open.open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "a directory is in the way",
        ));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE >> 20),
        )
    };
    if meta.len() > MAX_FILE {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len().min(1 << 20) as usize);
    // A file that grows while it is read stops at the cap too.
    f.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// `O_NONBLOCK`, whose value differs between platforms.
#[cfg(unix)]
fn libc_o_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

/// Where a write to `path` must go: symlinks followed (a dangling one to the
/// file it names), so that a link to the real file stays a link.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p)?;
                p = if target.is_absolute() {
                    target
                } else {
                    p.parent().unwrap_or(Path::new(".")).join(target)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Makes temporary file names unique within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. Whatever is at `path`
/// that is not a file (a directory in the way) stays as it is: the rename
/// fails. The temporary file is removed on failure.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let resolved = resolve(path)?;
    let path = resolved.as_path();
    if let Ok(m) = fs::metadata(path) {
        if !m.is_dir() && !m.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something that is not a regular file is in the way",
            ));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        ));
    }
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is. Some file systems cannot
    // fsync a directory; the file itself is whole either way.
    if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
        log::debug!(target: LOG, "fsync of directory {}: {e}", dir.display());
    }
    Ok(())
}

/// What the discovery task hands over and the writer takes.
struct Pending {
    /// The latest state etcd gave, not yet looked at by the writer.
    state: Option<(i64, Instances)>,
    stop: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The discovery task's end: [`offer`](Feed::offer) the latest state etcd
/// gave. Never blocks on I/O (a short lock and a notify).
#[derive(Clone)]
pub(crate) struct Feed(Arc<Shared>);

impl Feed {
    /// The state at `revision` is `set` (as etcd gave it; never offer a state
    /// that did not come from etcd).
    pub(crate) fn offer(&self, revision: i64, set: &Instances) {
        let mut p = self.0.pending.lock();
        p.state = Some((revision, set.clone()));
        drop(p);
        self.0.wake.notify_one();
    }
}

/// The writer thread of one snapshot file; stopping (or dropping) it writes
/// what is pending and joins the thread.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer of `path` for `prefix`. An unchanged set is written
    /// again after `refresh` (so that it does not age past a reader's max age
    /// while etcd keeps confirming it). `None` (and a warning) when the thread
    /// cannot be started: discovery goes on without a file. `warned`: the
    /// trouble with the place was logged already (the first failed write is
    /// then quiet).
    pub(crate) fn start(
        path: PathBuf,
        prefix: &str,
        max_age: Duration,
        warned: bool,
    ) -> Option<Writer> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                state: None,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let refresh = (max_age / 4).clamp(Duration::from_secs(1), REFRESH_CAP);
        let job = Job {
            shared: shared.clone(),
            path,
            prefix: prefix.to_owned(),
            refresh,
            written: None,
            failing: warned,
        };
        match std::thread::Builder::new()
            .name("etcd-sd-snapshot".into())
            .spawn(move || job.run())
        {
            Ok(thread) => Some(Writer {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                log::warn!(target: LOG, "{prefix}: cannot start the snapshot writer thread: {e}; no snapshot file will be written");
                None
            }
        }
    }

    /// The task's end.
    pub(crate) fn feed(&self) -> Feed {
        Feed(self.shared.clone())
    }

    /// Writes what is pending and ends the thread. Calling it twice is fine.
    pub(crate) fn stop(&mut self) {
        self.shared.pending.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if t.thread().id() == std::thread::current().id() {
                return;
            }
            if t.join().is_err() {
                log::error!(target: LOG, "the snapshot writer thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Job {
    shared: Arc<Shared>,
    path: PathBuf,
    prefix: String,
    refresh: Duration,
    /// What was last written, and when.
    written: Option<(Instances, Instant)>,
    /// The last write failed (and was logged): later failures are quiet.
    failing: bool,
}

impl Job {
    fn run(mut self) {
        // A state whose write failed: tried again after `retry` (doubling
        // up to RETRY_CAP) unless a newer one comes first, and once more
        // when stopped, so that the file catches up once the place is
        // usable again, with no further change in etcd.
        let mut failed: Option<(i64, Instances)> = None;
        let mut retry = RETRY_FIRST;
        loop {
            // Wait for a state (or the retry time), then let changes settle
            // for DEBOUNCE (or until stopped) and take the latest.
            let mut p = self.shared.pending.lock();
            let retry_at = failed.as_ref().map(|_| Instant::now() + retry);
            while p.state.is_none() && !p.stop {
                match retry_at {
                    Some(at) => {
                        if self.shared.wake.wait_until(&mut p, at).timed_out() {
                            break;
                        }
                    }
                    None => self.shared.wake.wait(&mut p),
                }
            }
            if p.state.is_some() && !p.stop {
                let until = Instant::now() + DEBOUNCE;
                while !p.stop && !self.shared.wake.wait_until(&mut p, until).timed_out() {}
            }
            let stop = p.stop;
            let state = p.state.take().or_else(|| failed.take());
            drop(p);
            if let Some((revision, set)) = state {
                match self.write(revision, set) {
                    Ok(()) => {
                        failed = None;
                        retry = RETRY_FIRST;
                    }
                    Err(set) => {
                        failed = Some((revision, set));
                        retry = (retry * 2).min(RETRY_CAP);
                    }
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Writes `set` unless it is what was last written (and not due for a
    /// refresh); gives it back when the write failed.
    fn write(&mut self, revision: i64, set: Instances) -> Result<(), Instances> {
        if let Some((last, at)) = &self.written {
            if *last == set && at.elapsed() < self.refresh {
                return Ok(()); // nothing new: a watch that came back, a progress note
            }
        }
        let bytes = encode(&self.prefix, revision, SystemTime::now(), &set);
        match write_atomic(&self.path, &bytes) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    log::info!(target: LOG, "{}: snapshot file {} written again", self.prefix, self.path.display());
                }
                log::debug!(target: LOG, "{}: wrote {} instances (revision {revision}) to {}", self.prefix, set.len(), self.path.display());
                self.written = Some((set, Instant::now()));
                Ok(())
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(target: LOG, "{}: cannot write snapshot file {}: {e}; discovery goes on (this is logged once until a write succeeds)",
                        self.prefix, self.path.display());
                } else {
                    log::debug!(target: LOG, "{}: cannot write snapshot file {}: {e}", self.prefix, self.path.display());
                }
                Err(set)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Instances {
        v.iter().collect()
    }

    #[test]
    fn round_trip_keeps_the_list() {
        let now = SystemTime::now();
        let s = set(&["b", "a", "\u{fffd}x", "", "with\nnewline\0nul", "ünï"]);
        let bytes = encode("/p/", 7, now, &s);
        let back = decode(&bytes, "/p/", DEFAULT_MAX_AGE, now).unwrap();
        assert_eq!(back.instances, s);
        assert_eq!(back.revision, 7);
        let empty = encode("/p/", 1, now, &Instances::default());
        assert!(decode(&empty, "/p/", DEFAULT_MAX_AGE, now)
            .unwrap()
            .instances
            .is_empty());
    }

    #[test]
    fn every_damage_is_refused() {
        let now = SystemTime::now();
        let bytes = encode("/p/", 7, now, &set(&["a", "b", "c"]));
        let ok = |b: &[u8]| decode(b, "/p/", DEFAULT_MAX_AGE, now).is_ok();
        assert!(ok(&bytes));
        for cut in 0..bytes.len() {
            assert!(!ok(&bytes[..cut]), "truncated at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(!ok(&b), "byte {i} flipped");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"x\n");
        assert!(!ok(&longer));
        assert!(decode(&bytes, "/q/", DEFAULT_MAX_AGE, now)
            .unwrap_err()
            .contains("prefix"));
        let old = encode("/p/", 7, now - Duration::from_secs(100), &set(&["a"]));
        assert!(decode(&old, "/p/", Duration::from_secs(10), now)
            .unwrap_err()
            .contains("too old"));
        assert!(decode(&old, "/p/", Duration::from_secs(1000), now).is_ok());
    }

    #[test]
    fn unknown_version_is_refused() {
        let body = br#"{"format":"etcd-sd-snapshot","version":2,"prefix":"/p/","revision":1,"written_unix_ms":0,"instances":[]}
"#;
        let mut b = body.to_vec();
        b.extend_from_slice(format!("crc32 {:08x}\n", crc32fast::hash(body)).as_bytes());
        let err = decode(&b, "/p/", Duration::MAX, SystemTime::now()).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_a_directory_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        assert!(write_atomic(&blocked, b"x").is_err());
        assert!(blocked.is_dir());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file left behind");
    }
}
