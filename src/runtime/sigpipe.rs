//! SIGPIPE on the runtime's own threads.
//!
//! A Rust program ignores SIGPIPE before `main`, but a C or C++ program that
//! links etcd-sd keeps the default disposition, which terminates the process.
//! HTTP/2 writes frames with `writev`, which (unlike `send` with
//! `MSG_NOSIGNAL`) raises SIGPIPE when etcd has reset the connection: a
//! killed or restarted member could kill its client's host. SIGPIPE that a
//! write raises is sent to the writing thread, so blocking it on the threads
//! that do the writes is enough: the write then fails with `EPIPE`, which the
//! runtime handles like any broken connection. The host's own threads and
//! its signal disposition are left as they were.

/// Blocks SIGPIPE on the calling thread. Called first thing on every thread
/// the runtime starts; never on a caller's thread.
#[cfg(unix)]
pub(crate) fn block_on_this_thread() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        log::warn!("etcd-sd: cannot block SIGPIPE on a runtime thread: {e}");
    }
}

/// Nothing to do where there is no SIGPIPE.
#[cfg(not(unix))]
pub(crate) fn block_on_this_thread() {}

#[cfg(all(test, unix))]
mod tests {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

    fn blocked_here() -> bool {
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut old)).expect("read the mask");
        old.contains(Signal::SIGPIPE)
    }

    #[test]
    fn blocks_sigpipe_on_the_calling_thread_only() {
        let (before, after) = std::thread::spawn(|| {
            let before = blocked_here();
            super::block_on_this_thread();
            (before, blocked_here())
        })
        .join()
        .expect("thread");
        assert!(!before, "a new thread starts with SIGPIPE unblocked");
        assert!(after, "blocked after the call");
        let other = std::thread::spawn(blocked_here).join().expect("thread");
        assert!(!other, "another thread is left as it was");
    }
}
