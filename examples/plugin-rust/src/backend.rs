//! [`KvBackend`]: records, versions and content-addressed payloads in one redb file.
//!
//! Tables (keys sort byte-wise; namespaces and keys never contain NUL):
//! - `records`: `ns \0 key \0 version(u64 BE)` → the version's `RecordInfo` as JSON;
//! - `latest`: `ns \0 key` → the latest version number (tombstones included);
//! - `blobs`: blake3 hash (32 bytes) → (blob id, size);
//! - `chunks`: (blob id, index) → up to 64 KiB of payload;
//! - `counters`: `next_blob` → the next blob id.
//!
//! Every write is one redb transaction, so a failed precondition or a failing body writes
//! nothing. redb is blocking, so every transaction runs on a blocking thread.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use stowage_core::{
    async_trait, Body, Capabilities, ContentHash, ContentHasher, DeleteOptions, Error, GcReport,
    GetOptions, Key, ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query, RecordInfo,
    Result, StorageBackend, Timestamp, VerifyProblem, VerifyReport, Version, CHUNK_SIZE,
};

use crate::PROVIDER;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const LATEST: TableDefinition<&[u8], u64> = TableDefinition::new("latest");
const BLOBS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("blobs");
const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Payloads are stored in pieces of this size, so range reads touch only what they need.
const BLOB_CHUNK: usize = 64 * 1024;

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    versions: true,
    delete: true,
    restore: true,
    purge: true,
    search: true,
    search_is_scan: true,
    range_reads: true,
    create_only: true,
    if_version: true,
    merge: false,
    dedup: true,
    gc: true,
    verify: true,
    list_namespaces: true,
    sync: false,
    durable: true,
};

/// A `kv` store open on one redb file.
pub struct KvBackend {
    db: Arc<Database>,
    path: PathBuf,
    sync: bool,
}

impl std::fmt::Debug for KvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvBackend")
            .field("path", &self.path)
            .finish()
    }
}

/// Opens the redb file, waiting while another store (this process or another) has it open:
/// redb takes an exclusive lock on the file for as long as it is open, so stores on one file
/// take turns. Polls with a growing pause (10 ms up to 100 ms) until `timeout` has passed.
fn create_waiting(path: &std::path::Path, timeout: std::time::Duration) -> Result<Database> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                        message: format!(
                            "the redb file is already open in this process or another, and stayed open for lock_timeout_ms = {} ms; close the other store first or raise lock_timeout_ms",
                            timeout.as_millis()
                        ),
                    });
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(other) => return Err(db_error(path)(other.into())),
        }
    }
}

fn db_error(path: &std::path::Path) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| Error::backend(PROVIDER, format!("redb database {}", path.display()), e)
}

/// Shorthand: any redb error into the provider's `Backend` error.
fn err(e: impl Into<redb::Error>) -> Error {
    Error::backend(PROVIDER, "redb operation failed", e.into())
}

fn latest_key(ns: &Namespace, key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.as_str().len() + key.as_str().len() + 1);
    k.extend_from_slice(ns.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_str().as_bytes());
    k
}

fn versions_prefix(ns: &Namespace, key: &Key) -> Vec<u8> {
    let mut k = latest_key(ns, key);
    k.push(0);
    k
}

fn record_key(ns: &Namespace, key: &Key, version: Version) -> Vec<u8> {
    let mut k = versions_prefix(ns, key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn decode_info(bytes: &[u8]) -> Result<RecordInfo> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(PROVIDER, format!("unreadable record: {e}")))
}

fn load_info(
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ns: &Namespace,
    key: &Key,
    version: Version,
) -> Result<Option<RecordInfo>> {
    match records
        .get(record_key(ns, key, version).as_slice())
        .map_err(err)?
    {
        Some(v) => Ok(Some(decode_info(v.value())?)),
        None => Ok(None),
    }
}

fn latest_version(
    latest: &impl ReadableTable<&'static [u8], u64>,
    ns: &Namespace,
    key: &Key,
) -> Result<Version> {
    Ok(latest
        .get(latest_key(ns, key).as_slice())
        .map_err(err)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Every version of a key, oldest first.
fn all_versions(
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ns: &Namespace,
    key: &Key,
) -> Result<Vec<RecordInfo>> {
    let prefix = versions_prefix(ns, key);
    let mut out = Vec::new();
    for entry in records.range(prefix.as_slice()..).map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        if !k.value().starts_with(&prefix) {
            break;
        }
        out.push(decode_info(v.value())?);
    }
    Ok(out)
}

/// The latest version of every key of `ns` whose key starts with `prefix`.
fn latest_infos(
    latest: &impl ReadableTable<&'static [u8], u64>,
    records: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ns: &Namespace,
    prefix: &str,
) -> Result<Vec<RecordInfo>> {
    let mut start = ns.as_str().as_bytes().to_vec();
    start.push(0);
    let ns_len = start.len();
    start.extend_from_slice(prefix.as_bytes());
    let mut out = Vec::new();
    for entry in latest.range(start.as_slice()..).map_err(err)? {
        let (k, v) = entry.map_err(err)?;
        let k = k.value();
        if !k.starts_with(&start) {
            break;
        }
        let mut rk = k.to_vec();
        rk.push(0);
        rk.extend_from_slice(&v.value().to_be_bytes());
        match records.get(rk.as_slice()).map_err(err)? {
            Some(r) => out.push(decode_info(r.value())?),
            None => {
                return Err(Error::corrupt(
                    PROVIDER,
                    format!(
                        "latest version of {:?} is missing",
                        String::from_utf8_lossy(&k[ns_len..])
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn write_version(
    records: &mut redb::Table<&'static [u8], &'static [u8]>,
    latest: &mut redb::Table<&'static [u8], u64>,
    info: &RecordInfo,
) -> Result<()> {
    let json = serde_json::to_vec(info).map_err(|e| Error::corrupt(PROVIDER, e.to_string()))?;
    records
        .insert(
            record_key(&info.namespace, &info.key, info.version).as_slice(),
            json.as_slice(),
        )
        .map_err(err)?;
    latest
        .insert(
            latest_key(&info.namespace, &info.key).as_slice(),
            info.version,
        )
        .map_err(err)?;
    Ok(())
}

/// Reads `len` payload bytes of blob `id` from `offset`.
fn read_range(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    id: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let index = pos / BLOB_CHUNK as u64;
        let chunk = chunks
            .get((id, index))
            .map_err(err)?
            .ok_or_else(|| Error::corrupt(PROVIDER, format!("blob {id} lacks chunk {index}")))?;
        let data = chunk.value();
        let within = (pos % BLOB_CHUNK as u64) as usize;
        let take = ((end - pos) as usize).min(data.len().saturating_sub(within));
        if take == 0 {
            return Err(Error::corrupt(
                PROVIDER,
                format!("blob {id} is shorter than its size"),
            ));
        }
        out.extend_from_slice(&data[within..within + take]);
        pos += take as u64;
    }
    Ok(out)
}

/// A write transaction; `sync: false` skips the fsync of each commit.
fn begin_write(db: &Database, sync: bool) -> Result<redb::WriteTransaction> {
    let mut txn = db.begin_write().map_err(err)?;
    if !sync {
        txn.set_durability(redb::Durability::Eventual);
    }
    Ok(txn)
}

fn check_mode(
    mode: PutMode,
    ns: &Namespace,
    key: &Key,
    current: Version,
    live: bool,
) -> Result<()> {
    let conflict = |expected: String| Error::Conflict {
        namespace: ns.to_string(),
        key: key.to_string(),
        expected,
        current: (current > 0).then_some(current),
    };
    match mode {
        PutMode::Overwrite => Ok(()),
        PutMode::Create if live => Err(conflict("absent".into())),
        PutMode::Create => Ok(()),
        PutMode::IfVersion(v) | PutMode::Base(v) if v != current => {
            Err(conflict(format!("version {v}")))
        }
        PutMode::IfVersion(_) | PutMode::Base(_) => Ok(()),
    }
}

impl KvBackend {
    /// Opens (creating if needed) the database at `path`, waiting up to `lock_timeout` while
    /// another store has it open; with `sync` false, commits skip their fsync (see
    /// [`crate::KvConfig::sync`]).
    pub async fn open(
        path: impl Into<PathBuf>,
        sync: bool,
        lock_timeout: std::time::Duration,
    ) -> Result<Self> {
        let path = path.into();
        let p = path.clone();
        let db = stowage_core::run_blocking(PROVIDER, move || -> Result<Database> {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating folder {}", parent.display()), e))?;
            }
            let db = create_waiting(&p, lock_timeout)?;
            let txn = db.begin_write().map_err(err)?;
            txn.open_table(RECORDS).map_err(err)?;
            txn.open_table(LATEST).map_err(err)?;
            txn.open_table(BLOBS).map_err(err)?;
            txn.open_table(CHUNKS).map_err(err)?;
            txn.open_table(COUNTERS).map_err(err)?;
            txn.commit().map_err(err)?;
            Ok(db)
        })
        .await?;
        Ok(KvBackend {
            db: Arc::new(db),
            path,
            sync,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        // In place when called through the plugin ABI (the caller's thread may block).
        stowage_core::run_blocking(PROVIDER, move || f(&db)).await
    }

    /// Resolves the version a get/head reads: `NotFound` for none or a tombstone.
    fn resolve(
        db: &Database,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<(RecordInfo, u64)> {
        let txn = db.begin_read().map_err(err)?;
        let records = txn.open_table(RECORDS).map_err(err)?;
        let v = match version {
            Some(v) => v,
            None => latest_version(&txn.open_table(LATEST).map_err(err)?, ns, key)?,
        };
        let info = match load_info(&records, ns, key, v)? {
            Some(info) if !info.is_deleted() => info,
            _ => return Err(Error::not_found(ns, key, version)),
        };
        let blobs = txn.open_table(BLOBS).map_err(err)?;
        let id = blobs
            .get(info.hash.as_bytes().as_slice())
            .map_err(err)?
            .map(|b| b.value().0)
            .ok_or_else(|| {
                Error::corrupt(
                    PROVIDER,
                    format!("payload {} of {ns}/{key} is missing", info.hash),
                )
            })?;
        Ok((info, id))
    }
}

#[async_trait]
impl StorageBackend for KvBackend {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: self.sync,
            ..CAPABILITIES
        }
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        let sync = self.sync;
        let (ns, key) = (ns.clone(), key.clone());
        let runtime = tokio::runtime::Handle::current();
        self.blocking(move |db| {
            let mut body = body;
            let txn = begin_write(db, sync)?;
            let info = {
                let mut records = txn.open_table(RECORDS).map_err(err)?;
                let mut latest = txn.open_table(LATEST).map_err(err)?;
                let mut blobs = txn.open_table(BLOBS).map_err(err)?;
                let mut chunks = txn.open_table(CHUNKS).map_err(err)?;
                let mut counters = txn.open_table(COUNTERS).map_err(err)?;
                let current = latest_version(&latest, &ns, &key)?;
                let previous = if current > 0 {
                    load_info(&records, &ns, &key, current)?
                } else {
                    None
                };
                let live = previous.as_ref().is_some_and(|p| !p.is_deleted());
                check_mode(mode, &ns, &key, current, live)?;
                let id = counters
                    .get("next_blob")
                    .map_err(err)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                counters.insert("next_blob", id + 1).map_err(err)?;
                let mut hasher = ContentHasher::new();
                let mut pending: Vec<u8> = Vec::with_capacity(BLOB_CHUNK);
                let mut index = 0u64;
                // The body streams in on this blocking thread; a failing body drops the
                // transaction, so nothing is written. `futures`' executor rather than the
                // runtime's: inside a plugin call this thread is already in the runtime's
                // `block_on`, which cannot nest.
                let _context = runtime.enter();
                while let Some(chunk) = futures::executor::block_on(body.next_chunk()) {
                    let chunk: Bytes = chunk?;
                    hasher.update(&chunk);
                    pending.extend_from_slice(&chunk);
                    while pending.len() >= BLOB_CHUNK {
                        chunks
                            .insert((id, index), &pending[..BLOB_CHUNK])
                            .map_err(err)?;
                        pending.drain(..BLOB_CHUNK);
                        index += 1;
                    }
                }
                if !pending.is_empty() {
                    chunks
                        .insert((id, index), pending.as_slice())
                        .map_err(err)?;
                    index += 1;
                }
                let (hash, size) = hasher.finish();
                let known = blobs
                    .get(hash.as_bytes().as_slice())
                    .map_err(err)?
                    .is_some();
                if known {
                    for i in 0..index {
                        chunks.remove((id, i)).map_err(err)?;
                    }
                } else {
                    blobs
                        .insert(hash.as_bytes().as_slice(), (id, size))
                        .map_err(err)?;
                }
                let now = Timestamp::now();
                let info = RecordInfo {
                    namespace: ns,
                    key,
                    version: current + 1,
                    hash,
                    size,
                    created_at: previous.as_ref().map(|p| p.created_at).unwrap_or(now),
                    updated_at: now,
                    deleted_at: None,
                    metadata,
                    conflicts: Vec::new(),
                };
                write_version(&mut records, &mut latest, &info)?;
                info
            };
            txn.commit().map_err(err)?;
            Ok(info)
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
        let (info, id, offset, len, first) = self
            .blocking(move |db| {
                let (info, id) = Self::resolve(db, &ns, &key, options.version)?;
                let (offset, len) = match options.range {
                    Some(r) => r.resolve(info.size)?,
                    None => (0, info.size),
                };
                let first = if len <= CHUNK_SIZE as u64 {
                    let txn = db.begin_read().map_err(err)?;
                    Some(read_range(
                        &txn.open_table(CHUNKS).map_err(err)?,
                        id,
                        offset,
                        len,
                    )?)
                } else {
                    None
                };
                Ok((info, id, offset, len, first))
            })
            .await?;
        if let Some(bytes) = first {
            return Ok((info, Body::from_bytes(bytes)));
        }
        let db = self.db.clone();
        let end = offset + len;
        let stream = futures::stream::try_unfold(offset, move |pos| {
            let db = db.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let take = (end - pos).min(CHUNK_SIZE as u64);
                let bytes = stowage_core::run_blocking(PROVIDER, move || {
                    let txn = db.begin_read().map_err(err)?;
                    read_range(&txn.open_table(CHUNKS).map_err(err)?, id, pos, take)
                })
                .await?;
                Ok(Some((Bytes::from(bytes), pos + take)))
            }
        });
        Ok((info, Body::from_stream(stream, Some(len))))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |db| Self::resolve(db, &ns, &key, version).map(|(info, _)| info))
            .await
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let sync = self.sync;
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |db| {
            let txn = begin_write(db, sync)?;
            let tombstone = {
                let mut records = txn.open_table(RECORDS).map_err(err)?;
                let mut latest = txn.open_table(LATEST).map_err(err)?;
                let current = latest_version(&latest, &ns, &key)?;
                let previous = match load_info(&records, &ns, &key, current)? {
                    Some(p) if current > 0 && !p.is_deleted() => p,
                    _ => return Err(Error::not_found(&ns, &key, None)),
                };
                if let Some(v) = options.if_version.filter(|v| *v != current) {
                    return Err(Error::Conflict {
                        namespace: ns.to_string(),
                        key: key.to_string(),
                        expected: format!("version {v}"),
                        current: Some(current),
                    });
                }
                let now = Timestamp::now();
                let tombstone = RecordInfo {
                    version: current + 1,
                    updated_at: now,
                    deleted_at: Some(now),
                    ..previous
                };
                write_version(&mut records, &mut latest, &tombstone)?;
                tombstone
            };
            txn.commit().map_err(err)?;
            Ok(tombstone)
        })
        .await
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let ns = ns.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let latest = txn.open_table(LATEST).map_err(err)?;
            let records = txn.open_table(RECORDS).map_err(err)?;
            let prefix = options.prefix.clone().unwrap_or_default();
            options.apply(latest_infos(&latest, &records, &ns, &prefix)?)
        })
        .await
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let (ns, query) = (ns.clone(), query.clone());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let latest = txn.open_table(LATEST).map_err(err)?;
            let records = txn.open_table(RECORDS).map_err(err)?;
            let prefix = query.prefix.clone().unwrap_or_default();
            query.apply(latest_infos(&latest, &records, &ns, &prefix)?)
        })
        .await
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let all = all_versions(&txn.open_table(RECORDS).map_err(err)?, &ns, &key)?;
            if all.is_empty() {
                return Err(Error::not_found(&ns, &key, None));
            }
            Ok(all)
        })
        .await
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let sync = self.sync;
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |db| {
            let txn = begin_write(db, sync)?;
            let restored = {
                let mut records = txn.open_table(RECORDS).map_err(err)?;
                let mut latest = txn.open_table(LATEST).map_err(err)?;
                let all = all_versions(&records, &ns, &key)?;
                let Some(newest) = all.last() else {
                    return Err(Error::not_found(&ns, &key, version));
                };
                let source = match version {
                    Some(v) => all.iter().find(|i| i.version == v && !i.is_deleted()),
                    None => all.iter().rev().find(|i| !i.is_deleted()),
                }
                .ok_or_else(|| Error::not_found(&ns, &key, version))?;
                let now = Timestamp::now();
                let restored = RecordInfo {
                    version: newest.version + 1,
                    created_at: newest.created_at,
                    updated_at: now,
                    deleted_at: None,
                    ..source.clone()
                };
                write_version(&mut records, &mut latest, &restored)?;
                restored
            };
            txn.commit().map_err(err)?;
            Ok(restored)
        })
        .await
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let sync = self.sync;
        let (ns, key) = (ns.clone(), key.clone());
        self.blocking(move |db| {
            let txn = begin_write(db, sync)?;
            let removed = {
                let mut records = txn.open_table(RECORDS).map_err(err)?;
                let mut latest = txn.open_table(LATEST).map_err(err)?;
                let all = all_versions(&records, &ns, &key)?;
                if all.is_empty() {
                    return Err(Error::not_found(&ns, &key, None));
                }
                for info in &all {
                    records
                        .remove(record_key(&ns, &key, info.version).as_slice())
                        .map_err(err)?;
                }
                latest
                    .remove(latest_key(&ns, &key).as_slice())
                    .map_err(err)?;
                all.len() as u64
            };
            txn.commit().map_err(err)?;
            Ok(removed)
        })
        .await
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let sync = self.sync;
        let (report, total) = self
            .blocking(move |db| {
                let txn = begin_write(db, sync)?;
                let mut report = GcReport::default();
                let total;
                {
                    let records = txn.open_table(RECORDS).map_err(err)?;
                    let mut blobs = txn.open_table(BLOBS).map_err(err)?;
                    let mut chunks = txn.open_table(CHUNKS).map_err(err)?;
                    let mut referenced = HashSet::new();
                    for entry in records.iter().map_err(err)? {
                        let (_, v) = entry.map_err(err)?;
                        referenced.insert(decode_info(v.value())?.hash);
                    }
                    let mut unreferenced = Vec::new();
                    let mut count = 0u64;
                    for entry in blobs.iter().map_err(err)? {
                        let (k, v) = entry.map_err(err)?;
                        count += 1;
                        let hash =
                            ContentHash::from_bytes(k.value().try_into().map_err(|_| {
                                Error::corrupt(PROVIDER, "blob key is not 32 bytes")
                            })?);
                        if referenced.contains(&hash) {
                            report.blobs_kept += 1;
                        } else {
                            unreferenced.push((hash, v.value()));
                        }
                    }
                    total = count;
                    for (hash, (id, size)) in unreferenced {
                        blobs.remove(hash.as_bytes().as_slice()).map_err(err)?;
                        for index in 0..size.div_ceil(BLOB_CHUNK as u64) {
                            chunks.remove((id, index)).map_err(err)?;
                        }
                        report.blobs_removed += 1;
                        report.bytes_freed += size;
                    }
                }
                txn.commit().map_err(err)?;
                Ok((report, total))
            })
            .await?;
        progress.set_total(total);
        progress.inc(total);
        Ok(report)
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let (report, total) = self
            .blocking(move |db| {
                let txn = db.begin_read().map_err(err)?;
                let records = txn.open_table(RECORDS).map_err(err)?;
                let blobs = txn.open_table(BLOBS).map_err(err)?;
                let chunks = txn.open_table(CHUNKS).map_err(err)?;
                let mut report = VerifyReport::default();
                let mut stored = HashSet::new();
                for entry in blobs.iter().map_err(err)? {
                    let (k, v) = entry.map_err(err)?;
                    let hash = ContentHash::from_bytes(
                        k.value()
                            .try_into()
                            .map_err(|_| Error::corrupt(PROVIDER, "blob key is not 32 bytes"))?,
                    );
                    let (id, size) = v.value();
                    let mut hasher = ContentHasher::new();
                    let mut problem = None;
                    for index in 0..size.div_ceil(BLOB_CHUNK as u64) {
                        match chunks.get((id, index)).map_err(err)? {
                            Some(c) => hasher.update(c.value()),
                            None => {
                                problem = Some((
                                    "missing",
                                    format!("chunk {index} of blob {id} is missing"),
                                ));
                                break;
                            }
                        }
                    }
                    let (actual, actual_size) = hasher.finish();
                    if problem.is_none() && (actual != hash || actual_size != size) {
                        problem = Some((
                            "corrupt",
                            format!("payload hashes to {actual} ({actual_size} bytes)"),
                        ));
                    }
                    if let Some((what, detail)) = problem {
                        report.problems.push(VerifyProblem {
                            namespace: None,
                            key: None,
                            version: None,
                            hash: Some(hash),
                            problem: what.into(),
                            detail,
                        });
                    }
                    report.blobs_checked += 1;
                    report.bytes_checked += actual_size;
                    stored.insert(hash);
                }
                for entry in records.iter().map_err(err)? {
                    let (_, v) = entry.map_err(err)?;
                    let info = decode_info(v.value())?;
                    report.records_checked += 1;
                    if !stored.contains(&info.hash) {
                        report.problems.push(VerifyProblem {
                            namespace: Some(info.namespace.to_string()),
                            key: Some(info.key.to_string()),
                            version: Some(info.version),
                            hash: Some(info.hash),
                            problem: "missing".into(),
                            detail: "the payload this version references is not stored".into(),
                        });
                    }
                }
                let total = report.blobs_checked;
                Ok((report, total))
            })
            .await?;
        progress.set_total(total);
        progress.inc(total);
        Ok(report)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let latest = txn.open_table(LATEST).map_err(err)?;
            let mut names = BTreeSet::new();
            for entry in latest.iter().map_err(err)? {
                let (k, _) = entry.map_err(err)?;
                let k = k.value();
                let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
                names.insert(String::from_utf8_lossy(&k[..end]).into_owned());
            }
            names.into_iter().map(Namespace::new).collect()
        })
        .await
    }
}
