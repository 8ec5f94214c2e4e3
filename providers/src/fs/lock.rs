//! The two advisory file locks that let several processes share one root:
//!
//! - [`WriterLock`] (`root/lock`, exclusive): held for each write transaction (catch up with
//!   the log, check preconditions, append, fsync), so appends from two processes never
//!   interleave and a precondition is checked against every committed write.
//! - [`BlobPins`] (`root/gc.lock`): a writer holds it *shared* from writing a payload blob
//!   until the record that references it is committed; `gc` holds it *exclusive*, so it
//!   never deletes a blob that a write in flight (in any process) is about to reference.
//!
//! Within one process, one open file holds each lock (a second `flock` through the same open
//! file would not wait), so the commit code serialises its own users with a mutex first.
//!
//! Both are `flock`-style locks (`std::fs::File::lock`): released by the OS when a process
//! dies, so a crashed writer never leaves the store locked. A process that holds one for long
//! (a big `gc`, a stopped process) keeps the others waiting without limit; a wait that lasts
//! over a second is logged once, naming the lock file, so a user sees why a command hangs
//! ([`crate::lock_file::wait_logged`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stowage_core::Result;

use crate::lock_file::{lock_error, open as open_lock_file};

/// The exclusive lock serialising write transactions across processes.
#[derive(Debug)]
pub(crate) struct WriterLock {
    file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Opens (creating if needed) the lock file; does not lock yet.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        Ok(WriterLock {
            file: open_lock_file(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock if no other process holds it.
    pub(crate) fn try_lock(&self) -> Result<Option<WriterGuard<'_>>> {
        match self.file.try_lock() {
            Ok(()) => Ok(Some(WriterGuard { lock: self })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_error(&self.path, e)),
        }
    }

    /// Blocks until this process holds the lock; it is released when the guard drops.
    pub(crate) fn lock(&self) -> Result<WriterGuard<'_>> {
        if let Some(guard) = self.try_lock()? {
            return Ok(guard);
        }
        crate::lock_file::wait_logged(&self.path, "a write to this store", || self.file.lock())
            .map_err(|e| lock_error(&self.path, e))?;
        Ok(WriterGuard { lock: self })
    }
}

/// Proof of holding the [`WriterLock`].
#[derive(Debug)]
pub(crate) struct WriterGuard<'a> {
    lock: &'a WriterLock,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.file.unlock();
    }
}

/// Shared pins on payload blobs for writes in flight, against an exclusive `gc`.
///
/// One process-wide shared lock is taken when the first write starts and released when the last
/// one ends (a count), because `flock` locks belong to the open file, not to a task.
#[derive(Debug, Clone)]
pub(crate) struct BlobPins {
    inner: Arc<PinsInner>,
}

#[derive(Debug)]
struct PinsInner {
    file: File,
    path: PathBuf,
    count: Mutex<u64>,
}

impl BlobPins {
    /// Opens (creating if needed) the gc lock file.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        Ok(BlobPins {
            inner: Arc::new(PinsInner {
                file: open_lock_file(path)?,
                path: path.to_path_buf(),
                count: Mutex::new(0),
            }),
        })
    }

    /// Pins without waiting, when that is possible (no `gc` running); `None` means a blocking
    /// [`BlobPins::pin`] is needed.
    pub(crate) fn try_pin(&self) -> Result<Option<BlobPin>> {
        // Busy means another pin is waiting for a `gc` (holding the mutex): wait like it.
        let mut count = match self.inner.count.try_lock() {
            Ok(count) => count,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        if *count == 0 {
            match self.inner.file.try_lock_shared() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(lock_error(&self.inner.path, e))
                }
            }
        }
        *count += 1;
        Ok(Some(BlobPin { pins: self.clone() }))
    }

    /// Pins, waiting for a running `gc` to finish. Blocking: call off the async runtime.
    pub(crate) fn pin(&self) -> Result<BlobPin> {
        let mut count = self.inner.count.lock().unwrap_or_else(|e| e.into_inner());
        if *count == 0 {
            let (file, path) = (&self.inner.file, &self.inner.path);
            match file.try_lock_shared() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    crate::lock_file::wait_logged(path, "a `gc` of this store", || {
                        file.lock_shared()
                    })
                    .map_err(|e| lock_error(path, e))?;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(path, e)),
            }
        }
        *count += 1;
        Ok(BlobPin { pins: self.clone() })
    }

    /// [`BlobPins::try_pin`], else [`BlobPins::pin`] on the blocking pool. Not in place: the
    /// `gc` being waited for may be a future of this very task (`join!`), which must go on
    /// being polled to finish and let go.
    pub(crate) async fn pin_async(&self) -> Result<BlobPin> {
        if let Some(pin) = self.try_pin()? {
            return Ok(pin);
        }
        let pins = self.clone();
        stowage_core::run_on_pool(super::PROVIDER, move || pins.pin()).await
    }

    /// Waits until no write in any process holds a pin, and keeps new ones out until the guard
    /// drops. The wait, when there is one, is on the blocking pool, not in place: the writes
    /// being waited for may be futures of this very task (`join!`), which must go on being
    /// polled to finish and unpin.
    pub(crate) async fn exclusive(&self) -> Result<ExclusiveBlobs> {
        // A separate open file: flock treats it as another owner, so this waits for this
        // process's own shared pin too.
        let file = open_lock_file(&self.inner.path)?;
        match file.try_lock() {
            Ok(()) => return Ok(ExclusiveBlobs { file }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(&self.inner.path, e)),
        }
        let path = self.inner.path.clone();
        stowage_core::run_on_pool(super::PROVIDER, move || {
            crate::lock_file::wait_logged(
                &path,
                "writes in flight, which hold it until they commit",
                || file.lock(),
            )
            .map_err(|e| lock_error(&path, e))?;
            Ok(ExclusiveBlobs { file })
        })
        .await
    }
}

/// A pin held by one write in flight.
#[derive(Debug)]
pub(crate) struct BlobPin {
    pins: BlobPins,
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut count = self
            .pins
            .inner
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *count -= 1;
        if *count == 0 {
            let _ = self.pins.inner.file.unlock();
        }
    }
}

/// Held by `gc` while it deletes blobs.
#[derive(Debug)]
pub(crate) struct ExclusiveBlobs {
    file: File,
}

impl Drop for ExclusiveBlobs {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
