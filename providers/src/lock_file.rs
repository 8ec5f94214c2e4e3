//! Advisory lock files (`flock`-style, `std::fs::File::lock`), shared by the providers that
//! keep their data in a directory: opening one, and the error when a lock cannot be taken.
//! The OS releases such a lock when its process dies, so a crash never leaves a store locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

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
