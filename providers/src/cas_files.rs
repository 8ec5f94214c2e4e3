//! [`CasFiles`]: payloads as content-addressed files, `blobs/ab/cdef…` (the first two hex digits
//! of the blake3 hash name a fan-out folder, the other 62 the file), written through temporary
//! files in `tmp/`. Shared by the `fs` and `automerge` payload stores, which add their own pins
//! and commit rules. Names come only from hashes, never from keys, so no key can name a path.

use std::fs;
use std::io::ErrorKind::{NotADirectory, NotFound};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use stowage_core::{Body, ContentHash, ContentHasher, Error, Result};

use crate::atomic_file::{self, AtomicFile, Durability};

/// Chunks buffered between an incoming stream and the blocking file writer (bounds memory).
const WRITE_QUEUE: usize = 4;
/// Buffer of blocking copies and re-hashes.
const COPY_BUFFER: usize = 256 * 1024;

/// The content-addressed payload files of one store root.
#[derive(Clone, Debug)]
pub(crate) struct CasFiles {
    provider: &'static str,
    /// The `blobs/` folder.
    pub(crate) dir: PathBuf,
    tmp: PathBuf,
    /// Whether writes are fsynced.
    pub(crate) durability: Durability,
}

enum WriteMsg {
    Chunk(Bytes),
    Finish,
}

impl CasFiles {
    /// The payload files of the store at `root`, of `provider` (named in its errors).
    pub(crate) fn new(provider: &'static str, root: &Path, durability: Durability) -> Self {
        CasFiles {
            provider,
            dir: root.join("blobs"),
            tmp: root.join("tmp"),
            durability,
        }
    }

    /// The folder of temporary files.
    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the file of `hash` lives.
    pub(crate) fn path_of(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// The names of the 256 fan-out folders in `blobs/`, `00` to `ff`.
    pub(crate) fn fans() -> impl Iterator<Item = String> {
        (0..=255u8).map(|i| hex::encode([i]))
    }

    /// fsyncs `dirs` when writes are durable, so entries just made in them survive a power cut.
    /// Blocking.
    pub(crate) fn sync_dirs(&self, dirs: &[&Path]) -> Result<()> {
        if self.durability == Durability::Sync {
            for dir in dirs {
                atomic_file::sync_dir(dir)
                    .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
            }
        }
        Ok(())
    }

    /// The error of a write under `tmp/`: it names the folder and what usually fixes it.
    pub(crate) fn tmp_error(&self, e: io::Error) -> Error {
        Error::io(
            format!(
                "writing a payload under {} (check the disk has room and the folder is writable)",
                self.tmp.display()
            ),
            e,
        )
    }

    /// A new temporary file under `tmp/`, which is made if it is missing (a store that makes its
    /// folders when first needed, or one whose `tmp/` was removed while it was open).
    /// Blocking.
    pub(crate) fn create_tmp(&self) -> Result<AtomicFile> {
        match AtomicFile::create_in(&self.tmp, self.durability) {
            Err(e) if e.kind() == NotFound => {
                fs::create_dir_all(&self.tmp).map_err(|e| self.tmp_error(e))?;
                AtomicFile::create_in(&self.tmp, self.durability)
            }
            created => created,
        }
        .map_err(|e| self.tmp_error(e))
    }

    /// Writes `head` (bytes already taken from the stream, possibly none) and the rest of
    /// `body` into a temporary file while hashing them, on a blocking thread fed through a
    /// queue of a few chunks (the memory bound); then calls `finish` on that thread with the
    /// complete file, its hash and size, so naming the file costs no second hop. A failed
    /// stream returns its own error without calling `finish`, and the partial file is dropped.
    pub(crate) async fn write_stream<T: Send + 'static>(
        &self,
        head: Bytes,
        mut body: Body,
        finish: impl FnOnce(AtomicFile, ContentHash, u64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteMsg>(WRITE_QUEUE);
        let files = self.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = files.create_tmp()?;
            let mut hasher = ContentHasher::new();
            loop {
                match rx.blocking_recv() {
                    Some(WriteMsg::Chunk(chunk)) => {
                        hasher.update(&chunk);
                        file.write_all(&chunk).map_err(|e| files.tmp_error(e))?;
                    }
                    Some(WriteMsg::Finish) => break,
                    // The stream failed (its error is the one returned): dropping `file`
                    // removes the partial copy.
                    None => return Err(Error::invalid_input("payload stream ended with an error")),
                }
            }
            let (hash, size) = hasher.finish();
            finish(file, hash, size)
        });
        let mut failed = None;
        let mut next = Some(Ok(head));
        while let Some(chunk) = next {
            match chunk {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => {
                    if tx.send(WriteMsg::Chunk(chunk)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            next = body.next_chunk().await;
        }
        if failed.is_none() {
            let _ = tx.send(WriteMsg::Finish).await;
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| Error::backend(self.provider, "payload writer task failed", e))?;
        match failed {
            Some(e) => Err(e),
            None => written,
        }
    }

    /// Re-hashes the file of `hash`: its hash and length, `None` when it is missing. Blocking.
    pub(crate) fn rehash(&self, hash: &ContentHash) -> io::Result<Option<(ContentHash, u64)>> {
        let file = match fs::File::open(self.path_of(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = ContentHasher::new();
        copy_hashing(file, io::sink(), &mut hasher)?;
        Ok(Some(hasher.finish()))
    }

    /// Every stored file and its length. A name that is not a hash as [`Self::path_of`] spells
    /// it is a stray file, left out so `gc` never deletes it. Blocking.
    pub(crate) fn list_all(&self) -> io::Result<Vec<(ContentHash, u64)>> {
        let mut out = Vec::new();
        for fan in Self::fans() {
            let entries = match fs::read_dir(self.dir.join(&fan)) {
                Err(e) if matches!(e.kind(), NotFound | NotADirectory) => continue,
                entries => entries?,
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                match ContentHash::from_hex(&format!("{fan}{name}")) {
                    Ok(hash) if hash.to_hex()[2..] == *name => {
                        out.push((hash, entry.metadata()?.len()))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Deletes the file of `hash`; whether it was there. Blocking.
    pub(crate) fn remove(&self, hash: &ContentHash) -> io::Result<bool> {
        match fs::remove_file(self.path_of(hash)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Copies `from` into `to`, feeding `hasher` on the way. Blocking.
pub(crate) fn copy_hashing(
    mut from: impl Read,
    mut to: impl Write,
    hasher: &mut ContentHasher,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}
