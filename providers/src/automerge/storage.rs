//! The files of one document, laid out like automerge-repo's storage: immutable,
//! content-addressed change files plus a snapshot that replaces them once they outweigh it.
//!
//! ```text
//! <root>/docs/<namespace>/<blake3(ns, key) hex>/
//!     lock                        advisory lock + 8-byte generation counter
//!     snapshot-<blake3 hex>.am    Automerge::save() of the whole document
//!     incremental-<blake3 hex>.amc  raw change chunks (Automerge::save_after)
//! ```
//!
//! Writers hold the exclusive lock only while they reload, commit one change and write its
//! file; readers hold the shared lock only while they read new files. Every write bumps the
//! generation in the lock file, so an unchanged generation lets a reader skip listing the
//! directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use stowage_core::{Error, Key, Namespace, Result};

use super::PROVIDER;
use crate::atomic_file::{write_atomic, Durability};

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

/// A held document lock; released on drop.
pub(crate) struct DocLock {
    file: File,
    path: PathBuf,
}

impl DocLock {
    /// Takes the lock of `dir` (creating the folder and lock file when `create`), exclusive
    /// for writers, shared for readers. `None` when the folder does not exist and `create` is
    /// false: the document was never written.
    pub(crate) fn acquire(dir: &Path, exclusive: bool, create: bool) -> Result<Option<DocLock>> {
        if create {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating document folder {}", dir.display()), e))?;
        } else if !dir.exists() {
            return Ok(None);
        }
        let path = dir.join(LOCK_FILE);
        let file = crate::lock_file::open(&path)?;
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(|e| crate::lock_file::lock_error(&path, e))?;
        Ok(Some(DocLock { file, path }))
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
    pub(crate) fn bump_generation(&mut self) -> Result<u64> {
        let next = self.generation()?.wrapping_add(1);
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

/// The data files of a document folder: name → size.
pub(crate) fn list_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if file_kind(&name).is_some() {
            let size = entry
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", entry.path().display()), e))?
                .len();
            out.insert(name, size);
        }
    }
    Ok(out)
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
pub(crate) fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
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
    Ok(bytes)
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
        assert_eq!(read_file(dir.path(), &name).unwrap(), bytes);
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
        assert_eq!(read_file(dir.path(), &name).unwrap(), bytes);
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
