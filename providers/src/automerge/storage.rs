//! The files of one document, laid out like automerge-repo's storage: immutable,
//! content-addressed change files plus a snapshot that replaces them once they outweigh it.
//!
//! ```text
//! <root>/docs/<namespace>/<blake3(ns, key) hex>/
//!     lock                        advisory lock + 8-byte generation counter
//!     snapshot-<blake3 hex>.am    Automerge::save() of the whole document
//!     incremental-<blake3 hex>.amc  raw change chunks (Automerge::save_after)
//! <root>/docs/<namespace>/.purged/<doc id>-<unique>/
//!                                 a purged document's folder, moved here whole and then
//!                                 deleted (left by a purge that was killed; never read)
//! ```
//!
//! Writers hold the exclusive lock only while they reload, commit one change and write its
//! file; readers hold the shared lock only while they read new files. Every write bumps the
//! generation in the lock file, so an unchanged generation lets a reader skip listing the
//! directory. A purge moves the folder, lock file included, away in one rename; a lock taken
//! is therefore checked to still be the file at its path (see [`DocLock::acquire`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use stowage_core::{Error, Key, Namespace, Result};

use super::PROVIDER;
use crate::atomic_file::{sync_dir, write_atomic, Durability};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".am";
const INCREMENTAL_PREFIX: &str = "incremental-";
const INCREMENTAL_SUFFIX: &str = ".amc";
const LOCK_FILE: &str = "lock";

/// The folder of a document: `docs/<ns>/<blake3 hex of ns and key>`. The key never becomes a
/// path, so no key can escape the root or collide with another key's folder.
pub(crate) fn doc_dir(root: &Path, ns: &Namespace, key: &Key) -> PathBuf {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"stowage-automerge-doc\0");
    hasher.update(ns.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(key.as_str().as_bytes());
    root.join("docs")
        .join(ns.as_str())
        .join(hasher.finalize().to_hex().as_str())
}

/// What kind of data file a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FileKind {
    /// A whole-document save.
    Snapshot,
    /// One or more changes.
    Incremental,
}

/// Classifies a file name; `None` for the lock file, temporary files and strangers.
pub(crate) fn file_kind(name: &str) -> Option<FileKind> {
    if name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX) {
        Some(FileKind::Snapshot)
    } else if name.starts_with(INCREMENTAL_PREFIX) && name.ends_with(INCREMENTAL_SUFFIX) {
        Some(FileKind::Incremental)
    } else {
        None
    }
}

/// How many times [`DocLock::acquire`] looks again when the lock file it locked was moved
/// away by a purge meanwhile; each retry means another purge of the same key completed.
const MAX_LOCK_ATTEMPTS: usize = 64;

/// The folder beside a namespace's document folders where a purge moves a document folder
/// before deleting it: `docs/<ns>/.purged/`. Not 64 hex digits, so no listing takes it for a
/// document.
const PURGED_DIR: &str = ".purged";

/// A held document lock; released on drop.
pub(crate) struct DocLock {
    file: File,
    path: PathBuf,
}

impl DocLock {
    /// Takes the lock of `dir` (creating the folder and lock file when `create`), exclusive
    /// for writers, shared for readers. `None` when the folder does not exist and `create` is
    /// false: the document was never written, or was purged.
    ///
    /// A purge moves the whole folder away under the exclusive lock, so a process that opened
    /// the lock file before may get the lock of a file that is no longer at `dir`: holding it
    /// would exclude nobody (a new writer locks the new file). So once locked, the file must
    /// still be the one at `dir/lock`; if not, this drops it and looks again.
    pub(crate) fn acquire(dir: &Path, exclusive: bool, create: bool) -> Result<Option<DocLock>> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..MAX_LOCK_ATTEMPTS {
            if create {
                fs::create_dir_all(dir).map_err(|e| {
                    Error::io(format!("creating document folder {}", dir.display()), e)
                })?;
            } else if !dir.exists() {
                return Ok(None);
            }
            let file = match open_lock_file(&path) {
                Ok(file) => file,
                // Purged between the check (or creation) of the folder and the open.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("opening lock file {}", path.display()),
                        e,
                    ))
                }
            };
            lock_waiting(&file, &path, exclusive)?;
            if still_at(&file, &path)? {
                return Ok(Some(DocLock { file, path }));
            }
            // Dropping the file releases the stale lock.
        }
        Err(Error::Locked {
            path: path.clone(),
            message: format!(
                "the document folder {} was purged and written again {MAX_LOCK_ATTEMPTS} times \
                 while this process waited for its lock; try again",
                dir.display()
            ),
        })
    }

    /// The write generation (0 for a fresh lock file).
    pub(crate) fn generation(&mut self) -> Result<u64> {
        let mut buf = [0u8; 8];
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| read_up_to(&mut self.file, &mut buf))
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Bumps the write generation; only under the exclusive lock.
    ///
    /// A fresh lock file (generation 0) starts at a random number rather than 1: a purge
    /// removes the folder with its lock file, and a process that remembers generation `g` of
    /// the purged document must not take a new document under the same name, written `g`
    /// times, for the one it has in memory (it skips reloading on an equal generation).
    pub(crate) fn bump_generation(&mut self) -> Result<u64> {
        let current = self.generation()?;
        let next = if current == 0 {
            random_generation()
        } else {
            current.wrapping_add(1)
        };
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&next.to_le_bytes()))
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        Ok(next)
    }
}

impl Drop for DocLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// A random non-zero generation.
fn random_generation() -> u64 {
    let actor = automerge::ActorId::random();
    let bytes = actor.to_bytes();
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf).max(1)
}

/// Opens (creating if needed, never truncating) the lock file at `path`; the error keeps its
/// kind, so a folder purged meanwhile (`NotFound`) can be told apart.
fn open_lock_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Whether the open lock file `file` is still the file at `path` (not moved away or replaced).
fn still_at(file: &File, path: &Path) -> Result<bool> {
    let held = file
        .metadata()
        .map_err(|e| Error::io(format!("reading lock file {}", path.display()), e))?;
    let there = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(Error::io(
                format!("reading lock file {}", path.display()),
                e,
            ))
        }
    };
    Ok(same_file(&held, &there))
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // The open file keeps its inode alive, so its number cannot have been reused meanwhile.
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    // Elsewhere a folder with an open file cannot be renamed, so a purge cannot have moved it.
    true
}

/// Takes the advisory lock of `file` (the lock file at `path`), waiting for as long as another
/// process holds it, as before; a wait longer than a second is logged once, so a
/// writer stuck behind another process (a hung one, or a long `gc`) does not look hung itself.
pub(crate) fn lock_waiting(file: &File, path: &Path, exclusive: bool) -> Result<()> {
    let attempt = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    let blocking_lock = || {
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
    };
    match attempt {
        Ok(()) => return Ok(()),
        Err(fs::TryLockError::WouldBlock) => {}
        // Not a wait: the blocking call reports the error as it always has.
        Err(fs::TryLockError::Error(_)) => {
            return blocking_lock().map_err(|e| crate::lock_file::lock_error(path, e))
        }
    }
    crate::lock_file::wait_logged(
        path,
        "a write, purge, sync or gc of the same store",
        blocking_lock,
    )
    .map_err(|e| crate::lock_file::lock_error(path, e))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(())
}

/// What a look at a document folder found.
#[derive(Debug)]
pub(crate) enum Listed {
    /// The folder does not exist: the record was never written, or was purged.
    Gone,
    /// A data file was removed between reading the folder and looking at the file (a
    /// compaction or purge by another process): the document changed, look again.
    Changed,
    /// The data files, name → size.
    Files(BTreeMap<String, u64>),
}

/// The data files of a document folder. Safe without the lock: a file that disappears while it
/// is looked at is reported as [`Listed::Changed`], not as an error.
pub(crate) fn list_files(dir: &Path) -> Result<Listed> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listed::Gone),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listed::Changed),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if file_kind(&name).is_some() {
            let size = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listed::Changed),
                Err(e) => return Err(Error::io(format!("reading {}", entry.path().display()), e)),
            };
            out.insert(name, size);
        }
    }
    Ok(Listed::Files(out))
}

/// The content hash a data file's name promises (the hex between its prefix and suffix).
fn named_hash(name: &str) -> Option<&str> {
    let hex = match file_kind(name)? {
        FileKind::Snapshot => name
            .strip_prefix(SNAPSHOT_PREFIX)?
            .strip_suffix(SNAPSHOT_SUFFIX)?,
        FileKind::Incremental => name
            .strip_prefix(INCREMENTAL_PREFIX)?
            .strip_suffix(INCREMENTAL_SUFFIX)?,
    };
    Some(hex)
}

/// Reads one data file and checks its bytes against the hash its name holds. Automerge's
/// loader skips a change chunk it cannot parse without failing, so a damaged change file
/// would otherwise read as a document without that change: an older version served as the
/// latest, or no record at all. Any damage (a flipped bit, a cut or emptied file) is
/// `Corrupt` naming the file instead.
///
/// `None` when the file is gone: removed by a compaction or purge since the folder was read.
pub(crate) fn read_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let actual = stowage_core::ContentHash::of(&bytes).to_hex();
    if named_hash(name) != Some(actual.as_str()) {
        return Err(Error::corrupt(
            PROVIDER,
            format!(
                "{} is damaged: its {} bytes hash to {actual}, not to the hash in its name; \
                 put it back from a backup, or move it aside to read the rest (then `stowage \
                 sync` with a replica that has its changes restores them)",
                path.display(),
                bytes.len()
            ),
        ));
    }
    Ok(Some(bytes))
}

/// Whether the file at `path` holds exactly the bytes whose hash is `hex`.
fn holds(path: &Path, hex: &str) -> bool {
    fs::read(path).is_ok_and(|bytes| stowage_core::ContentHash::of(&bytes).to_hex() == hex)
}

/// Writes a data file named after its content's blake3; returns its name. An existing file of
/// that name is kept when it holds these bytes, and rewritten when it was damaged, so writing
/// the same changes again (a put, or `sync` from a replica) repairs it.
pub(crate) fn write_content_file(
    dir: &Path,
    kind: FileKind,
    bytes: &[u8],
    durability: Durability,
) -> Result<String> {
    let hash = stowage_core::ContentHash::of(bytes).to_hex();
    let name = match kind {
        FileKind::Snapshot => format!("{SNAPSHOT_PREFIX}{hash}{SNAPSHOT_SUFFIX}"),
        FileKind::Incremental => format!("{INCREMENTAL_PREFIX}{hash}{INCREMENTAL_SUFFIX}"),
    };
    let path = dir.join(&name);
    if !holds(&path, &hash) {
        write_atomic(&path, bytes, durability)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(name)
}

/// Removes a data file covered by a newer snapshot (or purged); a missing one is fine.
pub(crate) fn remove_file(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Moves the folder of a document out of its place, into the namespace's `.purged/` folder
/// under a name no other purge uses, and (with `Durability::Sync`) makes that durable before
/// returning: the first step of a purge, after which no reader or writer finds any file of the
/// record, while the files still exist. Call with the document's exclusive lock held. Returns
/// where the folder went, to be removed with [`remove_tree`].
pub(crate) fn move_to_trash(dir: &Path, durability: Durability) -> Result<PathBuf> {
    let ns_dir = dir
        .parent()
        .ok_or_else(|| Error::invalid_input(format!("{} has no parent folder", dir.display())))?;
    let trash = ns_dir.join(PURGED_DIR);
    fs::create_dir_all(&trash)
        .map_err(|e| Error::io(format!("creating {}", trash.display()), e))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let doc_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = trash.join(format!(
        "{doc_id}-{}-{}-{:016x}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        random_generation()
    ));
    fs::rename(dir, &target).map_err(|e| {
        Error::io(
            format!(
                "purging: moving {} to {} (nothing was removed; try again)",
                dir.display(),
                target.display()
            ),
            e,
        )
    })?;
    if durability == Durability::Sync {
        // Both folders changed; the namespace folder's entry is the one that must not come
        // back, before a single file of the record is deleted.
        for changed in [ns_dir, trash.as_path()] {
            sync_dir(changed).map_err(|e| {
                Error::io(
                    format!(
                        "purging: syncing {} after moving the record's folder to {} (the record \
                         is gone for readers; `stowage gc` removes that folder)",
                        changed.display(),
                        target.display()
                    ),
                    e,
                )
            })?;
        }
    }
    Ok(target)
}

/// Removes a folder and everything in it, not following links; what is already gone (removed
/// by a concurrent purge or `gc` doing the same) is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    remove_tree_io(path).map_err(|e| {
        Error::io(
            format!(
                "removing {} (a purged record's files; the record is gone for readers, and \
                 `stowage gc` or removing the folder by hand finishes the purge)",
                path.display()
            ),
            e,
        )
    })
}

fn remove_tree_io(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    // Nothing of this build writes into a moved folder, but a process that had it open (an
    // older build's lister writing its cache) might: a folder that fills again between
    // emptying and removal is emptied again.
    let mut last = None;
    for _ in 0..4 {
        let entries = match fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            match entry {
                Ok(entry) => remove_tree_io(&entry.path())?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("folder kept filling up")))
}

/// Removes what purges that were interrupted (a crash between moving a folder away and
/// deleting it) left in the namespace folder `ns_dir`. Everything under `.purged/` is a
/// purged record: nothing reads it, so it can go at any time, also while another purge is
/// still deleting its own folder there.
pub(crate) fn sweep_trash(ns_dir: &Path) -> Result<()> {
    let trash = ns_dir.join(PURGED_DIR);
    let entries = match fs::read_dir(&trash) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", trash.display()), e)),
    };
    for entry in entries {
        match entry {
            Ok(entry) => remove_tree(&entry.path())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("listing {}", trash.display()), e)),
        }
    }
    Ok(())
}

/// The namespaces with a folder under `root`.
pub(crate) fn namespace_dirs(root: &Path) -> Result<Vec<Namespace>> {
    let docs = root.join("docs");
    let mut out = Vec::new();
    let entries = match fs::read_dir(&docs) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", docs.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", docs.display()), e))?;
        if let Ok(ns) = Namespace::new(entry.file_name().to_string_lossy().into_owned()) {
            out.push(ns);
        }
    }
    out.sort();
    Ok(out)
}

/// The folder of every document of every namespace.
pub(crate) fn all_document_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for ns in namespace_dirs(root)? {
        all.extend(document_dirs(root, &ns)?);
    }
    Ok(all)
}

/// The document folders of a namespace.
pub(crate) fn document_dirs(root: &Path, ns: &Namespace) -> Result<Vec<PathBuf>> {
    let dir = root.join("docs").join(ns.as_str());
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_a_content_file_again_repairs_a_damaged_copy_and_keeps_a_sound_one() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"change bytes".as_slice();
        let name = write_content_file(dir.path(), FileKind::Incremental, bytes, Durability::NoSync)
            .unwrap();
        assert_eq!(
            read_file(dir.path(), &name).unwrap().as_deref(),
            Some(bytes)
        );
        let path = dir.path().join(&name);
        fs::write(&path, b"change bytez").unwrap();
        let err = read_file(dir.path(), &name).unwrap_err();
        assert_eq!(err.kind(), stowage_core::ErrorKind::Corrupt, "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let again =
            write_content_file(dir.path(), FileKind::Incremental, bytes, Durability::NoSync)
                .unwrap();
        assert_eq!(again, name);
        assert_eq!(
            read_file(dir.path(), &name).unwrap().as_deref(),
            Some(bytes)
        );
        // A sound copy is left as it is (same inode: not rewritten).
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        write_content_file(dir.path(), FileKind::Incremental, bytes, Durability::NoSync).unwrap();
        assert_eq!(inode(&path), before);
    }

    #[test]
    fn a_file_not_named_after_its_content_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{SNAPSHOT_PREFIX}{}{SNAPSHOT_SUFFIX}", "0".repeat(64));
        fs::write(dir.path().join(&name), b"anything").unwrap();
        let err = read_file(dir.path(), &name).unwrap_err();
        assert_eq!(err.kind(), stowage_core::ErrorKind::Corrupt, "{err}");
    }
}
