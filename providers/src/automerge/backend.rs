//! [`AutomergeBackend`]: the `StorageBackend` over a directory of Automerge documents.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use automerge::{ActorId, ReadDoc};
use stowage_core::{
    async_trait, Body, Capabilities, DeleteOptions, Error, GetOptions, Key, ListOptions, Metadata,
    Namespace, Page, Progress, PutMode, Query, RecordInfo, Result, StorageBackend, VerifyProblem,
    VerifyReport, Version,
};

use super::config::AutomergeConfig;
use super::document::{self, Payload};
use super::listing;
use super::record::{ms_to_timestamp, now_ms, DocSettings, RecordDoc};
use super::storage::{self, DocLock};
use super::PROVIDER;
use crate::atomic_file::Durability;

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_LINE: &str = "stowage-automerge 1\n";

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
            for ns in storage::namespace_dirs(&inner.root)? {
                for dir in storage::document_dirs(&inner.root, &ns)? {
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
        let docs = self.root.join("docs");
        fs::create_dir_all(&docs)
            .map_err(|e| Error::io(format!("creating {}", docs.display()), e))?;
        let format = self.root.join(FORMAT_FILE);
        match fs::read_to_string(&format) {
            Ok(s) if s == FORMAT_LINE => Ok(()),
            Ok(s) => Err(Error::corrupt(
                PROVIDER,
                format!(
                    "{} says {:?}, but this build reads {:?}; use a matching stowage version",
                    format.display(),
                    s.trim(),
                    FORMAT_LINE.trim()
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::atomic_file::write_atomic(
                &format,
                FORMAT_LINE.as_bytes(),
                self.settings.durability,
            )
            .map_err(|e| Error::io(format!("writing {}", format.display()), e)),
            Err(e) => Err(Error::io(format!("reading {}", format.display()), e)),
        }
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
        let doc = self.doc(dir, name);
        let mut rd = doc.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut lock) = DocLock::acquire(rd.dir(), false, false)? {
            rd.reload(&mut lock, &self.settings.actor)?;
        }
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
    fn latest_info(&self, dir: PathBuf) -> Result<Option<RecordInfo>> {
        let on_disk = storage::list_files(&dir)?;
        if on_disk.is_empty() {
            return Ok(None);
        }
        if let Some(cached) = listing::read(&dir, &on_disk) {
            return Ok(cached);
        }
        self.read_dir(dir, None, |rd| {
            let latest = rd.latest();
            if rd.name().is_none() {
                return Ok(None);
            }
            let info = if latest == 0 {
                None
            } else {
                Some(rd.record_info(latest)?)
            };
            rd.refresh_listing(info.as_ref())?;
            Ok(info)
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
        let bytes = body.into_bytes().await?;
        let payload = Payload::parse(bytes.to_vec(), metadata.content_type.as_deref()).map_err(
            |inexact| Error::invalid_input(format!("record {ns}/{key} was not written: {inexact}")),
        )?;
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |inner| {
            inner.write(&ns, &key, |rd, lock| {
                let latest = rd.latest();
                let base = match mode {
                    PutMode::Overwrite => None,
                    PutMode::Create => {
                        if latest > 0 && rd.is_live(latest)? {
                            return Err(conflict(&ns, &key, "absent".into(), latest));
                        }
                        None
                    }
                    PutMode::IfVersion(v) => {
                        if v != latest {
                            return Err(conflict(&ns, &key, format!("version {v}"), latest));
                        }
                        None
                    }
                    PutMode::Base(v) => {
                        if v == 0 || v > latest {
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
        let (info, bytes) = self
            .blocking(move |inner| {
                inner.read(&ns, &key, |rd| {
                    let v = Inner::resolve(rd, &ns, &key, options.version)?;
                    let info = rd.record_info(v)?;
                    let bytes = rd
                        .state_at(v)?
                        .payload
                        .map(|p| p.render())
                        .unwrap_or_default();
                    Ok((info, bytes))
                })
            })
            .await?;
        let body = match options.range {
            None => Body::from_bytes(bytes),
            Some(range) => {
                let (start, len) = range.resolve(bytes.len() as u64)?;
                Body::from_bytes(bytes[start as usize..(start + len) as usize].to_vec())
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
        self.blocking(move |inner| {
            inner.write(&ns, &key, |rd, lock| {
                if rd.latest() == 0 {
                    return Err(Error::not_found(&ns, &key, None));
                }
                rd.purge(lock, &inner.settings.actor)
            })
        })
        .await
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let docs = self
            .blocking(|inner| {
                let mut all = Vec::new();
                for ns in storage::namespace_dirs(&inner.root)? {
                    all.extend(storage::document_dirs(&inner.root, &ns)?);
                }
                Ok(all)
            })
            .await?;
        progress.set_total(docs.len() as u64);
        let mut report = VerifyReport::default();
        for dir in docs {
            let part = self
                .blocking(move |inner| verify_document(inner, &dir))
                .await?;
            report.records_checked += part.records_checked;
            report.blobs_checked += part.blobs_checked;
            report.bytes_checked += part.bytes_checked;
            report.problems.extend(part.problems);
            progress.inc(1);
        }
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
    fn latest_infos_any(&self, ns: &Namespace) -> Result<bool> {
        for dir in storage::document_dirs(&self.root, ns)? {
            if self.latest_info(dir)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Loads one document's files into a fresh document, independently of the cache, re-renders
/// every version's payload and compares its hash and size with what the backend serves.
fn verify_document(inner: &Inner, dir: &Path) -> Result<VerifyReport> {
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
    for v in 1..=latest {
        let on_disk = fresh.summary(v)?;
        report.records_checked += 1;
        report.blobs_checked += 1;
        report.bytes_checked += on_disk.size;
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
