//! [`FsBackend`]: the `fs` provider's [`StorageBackend`].
//!
//! Writes: a payload of at most `inline_max` bytes travels with its metadata change to the
//! commit thread and is appended to the index log right after its record (one write, one
//! fsync, no file of its own). A larger one is streamed into `blobs/` first (concurrently,
//! outside any lock), then the metadata change is queued. The commit thread takes
//! everything queued (group commit), locks the root against other processes, catches up with
//! records they appended, checks each change's precondition against the now-current index,
//! appends all resulting records in one write, fsyncs the log once, and reads its own records
//! back into the index through the same path replay uses. Only then are the writers answered.
//! Without fsync, a write that finds the commit thread idle and the lock free runs that same
//! commit on its own task instead (no thread hops; nothing there can block for long).
//!
//! Reads: an `fstat` of the open log tells whether another process appended (or compacted); if
//! so the new records are read before the index is consulted. An inline payload is read with
//! one positioned read from the open log file the index points into: a compaction swaps in a
//! new file, but a reader holding the old one keeps reading valid bytes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use stowage_core::{
    run_blocking, Body, ByteRange, Capabilities, ContentHash, DeleteOptions, Error, GcReport,
    GetOptions, Key, ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query, RecordInfo,
    Result, StorageBackend, Timestamp, VerifyProblem, VerifyReport, Version,
};
use tokio::sync::{oneshot, OnceCell};

use super::blob_store::{BlobStore, SMALL_READ};
use super::config::FsConfig;
use super::index::Index;
use super::index_log::{
    self, Damage, DamageKind, InlineAt, LogRecord, FORMAT_VERSION, FORMAT_WITH_GAPS, HEADER_LEN,
};
use super::lock::{BlobPin, BlobPins, WriterLock};
use super::PROVIDER;
use crate::atomic_file::{self, AtomicFile, Durability};

/// The most changes one group commit takes from the queue.
const MAX_BATCH: usize = 1024;
/// The log is compacted when its garbage exceeds its live data and this many bytes.
const COMPACT_MIN_GARBAGE: u64 = 256 * 1024;
/// A temporary payload file nobody holds and nobody wrote to for this long is a leftover of a
/// writer that was killed; open and `gc` remove it (see [`atomic_file::remove_abandoned_tmp_files`]).
const ABANDONED_TMP_QUIET: Duration = Duration::from_secs(60);
/// Where the file system cannot lock files, a temporary file untouched this long is taken for
/// a leftover instead.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// How a damaged or missing payload is repaired: a put of the same bytes stores them again
/// (see `payload_stored` and [`BlobStore`]), and every version with that hash reads them.
use crate::REPAIR_BY_REPUT as REPAIR;
/// Prefix of the files a corrupt log tail is saved to before it is cut off.
pub(crate) const DAMAGED_PREFIX: &str = "index.log.damaged-";

/// The `fs` provider's backend: one root directory, usable by several processes at once.
///
/// ```no_run
/// # async fn demo() -> stowage_core::Result<()> {
/// use stowage_core::{Body, Key, Metadata, Namespace, PutMode, StorageBackend};
/// use stowage_providers::fs::{FsBackend, FsConfig};
/// let config = FsConfig::from_json(&serde_json::json!({"root": "data"}))?;
/// let store = FsBackend::open(config).await?;
/// let info = store
///     .put(&Namespace::default(), &Key::new("a.txt")?, Body::from("hi"), Metadata::new(), PutMode::Overwrite)
///     .await?;
/// assert_eq!(info.version, 1);
/// # Ok(()) }
/// ```
pub struct FsBackend {
    config: FsConfig,
    opened: OnceCell<Opened>,
}

struct Opened {
    core: Arc<Core>,
    commits: mpsc::Sender<Intent>,
}

/// What `compact` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// Log size before.
    pub bytes_before: u64,
    /// Log size after.
    pub bytes_after: u64,
    /// Payloads kept in the log that no version referenced any more, dropped.
    pub payloads_dropped: u64,
    /// Their bytes (part of `bytes_before - bytes_after`).
    pub payload_bytes_dropped: u64,
}

struct Core {
    root: PathBuf,
    log_path: PathBuf,
    durability: Durability,
    /// Payloads up to this size are kept in the log (`FsConfig::inline_max`).
    inline_max: u64,
    blobs: BlobStore,
    writer_lock: WriterLock,
    pins: BlobPins,
    state: RwLock<LogState>,
    /// The log opened for appending (with the inode it belongs to); held for a whole commit,
    /// which also keeps two commits of this process from sharing the writer lock's `flock`.
    append: Mutex<Option<(u64, File)>>,
}

/// The index and how far into which log file it has read.
struct LogState {
    /// The log the index describes, open for reading; shared with readers of inline payloads,
    /// who keep it (and its bytes) even after a compaction replaces the file.
    file: Arc<File>,
    ino: u64,
    /// Format version in the file's header (1 until the first append raises it).
    version: u8,
    offset: u64,
    index: Index,
    /// Damage this process found and repaired, for `recovery_notes`.
    notes: Vec<String>,
}

enum Op {
    Put {
        hash: ContentHash,
        size: u64,
        metadata: Metadata,
        mode: PutMode,
        /// The payload itself, to keep in the log, when it is small; `None`: it is in
        /// `blobs/` already.
        inline: Option<Bytes>,
        /// The gc pin the put took before storing or reusing the payload: it travels with the
        /// request and is released only once the batch is in the log, so a put whose caller
        /// stops waiting (a cancelled future) cannot let a `gc` delete the payload file of a
        /// record the commit thread is still to write.
        pin: Option<BlobPin>,
    },
    Delete {
        if_version: Option<Version>,
    },
    Restore {
        version: Option<Version>,
    },
    Purge,
    Compact,
}

enum Outcome {
    Info(Box<RecordInfo>),
    Purged(u64),
    Compacted(CompactReport),
}

struct Intent {
    ns: Namespace,
    key: Option<Key>,
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

impl FsBackend {
    /// A backend over `config.root`, opened lazily by the first operation (or `initialize`).
    pub fn new(config: FsConfig) -> Self {
        FsBackend {
            config,
            opened: OnceCell::new(),
        }
    }

    /// Opens (creating if needed) the store at `config.root`: replays its index log, cutting
    /// off a torn tail and stepping over corrupt records (see `docs/formats.md`).
    pub async fn open(config: FsConfig) -> Result<Self> {
        let backend = Self::new(config);
        backend.opened().await?;
        Ok(backend)
    }

    /// The configuration this backend was made with.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Damage to the index log this process found and repaired (a torn tail, corrupt records),
    /// one sentence each; also logged with `tracing::warn!`.
    pub async fn recovery_notes(&self) -> Result<Vec<String>> {
        let core = self.core().await?;
        Ok(core.read_state().notes.clone())
    }

    /// Rewrites the index log with only live records (also done automatically when garbage
    /// from purges outweighs live data).
    pub async fn compact(&self) -> Result<CompactReport> {
        match self.submit(Namespace::default(), None, Op::Compact).await? {
            Outcome::Compacted(r) => Ok(r),
            _ => Err(Error::backend(
                PROVIDER,
                "commit thread answered compact with another outcome",
                "internal",
            )),
        }
    }

    /// Reads records other processes appended since the last operation.
    pub async fn refresh(&self) -> Result<()> {
        self.core().await?.refresh()
    }

    async fn opened(&self) -> Result<&Opened> {
        self.opened
            .get_or_try_init(|| async {
                let config = self.config.clone();
                let core = run_blocking(PROVIDER, move || Core::open(&config)).await?;
                let core = Arc::new(core);
                let (tx, rx) = mpsc::channel::<Intent>();
                let worker = core.clone();
                std::thread::Builder::new()
                    .name("stowage-fs-commit".into())
                    .spawn(move || worker.commit_loop(rx))
                    .map_err(|e| Error::io("starting the fs commit thread", e))?;
                Ok(Opened { core, commits: tx })
            })
            .await
    }

    async fn core(&self) -> Result<&Arc<Core>> {
        Ok(&self.opened().await?.core)
    }

    async fn submit(&self, ns: Namespace, key: Option<Key>, op: Op) -> Result<Outcome> {
        let opened = self.opened().await?;
        let op = match &key {
            Some(key) => match opened.core.try_commit_inline(&ns, key, op) {
                Ok(done) => return done,
                Err(op) => op,
            },
            None => op,
        };
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            Error::backend(
                PROVIDER,
                "the fs commit thread stopped; re-open the store",
                "commit thread gone",
            )
        };
        opened
            .commits
            .send(Intent { ns, key, op, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn write(&self, ns: &Namespace, key: &Key, op: Op) -> Result<RecordInfo> {
        match self.submit(ns.clone(), Some(key.clone()), op).await? {
            Outcome::Info(info) => Ok(*info),
            _ => Err(Error::backend(
                PROVIDER,
                "commit thread answered a write with another outcome",
                "internal",
            )),
        }
    }

    /// The version `version` (default: latest) of `key`, `NotFound` if absent or a tombstone.
    async fn find(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let core = self.core().await?;
        let state = core.fresh_state()?;
        find_in(&state.index, ns, key, version)
    }
}

/// The version `version` (default: latest) of `key`, `NotFound` if absent or a tombstone.
fn find_in(
    index: &super::index::Index,
    ns: &Namespace,
    key: &Key,
    version: Option<Version>,
) -> Result<RecordInfo> {
    let versions = index.versions(ns, key).unwrap_or(&[]);
    let found = match version {
        None => versions.last(),
        Some(v) => versions.iter().find(|i| i.version == v),
    };
    match found {
        Some(info) if !info.is_deleted() => Ok(info.clone()),
        _ => Err(Error::not_found(ns, key, version)),
    }
}

/// The whole body when it is at most `max` bytes (`Ok`), or a body that yields the same bytes
/// for the payload-file path (`Err`: the chunks read so far, then the rest of the stream).
async fn small_payload(body: Body, max: u64) -> Result<std::result::Result<Bytes, Body>> {
    if max == 0 || body.size_hint().is_some_and(|n| n > max) {
        return Ok(Err(body));
    }
    if let Some(bytes) = body.as_bytes() {
        return Ok(Ok(bytes.clone()));
    }
    let size_hint = body.size_hint();
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    while let Some(chunk) = body.next_chunk().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        chunks.push(chunk);
        if total > max {
            let read = futures::stream::iter(chunks.into_iter().map(Ok));
            return Ok(Err(Body::from_stream(
                read.chain(body.into_stream()),
                size_hint,
            )));
        }
    }
    Ok(Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => Bytes::from(chunks.concat()),
    }))
}

/// Reads `len` bytes at `offset` of an inline payload; with `expect` (a whole read), checks
/// them against the payload's hash. Blocking (a page-cache read for small payloads).
fn read_inline(
    file: &File,
    at: InlineAt,
    offset: u64,
    len: u64,
    expect: Option<&ContentHash>,
) -> std::io::Result<Bytes> {
    if offset + len > u64::from(at.len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the range ends at byte {}, past the {} bytes kept in the log",
                offset + len,
                at.len
            ),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    index_log::read_at(file, &mut buf, at.offset + offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the log file ends before the payload's bytes",
            )
        } else {
            e
        }
    })?;
    if let Some(hash) = expect {
        let got = ContentHash::of(&buf);
        if got != *hash {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("its bytes hash to {got}, not {hash}"),
            ));
        }
    }
    Ok(Bytes::from(buf))
}

impl Core {
    fn open(config: &FsConfig) -> Result<Core> {
        let root = config.root.clone();
        crate::store_dir::create(&root, "storage.config.root")?;
        let durability = Durability::from_fsync(config.fsync());
        let inline_max = config.inline_max.min(super::config::MAX_INLINE);
        let blobs = BlobStore::new(&root, durability);
        blobs.prepare()?;
        let writer_lock = WriterLock::open(&root.join("lock"))?;
        let pins = BlobPins::open(&root.join("gc.lock"))?;
        let log_path = root.join("index.log");
        // A lock of its own (another open file) because `writer_lock` moves into `Core` below.
        let open_lock = WriterLock::open(&root.join("lock"))?;
        let guard = open_lock.lock()?;
        match fs::symlink_metadata(&log_path) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => {
                return Err(Error::corrupt(
                    PROVIDER,
                    format!("{} is not a regular file (a symlink?); the fs provider never follows links out of its root", log_path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Written beside the log (16 bytes): a kill here leaves a tiny temporary file
                // in the root, which open and `gc` remove like those in `tmp/`.
                atomic_file::write_atomic(&log_path, &index_log::header(FORMAT_VERSION), durability)
                    .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("checking {}", log_path.display()), e)),
        }
        let (file, ino, version) = open_log(&log_path)?;
        let core = Core {
            root,
            log_path,
            durability,
            inline_max,
            blobs,
            writer_lock,
            pins,
            state: RwLock::new(LogState {
                file: Arc::new(file),
                ino,
                version,
                offset: HEADER_LEN,
                index: Index::default(),
                notes: Vec::new(),
            }),
            append: Mutex::new(None),
        };
        {
            let mut state = core.write_state();
            core.catch_up(&mut state, true)?;
            tracing::debug!(
                root = %core.root.display(),
                versions = state.index.version_count(),
                log_bytes = state.offset,
                "opened fs store"
            );
        }
        drop(guard);
        if let Err(e) = core.remove_abandoned_tmp_files() {
            tracing::warn!(root = %core.root.display(), error = %e, "could not clean stale temporary files");
        }
        Ok(core)
    }

    /// A temporary file in `tmp/` (made again if it was removed while the store was open), for
    /// a file the root gets by rename: a compacted log, a saved damaged region.
    fn create_tmp(&self, durability: Durability) -> std::io::Result<AtomicFile> {
        let dir = self.blobs.tmp_dir();
        match AtomicFile::create_in(dir, durability) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)?;
                AtomicFile::create_in(dir, durability)
            }
            created => created,
        }
    }

    /// Removes the temporary files of writers that were killed or crashed (see
    /// [`atomic_file::remove_abandoned_tmp_files`]: never one a live writer holds): payloads
    /// and compacted logs in `tmp/`, and those in the root itself: compacted logs of builds
    /// before this one, which wrote them there (a compaction killed mid-way left a log-sized
    /// file behind for good), and a new store's first log. Nothing else in the root is named
    /// like a temporary file.
    fn remove_abandoned_tmp_files(&self) -> Result<atomic_file::TmpCleanup> {
        let mut cleaned = atomic_file::TmpCleanup::default();
        for dir in [self.blobs.tmp_dir(), self.root.as_path()] {
            let found =
                atomic_file::remove_abandoned_tmp_files(dir, ABANDONED_TMP_QUIET, STALE_TMP_AGE)
                    .map_err(|e| {
                        Error::io(
                            format!("removing abandoned temporary files in {}", dir.display()),
                            e,
                        )
                    })?;
            cleaned.files += found.files;
            cleaned.bytes += found.bytes;
        }
        Ok(cleaned)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, LogState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, LogState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Catches up with records appended (or a compaction done) by another process. Repairs
    /// only when no writer is at work (see [`Core::repair_if_no_writer`]): a tail that looks torn
    /// may be another process's append in progress.
    fn refresh(&self) -> Result<()> {
        self.fresh_state().map(drop)
    }

    /// The state, caught up with what other processes committed (see [`Core::refresh`]); one
    /// read lock when nothing changed, which is the common case.
    fn fresh_state(&self) -> Result<RwLockReadGuard<'_, LogState>> {
        let state = self.read_state();
        if !self.log_changed(&state)? {
            return Ok(state);
        }
        drop(state);
        if self.catch_up(&mut self.write_state(), false)? {
            self.repair_if_no_writer();
        }
        Ok(self.read_state())
    }

    /// A catch-up stopped at a bad record. If no writer is at work, in this process (the
    /// commit path's mutex) or in any other (the writer lock), nothing can be mid-append, so
    /// the record is damage: repair it as a writer would (step over it, save it aside, keep the
    /// records after it) rather than serve nothing written after it until some process writes.
    /// A writer at work repairs it at its next commit. Best effort: if the repair fails, what
    /// was read stays served and the next catch-up or write tries again.
    fn repair_if_no_writer(&self) {
        let Ok(_append) = self.append.try_lock() else {
            return;
        };
        let repaired = match self.writer_lock.try_lock() {
            Ok(Some(_guard)) => self.catch_up(&mut self.write_state(), true),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if let Err(e) = repaired {
            tracing::warn!(log = %self.log_path.display(), error = %e, "could not repair the index log while catching up; serving what was read before the damage");
        }
    }

    /// Whether the log grew or was replaced since `state` read it. An `fstat` of the open file
    /// rather than a `stat` of its path: no path walk on every read. A compaction renames a new
    /// file over the log, which leaves the file this process holds without a name.
    #[cfg(unix)]
    fn log_changed(&self, state: &LogState) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let meta = state
            .file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?;
        Ok(meta.nlink() == 0 || meta.len() != state.offset)
    }

    #[cfg(not(unix))]
    fn log_changed(&self, state: &LogState) -> Result<bool> {
        let meta = fs::metadata(&self.log_path)
            .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?;
        Ok(state.ino != inode(&meta) || state.offset != meta.len())
    }

    /// Log bytes no live record or referenced inline payload needs (freed by a compaction).
    fn log_garbage(&self) -> u64 {
        let state = self.read_state();
        state.offset - HEADER_LEN - state.index.live_bytes()
    }

    /// Reads new records into the index. With `repair` (only under the writer lock, when no
    /// other process can be appending) a corrupt record is stepped over, so the records after
    /// it are kept, a damaged tail is cut off, each corrupt region is saved aside, and a log
    /// that had a corrupt region inside it is rewritten without it (a compaction). Returns
    /// whether it stopped at a bad record it did not repair (only without `repair`).
    fn catch_up(&self, state: &mut LogState, repair: bool) -> Result<bool> {
        let path_ino = fs::metadata(&self.log_path)
            .map(|m| inode(&m))
            .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?;
        let mut len = state
            .file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?
            .len();
        if path_ino != state.ino || len < state.offset {
            // Compacted (a new file) or shrunk by hand: start over from the current file.
            let (file, ino, version) = open_log(&self.log_path)?;
            len = file
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?
                .len();
            state.file = Arc::new(file);
            state.ino = ino;
            state.version = version;
            state.offset = HEADER_LEN;
            state.index = Index::default();
        }
        if len == state.offset {
            return Ok(false);
        }
        let index = &mut state.index;
        let end = index_log::scan(&state.file, state.offset, len, repair, |record, framed| {
            index.apply(record, framed)
        })
        .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?;
        state.offset = end.offset;
        if !repair {
            return Ok(end.damage.is_some());
        }
        for damage in end.stepped_over.iter().chain(&end.damage) {
            let mut note = format!("index log {}: {damage}", self.log_path.display());
            match damage.kind {
                DamageKind::Torn => note.push_str("; cut off (no acknowledged write is lost)"),
                _ => note.push_str(&self.save_aside(&state.file, damage)?),
            }
            tracing::warn!(log = %self.log_path.display(), "{note}");
            state.notes.push(note);
        }
        if let Some(tail) = &end.damage {
            self.truncate_log(tail.offset)?;
        }
        if !end.stepped_over.is_empty() {
            // The regions are saved: rewrite the log from the index, without them.
            self.compact(state)?;
        }
        Ok(false)
    }

    /// Copies a damaged region of the log (open as `log`) to a file of its own beside it, for
    /// inspection; returns the end of the note saying so.
    fn save_aside(&self, log: &File, damage: &Damage) -> Result<String> {
        let saved = self.root.join(format!(
            "{DAMAGED_PREFIX}{}-at-{}",
            Timestamp::now().as_micros(),
            damage.offset
        ));
        let mut region = vec![0u8; damage.bytes as usize];
        index_log::read_at(log, &mut region, damage.offset)
            .map_err(|e| Error::io(format!("reading {}", self.log_path.display()), e))?;
        // Its temporary file in `tmp/`, like every other, so a kill here leaves nothing for good.
        self.create_tmp(Durability::Sync)
            .and_then(|mut file| file.write_all(&region).map(|()| file))
            .and_then(|file| file.commit(&saved))
            .map_err(|e| {
                Error::io(
                    format!("saving the damaged log bytes to {}", saved.display()),
                    e,
                )
            })?;
        Ok(format!(
            "; the records in those bytes are lost from the index: they were saved to {} for inspection (delete it once inspected; `verify` reports it until then)",
            saved.display()
        ))
    }

    /// Truncates the log at `offset` (a damaged tail, already reported and saved).
    fn truncate_log(&self, offset: u64) -> Result<()> {
        let io_err = |what: &str, e| Error::io(format!("{what} {}", self.log_path.display()), e);
        let file = OpenOptions::new()
            .write(true)
            .open(&self.log_path)
            .map_err(|e| io_err("opening", e))?;
        file.set_len(offset).map_err(|e| io_err("truncating", e))?;
        if self.durability == Durability::Sync {
            file.sync_all().map_err(|e| io_err("syncing", e))?;
        }
        Ok(())
    }

    fn commit_loop(self: Arc<Self>, rx: mpsc::Receiver<Intent>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(intent) => batch.push(intent),
                    Err(_) => break,
                }
            }
            let (requests, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|i| ((i.ns, i.key, i.op), i.reply))
                .unzip();
            let committed = {
                let mut append = self.append.lock().unwrap_or_else(|e| e.into_inner());
                self.writer_lock
                    .lock()
                    .and_then(|_guard| self.commit_batch(requests, &mut append))
            };
            let outcomes = match committed {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    let message = e.to_string();
                    let kind_io = matches!(e, Error::Io { .. });
                    let first = Err(e);
                    let mut all = vec![first];
                    for _ in 1..replies.len() {
                        all.push(Err(if kind_io {
                            Error::io(
                                message.clone(),
                                std::io::Error::other("group commit failed"),
                            )
                        } else {
                            Error::backend(PROVIDER, message.clone(), "group commit failed")
                        }));
                    }
                    all
                }
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Commits one change on the calling task when that costs no waiting: without fsync
    /// (page-cache writes only), with the commit thread idle and no other process writing.
    /// Saves the two thread hops of the queue; hands the change back (`Err`) for the queue
    /// otherwise.
    // The `Err` is the caller's own change handed back, not an error: boxing it would cost an
    // allocation per queued write.
    #[allow(clippy::result_large_err)]
    fn try_commit_inline(
        &self,
        ns: &Namespace,
        key: &Key,
        op: Op,
    ) -> std::result::Result<Result<Outcome>, Op> {
        if self.durability == Durability::Sync {
            return Err(op);
        }
        let Ok(mut append) = self.append.try_lock() else {
            return Err(op);
        };
        let guard = match self.writer_lock.try_lock() {
            Ok(Some(guard)) => guard,
            Ok(None) => return Err(op),
            Err(e) => return Ok(Err(e)),
        };
        let result = self
            .commit_batch(vec![(ns.clone(), Some(key.clone()), op)], &mut append)
            .and_then(|mut outcomes| outcomes.pop().expect("one outcome per request"));
        drop(guard);
        Ok(result)
    }

    /// One group commit, under the writer lock; returns one outcome per request, in order.
    fn commit_batch(
        &self,
        requests: Vec<(Namespace, Option<Key>, Op)>,
        append: &mut Option<(u64, File)>,
    ) -> Result<Vec<Result<Outcome>>> {
        let mut requests = requests;
        // Held until this batch is written (the end of this function), whatever the callers do.
        let _pins: Vec<BlobPin> = requests
            .iter_mut()
            .filter_map(|(_, _, op)| match op {
                Op::Put { pin, .. } => pin.take(),
                _ => None,
            })
            .collect();
        self.catch_up(&mut self.write_state(), true)?;
        let now = Timestamp::now();
        let mut outcomes = Vec::with_capacity(requests.len());
        // Sized up front: growing the buffer would copy the inline payloads again.
        let inline_bytes: usize = requests
            .iter()
            .map(|(_, _, op)| match op {
                Op::Put {
                    inline: Some(bytes),
                    ..
                } => bytes.len(),
                _ => 0,
            })
            .sum();
        let mut buf = Vec::with_capacity(inline_bytes + 256 * requests.len());
        let mut compact = false;
        {
            let state = self.read_state();
            // Changes earlier in this batch, per key, on top of the index (no history copied).
            let mut touched: HashMap<(Namespace, Key), KeyView<'_>> = HashMap::new();
            // Payloads this batch puts into the log, and those whose last reference a purge in
            // this batch may remove (a later record must not lean on their old bytes).
            let mut inlined: HashSet<ContentHash> = HashSet::new();
            let mut purged: HashSet<ContentHash> = HashSet::new();
            // Read buffer for comparing stored copies with the payloads being put.
            let mut scratch = Vec::new();
            for (ns, key, mut op) in requests {
                let Some(key) = key else {
                    compact = true;
                    outcomes.push(None);
                    continue;
                };
                let inline = match &mut op {
                    Op::Put { inline, .. } => inline.take(),
                    _ => None,
                };
                let view = touched
                    .entry((ns.clone(), key.clone()))
                    .or_insert_with(|| KeyView {
                        base: state.index.versions(&ns, &key).unwrap_or(&[]),
                        added: Vec::new(),
                    });
                let outcome = decide(&ns, &key, op, view, now).and_then(|(record, outcome)| {
                    let bytes = match (&record, &inline) {
                        (LogRecord::Version(info), Some(bytes)) => {
                            let stored = inlined.contains(&info.hash)
                                || (!purged.contains(&info.hash)
                                    && self.payload_stored(
                                        &state,
                                        &info.hash,
                                        bytes,
                                        &mut scratch,
                                    ));
                            (!stored).then_some(&bytes[..])
                        }
                        _ => None,
                    };
                    index_log::encode(&record, bytes, false, &mut buf)
                        .map_err(|e| Error::invalid_input(format!("{ns}/{key}: {e}")))?;
                    match record {
                        LogRecord::Version(info) => {
                            if bytes.is_some() {
                                inlined.insert(info.hash);
                            }
                            view.added.push(info);
                        }
                        LogRecord::Purge { .. } => {
                            for info in view.iter() {
                                inlined.remove(&info.hash);
                                purged.insert(info.hash);
                            }
                            view.base = &[];
                            view.added.clear();
                        }
                    }
                    Ok(outcome)
                });
                outcomes.push(Some(outcome));
            }
        }
        if !buf.is_empty() {
            self.upgrade_format()?;
            self.append(&buf, append)?;
            self.catch_up(&mut self.write_state(), true)?;
        }
        let mut state = self.write_state();
        let live = state.index.live_bytes();
        let garbage = state.offset - HEADER_LEN - live;
        if compact || (garbage > live && garbage >= COMPACT_MIN_GARBAGE) {
            let report = self.compact(&mut state)?;
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(Ok(Outcome::Compacted(report)));
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Whether the small payload `bytes` (of hash `hash`) is stored intact already, so a new
    /// record can reference it without bytes of its own: inline in the log, or as a payload file
    /// that a version references. A stored copy is read back (one positioned read of at most
    /// `inline_max` bytes, mostly from the page cache) and compared: a copy that is missing,
    /// unreadable or damaged since it was stored is not relied on, and the put writes the bytes
    /// inline again, where every later read finds them (a re-put repairs a damaged payload). A
    /// payload file no version references is garbage for `gc` and not relied on either. Called
    /// under the writer lock.
    fn payload_stored(
        &self,
        state: &LogState,
        hash: &ContentHash,
        bytes: &[u8],
        scratch: &mut Vec<u8>,
    ) -> bool {
        let Some(payload) = state.index.payload(hash) else {
            return false;
        };
        let (intact, place) = match payload.inline {
            Some(at) => {
                scratch.resize(at.len as usize, 0);
                let read = index_log::read_at(&state.file, scratch, at.offset);
                (
                    read.is_ok() && scratch[..] == *bytes,
                    format!(
                        "{} bytes at offset {} of {}",
                        at.len,
                        at.offset,
                        self.log_path.display()
                    ),
                )
            }
            None => {
                let path = self.blobs.path_of(hash);
                let read = File::open(&path).and_then(|f| {
                    use std::io::Read;
                    scratch.clear();
                    f.take(bytes.len() as u64 + 1).read_to_end(scratch)
                });
                match read {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
                    read => (
                        read.is_ok() && scratch[..] == *bytes,
                        path.display().to_string(),
                    ),
                }
            }
        };
        if !intact {
            tracing::warn!(payload = %hash, stored = %place, "the stored copy of the payload is damaged; this put writes its bytes into the index log again");
        }
        intact
    }

    /// Raises a version-1 log to the current format before the first append. Under the writer
    /// lock.
    fn upgrade_format(&self) -> Result<()> {
        if self.read_state().version >= FORMAT_VERSION {
            return Ok(());
        }
        let mut state = self.write_state();
        let io_err = |e| {
            Error::io(
                format!("raising the format version of {}", self.log_path.display()),
                e,
            )
        };
        let file = OpenOptions::new()
            .write(true)
            .open(&self.log_path)
            .map_err(io_err)?;
        index_log::upgrade_header(&file, self.durability == Durability::Sync).map_err(io_err)?;
        tracing::info!(log = %self.log_path.display(), "index log upgraded from format version {} to {FORMAT_VERSION}", state.version);
        state.version = FORMAT_VERSION;
        Ok(())
    }

    /// Appends `buf` at the end of the log and makes it durable; on failure the log is cut back
    /// so no partial record stays. Called under the writer lock.
    fn append(&self, buf: &[u8], append: &mut Option<(u64, File)>) -> Result<()> {
        let (ino, before) = {
            let state = self.read_state();
            (state.ino, state.offset)
        };
        if append.as_ref().is_none_or(|(i, _)| *i != ino) {
            let file = OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .map_err(|e| {
                    Error::io(
                        format!("opening {} for appending", self.log_path.display()),
                        e,
                    )
                })?;
            *append = Some((ino, file));
        }
        let (_, file) = append.as_mut().expect("append handle just opened");
        let written = file.write_all(buf).and_then(|()| {
            if self.durability == Durability::Sync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = file.set_len(before);
            *append = None;
            return Err(Error::io(
                format!("appending to {}", self.log_path.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Rewrites the log with one record per existing version; each inline payload still
    /// referenced is copied once, after the first record that references it. Under the writer
    /// lock.
    fn compact(&self, state: &mut LogState) -> Result<CompactReport> {
        let bytes_before = state.offset;
        let dead = state.index.dead_inline();
        let io_err = |e| Error::io(format!("compacting {}", self.log_path.display()), e);
        // In `tmp/`, not beside the log: a compaction killed mid-way (a `gc` or a put that
        // compacts, killed with SIGKILL) leaves a file as large as the log, and `tmp/` is where
        // open and `gc` remove such leftovers. Same file system as the log (`tmp/` is a real
        // directory of the root), so the rename over it stays atomic.
        let mut file = self.create_tmp(self.durability).map_err(io_err)?;
        // A version that does not follow the one before it (its predecessors were lost to a
        // damaged region) is marked as such, and only then does the log need format 3.
        let follows = |before: Option<&RecordInfo>, info: &RecordInfo| match before {
            Some(b) if b.namespace == info.namespace && b.key == info.key => {
                b.version + 1 == info.version
            }
            _ => info.version == 1,
        };
        let mut before = None;
        let gaps = state.index.all_versions().any(|info| {
            let gap = !follows(before, info);
            before = Some(info);
            gap
        });
        let format = if gaps {
            FORMAT_WITH_GAPS
        } else {
            FORMAT_VERSION
        };
        let mut buf = index_log::header(format).to_vec();
        let mut copied: HashSet<ContentHash> = HashSet::new();
        let mut payload = Vec::new();
        let mut before = None;
        for info in state.index.all_versions() {
            let inline = match state.index.payload(&info.hash).and_then(|p| p.inline) {
                Some(at) if copied.insert(info.hash) => {
                    payload.resize(at.len as usize, 0);
                    index_log::read_at(&state.file, &mut payload, at.offset).map_err(io_err)?;
                    Some(&payload[..])
                }
                _ => None,
            };
            let after_gap = !follows(before, info);
            before = Some(info);
            index_log::encode(
                &LogRecord::Version(info.clone()),
                inline,
                after_gap,
                &mut buf,
            )
            .map_err(io_err)?;
            if buf.len() >= 1 << 20 {
                file.write_all(&buf).map_err(io_err)?;
                buf.clear();
            }
        }
        file.write_all(&buf).map_err(io_err)?;
        file.commit(&self.log_path).map_err(io_err)?;
        self.catch_up(state, true)?;
        let bytes_after = state.offset;
        tracing::info!(log = %self.log_path.display(), bytes_before, bytes_after, "compacted the index log");
        Ok(CompactReport {
            bytes_before,
            bytes_after,
            payloads_dropped: dead.payloads,
            payload_bytes_dropped: dead.bytes,
        })
    }
}

/// Opens the log for reading; returns it, its inode and its format version.
fn open_log(path: &Path) -> Result<(File, u64, u8)> {
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let ino = inode(
        &file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
    );
    match index_log::check_header(&mut file) {
        Ok(Ok(version)) => Ok((file, ino, version)),
        Ok(Err(why)) => Err(Error::corrupt(
            PROVIDER,
            format!("{} cannot be read: {why}", path.display()),
        )),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode(meta: &fs::Metadata) -> u64 {
    // Without inode numbers a compaction by another process is noticed by the creation time of
    // the replaced file.
    meta.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn conflict(ns: &Namespace, key: &Key, expected: String, current: Option<Version>) -> Error {
    Error::Conflict {
        namespace: ns.to_string(),
        key: key.to_string(),
        expected,
        current,
    }
}

/// A key's versions as a batch sees them: the index's, then the ones decided earlier in the
/// batch (`base` is emptied by a purge in the batch).
struct KeyView<'a> {
    base: &'a [RecordInfo],
    added: Vec<RecordInfo>,
}

impl KeyView<'_> {
    fn iter(&self) -> impl DoubleEndedIterator<Item = &RecordInfo> {
        self.base.iter().chain(self.added.iter())
    }

    fn is_empty(&self) -> bool {
        self.base.is_empty() && self.added.is_empty()
    }

    fn len(&self) -> usize {
        self.base.len() + self.added.len()
    }
}

/// Decides one change against a key's versions: the record to append and the answer to give.
fn decide(
    ns: &Namespace,
    key: &Key,
    op: Op,
    versions: &KeyView<'_>,
    now: Timestamp,
) -> Result<(LogRecord, Outcome)> {
    let latest = versions.iter().next_back();
    // Never before the previous version's time, even if the clock stepped back (or another
    // process's ran ahead).
    let now = latest.map_or(now, |l| now.max(l.updated_at));
    let current = latest.map(|l| l.version);
    let next = current.map_or(1, |v| v + 1);
    let created_at = versions.iter().next().map_or(now, |f| f.created_at);
    let info = match op {
        Op::Put {
            hash,
            size,
            metadata,
            mode,
            ..
        } => {
            mode.check_latest(ns, key, latest)?;
            RecordInfo {
                namespace: ns.clone(),
                key: key.clone(),
                version: next,
                hash,
                size,
                created_at,
                updated_at: now,
                deleted_at: None,
                metadata,
                conflicts: Vec::new(),
            }
        }
        Op::Delete { if_version } => {
            let live = latest
                .filter(|l| !l.is_deleted())
                .ok_or_else(|| Error::not_found(ns, key, None))?;
            if let Some(v) = if_version {
                if live.version != v {
                    return Err(conflict(ns, key, format!("version {v}"), current));
                }
            }
            RecordInfo {
                version: next,
                created_at,
                updated_at: now,
                deleted_at: Some(now),
                ..live.clone()
            }
        }
        Op::Restore { version } => {
            let source = match version {
                Some(v) => versions.iter().find(|i| i.version == v && !i.is_deleted()),
                None => versions.iter().rev().find(|i| !i.is_deleted()),
            }
            .ok_or_else(|| Error::not_found(ns, key, version))?;
            RecordInfo {
                version: next,
                created_at,
                updated_at: now,
                deleted_at: None,
                ..source.clone()
            }
        }
        Op::Purge => {
            if versions.is_empty() {
                return Err(Error::not_found(ns, key, None));
            }
            let removed = versions.len() as u64;
            return Ok((
                LogRecord::Purge {
                    ns: ns.clone(),
                    k: key.clone(),
                },
                Outcome::Purged(removed),
            ));
        }
        Op::Compact => unreachable!("compaction requests carry no key"),
    };
    Ok((
        LogRecord::Version(info.clone()),
        Outcome::Info(Box::new(info)),
    ))
}

impl Core {
    /// The error for an inline payload that could not be read or did not match its hash.
    fn inline_error(&self, info: &RecordInfo, at: InlineAt, e: std::io::Error) -> Error {
        let what = format!("{}/{} version {}", info.namespace, info.key, info.version);
        let place = format!(
            "{} bytes at offset {} of {}",
            at.len,
            at.offset,
            self.log_path.display()
        );
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::corrupt(
                PROVIDER,
                format!("the payload of {what}, kept in the index log ({place}), is damaged: {e}; run `stowage verify`"),
            )
        } else {
            Error::io(format!("reading the payload of {what} from {place}"), e)
        }
    }
}

fn blob_error(core: &Core, info: &RecordInfo, e: std::io::Error) -> Error {
    let path = core.blobs.path_of(&info.hash);
    let what = format!("{}/{} version {}", info.namespace, info.key, info.version);
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::corrupt(
            PROVIDER,
            format!(
                "the payload of {what} ({}) is missing: {} does not exist; run `stowage verify`",
                info.hash,
                path.display()
            ),
        ),
        std::io::ErrorKind::InvalidData => Error::corrupt(
            PROVIDER,
            format!(
                "the payload of {what} in {} is damaged ({e}); run `stowage verify`",
                path.display()
            ),
        ),
        _ => Error::io(
            format!("reading the payload of {what} from {}", path.display()),
            e,
        ),
    }
}

#[async_trait]
impl StorageBackend for FsBackend {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    async fn initialize(&self) -> Result<()> {
        self.opened().await.map(|_| ())
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let core = self.core().await?;
        // The pin keeps a concurrent `gc` (in any process) from deleting a payload this write
        // stores or reuses, from then until the record referencing it is committed. It is
        // taken once the body is read, so a producer that pauses holds up no `gc`.
        let (pin, hash, size, inline) = match small_payload(body, core.inline_max).await? {
            Ok(bytes) => {
                let pin = core.pins.pin_async().await?;
                let hash = if bytes.len() as u64 <= SMALL_READ {
                    ContentHash::of(&bytes)
                } else {
                    let bytes = bytes.clone();
                    run_blocking(PROVIDER, move || Ok(ContentHash::of(&bytes))).await?
                };
                (pin, hash, bytes.len() as u64, Some(bytes))
            }
            Err(body) => {
                // A payload file costs a whole upload: a put its precondition refuses fails
                // before it (the commit checks again, under the lock).
                if mode != PutMode::Overwrite {
                    let state = core.fresh_state()?;
                    let latest = state.index.versions(ns, key).and_then(|v| v.last());
                    mode.check_latest(ns, key, latest)?;
                }
                let (pin, hash, size) = core.blobs.write_body(body, &core.pins).await?;
                (pin, hash, size, None)
            }
        };
        self.write(
            ns,
            key,
            Op::Put {
                hash,
                size,
                metadata,
                mode,
                inline,
                pin: Some(pin),
            },
        )
        .await
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let core = self.core().await?;
        let (info, inline) = {
            let state = core.fresh_state()?;
            let info = find_in(&state.index, ns, key, options.version)?;
            let inline = state
                .index
                .payload(&info.hash)
                .and_then(|p| p.inline)
                .map(|at| (state.file.clone(), at));
            (info, inline)
        };
        let (offset, len) = options
            .range
            .unwrap_or(ByteRange {
                start: 0,
                end: None,
            })
            .resolve(info.size)?;
        let whole = offset == 0 && len == info.size;
        if let Some((file, at)) = inline {
            let bytes = if len <= SMALL_READ {
                read_inline(&file, at, offset, len, whole.then_some(&info.hash))
            } else {
                let hash = info.hash;
                run_blocking(PROVIDER, move || {
                    Ok(read_inline(&file, at, offset, len, whole.then_some(&hash)))
                })
                .await?
            }
            .map_err(|e| core.inline_error(&info, at, e))?;
            return Ok((info, Body::from_bytes(bytes)));
        }
        let whole = whole.then_some(info.size);
        let body = if len <= SMALL_READ {
            Body::from_bytes(
                core.blobs
                    .read_small(&info.hash, offset, len, whole)
                    .map_err(|e| blob_error(core, &info, e))?,
            )
        } else {
            let what = format!("{}/{} version {}", info.namespace, info.key, info.version);
            core.blobs
                .read_stream(&info.hash, offset, len, whole, what)
                .await
                .map_err(|e| blob_error(core, &info, e))?
        };
        Ok((info, body))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        self.find(ns, key, version).await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        self.write(
            ns,
            key,
            Op::Delete {
                if_version: options.if_version,
            },
        )
        .await
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let core = self.core().await?;
        let state = core.fresh_state()?;
        state.index.list(ns, &options)
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let core = self.core().await?;
        let state = core.fresh_state()?;
        state.index.search(ns, query)
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let core = self.core().await?;
        let state = core.fresh_state()?;
        match state.index.versions(ns, key) {
            Some(v) => Ok(v.to_vec()),
            None => Err(Error::not_found(ns, key, None)),
        }
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        self.write(ns, key, Op::Restore { version }).await
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        match self
            .submit(ns.clone(), Some(key.clone()), Op::Purge)
            .await?
        {
            Outcome::Purged(n) => Ok(n),
            _ => Err(Error::backend(
                PROVIDER,
                "commit thread answered purge with another outcome",
                "internal",
            )),
        }
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let core = self.core().await?.clone();
        // Waits until no write in any process is between storing a blob and committing it.
        let exclusive = core.pins.exclusive().await?;
        core.refresh()?;
        let (referenced, inline): (HashSet<ContentHash>, Vec<ContentHash>) = {
            let state = core.read_state();
            let inline = state.index.inline_payloads().map(|(h, _)| *h).collect();
            (state.index.referenced_hashes(), inline)
        };
        let store = core.blobs.clone();
        let stored = run_blocking(PROVIDER, move || {
            store
                .list_all()
                .map_err(|e| Error::io("listing the payload blobs", e))
        })
        .await?;
        progress.set_total(stored.len() as u64);
        let mut report = GcReport::default();
        // Inline payloads are kept too; a payload both inline and in a file counts once.
        let files: HashSet<ContentHash> = stored.iter().map(|(h, _)| *h).collect();
        report.blobs_kept += inline.iter().filter(|h| !files.contains(h)).count() as u64;
        for chunk in stored.chunks(256) {
            let doomed: Vec<(ContentHash, u64)> = chunk
                .iter()
                .filter(|(h, _)| !referenced.contains(h))
                .copied()
                .collect();
            report.blobs_kept += (chunk.len() - doomed.len()) as u64;
            let store = core.blobs.clone();
            let (removed, freed) = run_blocking(PROVIDER, move || -> Result<(u64, u64)> {
                let (mut removed, mut freed) = (0, 0);
                for (hash, size) in doomed {
                    match store.remove(&hash) {
                        Ok(true) => {
                            removed += 1;
                            freed += size;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            return Err(Error::io(
                                format!("removing {}", store.path_of(&hash).display()),
                                e,
                            ))
                        }
                    }
                }
                Ok((removed, freed))
            })
            .await?;
            report.blobs_removed += removed;
            report.bytes_freed += freed;
            progress.inc(chunk.len() as u64);
        }
        drop(exclusive);
        // Payloads (and compacted logs) whose writer was killed mid-write: garbage like
        // unreferenced payloads, counted so.
        let cleaner = core.clone();
        let cleaned = run_blocking(PROVIDER, move || cleaner.remove_abandoned_tmp_files()).await?;
        if cleaned.files > 0 {
            tracing::info!(
                files = cleaned.files,
                bytes = cleaned.bytes,
                "removed temporary files (payloads, compacted logs) left half-written by writers that were killed"
            );
        }
        report.blobs_removed += cleaned.files;
        report.bytes_freed += cleaned.bytes;
        // Inline payloads of purged keys (and the purge records) go with a compaction; only
        // payloads count as freed, as for files.
        if core.log_garbage() > 0 {
            let compacted = self.compact().await?;
            report.blobs_removed += compacted.payloads_dropped;
            report.bytes_freed += compacted.payload_bytes_dropped;
        }
        Ok(report)
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let core = self.core().await?.clone();
        core.refresh()?;
        type Refs = Vec<(String, String, Version)>;
        let mut by_hash: HashMap<ContentHash, (u64, Refs)> = HashMap::new();
        let mut report = VerifyReport::default();
        let (log, inline) = {
            let state = core.read_state();
            for info in state.index.all_versions() {
                report.records_checked += 1;
                by_hash
                    .entry(info.hash)
                    .or_insert_with(|| (info.size, Vec::new()))
                    .1
                    .push((
                        info.namespace.to_string(),
                        info.key.to_string(),
                        info.version,
                    ));
            }
            let inline: HashMap<ContentHash, InlineAt> = by_hash
                .keys()
                .filter_map(|h| Some((*h, state.index.payload(h)?.inline?)))
                .collect();
            (state.file.clone(), inline)
        };
        for entry in fs::read_dir(&core.root)
            .map_err(|e| Error::io(format!("listing {}", core.root.display()), e))?
        {
            let entry =
                entry.map_err(|e| Error::io(format!("listing {}", core.root.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(DAMAGED_PREFIX) {
                report.problems.push(VerifyProblem {
                    namespace: None,
                    key: None,
                    version: None,
                    hash: None,
                    problem: "log-corrupt".into(),
                    detail: format!(
                        "the index log had corrupt bytes, removed from it and saved to {}; records in them are lost from the index (a version whose payload was among them reads as missing: put the same bytes again to repair it); delete the file once inspected",
                        entry.path().display()
                    ),
                });
            }
        }
        progress.set_total(by_hash.len() as u64);
        let mut hashes: Vec<_> = by_hash.into_iter().collect();
        hashes.sort_by_key(|h| h.0);
        for (hash, (size, refs)) in hashes {
            let problem = if let Some(&at) = inline.get(&hash) {
                let file = log.clone();
                let read = run_blocking(PROVIDER, move || {
                    Ok(read_inline(&file, at, 0, u64::from(at.len), Some(&hash)))
                })
                .await?;
                let place = format!(
                    "{} bytes at offset {} of {}",
                    at.len,
                    at.offset,
                    core.log_path.display()
                );
                match read {
                    Ok(bytes) => {
                        report.blobs_checked += 1;
                        report.bytes_checked += bytes.len() as u64;
                        (bytes.len() as u64 != size).then(|| {
                            (
                                "corrupt",
                                format!("the payload kept in the index log ({place}) is not the recorded {size} bytes; {REPAIR}"),
                            )
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Some((
                        "corrupt",
                        format!(
                            "the payload kept in the index log ({place}) is damaged: {e}; {REPAIR}"
                        ),
                    )),
                    Err(e) => Some(("unreadable", format!("{place}: {e}"))),
                }
            } else {
                let store = core.blobs.clone();
                let found = run_blocking(PROVIDER, move || Ok(store.rehash(&hash))).await?;
                let path = core.blobs.path_of(&hash);
                match found {
                    Ok(None) => Some((
                        "missing",
                        format!("{} does not exist; {REPAIR}", path.display()),
                    )),
                    Ok(Some((got, n))) => {
                        report.blobs_checked += 1;
                        report.bytes_checked += n;
                        (got != hash || n != size).then(|| {
                            (
                                "corrupt",
                                format!("{} holds {n} bytes hashing to {got}; expected {size} bytes hashing to {hash}; {REPAIR}", path.display()),
                            )
                        })
                    }
                    Err(e) => Some(("unreadable", format!("{}: {e}", path.display()))),
                }
            };
            if let Some((what, detail)) = problem {
                for (ns, key, version) in refs {
                    report.problems.push(VerifyProblem {
                        namespace: Some(ns),
                        key: Some(key),
                        version: Some(version),
                        hash: Some(hash),
                        problem: what.into(),
                        detail: detail.clone(),
                    });
                }
            }
            progress.inc(1);
        }
        Ok(report)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        let core = self.core().await?;
        let state = core.fresh_state()?;
        Ok(state.index.namespaces())
    }
}
