//! Durable, all-or-nothing file writes: a temporary file in the target's file system is written
//! (or streamed), fsynced, renamed over the destination, and the destination directory is
//! fsynced. A crash at any point leaves either the old file or the complete new one, never a
//! torn mix; a stray temporary file is the worst case, and it is never read as data.
//!
//! The mechanism is synchronous (`std::fs`): async callers run it inside
//! `tokio::task::spawn_blocking`, so one blocking task covers create → write → fsync → rename
//! instead of one thread hop per step.
//!
//! ```text
//! let mut file = AtomicFile::create_in(dir, Durability::Sync)?;
//! file.write_all(b"hello")?;
//! file.commit(&dir.join("greeting"))?;
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether writes are forced to stable storage before they count as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// fsync the file before the rename and the directory after it: the new content survives a
    /// power cut once `commit` returns.
    Sync,
    /// Skip the fsyncs: still atomic against a process crash (the rename is), but the last
    /// writes may be lost, or reordered, after a power cut or kernel crash.
    NoSync,
}

impl Durability {
    /// `Sync` when `fsync` is true.
    pub(crate) fn from_fsync(fsync: bool) -> Self {
        if fsync {
            Durability::Sync
        } else {
            Durability::NoSync
        }
    }
}

/// The name prefix of temporary files; a directory scan can skip (or clean) them by it.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// A temporary file that becomes its destination atomically on [`AtomicFile::commit`] and is
/// removed if dropped uncommitted.
#[derive(Debug)]
pub(crate) struct AtomicFile {
    file: Option<File>,
    tmp_path: PathBuf,
    durability: Durability,
}

impl AtomicFile {
    /// Creates a fresh temporary file in `dir` (which must be on the destination's file
    /// system, so the final rename is atomic).
    pub(crate) fn create_in(dir: &Path, durability: Durability) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            // pid + counter is unique within a host; the clock part keeps names unique when a
            // pid is reused after a crash left a stray file with the same counter.
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp_path = dir.join(format!(
                "{TMP_PREFIX}{}-{n}-{nanos:08x}",
                std::process::id()
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_path)
            {
                Ok(file) => {
                    // Marks the file as being written for as long as it is open (the OS drops
                    // the lock when this process dies): [`remove_abandoned_tmp_files`] leaves
                    // a locked file alone however old it is. A file system without `flock`
                    // falls back to the age rule there.
                    let _ = file.try_lock();
                    return Ok(AtomicFile {
                        file: Some(file),
                        tmp_path,
                        durability,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The temporary file, e.g. to seek or set its length before committing.
    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// Where the temporary file lives.
    #[cfg(test)]
    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Makes the written bytes the content of `dest`, replacing any existing file.
    pub(crate) fn commit(mut self, dest: &Path) -> io::Result<()> {
        let file = self.file.take().expect("AtomicFile committed twice");
        if self.durability == Durability::Sync {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&self.tmp_path, dest)?;
        self.tmp_path = PathBuf::new();
        if self.durability == Durability::Sync {
            sync_parent_dir(dest)?;
        }
        Ok(())
    }

    /// Like [`AtomicFile::commit`], but when `dest` already exists (content-addressed files
    /// whose name is their content) keeps it and discards the temporary file. Returns whether
    /// this call created `dest`.
    ///
    /// Uses `hard_link` + unlink rather than rename so that a concurrent writer of the same
    /// content never replaces a file a reader has open; the link fails if `dest` exists.
    pub(crate) fn commit_if_absent(mut self, dest: &Path) -> io::Result<bool> {
        let file = self.file.take().expect("AtomicFile committed twice");
        if self.durability == Durability::Sync {
            file.sync_all()?;
        }
        drop(file);
        let created = match fs::hard_link(&self.tmp_path, dest) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            // Some file systems (e.g. certain FUSE or SMB mounts) refuse hard links; a rename
            // still gives all-or-nothing content, and the content is the same by construction.
            Err(_) if !dest.exists() => {
                fs::rename(&self.tmp_path, dest)?;
                self.tmp_path = PathBuf::new();
                true
            }
            Err(_) => false,
        };
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
            self.tmp_path = PathBuf::new();
        }
        if created && self.durability == Durability::Sync {
            sync_parent_dir(dest)?;
        }
        Ok(created)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Writes `bytes` to `dest` atomically (and durably with [`Durability::Sync`]), with the
/// temporary file beside `dest`.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let dir = parent_dir(dest);
    let mut file = AtomicFile::create_in(dir, durability)?;
    file.write_all(bytes)?;
    file.commit(dest)
}

/// fsyncs the directory holding `path`, making a rename or create inside it durable.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    sync_dir(parent_dir(path))
}

/// fsyncs a directory, making the entries created or renamed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What [`remove_abandoned_tmp_files`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TmpCleanup {
    /// Temporary files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Removes the temporary files in `dir` that no writer holds any more (left by a writer that
/// was killed or crashed): a file whose lock (taken by [`AtomicFile::create_in`]) is free and
/// that has not been written to for `quiet` (so a writer between creating and locking its file
/// is never caught). Where the file system cannot lock, only files untouched for `fallback`
/// go. A live writer's file stays however long its writer pauses.
pub(crate) fn remove_abandoned_tmp_files(
    dir: &Path,
    quiet: std::time::Duration,
    fallback: std::time::Duration,
) -> io::Result<TmpCleanup> {
    let mut removed = TmpCleanup::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // gone meanwhile
        };
        if !meta.is_file() {
            continue;
        }
        let idle = meta
            .modified()
            .map(|t| now.duration_since(t).unwrap_or_default())
            .unwrap_or_default();
        if idle < quiet {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let abandoned = match file.try_lock() {
            Ok(()) => true,
            Err(fs::TryLockError::WouldBlock) => false,
            Err(fs::TryLockError::Error(_)) => idle >= fallback,
        };
        // Removed while this process holds the lock, so no writer can take the file up again.
        if abandoned && fs::remove_file(&path).is_ok() {
            removed.files += 1;
            removed.bytes += meta.len();
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        write_atomic(&dest, b"one", Durability::Sync).unwrap();
        write_atomic(&dest, b"two", Durability::NoSync).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_file_is_removed_and_dest_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        write_atomic(&dest, b"kept", Durability::Sync).unwrap();
        {
            let mut f = AtomicFile::create_in(dir.path(), Durability::Sync).unwrap();
            f.write_all(b"abandoned").unwrap();
            assert!(f.tmp_path().exists());
        }
        assert_eq!(fs::read(&dest).unwrap(), b"kept");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_if_absent_keeps_existing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("h");
        let mut a = AtomicFile::create_in(dir.path(), Durability::Sync).unwrap();
        a.write_all(b"same").unwrap();
        assert!(a.commit_if_absent(&dest).unwrap());
        let mut b = AtomicFile::create_in(dir.path(), Durability::Sync).unwrap();
        b.write_all(b"same").unwrap();
        assert!(!b.commit_if_absent(&dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"same");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Sets a file's modification time `secs` seconds into the past.
    fn backdate(path: &Path, secs: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - std::time::Duration::from_secs(secs))
            .unwrap();
    }

    fn tmp_files(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(TMP_PREFIX)
            })
            .collect()
    }

    #[test]
    fn only_abandoned_tmp_files_are_removed() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let (quiet, fallback) = (Duration::from_secs(60), Duration::from_secs(3600));
        // A live writer, idle for two hours: its lock keeps the file.
        let mut live = AtomicFile::create_in(dir.path(), Durability::NoSync).unwrap();
        live.write_all(b"still being written").unwrap();
        backdate(live.tmp_path(), 7200);
        // Left by a writer that died: nobody holds it, idle for two minutes.
        let dead = dir.path().join(format!("{TMP_PREFIX}999999-0-0"));
        fs::write(&dead, b"abandoned!").unwrap();
        backdate(&dead, 120);
        // Abandoned too, but written to a moment ago: could be a writer that has not locked
        // its file yet.
        let fresh = dir.path().join(format!("{TMP_PREFIX}999999-1-0"));
        fs::write(&fresh, b"x").unwrap();
        // Not a temporary file at all.
        fs::write(dir.path().join("keep"), b"data").unwrap();
        backdate(&dir.path().join("keep"), 7200);

        let removed = remove_abandoned_tmp_files(dir.path(), quiet, fallback).unwrap();
        assert_eq!(
            removed,
            TmpCleanup {
                files: 1,
                bytes: 10
            }
        );
        assert!(!dead.exists());
        assert!(fresh.exists() && dir.path().join("keep").exists());
        assert!(live.tmp_path().exists());
        live.commit(&dir.path().join("done")).unwrap();
        assert_eq!(
            fs::read(dir.path().join("done")).unwrap(),
            b"still being written"
        );

        // Nobody holds the fresh one either: it goes once it has been quiet long enough.
        backdate(&fresh, 120);
        assert_eq!(
            remove_abandoned_tmp_files(dir.path(), quiet, fallback)
                .unwrap()
                .files,
            1
        );
        assert!(tmp_files(dir.path()).is_empty());
    }
}
