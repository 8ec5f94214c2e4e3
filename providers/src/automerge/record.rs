//! One record's document in memory, kept in step with its folder: reloads what other processes
//! wrote, commits changes, writes their change files and compacts them into snapshots.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, PatchLog, ReadDoc, ScalarValue, Value, ROOT};
use stowage_core::{
    ContentHash, Error, Key, Metadata, Namespace, RecordInfo, Result, Timestamp, Version,
};

use super::blobs::BlobRef;
use super::document::{self, At, Payload, RecordState};
use super::history::History;
use super::storage::{self, DocLock, FileKind};
use super::PROVIDER;
use crate::atomic_file::Durability;

/// What is cached about one version (everything of its `RecordInfo` but names and conflicts).
#[derive(Clone, Debug)]
pub(crate) struct VersionSummary {
    pub(crate) hash: ContentHash,
    pub(crate) size: u64,
    pub(crate) metadata: Metadata,
    pub(crate) deleted_at: Option<Timestamp>,
    /// The payload file, when the payload is in one.
    pub(crate) blob: Option<BlobRef>,
}

/// Settings shared by every document of a backend.
#[derive(Clone, Debug)]
pub(crate) struct DocSettings {
    pub(crate) actor: ActorId,
    pub(crate) durability: Durability,
    pub(crate) compact_min_bytes: u64,
}

/// One record's document and what is known about its files.
pub(crate) struct RecordDoc {
    dir: PathBuf,
    name: Option<(Namespace, Key)>,
    genesis: Option<ActorId>,
    pub(crate) doc: Automerge,
    /// Data files whose content is in `doc`, with their sizes.
    files: BTreeMap<String, u64>,
    generation: Option<u64>,
    pub(crate) history: History,
    summaries: HashMap<Version, Arc<VersionSummary>>,
    summaries_epoch: u64,
}

/// How many times a reload under the lock starts over when a file vanishes.
const RELOAD_ATTEMPTS: usize = 3;

fn am_err(context: &str) -> impl Fn(automerge::AutomergeError) -> Error + '_ {
    move |e| Error::backend(PROVIDER, format!("{context}: {e}"), e)
}

/// The current time in milliseconds, the unit of Automerge change times.
pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_micros() / 1000
}

pub(crate) fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp::from_micros(ms.saturating_mul(1000))
}

impl RecordDoc {
    /// An empty document for the folder `dir` (nothing read yet).
    pub(crate) fn new(dir: PathBuf, name: Option<(Namespace, Key)>, actor: &ActorId) -> Self {
        let genesis = name
            .as_ref()
            .map(|(ns, key)| document::genesis_actor(ns, key));
        RecordDoc {
            dir,
            name,
            genesis,
            doc: Automerge::new().with_actor(actor.clone()),
            files: BTreeMap::new(),
            generation: None,
            history: History::default(),
            summaries: HashMap::new(),
            summaries_epoch: 0,
        }
    }

    /// The folder of this document.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record's namespace and key, once known.
    pub(crate) fn name(&self) -> Option<&(Namespace, Key)> {
        self.name.as_ref()
    }

    /// Reads whatever other writers added since the last look. Call with the lock held.
    pub(crate) fn reload(&mut self, lock: &mut DocLock, actor: &ActorId) -> Result<()> {
        let generation = lock.generation()?;
        if self.generation == Some(generation) {
            return Ok(());
        }
        // Under the lock no file of this build's writers goes away; one that does anyway (a
        // file removed by hand, a process of an older build) makes this look again from
        // scratch, as a read without the lock would.
        for _ in 0..RELOAD_ATTEMPTS {
            if self.reload_files(actor)? {
                self.generation = Some(generation);
                self.learn_name()?;
                self.refresh_history();
                return Ok(());
            }
            self.forget(actor);
        }
        Err(Error::io(
            format!(
                "reading {}: its data files kept disappearing while its lock was held; is \
                 another program (or an older stowage build) removing them? Try again",
                self.dir.display()
            ),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }

    /// Loads the data files not loaded yet; `false` when one vanished meanwhile.
    fn reload_files(&mut self, actor: &ActorId) -> Result<bool> {
        let on_disk = match storage::list_files(&self.dir)? {
            storage::Listed::Files(files) => files,
            // Purged (by hand: a purge holds the lock): no record.
            storage::Listed::Gone => BTreeMap::new(),
            storage::Listed::Changed => return Ok(false),
        };
        if self.files.keys().any(|f| !on_disk.contains_key(f)) {
            // Another process compacted or purged: rebuild from what is there now.
            self.forget(actor);
        }
        let mut fresh: Vec<(&String, &u64)> = on_disk
            .iter()
            .filter(|(n, _)| !self.files.contains_key(*n))
            .collect();
        fresh.sort_by_key(|(n, _)| storage::file_kind(n));
        for (name, size) in fresh {
            let Some(bytes) = storage::read_file(&self.dir, name)? else {
                return Ok(false);
            };
            self.doc.load_incremental(&bytes).map_err(|e| {
                Error::corrupt(
                    PROVIDER,
                    format!("{} does not load as Automerge data ({e}); move it aside to recover the rest", self.dir.join(name).display()),
                )
            })?;
            self.files.insert(name.clone(), *size);
        }
        Ok(true)
    }

    /// Forgets everything read from the folder (it was purged, or must be read again from
    /// scratch); the next reload reads every file.
    pub(crate) fn forget(&mut self, actor: &ActorId) {
        self.doc = Automerge::new().with_actor(actor.clone());
        self.files.clear();
        self.history.clear();
        self.summaries.clear();
        self.generation = None;
    }

    fn learn_name(&mut self) -> Result<()> {
        if self.name.is_some() {
            return Ok(());
        }
        let read = |field: &str| -> Option<String> {
            match self.doc.get(ROOT, field).ok()?? {
                (Value::Scalar(s), _) => match s.as_ref() {
                    ScalarValue::Str(s) => Some(s.to_string()),
                    _ => None,
                },
                _ => None,
            }
        };
        if let (Some(ns), Some(key)) = (read("ns"), read("key")) {
            let ns = Namespace::new(ns).map_err(|e| {
                Error::corrupt(
                    PROVIDER,
                    format!("document {} names a bad namespace: {e}", self.dir.display()),
                )
            })?;
            let key = Key::new(key).map_err(|e| {
                Error::corrupt(
                    PROVIDER,
                    format!("document {} names a bad key: {e}", self.dir.display()),
                )
            })?;
            self.genesis = Some(document::genesis_actor(&ns, &key));
            self.name = Some((ns, key));
            // Numbering so far did not know which change is the genesis one.
            self.history.clear();
        }
        Ok(())
    }

    fn refresh_history(&mut self) {
        let genesis = self
            .genesis
            .clone()
            .unwrap_or_else(|| ActorId::from(&[0u8][..]));
        self.history.refresh(&self.doc, &genesis);
        if self.history.epoch() != self.summaries_epoch {
            self.summaries.clear();
            self.summaries_epoch = self.history.epoch();
        }
    }

    /// The latest version number (0 when there is none).
    pub(crate) fn latest(&self) -> Version {
        self.history.latest()
    }

    /// The heads of version `v`.
    pub(crate) fn heads_of(&self, v: Version) -> Option<Vec<ChangeHash>> {
        self.history.get(v).map(|e| e.heads.clone())
    }

    /// The record as it was at version `v`.
    pub(crate) fn state_at(&self, v: Version) -> Result<RecordState> {
        let heads = self
            .heads_of(v)
            .ok_or_else(|| Error::invalid_input(format!("no version {v}")))?;
        // The latest version is the current state: read it without resolving heads.
        let at = if v == self.latest() {
            At::current(&self.doc)
        } else {
            At::heads(&self.doc, &heads)
        };
        document::read_record(&at).map_err(am_err("reading a version"))
    }

    /// Hash, size, metadata and deletion of version `v` (cached).
    pub(crate) fn summary(&mut self, v: Version) -> Result<Arc<VersionSummary>> {
        if let Some(s) = self.summaries.get(&v) {
            return Ok(s.clone());
        }
        let state = self.state_at(v)?;
        let (hash, size, blob) = match &state.payload {
            Some(Payload::Blob(blob)) => (blob.hash, blob.size, Some(*blob)),
            other => {
                let bytes = other.as_ref().and_then(Payload::render).unwrap_or_default();
                (ContentHash::of(&bytes), bytes.len() as u64, None)
            }
        };
        let summary = Arc::new(VersionSummary {
            hash,
            size,
            metadata: state.metadata,
            deleted_at: state.deleted_at,
            blob,
        });
        self.summaries.insert(v, summary.clone());
        Ok(summary)
    }

    /// Whether version `v` exists and is not a tombstone.
    pub(crate) fn is_live(&mut self, v: Version) -> Result<bool> {
        Ok(v >= 1 && v <= self.latest() && self.summary(v)?.deleted_at.is_none())
    }

    /// The `RecordInfo` of version `v`, with the conflicts present at that version.
    pub(crate) fn record_info(&mut self, v: Version) -> Result<RecordInfo> {
        let (ns, key) = self.name.clone().ok_or_else(|| {
            Error::corrupt(
                PROVIDER,
                format!("document {} does not name its record", self.dir.display()),
            )
        })?;
        let summary = self.summary(v)?;
        let entry = self.history.get(v).expect("summary checked the version");
        let heads = entry.heads.clone();
        let updated_at = ms_to_timestamp(entry.time_ms);
        let created_at = ms_to_timestamp(self.history.get(1).expect("v >= 1").time_ms);
        let at = if v == self.latest() {
            At::current(&self.doc)
        } else {
            At::heads(&self.doc, &heads)
        };
        let conflicts = document::conflicts(&at).map_err(am_err("reading conflicts"))?;
        Ok(RecordInfo {
            namespace: ns,
            key,
            version: v,
            hash: summary.hash,
            size: summary.size,
            created_at,
            updated_at,
            deleted_at: summary.deleted_at,
            metadata: summary.metadata.clone(),
            conflicts,
        })
    }

    /// Makes one change: `edit` runs in a transaction at the current heads, or isolated at
    /// `base` (the heads of the version the writer read), so the change merges with whatever
    /// came after `base` instead of overwriting it. An edit that changes nothing still makes a
    /// (empty) change: every write is a version. Returns the new version number.
    pub(crate) fn commit(
        &mut self,
        base: Option<Vec<ChangeHash>>,
        message: &str,
        time_ms: i64,
        edit: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<(), automerge::AutomergeError>,
        settings: &DocSettings,
        lock: &mut DocLock,
    ) -> Result<Version> {
        let heads_before = self.doc.get_heads();
        if self.doc.is_empty() {
            let (ns, key) = self.name.clone().expect("writes know their record");
            document::add_genesis(&mut self.doc, &ns, &key)
                .map_err(am_err("creating the document"))?;
        }
        let options = || {
            CommitOptions::default()
                .with_message(message)
                .with_time(time_ms)
        };
        let mut tx = match &base {
            Some(heads) => self
                .doc
                .transaction_at(PatchLog::inactive(), heads)
                .map_err(|e| Error::backend(PROVIDER, "starting a change", e))?,
            None => self.doc.transaction(),
        };
        if let Err(e) = edit(&mut tx) {
            tx.rollback();
            return Err(am_err("applying the change")(e));
        }
        let (hash, _) = tx.commit_with(options());
        let hash = match hash {
            Some(h) => h,
            None => self.doc.empty_commit(options()),
        };
        self.persist(&heads_before, settings, lock)?;
        self.version_of(&hash)
    }

    fn version_of(&self, hash: &ChangeHash) -> Result<Version> {
        self.history.version_of(hash).ok_or_else(|| {
            Error::backend(
                PROVIDER,
                format!("change {hash} was committed but has no version"),
                std::io::Error::other("history out of step"),
            )
        })
    }

    /// Writes the changes made since `heads_before` as one content-addressed file, then
    /// compacts when the change files outweigh the snapshot.
    pub(crate) fn persist(
        &mut self,
        heads_before: &[ChangeHash],
        settings: &DocSettings,
        lock: &mut DocLock,
    ) -> Result<()> {
        let bytes = self.doc.save_after(heads_before);
        if !bytes.is_empty() {
            let name = storage::write_content_file(
                &self.dir,
                FileKind::Incremental,
                &bytes,
                settings.durability,
            )?;
            self.files.insert(name, bytes.len() as u64);
        }
        self.maybe_compact(settings)?;
        self.generation = Some(lock.bump_generation()?);
        self.refresh_history();
        Ok(())
    }

    fn maybe_compact(&mut self, settings: &DocSettings) -> Result<()> {
        let (mut snapshot, mut incremental) = (0u64, 0u64);
        for (name, size) in &self.files {
            match storage::file_kind(name) {
                Some(FileKind::Snapshot) => snapshot += size,
                _ => incremental += size,
            }
        }
        if incremental <= snapshot.max(settings.compact_min_bytes) {
            return Ok(());
        }
        self.compact(settings)
    }

    /// Writes a snapshot of the whole document and removes the files it covers.
    pub(crate) fn compact(&mut self, settings: &DocSettings) -> Result<()> {
        let bytes = self.doc.save();
        let name = storage::write_content_file(
            &self.dir,
            FileKind::Snapshot,
            &bytes,
            settings.durability,
        )?;
        // The snapshot is durable before anything it replaces goes away.
        let covered: Vec<String> = self.files.keys().filter(|n| **n != name).cloned().collect();
        for old in covered {
            storage::remove_file(&self.dir, &old)?;
            self.files.remove(&old);
        }
        self.files.insert(name, bytes.len() as u64);
        Ok(())
    }

    /// Rewrites the document's `latest.json` (see [`super::listing`]) from its current state;
    /// `latest` is the latest version's info when the caller has it already. Call with the
    /// lock held, after a write.
    pub(crate) fn refresh_listing(&mut self, latest: Option<&RecordInfo>) -> Result<()> {
        if self.name.is_none() {
            return Ok(());
        }
        let computed;
        let info = match latest {
            Some(info) => Some(info),
            None if self.latest() == 0 => None,
            None => {
                computed = self.record_info(self.latest())?;
                Some(&computed)
            }
        };
        super::listing::write(&self.dir, self.files.keys(), info);
        Ok(())
    }

    /// Purges the document: moves its folder away in one rename (durable with
    /// `Durability::Sync`), then deletes it; returns how many versions there were. Call with
    /// the exclusive lock held, which this consumes (its file goes with the folder).
    ///
    /// Deleting the files one by one where they are would let a crash part-way leave some of
    /// them, which still load: an older version, or a deleted record live again. After the
    /// rename no reader or writer finds any of them: a process killed before it keeps the
    /// record as it was, killed after it leaves a folder under `.purged/` that nothing reads
    /// and that the next purge in the namespace, or `gc`, removes. Processes waiting for the
    /// lock find that the file they locked moved away and look again (see
    /// [`DocLock::acquire`]); a new writer starts a new folder, with a new lock file.
    pub(crate) fn purge(
        &mut self,
        lock: DocLock,
        actor: &ActorId,
        durability: Durability,
    ) -> Result<u64> {
        let versions = self.latest();
        let trash = storage::move_to_trash(&self.dir, durability)?;
        self.forget(actor);
        // The lock file moved with the folder: holding it longer excludes nobody.
        drop(lock);
        storage::remove_tree(&trash)?;
        Ok(versions)
    }

    /// Notes data files written by someone else under the same lock (sync).
    pub(crate) fn after_external_merge(
        &mut self,
        heads_before: &[ChangeHash],
        settings: &DocSettings,
        lock: &mut DocLock,
    ) -> Result<()> {
        self.learn_name()?;
        self.persist(heads_before, settings, lock)?;
        self.refresh_listing(None)
    }
}
