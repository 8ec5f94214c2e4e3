//! Advisory lock files (`flock`-style, `std::fs::File::lock`), shared by the providers that
//! keep their data in a directory: opening one, and the error when a lock cannot be taken.
//! The OS releases such a lock when its process dies, so a crash never leaves a store locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Duration;

use stowage_core::{Error, Result};

/// Opens (creating if needed, never truncating) the lock file at `path`; does not lock it.
pub(crate) fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(format!("opening lock file {}", path.display()), e))
}

/// The error for a lock on `path` that failed (not one that is merely held by another).
pub(crate) fn lock_error(path: &Path, e: io::Error) -> Error {
    Error::Locked {
        path: path.to_path_buf(),
        message: format!(
            "could not take the lock ({e}); is the root on a file system without advisory locks (some network mounts)?"
        ),
    }
}

/// How long a wait for a lock goes on silently; then it is logged once, and goes on.
pub(crate) const WAIT_WARNING_AFTER: Duration = Duration::from_secs(1);

/// Runs `lock`, a blocking wait for the lock file at `path` that a non-blocking try found held
/// (`holder` says by whom, likely). If it has not returned after [`WAIT_WARNING_AFTER`], one
/// warning names the file and the holder, so a command that seems to hang says why; the wait
/// itself is unchanged (the OS wakes it the moment the holder lets go). The waiting thread is
/// blocked in the kernel, so a scoped thread watches the clock, logging through the waiter's
/// subscriber.
pub(crate) fn wait_logged<T>(
    path: &Path,
    holder: &str,
    lock: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Without a watcher (the OS refused a thread) the wait goes on unlogged.
        let _ = std::thread::Builder::new()
            .name("stowage-lock-wait".into())
            .spawn_scoped(scope, move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    waiting.recv_timeout(WAIT_WARNING_AFTER)
                {
                    tracing::dispatcher::with_default(&dispatch, || {
                        tracing::warn!(
                            lock = %path.display(),
                            "waiting for the lock {} for over {} s: another process holds it \
                             ({holder}; or another store opened on the same root). Still \
                             waiting: it goes on by itself once that process finishes or is \
                             stopped",
                            path.display(),
                            WAIT_WARNING_AFTER.as_secs(),
                        );
                    });
                }
            });
        let locked = lock();
        drop(done);
        locked
    })
}
