//! [`AutomergeBackend`]: the `StorageBackend` over a directory of Automerge documents.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::{ActorId, ReadDoc};
use stowage_core::{
    async_trait, is_json_content_type, Body, Capabilities, ContentHash, DeleteOptions, Error,
    GcReport, GetOptions, Key, ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query,
    RecordInfo, Result, StorageBackend, VerifyProblem, VerifyReport, Version,
};

use super::blobs::{BlobPin, BlobRef, BlobStore, Received, Staged};
use super::config::AutomergeConfig;
use super::document::{self, Payload};
use super::listing;
use super::record::{ms_to_timestamp, now_ms, DocSettings, RecordDoc};
use super::storage::{self, DocLock};
use super::PROVIDER;
use crate::atomic_file::{AtomicFile, Durability};
use crate::REPAIR_BY_REPUT;

const FORMAT_FILE: &str = "FORMAT";
/// A store whose documents hold every payload themselves.
const FORMAT_V1: &str = "stowage-automerge 1\n";
/// A store whose documents may refer to payload files under `blobs/`: written before the first
/// such reference, so a build that knows only version 1 refuses the store instead of reading
/// a reference as a payload.
const FORMAT_V2: &str = "stowage-automerge 2\n";

/// A temporary file untouched this long may be abandoned (if its writer's lock is free too).
const ABANDONED_TMP_QUIET: Duration = Duration::from_secs(60);
/// Where locks do not work, a temporary file untouched this long counts as abandoned.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
/// How many times a listing looks at a document again without its lock when a file vanishes
/// under it, before it takes the lock.
const UNLOCKED_LISTING_ATTEMPTS: usize = 3;

/// A store of records as Automerge documents under one root directory.
///
/// Every record is one document; writes merge instead of overwrite, every write is a version
/// of the document's history, and two processes on one root (or two replicas joined by
/// [`super::sync_stores`]) never lose each other's changes. See the module docs for the
/// semantics of versions and `PutMode::Base`.
#[derive(Clone)]
pub struct AutomergeBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) settings: DocSettings,
    pub(crate) blobs: BlobStore,
    blob_min_bytes: u64,
    /// `FORMAT` is known to say version 2.
    format_v2: AtomicBool,
    docs: Mutex<HashMap<PathBuf, Arc<Mutex<RecordDoc>>>>,
}

impl std::fmt::Debug for AutomergeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutomergeBackend")
            .field("root", &self.inner.root)
            .field("actor", &self.inner.settings.actor.to_hex_string())
            .finish()
    }
}

impl AutomergeBackend {
    /// A backend over `config.root` (nothing is read or created until the first operation).
    pub fn new(config: AutomergeConfig) -> Result<Self> {
        let actor = config.actor_id()?;
        Ok(AutomergeBackend {
            inner: Arc::new(Inner {
                root: config.root.clone(),
                settings: DocSettings {
                    actor,
                    durability: Durability::from_fsync(config.fsync),
                    compact_min_bytes: config.compact_min_bytes,
                },
                blobs: BlobStore::new(&config.root, Durability::from_fsync(config.fsync)),
                blob_min_bytes: config.blob_min_bytes,
                format_v2: AtomicBool::new(false),
                docs: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A backend from the provider's JSON config (`{"root": "...", "actor": "..."}`).
    pub fn from_config(config: &serde_json::Value) -> Result<Self> {
        Self::new(AutomergeConfig::from_json(config)?)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// This backend's actor id, as hex.
    pub fn actor(&self) -> String {
        self.inner.settings.actor.to_hex_string()
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let inner = self.inner.clone();
        stowage_core::run_blocking(PROVIDER, move || f(&inner)).await
    }

    /// The change behind every version of `key`, oldest first: which actor made it, when, with
    /// what message, under which Automerge change hash.
    pub async fn history(&self, ns: &Namespace, key: &Key) -> Result<Vec<ChangeInfo>> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.read(&ns, &key, |rd| {
                if rd.latest() == 0 {
                    return Err(Error::not_found(&ns, &key, None));
                }
                Ok(rd
                    .history
                    .entries()
                    .iter()
                    .enumerate()
                    .map(|(i, e)| ChangeInfo {
                        version: i as u64 + 1,
                        change_hash: e.hash.to_string(),
                        actor: e.actor.to_hex_string(),
                        time: ms_to_timestamp(e.time_ms),
                        message: rd
                            .doc
                            .get_change_meta_by_hash(&e.hash)
                            .and_then(|m| m.message.map(|s| s.into_owned())),
                    })
                    .collect())
            })
        })
        .await
    }

    /// Writes a snapshot of every document and removes the change files it covers.
    pub async fn compact_all(&self) -> Result<u64> {
        self.blocking(|inner| {
            let mut n = 0;
            for dir in storage::all_document_dirs(&inner.root)? {
                inner.write_dir(dir, None, |rd, lock| {
                    if rd.latest() > 0 {
                        rd.compact(&inner.settings)?;
                        lock.bump_generation()?;
                        rd.refresh_listing(None)?;
                        n += 1;
                    }
                    Ok(())
                })?;
            }
            Ok(n)
        })
        .await
    }
}

/// The Automerge change behind one version (see [`AutomergeBackend::history`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChangeInfo {
    /// The version number this change has now.
    pub version: Version,
    /// The change hash (hex), stable across replicas.
    pub change_hash: String,
    /// The actor (hex) that made the change.
    pub actor: String,
    /// When the change was made (millisecond precision).
    pub time: stowage_core::Timestamp,
    /// The change message (`put`, `delete`, `restore`).
    pub message: Option<String>,
}

/// The info of version `v`, just written, after rewriting the document's `latest.json`.
fn written_info(rd: &mut RecordDoc, v: Version) -> Result<RecordInfo> {
    let info = rd.record_info(v)?;
    let latest = (v == rd.latest()).then_some(&info);
    rd.refresh_listing(latest)?;
    Ok(info)
}

fn conflict(ns: &Namespace, key: &Key, expected: String, latest: Version) -> Error {
    Error::Conflict {
        namespace: ns.to_string(),
        key: key.to_string(),
        expected,
        current: (latest > 0).then_some(latest),
    }
}

impl Inner {
    pub(crate) fn ensure_root(&self) -> Result<()> {
        crate::store_dir::create(&self.root, "storage.config.root")?;
        let docs = self.root.join("docs");
        fs::create_dir_all(&docs)
            .map_err(|e| Error::io(format!("creating {}", docs.display()), e))?;
        let format = self.root.join(FORMAT_FILE);
        for _ in 0..2 {
            match fs::read_to_string(&format) {
                Ok(s) if s == FORMAT_V1 => return Ok(()),
                Ok(s) if s == FORMAT_V2 => {
                    self.format_v2.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(s) => {
                    return Err(Error::corrupt(
                        PROVIDER,
                        format!(
                            "{} says {:?}, but this build reads {:?} or {:?}; use a matching stowage version",
                            format.display(),
                            s.trim(),
                            FORMAT_V1.trim(),
                            FORMAT_V2.trim()
                        ),
                    ))
                }
                // Created only if still absent: a concurrent writer may have written version 2
                // meanwhile, which must never be replaced by 1.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let write = || -> std::io::Result<()> {
                        let mut file = AtomicFile::create_in(&self.root, self.settings.durability)?;
                        file.write_all(FORMAT_V1.as_bytes())?;
                        file.commit_if_absent(&format).map(|_| ())
                    };
                    write().map_err(|e| Error::io(format!("writing {}", format.display()), e))?;
                }
                Err(e) => return Err(Error::io(format!("reading {}", format.display()), e)),
            }
        }
        Err(Error::corrupt(
            PROVIDER,
            format!(
                "{} was written but cannot be read back; check the file system",
                format.display()
            ),
        ))
    }

    /// Makes `FORMAT` say version 2 (durably), before the first document change that refers
    /// to a payload file.
    pub(crate) fn ensure_blob_format(&self) -> Result<()> {
        if self.format_v2.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.ensure_root()?;
        if self.format_v2.load(Ordering::Relaxed) {
            return Ok(());
        }
        let format = self.root.join(FORMAT_FILE);
        crate::atomic_file::write_atomic(&format, FORMAT_V2.as_bytes(), self.settings.durability)
            .map_err(|e| Error::io(format!("writing {}", format.display()), e))?;
        self.format_v2.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Gives a staged payload file its hash name under a pin and makes `FORMAT` version 2: the
    /// payload as the document will refer to it, and the pin to hold until that change is
    /// committed (so `gc` cannot remove the file in between).
    fn store_blob(&self, staged: Staged) -> Result<(Payload, BlobPin)> {
        self.ensure_root()?;
        let pin = self.blobs.pin()?;
        let blob = self.blobs.commit(staged)?;
        self.ensure_blob_format()?;
        Ok((Payload::Blob(blob), pin))
    }

    pub(crate) fn doc(
        &self,
        dir: PathBuf,
        name: Option<(Namespace, Key)>,
    ) -> Arc<Mutex<RecordDoc>> {
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.entry(dir.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RecordDoc::new(dir, name, &self.settings.actor)))
            })
            .clone()
    }

    /// Runs `f` on the document after reading what other writers added (under the shared lock
    /// only while reading files).
    pub(crate) fn read_dir<R>(
        &self,
        dir: PathBuf,
        name: Option<(Namespace, Key)>,
        f: impl FnOnce(&mut RecordDoc) -> Result<R>,
    ) -> Result<R> {
        self.read_dir_holding(dir, name, false, f)
    }

    /// Like [`Inner::read_dir`], but `f` runs while the shared lock is still held (when the
    /// folder exists), so no write, compaction or purge happens meanwhile: for what must match
    /// the files exactly, like rewriting `latest.json`.
    fn read_dir_locked<R>(
        &self,
        dir: PathBuf,
        name: Option<(Namespace, Key)>,
        f: impl FnOnce(&mut RecordDoc) -> Result<R>,
    ) -> Result<R> {
        self.read_dir_holding(dir, name, true, f)
    }

    /// The two above: `hold` keeps the shared lock until `f` returns.
    fn read_dir_holding<R>(
        &self,
        dir: PathBuf,
        name: Option<(Namespace, Key)>,
        hold: bool,
        f: impl FnOnce(&mut RecordDoc) -> Result<R>,
    ) -> Result<R> {
        let doc = self.doc(dir, name);
        let mut rd = doc.lock().unwrap_or_else(|e| e.into_inner());
        let lock = match DocLock::acquire(rd.dir(), false, false)? {
            Some(mut lock) => {
                rd.reload(&mut lock, &self.settings.actor)?;
                Some(lock)
            }
            // No folder: never written, or purged (by any process) since this one read it,
            // so what it remembers is gone too.
            None => {
                rd.forget(&self.settings.actor);
                None
            }
        };
        let _held = if hold {
            lock
        } else {
            drop(lock);
            None
        };
        f(&mut rd)
    }

    /// Runs `f` on the document under its exclusive lock, after reading what other writers
    /// added; the lock is held only for this one write.
    pub(crate) fn write_dir<R>(
        &self,
        dir: PathBuf,
        name: Option<(Namespace, Key)>,
        f: impl FnOnce(&mut RecordDoc, &mut DocLock) -> Result<R>,
    ) -> Result<R> {
        let doc = self.doc(dir, name);
        let mut rd = doc.lock().unwrap_or_else(|e| e.into_inner());
        let mut lock = DocLock::acquire(rd.dir(), true, true)?.expect("created on demand");
        rd.reload(&mut lock, &self.settings.actor)?;
        f(&mut rd, &mut lock)
    }

    fn read<R>(
        &self,
        ns: &Namespace,
        key: &Key,
        f: impl FnOnce(&mut RecordDoc) -> Result<R>,
    ) -> Result<R> {
        self.read_dir(
            storage::doc_dir(&self.root, ns, key),
            Some((ns.clone(), key.clone())),
            f,
        )
    }

    fn write<R>(
        &self,
        ns: &Namespace,
        key: &Key,
        f: impl FnOnce(&mut RecordDoc, &mut DocLock) -> Result<R>,
    ) -> Result<R> {
        self.ensure_root()?;
        self.write_dir(
            storage::doc_dir(&self.root, ns, key),
            Some((ns.clone(), key.clone())),
            f,
        )
    }

    /// The version a read without a version number means, or `NotFound`.
    fn resolve(
        rd: &mut RecordDoc,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<Version> {
        match version {
            None => {
                let latest = rd.latest();
                if latest == 0 || !rd.is_live(latest)? {
                    return Err(Error::not_found(ns, key, None));
                }
                Ok(latest)
            }
            Some(v) => {
                if !rd.is_live(v)? {
                    return Err(Error::not_found(ns, key, Some(v)));
                }
                Ok(v)
            }
        }
    }

    fn latest_infos(&self, ns: &Namespace) -> Result<Vec<RecordInfo>> {
        let mut out = Vec::new();
        for dir in storage::document_dirs(&self.root, ns)? {
            out.extend(self.latest_info(dir)?.filter(|info| info.namespace == *ns));
        }
        Ok(out)
    }

    /// The latest version's info of the document in `dir` (`None` when it has none): from its
    /// `latest.json` when that was computed from the data files now on disk, so the document
    /// is not loaded; else loaded, and `latest.json` rewritten.
    ///
    /// The first looks take no lock, so a compaction or purge by another process may remove a
    /// file between the listing of the folder and the look at the file: the document changed,
    /// so this looks again, and after [`UNLOCKED_LISTING_ATTEMPTS`] such changes in a row reads
    /// it under its shared lock, where nothing changes. A folder gone is a record purged.
    fn latest_info(&self, dir: PathBuf) -> Result<Option<RecordInfo>> {
        for _ in 0..UNLOCKED_LISTING_ATTEMPTS {
            match storage::list_files(&dir)? {
                storage::Listed::Gone => return Ok(None),
                storage::Listed::Changed => continue,
                storage::Listed::Files(on_disk) if on_disk.is_empty() => return Ok(None),
                storage::Listed::Files(on_disk) => {
                    if let Some(cached) = listing::read(&dir, &on_disk) {
                        return Ok(cached);
                    }
                    break;
                }
            }
        }
        // Computed and written under the shared lock: `latest.json` then names exactly the
        // files the info came from, and a purge cannot move the folder away in between (a
        // cache written into a purged record's folder, or a new record's, would keep the
        // purged record's key, tags and attributes on disk).
        self.read_dir_locked(dir, None, |rd| {
            let latest = rd.latest();
            // No version: nothing to cache, and the folder may be gone (purged).
            if rd.name().is_none() || latest == 0 {
                return Ok(None);
            }
            let info = rd.record_info(latest)?;
            rd.refresh_listing(Some(&info))?;
            Ok(Some(info))
        })
    }
}

#[async_trait]
impl StorageBackend for AutomergeBackend {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    async fn initialize(&self) -> Result<()> {
        self.blocking(|inner| inner.ensure_root()).await
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        // JSON is parsed (and then reconciled) whole; any other payload at or above the
        // threshold is streamed to a file.
        let is_json = metadata
            .content_type
            .as_deref()
            .is_some_and(is_json_content_type);
        // A payload file costs a whole upload: a put its precondition refuses fails before it
        // (the commit checks again, under the lock). `Base` merges, so only the commit decides.
        if !is_json
            && matches!(mode, PutMode::Create | PutMode::IfVersion(_))
            && body
                .size_hint()
                .is_none_or(|n| n >= self.inner.blob_min_bytes)
        {
            let dir = storage::doc_dir(&self.inner.root, ns, key);
            let latest = self.blocking(move |inner| inner.latest_info(dir)).await?;
            mode.check_latest(ns, key, latest.as_ref())?;
        }
        let received = if is_json {
            Received::Inline(body.into_bytes().await?)
        } else {
            self.inner
                .blobs
                .receive(body, self.inner.blob_min_bytes)
                .await?
        };
        let incoming = match received {
            Received::Inline(bytes) => Ok(Payload::parse(
                bytes.to_vec(),
                metadata.content_type.as_deref(),
            )
            .map_err(|inexact| {
                Error::invalid_input(format!(
                    "record {ns}/{key} was not written: {inexact}, or put the payload with a \
                     non-JSON content type (e.g. application/octet-stream) to keep its bytes \
                     exactly as they are"
                ))
            })?),
            Received::Staged(staged) => Err(staged),
        };
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            let (payload, _pin) = match incoming {
                // A payload declared JSON that is not JSON is bytes: a file too when big.
                Ok(Payload::Bytes(bytes)) if bytes.len() as u64 >= inner.blob_min_bytes => {
                    let (payload, pin) = inner.store_blob(inner.blobs.stage_bytes(&bytes)?)?;
                    (payload, Some(pin))
                }
                Ok(payload) => (payload, None),
                Err(staged) => {
                    let (payload, pin) = inner.store_blob(staged)?;
                    (payload, Some(pin))
                }
            };
            inner.write(&ns, &key, |rd, lock| {
                let latest = rd.latest();
                let base = match mode {
                    PutMode::Overwrite => None,
                    PutMode::Create | PutMode::IfVersion(_) => {
                        let deleted = latest > 0 && !rd.is_live(latest)?;
                        mode.check(&ns, &key, (latest > 0).then_some((latest, deleted)))?;
                        None
                    }
                    // "My writer read nothing": as on every provider, it writes a key that
                    // has no version and conflicts with one that has.
                    PutMode::Base(0) => {
                        mode.check(&ns, &key, (latest > 0).then_some((latest, false)))?;
                        None
                    }
                    PutMode::Base(v) => {
                        if v > latest {
                            return Err(conflict(
                                &ns,
                                &key,
                                format!("base version {v} to exist"),
                                latest,
                            ));
                        }
                        (v < latest).then(|| rd.heads_of(v)).flatten()
                    }
                };
                let v = rd.commit(
                    base,
                    "put",
                    now_ms(),
                    |tx| document::reconcile_record(tx, Some(&payload), &metadata, None),
                    &inner.settings,
                    lock,
                )?;
                written_info(rd, v)
            })
        })
        .await
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let (ns, key) = (ns.clone(), key.clone());
        let (info, payload) = self
            .blocking(move |inner| {
                inner.read(&ns, &key, |rd| {
                    let v = Inner::resolve(rd, &ns, &key, options.version)?;
                    let info = rd.record_info(v)?;
                    let payload = match rd.summary(v)?.blob {
                        Some(blob) => Err(blob),
                        None => Ok(rd
                            .state_at(v)?
                            .payload
                            .and_then(|p| p.render())
                            .unwrap_or_default()),
                    };
                    Ok((info, payload))
                })
            })
            .await?;
        let body = match payload {
            Ok(bytes) => match options.range {
                None => Body::from_bytes(bytes),
                Some(range) => {
                    let (start, len) = range.resolve(bytes.len() as u64)?;
                    Body::from_bytes(bytes[start as usize..(start + len) as usize].to_vec())
                }
            },
            Err(blob) => {
                let (start, len) = match options.range {
                    None => (0, blob.size),
                    Some(range) => range.resolve(blob.size)?,
                };
                let what = format!("{}/{} version {}", info.namespace, info.key, info.version);
                self.inner.blobs.read(blob, start, len, what).await?
            }
        };
        Ok((info, body))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.read(&ns, &key, |rd| {
                let v = Inner::resolve(rd, &ns, &key, version)?;
                rd.record_info(v)
            })
        })
        .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.write(&ns, &key, |rd, lock| {
                let latest = rd.latest();
                if latest == 0 || !rd.is_live(latest)? {
                    return Err(Error::not_found(&ns, &key, None));
                }
                if let Some(v) = options.if_version {
                    if v != latest {
                        return Err(conflict(&ns, &key, format!("version {v}"), latest));
                    }
                }
                let at = now_ms();
                let v = rd.commit(
                    None,
                    "delete",
                    at,
                    |tx| document::write_tombstone(tx, at),
                    &inner.settings,
                    lock,
                )?;
                written_info(rd, v)
            })
        })
        .await
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let ns = ns.clone();
        let infos = self.blocking(move |inner| inner.latest_infos(&ns)).await?;
        options.apply(infos)
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let ns = ns.clone();
        let infos = self.blocking(move |inner| inner.latest_infos(&ns)).await?;
        query.apply(infos)
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.read(&ns, &key, |rd| {
                let latest = rd.latest();
                if latest == 0 {
                    return Err(Error::not_found(&ns, &key, None));
                }
                (1..=latest).map(|v| rd.record_info(v)).collect()
            })
        })
        .await
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.write(&ns, &key, |rd, lock| {
                let v = match version {
                    Some(v) => {
                        if !rd.is_live(v)? {
                            return Err(Error::not_found(&ns, &key, Some(v)));
                        }
                        v
                    }
                    None => {
                        let mut found = None;
                        for v in (1..=rd.latest()).rev() {
                            if rd.is_live(v)? {
                                found = Some(v);
                                break;
                            }
                        }
                        found.ok_or_else(|| Error::not_found(&ns, &key, None))?
                    }
                };
                let state = rd.state_at(v)?;
                let v = rd.commit(
                    None,
                    "restore",
                    now_ms(),
                    |tx| {
                        document::reconcile_record(
                            tx,
                            state.payload.as_ref(),
                            &state.metadata,
                            None,
                        )
                    },
                    &inner.settings,
                    lock,
                )?;
                written_info(rd, v)
            })
        })
        .await
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| inner.purge(&ns, &key)).await
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let docs = self
            .blocking(|inner| storage::all_document_dirs(&inner.root))
            .await?;
        progress.set_total(docs.len() as u64);
        let mut report = VerifyReport::default();
        let files: FileChecks = Arc::new(Mutex::new(HashMap::new()));
        for dir in docs {
            let files = files.clone();
            let part = self
                .blocking(move |inner| verify_document(inner, &dir, &files))
                .await?;
            report.records_checked += part.records_checked;
            report.blobs_checked += part.blobs_checked;
            report.bytes_checked += part.bytes_checked;
            report.problems.extend(part.problems);
            progress.inc(1);
        }
        Ok(report)
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        self.blocking(|inner| inner.ensure_root()).await?;
        // Waits until no write (in any process) is between storing a payload file and
        // committing the change that refers to it, and keeps new ones waiting until gc is done.
        let _exclusive = self.blocking(|inner| inner.blobs.exclusive()).await?;
        let docs = self
            .blocking(|inner| storage::all_document_dirs(&inner.root))
            .await?;
        progress.set_total(docs.len() as u64 + 1);
        let mut referenced: BTreeSet<BlobRef> = BTreeSet::new();
        let mut payloads: HashSet<ContentHash> = HashSet::new();
        for dir in docs {
            let (refs, hashes) = self.blocking(move |inner| gc_scan(inner, &dir)).await?;
            referenced.extend(refs);
            payloads.extend(hashes);
            progress.inc(1);
        }
        let report = self
            .blocking(move |inner| {
                let keep: HashSet<ContentHash> = referenced.iter().map(|b| b.hash).collect();
                let mut report = GcReport::default();
                let stored = inner
                    .blobs
                    .list_all()
                    .map_err(|e| Error::io("listing the payload files under blobs/", e))?;
                for (hash, size) in stored {
                    if keep.contains(&hash) {
                        continue;
                    }
                    inner.blobs.remove(&hash).map_err(|e| {
                        Error::io(
                            format!("removing {}", inner.blobs.path_of(&hash).display()),
                            e,
                        )
                    })?;
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                }
                // Every payload a version needs stays, in a document or in a file.
                payloads.extend(keep);
                report.blobs_kept = payloads.len() as u64;
                inner.remove_abandoned_tmp_files()?;
                Ok(report)
            })
            .await?;
        progress.inc(1);
        Ok(report)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        self.blocking(|inner| {
            let mut out = Vec::new();
            for ns in storage::namespace_dirs(&inner.root)? {
                if !inner.latest_infos_any(&ns)? {
                    continue;
                }
                out.push(ns);
            }
            Ok(out)
        })
        .await
    }
}

impl Inner {
    /// Purges a record (see [`RecordDoc::purge`]), then removes what earlier purges in its
    /// namespace left when they were interrupted, so running a purge again finishes one that
    /// was killed (it then reports the record not found: it is gone already).
    fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let dir = storage::doc_dir(&self.root, ns, key);
        let ns_dir = dir.parent().map(Path::to_path_buf);
        let purged = {
            let doc = self.doc(dir.clone(), Some((ns.clone(), key.clone())));
            let mut rd = doc.lock().unwrap_or_else(|e| e.into_inner());
            // Not created when absent: purging a key that has no folder leaves none behind.
            match DocLock::acquire(&dir, true, false)? {
                None => {
                    rd.forget(&self.settings.actor);
                    Err(Error::not_found(ns, key, None))
                }
                Some(mut lock) => {
                    rd.reload(&mut lock, &self.settings.actor)?;
                    if rd.latest() == 0 {
                        Err(Error::not_found(ns, key, None))
                    } else {
                        rd.purge(lock, &self.settings.actor, self.settings.durability)
                    }
                }
            }
        };
        if let Some(ns_dir) = ns_dir {
            storage::sweep_trash(&ns_dir)?;
        }
        purged
    }

    /// Removes the temporary files of writers that died: under `tmp/`, in the root (`FORMAT`)
    /// and in the document folders; and the folders of purges that were interrupted. A live
    /// writer's file is locked, so it stays.
    fn remove_abandoned_tmp_files(&self) -> Result<()> {
        for ns in storage::namespace_dirs(&self.root)? {
            storage::sweep_trash(&self.root.join("docs").join(ns.as_str()))?;
        }
        let mut dirs = vec![self.blobs.tmp_dir().to_path_buf(), self.root.clone()];
        dirs.extend(storage::all_document_dirs(&self.root)?);
        for dir in dirs {
            crate::atomic_file::remove_abandoned_tmp_files(
                &dir,
                ABANDONED_TMP_QUIET,
                STALE_TMP_AGE,
            )
            .map_err(|e| Error::io(format!("cleaning temporary files in {}", dir.display()), e))?;
        }
        Ok(())
    }

    fn latest_infos_any(&self, ns: &Namespace) -> Result<bool> {
        for dir in storage::document_dirs(&self.root, ns)? {
            if self.latest_info(dir)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What `gc` must keep of the document in `dir`, loaded afresh (not cached): the payload files
/// any of its changes refers to, and the hash of every version's payload. A document that
/// does not load stops `gc` (it could refer to any file).
fn gc_scan(inner: &Inner, dir: &Path) -> Result<(BTreeSet<BlobRef>, Vec<ContentHash>)> {
    let mut fresh = RecordDoc::new(dir.to_path_buf(), None, &ActorId::random());
    {
        let Some(mut lock) = DocLock::acquire(dir, false, false)? else {
            return Ok(Default::default());
        };
        fresh
            .reload(&mut lock, &inner.settings.actor)
            .map_err(|e| {
                Error::corrupt(
                    PROVIDER,
                    format!("gc stopped, removing nothing: {e}; run `stowage verify`"),
                )
            })?;
    }
    let refs = document::blob_refs(&fresh.doc);
    let mut hashes = Vec::new();
    for v in 1..=fresh.latest() {
        hashes.push(fresh.summary(v)?.hash);
    }
    Ok((refs, hashes))
}

/// Results of re-hashing payload files during one `verify`, by hash: `None` when missing.
type FileChecks = Arc<Mutex<HashMap<ContentHash, Option<(ContentHash, u64)>>>>;

/// Loads one document's files into a fresh document, independently of the cache, re-renders
/// every version's payload and compares its hash and size with what the backend serves;
/// re-hashes every payload file a version refers to (each file once per `verify`).
fn verify_document(inner: &Inner, dir: &Path, files: &FileChecks) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut fresh = RecordDoc::new(dir.to_path_buf(), None, &ActorId::random());
    {
        let Some(mut lock) = DocLock::acquire(dir, false, false)? else {
            return Ok(report);
        };
        if let Err(e) = fresh.reload(&mut lock, &inner.settings.actor) {
            report.problems.push(VerifyProblem {
                namespace: None,
                key: None,
                version: None,
                hash: None,
                problem: "corrupt".into(),
                detail: e.to_string(),
            });
            return Ok(report);
        }
    }
    let latest = fresh.latest();
    if latest == 0 {
        return Ok(report);
    }
    let Some((ns, key)) = fresh.name().cloned() else {
        report.problems.push(VerifyProblem {
            namespace: None,
            key: None,
            version: None,
            hash: None,
            problem: "corrupt".into(),
            detail: format!("{} does not name its record", dir.display()),
        });
        return Ok(report);
    };
    let problem = |version: Option<Version>, problem: &str, detail: String| VerifyProblem {
        namespace: Some(ns.to_string()),
        key: Some(key.to_string()),
        version,
        hash: None,
        problem: problem.into(),
        detail,
    };
    if storage::doc_dir(&inner.root, &ns, &key) != dir {
        report.problems.push(problem(
            None,
            "misplaced",
            format!(
                "{} holds this record, whose folder is elsewhere",
                dir.display()
            ),
        ));
    }
    let missing = fresh.doc.get_missing_deps(&[]);
    if !missing.is_empty() {
        report.problems.push(problem(
            None,
            "missing",
            format!(
                "{} lacks {} changes its history depends on",
                dir.display(),
                missing.len()
            ),
        ));
    }
    let served = inner.read_dir(dir.to_path_buf(), Some((ns.clone(), key.clone())), |rd| {
        (1..=rd.latest())
            .map(|v| rd.summary(v))
            .collect::<Result<Vec<_>>>()
    })?;
    if served.is_empty() && !dir.exists() {
        // Purged since it was loaded above: nothing left to check.
        return Ok(VerifyReport::default());
    }
    for v in 1..=latest {
        let on_disk = fresh.summary(v)?;
        report.records_checked += 1;
        report.blobs_checked += 1;
        report.bytes_checked += on_disk.size;
        if let Some(blob) = on_disk.blob {
            let known = files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&blob.hash)
                .copied();
            let found = match known {
                Some(found) => found,
                None => {
                    let path = inner.blobs.path_of(&blob.hash);
                    let found = inner
                        .blobs
                        .rehash(&blob.hash)
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    files
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(blob.hash, found);
                    found
                }
            };
            let path = inner.blobs.path_of(&blob.hash);
            match found {
                None => report.problems.push(VerifyProblem {
                    hash: Some(blob.hash),
                    ..problem(
                        Some(v),
                        "missing",
                        format!(
                            "the payload file {} ({} bytes) is missing; {REPAIR_BY_REPUT} (or restore the file from a replica or backup)",
                            path.display(),
                            blob.size
                        ),
                    )
                }),
                Some((hash, size)) if hash != blob.hash || size != blob.size => {
                    report.problems.push(VerifyProblem {
                        hash: Some(blob.hash),
                        ..problem(
                            Some(v),
                            "corrupt",
                            format!(
                                "the payload file {} holds {size} bytes hashing to {hash}, not {} ({} bytes); {REPAIR_BY_REPUT} (or restore the file from a replica or backup)",
                                path.display(),
                                blob.hash,
                                blob.size
                            ),
                        )
                    })
                }
                Some(_) => {}
            }
        }
        match served.get(v as usize - 1) {
            Some(s) if s.hash == on_disk.hash && s.size == on_disk.size => {}
            Some(s) => report.problems.push(VerifyProblem {
                hash: Some(on_disk.hash),
                ..problem(
                    Some(v),
                    "corrupt",
                    format!(
                        "the files render {} ({} bytes), the backend serves {} ({} bytes)",
                        on_disk.hash, on_disk.size, s.hash, s.size
                    ),
                )
            }),
            None => report.problems.push(problem(
                Some(v),
                "missing",
                "the backend serves fewer versions than the files hold".into(),
            )),
        }
    }
    Ok(report)
}
