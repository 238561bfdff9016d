//! Hostile probes of the second release's lifecycle features (issue 15):
//! lazy clients, pause/resume and snapshot files, each a regression test of
//! a promise of API.md §5.1 that was found broken.

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use etcd_sd::{Instancer, InstancerOptions};
use support::api::*;
use support::{secs, unique_prefix, wait_until, EtcdServer};

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo failed");
}

/// Unblocks anything stuck opening `fifo` for reading (bounded: one open).
fn unblock_fifo(fifo: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(fifo);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(0o4000) // O_NONBLOCK on Linux
    }
}

/// A snapshot path that is a FIFO (nobody writing it): `with_options` must
/// still return within `request_timeout` (it used to block for ever opening
/// the FIFO), discovery goes on, and the FIFO is left as it is.
#[test]
fn a_fifo_as_snapshot_file_neither_blocks_nor_is_replaced() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("fifo");
    let _r = registered(&client, format!("{prefix}a"), "a");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("snap");
    mkfifo(&fifo);

    let (tx, rx) = mpsc::channel();
    let (c, p, f) = (client.clone(), prefix.clone(), fifo.clone());
    let t = std::thread::spawn(move || {
        let i = Instancer::with_options(&c, &p, InstancerOptions::new().snapshot_file(f));
        let _ = tx.send(i.map(|i| i.current()));
    });
    // The contract: within request_timeout (2 s); allow a noisy machine.
    let got = rx.recv_timeout(secs(10));
    if got.is_err() {
        unblock_fifo(&fifo);
    }
    let ev = got
        .expect("with_options blocked on a FIFO snapshot path")
        .expect("with_options failed because of the snapshot file");
    t.join().unwrap();
    assert_eq!(instances(&ev), strs(&["a"]), "{}", describe(&ev));

    // Keep an Instancer alive past the writer's debounce: the FIFO stays.
    let i = Instancer::with_options(
        &client,
        &prefix,
        InstancerOptions::new().snapshot_file(&fifo),
    )
    .unwrap();
    let _r2 = registered(&client, format!("{prefix}b"), "b");
    std::thread::sleep(secs(2));
    drop(i);
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(
        meta.file_type().is_fifo(),
        "the FIFO in the way was replaced"
    );
}

/// A snapshot path that is a character device that never ends (/dev/zero):
/// `with_options` must not read it for ever (it used to read until memory
/// ran out); it is ignored.
#[test]
fn an_endless_device_as_snapshot_file_is_ignored() {
    // read_snapshot uses the same reader and writes nothing.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let o = InstancerOptions::new().snapshot_file("/dev/zero");
        let _ = tx.send(o.read_snapshot("/x/").is_none());
    });
    assert_eq!(
        rx.recv_timeout(secs(10)).ok(),
        Some(true),
        "reading /dev/zero as a snapshot did not end (or was used)"
    );
}

/// A symlink to the real snapshot file (a common deployment layout): the
/// writer must write the file it points to, not replace the link.
#[test]
fn a_symlinked_snapshot_file_is_written_through() {
    let etcd = EtcdServer::start();
    let client = connect_with(&etcd, options(secs(2)));
    let prefix = unique_prefix("symlink");
    let _r = registered(&client, format!("{prefix}a"), "a");
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.snapshot");
    let link = dir.path().join("link.snapshot");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let i = Instancer::with_options(
        &client,
        &prefix,
        InstancerOptions::new().snapshot_file(&link),
    )
    .unwrap();
    assert!(
        wait_until(secs(10), || real.exists()),
        "the file the link points to was never written"
    );
    drop(i);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was replaced by a file"
    );
    let again = InstancerOptions::new()
        .snapshot_file(&link)
        .read_snapshot(&prefix)
        .expect("the snapshot is readable through the link");
    assert_eq!(again.iter().collect::<Vec<_>>(), vec!["a"]);
}
