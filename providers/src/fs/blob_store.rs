//! [`BlobStore`]: the fs provider's payloads as content-addressed files ([`CasFiles`]), with
//! every folder made (and checked for symlinks) when the store opens.
//!
//! A payload is streamed into a temporary file under `tmp/` while it is hashed, then made
//! durable and linked to its hash name (see [`crate::atomic_file`]). If that name exists the
//! content should be there already (dedup), but a stored file can be damaged after the fact
//! (a bit flip, a truncation): a put of the same bytes then repairs it. A streamed copy, which
//! is on disk anyway, is renamed over the existing file; an in-memory one is compared with the
//! file first and written only if they differ.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Deref;
use std::path::Path;

use bytes::Bytes;
use stowage_core::{run_blocking, Body, ContentHash, Error, Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::lock::{BlobPin, BlobPins};
use super::PROVIDER;
use crate::atomic_file::{AtomicFile, Durability};
use crate::cas_files::CasFiles;

/// Payloads up to this size are read in one call on the calling task: a page-cache read of a
/// few KiB costs less than a hop to a blocking thread.
pub(crate) const SMALL_READ: u64 = 64 * 1024;

/// Content-addressed payload files.
#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    files: CasFiles,
}

/// The shared file layout: paths, re-hashing, listing, removal.
impl Deref for BlobStore {
    type Target = CasFiles;

    fn deref(&self) -> &CasFiles {
        &self.files
    }
}

impl BlobStore {
    /// The blob store of the store at `root`.
    pub(crate) fn new(root: &Path, durability: Durability) -> Self {
        BlobStore {
            files: CasFiles::new(PROVIDER, root, durability),
        }
    }

    /// Creates `blobs/`, its 256 fan-out directories and `tmp/`, refusing any that is a
    /// symlink (which could lead writes out of the root). Blocking.
    pub(crate) fn prepare(&self) -> Result<()> {
        real_dir(&self.dir)?;
        real_dir(self.tmp_dir())?;
        let mut created = false;
        for fan in CasFiles::fans() {
            created |= real_dir(&self.dir.join(fan))?;
        }
        if created {
            self.sync_dirs(&[&self.dir])?;
        }
        Ok(())
    }

    /// Stores an in-memory payload. Blocking.
    ///
    /// When the file is there already, its content is compared with `bytes` (a read, usually
    /// from the page cache, where a write would also fsync): equal, nothing is written (dedup);
    /// different or unreadable (damaged since it was stored), `bytes` replace it.
    pub(crate) fn write_bytes(&self, bytes: &[u8]) -> Result<(ContentHash, u64)> {
        let hash = ContentHash::of(bytes);
        let dest = self.path_of(&hash);
        match file_holds(&dest, bytes) {
            Ok(Some(true)) => return Ok((hash, bytes.len() as u64)),
            Ok(None) => {}
            Ok(Some(false)) => tracing::warn!(
                file = %dest.display(),
                "the payload file no longer holds its content (damaged); replacing it with the bytes of this put"
            ),
            Err(e) => tracing::warn!(
                file = %dest.display(),
                error = %e,
                "the payload file could not be read; replacing it with the bytes of this put"
            ),
        }
        let mut file = self.create_tmp()?;
        file.write_all(bytes).map_err(|e| self.tmp_error(e))?;
        // A rename, even over a copy another writer stored meanwhile: the content is the same.
        file.commit(&dest)
            .map_err(|e| Error::io(format!("storing payload {}", dest.display()), e))?;
        Ok((hash, bytes.len() as u64))
    }

    /// Stores a payload, streaming it to disk while hashing it; returns its hash and size, and
    /// the pin (taken from `pins` once the payload is in, before it is stored under its hash)
    /// that keeps `gc` from deleting it until the record referencing it is committed. A
    /// producer that pauses mid-stream therefore holds up no `gc`: its temporary file is
    /// locked (see [`crate::atomic_file::remove_abandoned_tmp_files`]), not pinned.
    pub(crate) async fn write_body(
        &self,
        body: Body,
        pins: &BlobPins,
    ) -> Result<(BlobPin, ContentHash, u64)> {
        if let Some(bytes) = body.as_bytes() {
            let pin = pins.pin_async().await?;
            // Without fsync a small write only touches the page cache: cheaper right here. An
            // fsync can take milliseconds, so it goes where blocking is allowed.
            if self.durability == Durability::NoSync && bytes.len() as u64 <= SMALL_READ {
                let (hash, size) = self.write_bytes(bytes)?;
                return Ok((pin, hash, size));
            }
            let (store, bytes) = (self.clone(), bytes.clone());
            let (hash, size) = run_blocking(PROVIDER, move || store.write_bytes(&bytes)).await?;
            return Ok((pin, hash, size));
        }
        let (pins, store) = (pins.clone(), self.clone());
        self.write_stream(Bytes::new(), body, move |file, hash, size| {
            // Waits for a `gc` in progress, which may be deleting this very hash.
            let pin = pins.pin()?;
            store.store_streamed(file, &hash)?;
            Ok((pin, hash, size))
        })
        .await
    }

    /// Gives the complete, hashed temporary file `file` the name of `hash`. Called with a pin
    /// held, so `gc` is not deleting that name meanwhile. Blocking.
    ///
    /// A new payload is hard-linked (never replacing a file another writer linked first). When
    /// the name exists, the temporary file is renamed over it instead of dropped: the existing
    /// file may have been damaged since it was stored, and reading it to find out would cost as
    /// much as the put itself. The rename is atomic (a reader sees the old file or the new one,
    /// and one holding the old file open keeps reading it), the content is the same when the old
    /// file was healthy, and writers racing on one hash each install a complete copy. It costs a
    /// rename and, with fsync, a directory fsync, as storing a new payload does.
    fn store_streamed(&self, file: AtomicFile, hash: &ContentHash) -> Result<()> {
        let dest = self.path_of(hash);
        let stored = |e| Error::io(format!("storing payload {}", dest.display()), e);
        match fs::symlink_metadata(&dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                file.commit_if_absent(&dest).map_err(stored)?;
            }
            _ => {
                if let Err(e) = file.commit(&dest) {
                    // A file system that refuses to replace a file in use (the temporary file
                    // is gone with `file`): the existing copy stays, as a plain dedup would.
                    tracing::warn!(file = %dest.display(), error = %e, "could not replace the stored payload file with the copy just written; keeping the stored one");
                }
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` of a small blob in one call; with `expect` set (a whole
    /// payload read), checks the content against its hash and size.
    pub(crate) fn read_small(
        &self,
        hash: &ContentHash,
        offset: u64,
        len: u64,
        expect: Option<u64>,
    ) -> io::Result<Bytes> {
        let path = self.path_of(hash);
        let mut file = fs::File::open(&path)?;
        let mut buf = vec![0u8; len as usize];
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        file.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the blob file is shorter than its recorded size",
                )
            } else {
                e
            }
        })?;
        if let Some(size) = expect {
            let mut extra = [0u8; 1];
            if file.read(&mut extra)? != 0
                || ContentHash::of(&buf) != *hash
                || buf.len() as u64 != size
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the blob's content no longer matches its hash",
                ));
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Streams `len` bytes at `offset`; with `expect` set (a whole payload read), the stream
    /// ends with an error instead of its end if the content does not match its hash.
    pub(crate) async fn read_stream(
        &self,
        hash: &ContentHash,
        offset: u64,
        len: u64,
        expect: Option<u64>,
        what: String,
    ) -> io::Result<Body> {
        let path = self.path_of(hash);
        let mut file = tokio::fs::File::open(&path).await?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).await?;
        }
        let body = Body::from_reader(file.take(len), Some(len));
        let Some(size) = expect else { return Ok(body) };
        let expected = *hash;
        Ok(body.verified(expected, size, move |got, n| {
            Error::corrupt(
                PROVIDER,
                format!("payload of {what} read back as {n} bytes hashing to {got}, not {expected}; run `stowage verify`"),
            )
        }))
    }
}

/// Whether the file at `path` holds exactly `bytes`: `None` if there is no such file.
/// Compares sizes first, then the content in pieces (no hash needed: `bytes` are the content
/// the name stands for).
fn file_holds(path: &Path, bytes: &[u8]) -> io::Result<Option<bool>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() != bytes.len() as u64 {
        return Ok(Some(false));
    }
    let mut buf = vec![0u8; bytes.len().clamp(1, 256 * 1024)];
    let mut at = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(Some(at == bytes.len()));
        }
        if at + n > bytes.len() || buf[..n] != bytes[at..at + n] {
            return Ok(Some(false));
        }
        at += n;
    }
}

/// Makes sure `dir` is a real directory (not a symlink), creating it if missing; returns
/// whether it was created.
fn real_dir(dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => Ok(false),
        Ok(_) => Err(Error::corrupt(
            PROVIDER,
            format!(
                "{} is a symlink or not a directory; the fs provider never follows links out of its root: replace it with a directory",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::create_dir(dir) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => real_dir(dir),
                Err(e) => Err(Error::io(format!("creating {}", dir.display()), e)),
            }
        }
        Err(e) => Err(Error::io(format!("checking {}", dir.display()), e)),
    }
}
