//! Byte payloads of at least `blob_min_bytes` as content-addressed files ([`CasFiles`], their
//! folders made on first use) beside the documents:
//!
//! ```text
//! <root>/blobs/<first 2 hex>/<other 62 hex of the payload's blake3>
//! <root>/tmp/.tmp-*          a payload being received (or left by a crash)
//! <root>/gc.lock             shared by writers between storing a file and committing the
//!                            change that references it; exclusive while `gc` runs
//! ```
//!
//! A payload is streamed into a temporary file while it is hashed (never whole in memory),
//! then, under a [`BlobPin`], renamed to its hash name (one file per distinct payload: dedup;
//! the rename over an existing file repairs it if it was damaged) and referenced by the
//! document change. The document
//! holds a [`BlobRef`] in place of the bytes. Files are immutable; `gc` removes the ones no
//! change of any document references, under the exclusive lock, so never one a writer is about
//! to reference.

use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use stowage_core::{Body, ContentHash, ContentHasher, Error, Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::PROVIDER;
use crate::atomic_file::{AtomicFile, Durability};
use crate::cas_files::{copy_hashing, CasFiles};
use crate::lock_file::open as open_lock_file;
use crate::REPAIR_BY_REPUT;

/// The Automerge scalar type code of a reference (an "unknown" type to Automerge, which keeps
/// such values as they are; 10–15 are unassigned in the binary format).
pub(crate) const BLOB_REF_TYPE_CODE: u8 = 15;
/// The first byte of a reference's value: its layout version.
const BLOB_REF_LAYOUT: u8 = 1;
/// Layout byte + 32 hash bytes + 8 size bytes (little endian).
const BLOB_REF_LEN: usize = 1 + 32 + 8;

/// A payload stored as a file: its blake3 and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BlobRef {
    pub(crate) hash: ContentHash,
    pub(crate) size: u64,
}

impl BlobRef {
    /// The value the document holds: `[1][32-byte hash][u64 LE size]`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOB_REF_LEN);
        out.push(BLOB_REF_LAYOUT);
        out.extend_from_slice(self.hash.as_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out
    }

    /// The reference an Automerge "unknown" scalar holds, if it is one of ours.
    pub(crate) fn decode(type_code: u8, bytes: &[u8]) -> Option<BlobRef> {
        if type_code != BLOB_REF_TYPE_CODE
            || bytes.len() != BLOB_REF_LEN
            || bytes[0] != BLOB_REF_LAYOUT
        {
            return None;
        }
        let hash: [u8; 32] = bytes[1..33].try_into().ok()?;
        let size: [u8; 8] = bytes[33..41].try_into().ok()?;
        Some(BlobRef {
            hash: ContentHash::from_bytes(hash),
            size: u64::from_le_bytes(size),
        })
    }
}

/// What a put received: small enough to live in the document, or staged in a temporary file.
pub(crate) enum Received {
    /// Fewer bytes than the threshold (the whole payload).
    Inline(Bytes),
    /// A payload in a temporary file, hashed, not yet under its hash name.
    Staged(Staged),
}

/// A received payload in a temporary file; dropped uncommitted, the file goes.
pub(crate) struct Staged {
    file: AtomicFile,
    blob: BlobRef,
}

/// The payload files of one store.
#[derive(Clone, Debug)]
pub(crate) struct BlobStore {
    files: CasFiles,
    /// The store root (where `gc.lock` lives).
    root: PathBuf,
}

/// The shared file layout: paths, re-hashing, listing, removal.
impl Deref for BlobStore {
    type Target = CasFiles;

    fn deref(&self) -> &CasFiles {
        &self.files
    }
}

impl BlobStore {
    /// The payload files of the store at `root`.
    pub(crate) fn new(root: &Path, durability: Durability) -> Self {
        BlobStore {
            files: CasFiles::new(PROVIDER, root, durability),
            root: root.to_path_buf(),
        }
    }

    /// Takes a pin: `gc` (in any process) waits until it drops. Blocking.
    pub(crate) fn pin(&self) -> Result<BlobPin> {
        let path = self.root.join("gc.lock");
        let file = open_lock_file(&path)?;
        super::storage::lock_waiting(&file, &path, false)?;
        Ok(BlobPin { file })
    }

    /// Waits until no pin is held in any process and keeps new ones out until the guard drops
    /// (a separate open file, so this process's own pins count too). Blocking.
    pub(crate) fn exclusive(&self) -> Result<BlobPin> {
        let path = self.root.join("gc.lock");
        let file = open_lock_file(&path)?;
        super::storage::lock_waiting(&file, &path, true)?;
        Ok(BlobPin { file })
    }

    /// Stages an in-memory payload in a temporary file. Blocking.
    pub(crate) fn stage_bytes(&self, bytes: &[u8]) -> Result<Staged> {
        let mut file = self.create_tmp()?;
        file.write_all(bytes).map_err(|e| self.tmp_error(e))?;
        Ok(Staged {
            file,
            blob: BlobRef {
                hash: ContentHash::of(bytes),
                size: bytes.len() as u64,
            },
        })
    }

    /// Reads a payload: one with fewer than `threshold` bytes comes back whole; a bigger one is
    /// streamed to a temporary file while it is hashed, holding at most a few chunks (and the
    /// first `threshold` bytes) in memory.
    pub(crate) async fn receive(&self, mut body: Body, threshold: u64) -> Result<Received> {
        if let Some(bytes) = body.as_bytes() {
            if (bytes.len() as u64) < threshold {
                return Ok(Received::Inline(bytes.clone()));
            }
            let (store, bytes) = (self.clone(), bytes.clone());
            return stowage_core::run_blocking(PROVIDER, move || store.stage_bytes(&bytes))
                .await
                .map(Received::Staged);
        }
        let mut head = BytesMut::new();
        while (head.len() as u64) < threshold {
            match body.next_chunk().await {
                None => return Ok(Received::Inline(head.freeze())),
                Some(chunk) => head.extend_from_slice(&chunk?),
            }
        }
        self.write_stream(head.freeze(), body, |file, hash, size| {
            let blob = BlobRef { hash, size };
            Ok(Received::Staged(Staged { file, blob }))
        })
        .await
    }

    /// Gives a staged payload its hash name. The copy is renamed over an existing file of that
    /// name: the bytes are the same by construction unless that file was damaged since (a bit
    /// flip, a truncation), which a put of the same bytes so repairs; a reader that has the old
    /// file open keeps reading it. Call with a [`BlobPin`] held until the change referencing
    /// it is committed. Blocking.
    pub(crate) fn commit(&self, staged: Staged) -> Result<BlobRef> {
        let blob = staged.blob;
        let dest = self.path_of(&blob.hash);
        self.ensure_fan_dir(&dest)?;
        staged
            .file
            .commit(&dest)
            .map_err(|e| Error::io(format!("storing payload {}", dest.display()), e))?;
        Ok(blob)
    }

    /// Creates the fan-out folder of `dest` (a [`CasFiles::path_of`]) when this is the first
    /// payload in it, and `blobs/` too when it is the first of all (both made durable with
    /// the folders holding them). Blocking.
    fn ensure_fan_dir(&self, dest: &Path) -> Result<()> {
        let fan = dest.parent().expect("blob paths have a fan-out folder");
        if fan.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(fan).map_err(|e| Error::io(format!("creating {}", fan.display()), e))?;
        self.sync_dirs(&[&self.dir, &self.root])
    }

    /// Whether the file of `blob` is there with the right length (not re-hashed).
    pub(crate) fn has(&self, blob: &BlobRef) -> bool {
        matches!(fs::metadata(self.path_of(&blob.hash)), Ok(m) if m.is_file() && m.len() == blob.size)
    }

    /// Streams `len` bytes at `offset` of the payload `blob` of `what` (a record version). A
    /// missing file, or one of another length, is `Corrupt` naming it; a whole read
    /// (`offset == 0 && len == size`) is re-hashed and its stream ends with `Corrupt` instead
    /// of its end if the bytes do not match.
    pub(crate) async fn read(
        &self,
        blob: BlobRef,
        offset: u64,
        len: u64,
        what: String,
    ) -> Result<Body> {
        let path = self.path_of(&blob.hash);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corrupt(
                    PROVIDER,
                    format!(
                        "the payload file {} of {what} is missing; run `stowage verify`; {REPAIR_BY_REPUT}",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let on_disk = file
            .metadata()
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        if on_disk != blob.size {
            return Err(Error::corrupt(
                PROVIDER,
                format!(
                    "the payload file {} of {what} holds {on_disk} bytes, not {}; run `stowage verify`",
                    path.display(),
                    blob.size
                ),
            ));
        }
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        }
        let body = Body::from_reader(file.take(len), Some(len));
        if offset != 0 || len != blob.size {
            return Ok(body);
        }
        Ok(body.verified(blob.hash, blob.size, move |got, n| {
            Error::corrupt(
                PROVIDER,
                format!(
                    "the payload file {} of {what} read back as {n} bytes hashing to {got}, not {}; run `stowage verify`",
                    path.display(),
                    blob.hash
                ),
            )
        }))
    }

    /// Copies the file of `blob` from `source` (another store) into this one, checking its
    /// hash on the way: a damaged or missing source is `Corrupt` naming it. Call with a pin of
    /// this store held. Blocking.
    pub(crate) fn copy_from(&self, source: &BlobStore, blob: BlobRef) -> Result<()> {
        let from = source.path_of(&blob.hash);
        let file = File::open(&from).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::corrupt(
                    PROVIDER,
                    format!(
                        "the payload file {} is missing, so it cannot be synced; run `stowage verify` on that store",
                        from.display()
                    ),
                )
            } else {
                Error::io(format!("opening {}", from.display()), e)
            }
        })?;
        let mut tmp = self.create_tmp()?;
        let mut hasher = ContentHasher::new();
        copy_hashing(file, &mut tmp, &mut hasher)
            .map_err(|e| Error::io(format!("copying {}", from.display()), e))?;
        let (hash, size) = hasher.finish();
        if (hash, size) != (blob.hash, blob.size) {
            return Err(Error::corrupt(
                PROVIDER,
                format!(
                    "the payload file {} holds {size} bytes hashing to {hash}, not {} ({} bytes); it was not synced: run `stowage verify` on that store",
                    from.display(),
                    blob.hash,
                    blob.size
                ),
            ));
        }
        self.commit(Staged { file: tmp, blob })?;
        Ok(())
    }
}

/// A held `gc.lock` (shared: a pin; exclusive: `gc`); released on drop or when the process
/// dies.
pub(crate) struct BlobPin {
    file: File,
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
