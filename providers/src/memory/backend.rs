//! [`MemoryBackend`]: records and content-addressed payloads in maps behind one lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use stowage_core::{
    async_trait, Body, Capabilities, ContentHash, ContentHasher, DeleteOptions, Error, GcReport,
    GetOptions, Key, ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query, RecordInfo,
    Result, StorageBackend, Timestamp, VerifyProblem, VerifyReport, Version,
};

use super::NAME;

/// Every version of one key, oldest first: version `n` sits at index `n - 1`.
type History = Vec<RecordInfo>;

#[derive(Default)]
struct State {
    records: HashMap<Namespace, BTreeMap<Key, History>>,
    /// Payloads by hash, stored once whatever number of versions, keys and namespaces use
    /// them; `gc` drops the ones no version references any more.
    blobs: HashMap<ContentHash, Bytes>,
}

impl State {
    fn history(&self, ns: &Namespace, key: &Key) -> Option<&History> {
        self.records.get(ns)?.get(key)
    }

    /// The live version asked for (or the newest one), as `get`/`head` see it.
    fn live(&self, ns: &Namespace, key: &Key, version: Option<Version>) -> Result<&RecordInfo> {
        let history = self
            .history(ns, key)
            .ok_or_else(|| Error::not_found(ns, key, version))?;
        let found = match version {
            Some(v) => v
                .checked_sub(1)
                .and_then(|i| history.get(i as usize))
                .filter(|info| !info.is_deleted()),
            None => history.last().filter(|info| !info.is_deleted()),
        };
        found.ok_or_else(|| Error::not_found(ns, key, version))
    }
}

/// An in-memory store: the reference implementation of the backend contract, for tests and
/// examples (not durable).
#[derive(Default)]
pub struct MemoryBackend {
    state: RwLock<State>,
}

impl MemoryBackend {
    /// What the memory provider supports: everything but merging and sync; not durable.
    pub const CAPABILITIES: Capabilities = Capabilities {
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
        durable: false,
    };

    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct payloads are stored (after dedup, before `gc`).
    pub fn blob_count(&self) -> usize {
        self.read().blobs.len()
    }

    /// Replaces the stored bytes of the payload `hash`, returning whether it was stored: lets
    /// tests check that `verify` notices a corrupted payload.
    pub fn tamper_blob(&self, hash: &ContentHash, bytes: impl Into<Bytes>) -> bool {
        match self.write().blobs.get_mut(hash) {
            Some(stored) => {
                *stored = bytes.into();
                true
            }
            None => false,
        }
    }

    // A panic while the lock is held cannot leave a half-applied change (every mutation is
    // computed first and applied in one step), so a poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("MemoryBackend")
            .field("namespaces", &state.records.len())
            .field("blobs", &state.blobs.len())
            .finish()
    }
}

/// The next version's time: never before the previous version's, so `updated_at` does not go
/// backwards for a key when the wall clock does.
fn next_time(history: Option<&History>) -> Timestamp {
    let now = Timestamp::now();
    match history.and_then(|h| h.last()) {
        Some(last) if last.updated_at > now => last.updated_at,
        _ => now,
    }
}

fn conflict(ns: &Namespace, key: &Key, expected: String, history: Option<&History>) -> Error {
    Error::Conflict {
        namespace: ns.to_string(),
        key: key.to_string(),
        expected,
        current: history.and_then(|h| h.last()).map(|i| i.version),
    }
}

#[async_trait]
impl StorageBackend for MemoryBackend {
    fn provider(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        mut body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        // The payload is read before the lock is taken (reading awaits); the precondition is
        // checked and the version appended under one write lock, so racing writers serialise.
        let (payload, hash, size) = match body.as_bytes() {
            // An in-memory body is kept as it is: `Bytes` clones share, nothing is copied.
            Some(bytes) => {
                let bytes = bytes.clone();
                let hash = ContentHash::of(&bytes);
                let size = bytes.len() as u64;
                (bytes, hash, size)
            }
            None => {
                let mut hasher = ContentHasher::new();
                let mut buf =
                    BytesMut::with_capacity(body.size_hint().unwrap_or(0).min(64 << 20) as usize);
                while let Some(chunk) = body.next_chunk().await {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    buf.extend_from_slice(&chunk);
                }
                let (hash, size) = hasher.finish();
                (buf.freeze(), hash, size)
            }
        };

        let mut state = self.write();
        let history = state.history(ns, key);
        let latest = history.and_then(|h| h.last());
        mode.check_latest(ns, key, latest)?;
        let updated_at = next_time(history);
        let info = RecordInfo {
            namespace: ns.clone(),
            key: key.clone(),
            version: latest.map_or(1, |l| l.version + 1),
            hash,
            size,
            created_at: history
                .and_then(|h| h.first())
                .map_or(updated_at, |first| first.created_at),
            updated_at,
            deleted_at: None,
            metadata,
            conflicts: Vec::new(),
        };
        state.blobs.entry(hash).or_insert(payload);
        state
            .records
            .entry(ns.clone())
            .or_default()
            .entry(key.clone())
            .or_default()
            .push(info.clone());
        Ok(info)
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        let state = self.read();
        let info = state.live(ns, key, options.version)?;
        let blob = state.blobs.get(&info.hash).ok_or_else(|| {
            Error::corrupt(
                NAME,
                format!(
                    "payload {} of {ns}/{key} version {} is missing",
                    info.hash, info.version
                ),
            )
        })?;
        let bytes = match options.range {
            None => blob.clone(),
            Some(range) => {
                let (offset, len) = range.resolve(blob.len() as u64)?;
                blob.slice(offset as usize..(offset + len) as usize)
            }
        };
        Ok((info.clone(), Body::from_bytes(bytes)))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        self.read().live(ns, key, version).cloned()
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        let mut state = self.write();
        let history = state.history(ns, key);
        let latest = state.live(ns, key, None)?;
        if let Some(v) = options.if_version {
            if latest.version != v {
                return Err(conflict(ns, key, format!("version {v}"), history));
            }
        }
        let now = next_time(history);
        let tombstone = RecordInfo {
            version: latest.version + 1,
            updated_at: now,
            deleted_at: Some(now),
            ..latest.clone()
        };
        if let Some(h) = state.records.get_mut(ns).and_then(|keys| keys.get_mut(key)) {
            h.push(tombstone.clone());
        }
        Ok(tombstone)
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let bound = options.lower_bound()?;
        let state = self.read();
        let latest = state
            .records
            .get(ns)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter(|(key, _)| options.accepts_key(key.as_str(), bound.as_deref()))
            .filter_map(|(_, history)| history.last())
            .filter(|info| options.include_deleted || !info.is_deleted())
            .cloned();
        options.apply(latest)
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let state = self.read();
        let latest = state
            .records
            .get(ns)
            .into_iter()
            .flat_map(|keys| keys.values())
            .filter_map(|history| history.last())
            .filter(|info| query.matches(info))
            .cloned();
        query.apply(latest)
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        self.read()
            .history(ns, key)
            .cloned()
            .ok_or_else(|| Error::not_found(ns, key, None))
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let mut state = self.write();
        let history = state
            .history(ns, key)
            .ok_or_else(|| Error::not_found(ns, key, version))?;
        let source = match version {
            Some(_) => state.live(ns, key, version)?,
            None => history
                .iter()
                .rev()
                .find(|info| !info.is_deleted())
                .ok_or_else(|| Error::not_found(ns, key, None))?,
        };
        let latest_version = history.last().map_or(0, |l| l.version);
        let now = next_time(Some(history));
        let restored = RecordInfo {
            version: latest_version + 1,
            updated_at: now,
            deleted_at: None,
            ..source.clone()
        };
        if let Some(h) = state.records.get_mut(ns).and_then(|keys| keys.get_mut(key)) {
            h.push(restored.clone());
        }
        Ok(restored)
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let mut state = self.write();
        let keys = state
            .records
            .get_mut(ns)
            .ok_or_else(|| Error::not_found(ns, key, None))?;
        let removed = keys
            .remove(key)
            .ok_or_else(|| Error::not_found(ns, key, None))?;
        if keys.is_empty() {
            state.records.remove(ns);
        }
        Ok(removed.len() as u64)
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let mut state = self.write();
        let referenced: HashSet<ContentHash> = state
            .records
            .values()
            .flat_map(|keys| keys.values())
            .flatten()
            .map(|info| info.hash)
            .collect();
        progress.set_total(state.blobs.len() as u64);
        let mut report = GcReport::default();
        state.blobs.retain(|hash, bytes| {
            progress.inc(1);
            if referenced.contains(hash) {
                report.blobs_kept += 1;
                true
            } else {
                report.blobs_removed += 1;
                report.bytes_freed += bytes.len() as u64;
                false
            }
        });
        Ok(report)
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let state = self.read();
        let mut report = VerifyReport::default();
        let versions = state
            .records
            .values()
            .flat_map(|keys| keys.values())
            .map(|history| history.len() as u64)
            .sum::<u64>();
        progress.set_total(state.blobs.len() as u64 + versions);
        for (hash, bytes) in &state.blobs {
            let actual = ContentHash::of(bytes);
            if actual != *hash {
                report.problems.push(VerifyProblem {
                    namespace: None,
                    key: None,
                    version: None,
                    hash: Some(*hash),
                    problem: "corrupt".into(),
                    detail: format!("stored payload {hash} hashes to {actual}"),
                });
            }
            report.blobs_checked += 1;
            report.bytes_checked += bytes.len() as u64;
            progress.inc(1);
        }
        for history in state.records.values().flat_map(|keys| keys.values()) {
            for info in history {
                let problem = match state.blobs.get(&info.hash) {
                    None => Some(("missing", format!("payload {} is not stored", info.hash))),
                    Some(b) if b.len() as u64 != info.size => Some((
                        "size",
                        format!(
                            "payload {} has {} bytes, the record says {}",
                            info.hash,
                            b.len(),
                            info.size
                        ),
                    )),
                    Some(_) => None,
                };
                if let Some((problem, detail)) = problem {
                    report.problems.push(VerifyProblem {
                        namespace: Some(info.namespace.to_string()),
                        key: Some(info.key.to_string()),
                        version: Some(info.version),
                        hash: Some(info.hash),
                        problem: problem.into(),
                        detail,
                    });
                }
                report.records_checked += 1;
                progress.inc(1);
            }
        }
        Ok(report)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        let mut all: Vec<Namespace> = self.read().records.keys().cloned().collect();
        all.sort();
        Ok(all)
    }
}
