//! [`S3Backend`]: the `StorageBackend` over an OpenDAL S3 operator.
//!
//! Concurrency control is the version claim: a write reads the key's latest version `v` (a
//! listing of the key's metadata prefix), checks the write's precondition against it, and
//! creates `meta/.../<v+1>.json` with `If-None-Match: *`. Of writers racing for `v+1` the
//! server lets exactly one create it; a loser re-reads and retries (`Overwrite`, and `Create`
//! while the key stays absent) or reports `Conflict` (`IfVersion`, `Base`). The metadata object
//! is written only after its payload blob is complete, so a version never points at a missing
//! or partial payload.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use opendal::Operator;
use stowage_core::{
    Body, Capabilities, ContentHash, DeleteOptions, Error, ErrorKind, GcReport, GetOptions, Key,
    ListOptions, Metadata, Namespace, Page, Progress, PutMode, Query, RecordInfo, Result,
    StorageBackend, Timestamp, VerifyProblem, VerifyReport, Version,
};

use super::blob::BlobStore;
use super::config::S3Config;
use super::error::{is_not_found, is_precondition_failed, Target};
use super::layout::{
    after_key, claim_token, encode_meta, hash_of_blob_path, key_prefix_prefix, namespace_prefix,
    parse_meta_path, staging_path, Layout, MetaName, BLOBS, HASHED_MARK, META, STAGING,
};
use super::PROVIDER;
use crate::REPAIR_BY_REPUT;

/// Metadata objects fetched at once by list, search, gc and verify.
const FETCH_CONCURRENCY: usize = 16;
/// Cached metadata objects before the cache starts over (each is a few hundred bytes).
const CACHE_LIMIT: usize = 100_000;
/// Slack for LastModified, which S3 gives to the second (truncated): gc wants a blob older
/// than the grace period by this much more, so truncation can never make it look older.
const LAST_MODIFIED_SLACK: Duration = Duration::from_secs(1);
/// Claims a writer may lose in a row before giving up (each loss means another writer won).
const MAX_CLAIM_ATTEMPTS: usize = 10_000;

/// What the `s3` provider supports.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities {
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
    }
}

/// A metadata object seen in a listing.
#[derive(Clone, Debug)]
struct Listed {
    name: MetaName,
    etag: Option<String>,
}

/// A metadata object that could not be read as the version its name says.
struct BrokenMeta {
    namespace: Namespace,
    name: MetaName,
    error: Error,
}

/// Immutable metadata objects by path and ETag (a purged-and-rewritten version has the same
/// path but another ETag), and the latest version last seen per key (a listing hint).
#[derive(Default)]
struct MetaCache {
    records: Mutex<HashMap<String, (String, RecordInfo)>>,
    latest: Mutex<HashMap<String, Version>>,
}

impl MetaCache {
    fn get(&self, path: &str, etag: &str) -> Option<RecordInfo> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(path)
            .filter(|(e, _)| e == etag)
            .map(|(_, r)| r.clone())
    }

    fn put(&self, path: String, etag: String, record: RecordInfo) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= CACHE_LIMIT {
            records.clear();
        }
        records.insert(path, (etag, record));
    }

    fn entry(&self, path: &str) -> Option<(String, RecordInfo)> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.get(path).cloned()
    }

    fn latest_hint(&self, dir: &str) -> Option<Version> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .copied()
    }

    fn set_latest_hint(&self, dir: &str, version: Option<Version>) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match version {
            Some(v) => {
                if latest.len() >= CACHE_LIMIT {
                    latest.clear();
                }
                latest.insert(dir.to_string(), v);
            }
            None => {
                latest.remove(dir);
            }
        }
    }
}

/// One configured `s3` store.
pub struct S3Backend {
    op: Operator,
    target: Target,
    blobs: BlobStore,
    cache: MetaCache,
    /// How keys become object names under the root.
    layout: Layout,
    /// How old an unreferenced blob (or a staging object) must be before gc deletes it.
    gc_grace: Duration,
    /// With no grace period, what keeps this process's own puts and gc apart instead: a put
    /// holds it shared from storing its payload to claiming its version, gc exclusive. (Other
    /// processes' puts have no such protection: the grace period is off.)
    gc_gate: tokio::sync::RwLock<()>,
}

/// What gc does with one blob.
enum Verdict {
    /// Unreferenced and older than the cutoff.
    Delete,
    /// Referenced, or written (or refreshed by a put that found it stored) since the cutoff.
    Keep,
    /// Gone already (another gc).
    Gone,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A backend over an operator built from `cfg` (no I/O).
    pub(crate) fn new(op: Operator, cfg: &S3Config) -> Arc<Self> {
        let target = Target::of(cfg);
        Arc::new(S3Backend {
            blobs: BlobStore::new(op.clone(), target.clone(), cfg.part_size(), cfg.gc_grace()),
            op,
            target,
            cache: MetaCache::default(),
            layout: Layout::new(cfg.normalized_root().trim_start_matches('/').to_string()),
            gc_grace: cfg.gc_grace(),
            gc_gate: tokio::sync::RwLock::new(()),
        })
    }

    /// The server's clock now (microseconds since the epoch): the LastModified of an empty
    /// staging object written for the purpose and removed. gc compares blob ages with this,
    /// so both times come from the server and this host's clock plays no part.
    async fn server_now(&self) -> Result<i64> {
        let path = staging_path();
        self.op.write(&path, Vec::<u8>::new()).await.map_err(|e| {
            self.target
                .error(format_args!("writing clock probe {path}"), e)
        })?;
        let stat = self.op.stat(&path).await;
        if let Err(e) = self.op.delete(&path).await {
            tracing::warn!(target: "stowage_providers::s3", %path, error = %e, "removing gc's clock probe failed; a later gc removes it");
        }
        let meta = stat.map_err(|e| {
            self.target
                .error(format_args!("checking clock probe {path}"), e)
        })?;
        meta.last_modified()
            .map(|t| t.timestamp_micros())
            .ok_or_else(|| Error::Backend {
                provider: PROVIDER.to_string(),
                message: format!(
                    "gc removed nothing: {} (bucket `{}`) gave no LastModified for {path}, so payload ages cannot be told",
                    self.target.endpoint(),
                    self.target.bucket()
                ),
                source: None,
            })
    }

    /// Looks at a candidate blob again (HEAD) right before gc deletes it: a put that found
    /// the payload stored refreshes an old one before claiming its version, and this check
    /// sees that refresh.
    async fn recheck(&self, path: &str, cutoff: i64) -> Result<Verdict> {
        match self.op.stat(path).await {
            Ok(meta) => Ok(match meta.last_modified() {
                Some(t) if t.timestamp_micros() <= cutoff => Verdict::Delete,
                _ => Verdict::Keep,
            }),
            Err(e) if is_not_found(&e) => Ok(Verdict::Gone),
            Err(e) => Err(self
                .target
                .error(format_args!("checking payload {path}"), e)),
        }
    }

    /// Lists metadata objects under `prefix` (recursively), after `start_after` if given.
    async fn list_meta(
        &self,
        ns: &Namespace,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<Listed>> {
        let ns_prefix = namespace_prefix(ns);
        let mut lister = self.op.lister_with(prefix).recursive(true);
        if let Some(after) = start_after {
            lister = lister.start_after(after);
        }
        let lister = lister
            .await
            .map_err(|e| self.target.error(format_args!("listing {prefix}"), e))?;
        lister
            .try_filter_map(|entry| {
                let listed = parse_meta_path(&ns_prefix, entry.path()).map(|name| Listed {
                    name,
                    etag: entry.metadata().etag().map(str::to_string),
                });
                async move { Ok(listed) }
            })
            .try_collect()
            .await
            .map_err(|e| self.target.error(format_args!("listing {prefix}"), e))
    }

    /// The key's latest metadata object, if it has any version.
    async fn latest_name(&self, ns: &Namespace, key: &Key) -> Result<Option<Listed>> {
        let dir = self.layout.key_dir(ns, key.as_str());
        // A hint `v` lets the listing start at `v`: whatever is there (v and newer, however the
        // key changed meanwhile) its maximum is the latest. Nothing there means fewer versions
        // than the hint (a purge): fall back to the whole listing.
        if let Some(v) = self.cache.latest_hint(&dir).filter(|v| *v >= 2) {
            let after = self.layout.meta_path(ns, key.as_str(), v - 1);
            let found = self.list_meta(ns, &dir, Some(&after)).await?;
            if let Some(last) = found.into_iter().max_by_key(|l| l.name.version) {
                self.cache.set_latest_hint(&dir, Some(last.name.version));
                return Ok(Some(last));
            }
        }
        let all = self.list_meta(ns, &dir, None).await?;
        let last = all.into_iter().max_by_key(|l| l.name.version);
        self.cache
            .set_latest_hint(&dir, last.as_ref().map(|l| l.name.version));
        Ok(last)
    }

    /// Every metadata object of the key, oldest first.
    async fn all_names(&self, ns: &Namespace, key: &Key) -> Result<Vec<Listed>> {
        let dir = self.layout.key_dir(ns, key.as_str());
        let mut all = self.list_meta(ns, &dir, None).await?;
        all.sort_by_key(|l| l.name.version);
        self.cache
            .set_latest_hint(&dir, all.last().map(|l| l.name.version));
        Ok(all)
    }

    /// Reads a listed metadata object (from the cache when its ETag is known and matches);
    /// `None` if it was purged or replaced since the listing.
    async fn fetch(&self, ns: &Namespace, listed: &Listed) -> Result<Option<RecordInfo>> {
        if let Some(etag) = &listed.etag {
            if let Some(hit) = self.cache.get(&listed.name.path, etag) {
                return Ok(Some(hit));
            }
        }
        let name = &listed.name;
        self.read_meta(
            ns,
            &name.path,
            &name.segment,
            name.version,
            listed.etag.as_deref(),
        )
        .await
    }

    /// Reads and decodes a metadata object; `None` if it does not exist (or, with `etag`, no
    /// longer has that ETag). Reading with `If-Match` is what makes caching by ETag sound.
    async fn read_meta(
        &self,
        ns: &Namespace,
        path: &str,
        segment: &str,
        version: Version,
        etag: Option<&str>,
    ) -> Result<Option<RecordInfo>> {
        let mut read = self.op.read_with(path);
        if let Some(etag) = etag {
            read = read.if_match(etag);
        }
        let bytes = match read.await {
            Ok(bytes) => bytes,
            Err(e) if is_not_found(&e) || is_precondition_failed(&e) => return Ok(None),
            Err(e) => {
                return Err(self
                    .target
                    .error(format_args!("reading metadata {path}"), e))
            }
        };
        let record = self
            .layout
            .decode_meta(path, &bytes.to_bytes(), ns, segment, version)?;
        if let Some(etag) = etag {
            self.cache
                .put(path.to_string(), etag.to_string(), record.clone());
        }
        Ok(Some(record))
    }

    /// The latest version of the key (tombstone or not), if any.
    async fn latest(&self, ns: &Namespace, key: &Key) -> Result<Option<RecordInfo>> {
        if let Some(record) = self.latest_by_probe(ns, key).await? {
            return Ok(Some(record));
        }
        self.latest_listed(ns, key).await
    }

    /// The latest version as a listing of the key's prefix says.
    async fn latest_listed(&self, ns: &Namespace, key: &Key) -> Result<Option<RecordInfo>> {
        for _ in 0..3 {
            let Some(listed) = self.latest_name(ns, key).await? else {
                return Ok(None);
            };
            if let Some(record) = self.fetch(ns, &listed).await? {
                return Ok(Some(record));
            }
            // Purged between the listing and the read: look again.
        }
        Ok(None)
    }

    /// The version a write should build on. A write needs less proof than a read: the claim
    /// of `v + 1` fails by itself if `v + 1` exists, so only "`v` is still the object we
    /// know" (not purged and rewritten) is checked, with one HEAD; a stale answer costs a lost
    /// claim and a listing, never a wrong write. But it may be older than the latest, so a
    /// write must not be *refused* on it ([`Latest::listed`] says whether it can be).
    async fn latest_for_write(&self, ns: &Namespace, key: &Key) -> Result<Latest> {
        if let Some(cached) = self.cached_latest(ns, key) {
            let path = self.layout.meta_path(ns, key.as_str(), cached.version);
            if let Some((etag, _)) = self.cache.entry(&path) {
                match self.op.stat_with(&path).if_match(&etag).await {
                    Ok(_) => {
                        return Ok(Latest {
                            record: Some(cached),
                            listed: false,
                        })
                    }
                    Err(e) if is_not_found(&e) || is_precondition_failed(&e) => {}
                    Err(e) => {
                        return Err(self
                            .target
                            .error(format_args!("checking metadata {path}"), e))
                    }
                }
            }
        }
        Ok(Latest {
            record: self.latest_listed(ns, key).await?,
            listed: true,
        })
    }

    /// Whether the key has no version 1 and was never purged, so has no version at all (see
    /// [`Layout::purged_path`]): two HEADs, sent together.
    async fn never_written(&self, ns: &Namespace, key: &Key) -> Result<bool> {
        let first = self.layout.meta_path(ns, key.as_str(), 1);
        let mark = self.layout.purged_path(ns, key.as_str());
        let (first_found, mark_found) = futures::join!(
            self.exists(&first, "metadata"),
            self.exists(&mark, "purge mark")
        );
        Ok(!first_found? && !mark_found?)
    }

    /// Whether an object exists (one HEAD); `what` names it in errors.
    async fn exists(&self, path: &str, what: &str) -> Result<bool> {
        match self.op.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.target.error(format_args!("checking {what} {path}"), e)),
        }
    }

    /// The latest version this process last saw of the key (unchecked).
    fn cached_latest(&self, ns: &Namespace, key: &Key) -> Option<RecordInfo> {
        let v = self
            .cache
            .latest_hint(&self.layout.key_dir(ns, key.as_str()))?;
        self.cache
            .entry(&self.layout.meta_path(ns, key.as_str(), v))
            .map(|(_, r)| r)
    }

    /// The latest version without a listing, when this process saw the key before: version
    /// `v` (the hint) is still the latest if its metadata object still has the ETag we know
    /// and `v + 1` does not exist. Versions always form a contiguous range (claims go to
    /// `latest + 1`, purge deletes oldest first), so at the moment `v + 1` was found absent,
    /// `v` was the latest. Two HEADs cost less than a LIST on every S3 we know; `None` means
    /// "ask the listing".
    async fn latest_by_probe(&self, ns: &Namespace, key: &Key) -> Result<Option<RecordInfo>> {
        let Some(v) = self
            .cache
            .latest_hint(&self.layout.key_dir(ns, key.as_str()))
        else {
            return Ok(None);
        };
        let path = self.layout.meta_path(ns, key.as_str(), v);
        let Some((etag, record)) = self.cache.entry(&path) else {
            return Ok(None);
        };
        let next = self.layout.meta_path(ns, key.as_str(), v + 1);
        let (current, newer) = futures::join!(
            async { self.op.stat_with(&path).if_match(&etag).await },
            async { self.op.stat(&next).await }
        );
        let unchanged = match current {
            Ok(_) => true,
            Err(e) if is_not_found(&e) || is_precondition_failed(&e) => false,
            Err(e) => {
                return Err(self
                    .target
                    .error(format_args!("checking metadata {path}"), e))
            }
        };
        let superseded = match newer {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                return Err(self
                    .target
                    .error(format_args!("checking metadata {next}"), e))
            }
        };
        Ok((unchanged && !superseded).then_some(record))
    }

    /// One version of the key.
    async fn version(&self, ns: &Namespace, key: &Key, version: Version) -> Result<RecordInfo> {
        let path = self.layout.meta_path(ns, key.as_str(), version);
        let segment = self.layout.key_segment(ns, key.as_str());
        self.read_meta(ns, &path, &segment, version, None)
            .await?
            .ok_or_else(|| Error::not_found(ns, key, Some(version)))
    }

    /// Creates metadata object `record.version` unless it exists; `false` if another writer
    /// claimed that version first.
    async fn claim(&self, record: &RecordInfo) -> Result<bool> {
        let path = self
            .layout
            .meta_path(&record.namespace, record.key.as_str(), record.version);
        let bytes = encode_meta(record, &claim_token())?;
        let etag = match self
            .op
            .write_with(&path, bytes.clone())
            .if_not_exists(true)
            .await
        {
            Ok(meta) => meta.etag().map(str::to_string),
            // Another writer's claim, or this one's: a request whose answer was lost (a
            // timeout) and that the retry layer sent again finds the object it created. Only
            // the bytes tell, and the claim token makes them this claim's alone.
            // (Its ETag is not learnt here: the next read of the key lists it.)
            Err(e) if is_precondition_failed(&e) => {
                if !self.claimed_by(&path, &bytes).await? {
                    return Ok(false);
                }
                None
            }
            // No answer at all (every retry's lost): the claim may have landed all the same.
            Err(e) => {
                return Err(self.target.error(
                    format_args!(
                        "writing metadata {path} (the write may have landed even so: check with `stowage versions` before writing again)"
                    ),
                    e,
                ))
            }
        };
        if let Some(etag) = etag {
            self.cache.put(path, etag, record.clone());
        }
        let dir = self.layout.key_dir(&record.namespace, record.key.as_str());
        self.cache.set_latest_hint(&dir, Some(record.version));
        Ok(true)
    }

    /// After a claim was refused: whether the object at `path` holds exactly `bytes`, so the
    /// claim itself created it (not another writer, and not since replaced).
    async fn claimed_by(&self, path: &str, bytes: &[u8]) -> Result<bool> {
        match self.op.read(path).await {
            Ok(found) => Ok(found.to_bytes() == bytes),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self
                .target
                .error(format_args!("checking who claimed {path}"), e)),
        }
    }

    /// Writes the next version of `key`: reads the latest (or takes `known`, just read), lets `build` check the precondition
    /// and make the new record from it, and claims `latest + 1`; repeats while other writers
    /// win the claim and `build` still accepts.
    async fn write_next(
        &self,
        ns: &Namespace,
        key: &Key,
        mut known: Option<Latest>,
        mut build: impl FnMut(Option<&RecordInfo>, Version, Timestamp) -> Result<RecordInfo>,
    ) -> Result<RecordInfo> {
        for attempt in 0..MAX_CLAIM_ATTEMPTS {
            let Latest {
                record: latest,
                listed,
            } = match known.take() {
                Some(latest) => latest,
                // After a lost claim or a refusal on what this process had cached, the cached
                // version is stale: go straight to the listing.
                None if attempt > 0 => Latest {
                    record: self.latest_listed(ns, key).await?,
                    listed: true,
                },
                None => self.latest_for_write(ns, key).await?,
            };
            let next = latest.as_ref().map_or(1, |r| r.version + 1);
            let record = match build(latest.as_ref(), next, Timestamp::now()) {
                Ok(record) => record,
                Err(e) if listed => return Err(e),
                // Another process may have written since: refuse only on the listing.
                Err(_) => continue,
            };
            if self.claim(&record).await? {
                return Ok(record);
            }
        }
        Err(Error::Backend {
            provider: PROVIDER.to_string(),
            message: format!(
                "writing {ns}/{key}: lost the version claim {MAX_CLAIM_ATTEMPTS} times in a row to other writers at {} (bucket `{}`)",
                self.target.endpoint(),
                self.target.bucket()
            ),
            source: None,
        })
    }

    /// Every latest record of the namespace whose key starts with `prefix` and is after
    /// `lower`, in key order, until `want` pass `keep` (all when `None`).
    ///
    /// Keys named by their hex are walked in order by one listing. Keys too long for that are
    /// named by hash ([`Layout`]), after every hex name and in no useful order: they are read
    /// first, by a listing of their own, and merged in.
    async fn scan_latest(
        &self,
        ns: &Namespace,
        prefix: Option<&str>,
        lower: Option<&str>,
        want: Option<usize>,
        keep: impl Fn(&RecordInfo) -> bool,
    ) -> Result<Vec<RecordInfo>> {
        let prefix = prefix.unwrap_or("");
        let max_hex = self.layout.max_hex_key_len(ns);
        let mut hashed = self
            .hashed_latest(ns, prefix, lower)
            .await?
            .into_iter()
            .peekable();
        let mut out = Vec::new();
        // A prefix longer than any hex-named key leaves only hashed ones.
        if prefix.len() <= max_hex {
            let mut hex_keys = self.hex_latest(ns, prefix, lower, max_hex).await?;
            while want.is_none_or(|w| out.len() < w) {
                let Some(batch) = hex_keys.next_batch(self).await? else {
                    break;
                };
                for record in batch {
                    while let Some(long) = hashed.next_if(|h| h.key.as_str() < record.key.as_str())
                    {
                        if keep(&long) {
                            out.push(long);
                        }
                    }
                    if keep(&record) {
                        out.push(record);
                    }
                }
            }
            if !hex_keys.exhausted {
                // Stopped at `want`: every hashed key left sorts after what was found.
                return Ok(out);
            }
        }
        out.extend(hashed.filter(|r| keep(r)));
        Ok(out)
    }

    /// The start of a walk over the hex-named keys of `ns` starting with `prefix` (at most
    /// `max_hex` bytes) and after `lower`.
    async fn hex_latest(
        &self,
        ns: &Namespace,
        prefix: &str,
        lower: Option<&str>,
        max_hex: usize,
    ) -> Result<HexWalk> {
        let ns_prefix = namespace_prefix(ns);
        // Every object of a key with this prefix sorts after the bare hex prefix.
        let mut start_after = (!prefix.is_empty()).then(|| key_prefix_prefix(ns, prefix));
        if let Some(lower) = lower {
            // A hex-named key is after a longer `lower` exactly when it is after `lower`'s
            // first `max_hex` bytes (it cannot extend them).
            let lower = lower.as_bytes();
            let bound = after_key(ns, &lower[..lower.len().min(max_hex)]);
            if start_after.as_ref().is_none_or(|s| bound > *s) {
                start_after = Some(bound);
            }
        }
        let mut lister = self.op.lister_with(&ns_prefix).recursive(true);
        if let Some(after) = &start_after {
            lister = lister.start_after(after);
        }
        let lister = lister
            .await
            .map_err(|e| self.target.error(format_args!("listing {ns_prefix}"), e))?;
        Ok(HexWalk {
            ns: ns.clone(),
            hex_prefix: hex::encode(prefix),
            ns_prefix,
            lister,
            current: None,
            exhausted: false,
        })
    }

    /// The latest records of the keys of `ns` named by hash that start with `prefix` and are
    /// after `lower`, in key order.
    async fn hashed_latest(
        &self,
        ns: &Namespace,
        prefix: &str,
        lower: Option<&str>,
    ) -> Result<Vec<RecordInfo>> {
        let dir = format!("{}{HASHED_MARK}", namespace_prefix(ns));
        let mut latest: std::collections::BTreeMap<String, Listed> = Default::default();
        for listed in self.list_meta(ns, &dir, None).await? {
            match latest.get(&listed.name.segment) {
                Some(known) if known.name.version >= listed.name.version => {}
                _ => {
                    latest.insert(listed.name.segment.clone(), listed);
                }
            }
        }
        let fetched: Vec<Option<RecordInfo>> = futures::stream::iter(latest.into_values())
            .map(|listed| self.fetch_or_skip(ns, listed))
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let mut records: Vec<RecordInfo> = fetched
            .into_iter()
            .flatten()
            .filter(|r| {
                r.key.as_str().starts_with(prefix) && lower.is_none_or(|l| r.key.as_str() > l)
            })
            .collect();
        // `str` order is byte order.
        records.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        Ok(records)
    }

    /// Reads a listed key's latest metadata object for a listing. One key's unreadable
    /// metadata object must not hide every other key: it is skipped with a warning (verify
    /// reports it, and get/head of that key fail).
    async fn fetch_or_skip(&self, ns: &Namespace, listed: Listed) -> Result<Option<RecordInfo>> {
        match self.fetch(ns, &listed).await {
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!(target: "stowage_providers::s3", path = %listed.name.path, error = %e, "skipping a key whose latest metadata object is unreadable; run verify");
                Ok(None)
            }
            other => other,
        }
    }

    /// Every metadata object of the store (all namespaces), for gc and verify: the records,
    /// and the objects that could not be read as one (with why).
    async fn all_meta(&self) -> Result<(Vec<RecordInfo>, Vec<BrokenMeta>)> {
        let names: Vec<(Namespace, Listed)> = self
            .op
            .lister_with(META)
            .recursive(true)
            .await
            .map_err(|e| self.target.error(format_args!("listing {META}"), e))?
            .map_err(|e| self.target.error(format_args!("listing {META}"), e))
            .try_filter_map(|entry| async move {
                let path = entry.path();
                let parsed = path
                    .strip_prefix(META)
                    .and_then(|rest| rest.split_once('/'))
                    .and_then(|(ns, _)| Namespace::new(ns).ok())
                    .and_then(|ns| {
                        let name = parse_meta_path(&namespace_prefix(&ns), path)?;
                        Some((
                            ns,
                            Listed {
                                name,
                                etag: entry.metadata().etag().map(str::to_string),
                            },
                        ))
                    });
                Ok(parsed)
            })
            .try_collect()
            .await?;
        let fetched: Vec<std::result::Result<Option<RecordInfo>, BrokenMeta>> =
            futures::stream::iter(names)
                .map(|(ns, listed)| async move {
                    match self.fetch(&ns, &listed).await {
                        Ok(found) => Ok(Ok(found)),
                        Err(error) if error.kind() == ErrorKind::Corrupt => Ok(Err(BrokenMeta {
                            namespace: ns,
                            name: listed.name,
                            error,
                        })),
                        Err(e) => Err(e),
                    }
                })
                .buffered(FETCH_CONCURRENCY)
                .try_collect()
                .await?;
        let mut records = Vec::new();
        let mut broken = Vec::new();
        for item in fetched {
            match item {
                Ok(found) => records.extend(found),
                Err(b) => broken.push(b),
            }
        }
        Ok((records, broken))
    }

    /// Every object under `prefix` with its size and age, for gc and verify.
    async fn all_objects(&self, prefix: &str) -> Result<Vec<(String, u64, Option<i64>)>> {
        self.op
            .lister_with(prefix)
            .recursive(true)
            .await
            .map_err(|e| self.target.error(format_args!("listing {prefix}"), e))?
            .map_err(|e| self.target.error(format_args!("listing {prefix}"), e))
            .try_filter_map(|entry| async move {
                let meta = entry.metadata();
                let keep = !entry.path().ends_with('/');
                Ok(keep.then(|| {
                    (
                        entry.path().to_string(),
                        meta.content_length(),
                        meta.last_modified().map(|t| t.timestamp_micros()),
                    )
                }))
            })
            .try_collect()
            .await
    }

    fn live_or_not_found(
        ns: &Namespace,
        key: &Key,
        record: Option<RecordInfo>,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        match record {
            Some(r) if !r.is_deleted() => Ok(r),
            _ => Err(Error::not_found(ns, key, version)),
        }
    }
}

/// A walk in key order over the hex-named keys of a namespace: each batch is the latest
/// records of the next keys of one listing, fetched concurrently.
struct HexWalk {
    ns: Namespace,
    ns_prefix: String,
    /// Only keys whose segment starts with this.
    hex_prefix: String,
    lister: opendal::Lister,
    /// The latest name seen of the key being listed.
    current: Option<Listed>,
    /// No hex-named key is left.
    exhausted: bool,
}

impl HexWalk {
    /// The latest records of the next keys (fewer when some are unreadable or purged
    /// meanwhile); `None` once every key was returned.
    async fn next_batch(&mut self, backend: &S3Backend) -> Result<Option<Vec<RecordInfo>>> {
        if self.exhausted {
            return Ok(None);
        }
        let mut batch: Vec<Listed> = Vec::new();
        while batch.len() < FETCH_CONCURRENCY * 2 {
            let Some(entry) = self.lister.next().await else {
                self.exhausted = true;
                break;
            };
            let entry = entry.map_err(|e| {
                backend
                    .target
                    .error(format_args!("listing {}", self.ns_prefix), e)
            })?;
            let Some(name) = parse_meta_path(&self.ns_prefix, entry.path()) else {
                continue;
            };
            // Hashed names sort after every hex name: the hex-named keys are done.
            if name.segment.starts_with(HASHED_MARK) {
                self.exhausted = true;
                break;
            }
            if !name.segment.starts_with(&self.hex_prefix) {
                if name.segment.as_str() > self.hex_prefix.as_str() {
                    self.exhausted = true;
                    break;
                }
                continue;
            }
            let listed = Listed {
                name,
                etag: entry.metadata().etag().map(str::to_string),
            };
            match &self.current {
                Some(c) if c.name.segment == listed.name.segment => {
                    if listed.name.version > c.name.version {
                        self.current = Some(listed);
                    }
                }
                _ => {
                    if let Some(done) = self.current.replace(listed) {
                        batch.push(done);
                    }
                }
            }
        }
        if self.exhausted {
            batch.extend(self.current.take());
        }
        let ns = &self.ns;
        let fetched: Vec<Option<RecordInfo>> = futures::stream::iter(batch)
            .map(|listed| backend.fetch_or_skip(ns, listed))
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Some(fetched.into_iter().flatten().collect()))
    }
}

/// The latest version of a key as a write found it.
struct Latest {
    /// The record (`None`: the key has no version).
    record: Option<RecordInfo>,
    /// Whether a listing (or a HEAD of version 1) said so just now, rather than this process's
    /// cache: only then may a precondition be refused on it.
    listed: bool,
}

fn conflict(ns: &Namespace, key: &Key, expected: String, current: Option<&RecordInfo>) -> Error {
    Error::Conflict {
        namespace: ns.to_string(),
        key: key.to_string(),
        expected,
        current: current.map(|r| r.version),
    }
}

fn new_record(
    ns: &Namespace,
    key: &Key,
    latest: Option<&RecordInfo>,
    version: Version,
    now: Timestamp,
    content: (ContentHash, u64, Metadata),
    deleted: bool,
) -> RecordInfo {
    // Never before the previous version's time: another process may have stamped it after
    // this one read its clock.
    let now = latest.map_or(now, |r| now.max(r.updated_at));
    RecordInfo {
        namespace: ns.clone(),
        key: key.clone(),
        version,
        hash: content.0,
        size: content.1,
        created_at: latest.map_or(now, |r| r.created_at),
        updated_at: now,
        deleted_at: deleted.then_some(now),
        metadata: content.2,
        conflicts: Vec::new(),
    }
}

#[async_trait]
impl StorageBackend for S3Backend {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn initialize(&self) -> Result<()> {
        // One cheap listing proves the endpoint answers, the bucket exists and the credentials
        // are accepted, so the first real call does not fail with a less clear message.
        let lister = self
            .op
            .lister_with(META)
            .limit(1)
            .await
            .map_err(|e| self.target.error("checking the bucket", e))?;
        let _first: Vec<_> = lister
            .take(1)
            .try_collect()
            .await
            .map_err(|e| self.target.error("checking the bucket", e))?;
        Ok(())
    }

    async fn put(
        &self,
        ns: &Namespace,
        key: &Key,
        body: Body,
        metadata: Metadata,
        mode: PutMode,
    ) -> Result<RecordInfo> {
        // Without a grace period, this process's gc waits for the put to claim its version.
        let _claiming = if self.gc_grace.is_zero() {
            Some(self.gc_gate.read().await)
        } else {
            None
        };
        // A conditional put checks its precondition before uploading anything, so a conflict
        // leaves no payload behind; an overwrite learns the latest version while the payload
        // uploads. A create of a key this process has not seen asks whether version 1 exists
        // and whether the key was ever purged (two HEADs at once): versions are claimed from 1
        // up and only purge deletes them, after marking the key, so with neither the key is
        // new and version 1 is claimed after the upload (the claim fails by itself if another
        // writer got there first, and only then is the key listed). A key whose purge was
        // interrupted, or raced by a put, keeps newer versions without version 1: it is
        // listed. Bulk loads and copies into a fresh bucket create keys by the thousand, and a
        // LIST per key is the slowest request an object store answers. `IfVersion(0)` (no
        // version at all, as a copy writes a key's first version) holds on a new key the same.
        let (stored, latest) = if mode == PutMode::Overwrite {
            let (stored, latest) =
                futures::join!(self.blobs.put(body), self.latest_for_write(ns, key));
            (stored?, latest?)
        } else if matches!(
            mode,
            PutMode::Create | PutMode::IfVersion(0) | PutMode::Base(0)
        ) && self
            .cache
            .latest_hint(&self.layout.key_dir(ns, key.as_str()))
            .is_none()
            && self.never_written(ns, key).await?
        {
            let absent = Latest {
                record: None,
                listed: true,
            };
            (self.blobs.put(body).await?, absent)
        } else {
            let mut latest = self.latest_for_write(ns, key).await?;
            if !latest.listed && mode.check_latest(ns, key, latest.record.as_ref()).is_err() {
                // What this process cached may be stale: refuse only on the listing.
                latest = Latest {
                    record: self.latest_listed(ns, key).await?,
                    listed: true,
                };
            }
            mode.check_latest(ns, key, latest.record.as_ref())?;
            (self.blobs.put(body).await?, latest)
        };
        let (hash, size) = stored;
        self.write_next(ns, key, Some(latest), |latest, version, now| {
            mode.check_latest(ns, key, latest)?;
            Ok(new_record(
                ns,
                key,
                latest,
                version,
                now,
                (hash, size, metadata.clone()),
                false,
            ))
        })
        .await
    }

    async fn get(
        &self,
        ns: &Namespace,
        key: &Key,
        options: GetOptions,
    ) -> Result<(RecordInfo, Body)> {
        // Seen before: start reading the payload this process last knew while the probes check
        // it is still the latest; the read is dropped unread if it is not.
        if let (None, Some(cached)) = (options.version, self.cached_latest(ns, key)) {
            // A range the cached version cannot serve may suit the real latest: only the
            // latest decides, below.
            let range = options.range.map(|r| r.resolve(cached.size)).transpose();
            if let (false, Ok(range)) = (cached.is_deleted(), range) {
                let (probe, body) = futures::join!(
                    self.latest_by_probe(ns, key),
                    self.blobs.read(cached.hash, cached.size, range)
                );
                if probe?.is_some_and(|r| r == cached) {
                    return Ok((cached, body?));
                }
            }
        }
        let record = match options.version {
            Some(v) => {
                Self::live_or_not_found(ns, key, Some(self.version(ns, key, v).await?), Some(v))?
            }
            None => Self::live_or_not_found(ns, key, self.latest(ns, key).await?, None)?,
        };
        let range = options.range.map(|r| r.resolve(record.size)).transpose()?;
        let body = self.blobs.read(record.hash, record.size, range).await?;
        Ok((record, body))
    }

    async fn head(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        match version {
            Some(v) => {
                Self::live_or_not_found(ns, key, Some(self.version(ns, key, v).await?), Some(v))
            }
            None => Self::live_or_not_found(ns, key, self.latest(ns, key).await?, None),
        }
    }

    async fn delete(
        &self,
        ns: &Namespace,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<RecordInfo> {
        self.write_next(ns, key, None, |latest, version, now| {
            let live = match latest {
                Some(r) if !r.is_deleted() => r,
                _ => return Err(Error::not_found(ns, key, None)),
            };
            if let Some(v) = options.if_version {
                if live.version != v {
                    return Err(conflict(ns, key, format!("version {v}"), latest));
                }
            }
            let content = (live.hash, live.size, live.metadata.clone());
            Ok(new_record(ns, key, latest, version, now, content, true))
        })
        .await
    }

    async fn list(&self, ns: &Namespace, options: ListOptions) -> Result<Page<RecordInfo>> {
        let lower = options.lower_bound()?;
        let include_deleted = options.include_deleted;
        let want = options.limit.map(|l| l.saturating_add(1));
        let latest = self
            .scan_latest(ns, options.prefix.as_deref(), lower.as_deref(), want, |r| {
                include_deleted || !r.is_deleted()
            })
            .await?;
        options.apply(latest)
    }

    async fn search(&self, ns: &Namespace, query: &Query) -> Result<Page<RecordInfo>> {
        let candidates = self
            .scan_latest(ns, query.prefix.as_deref(), None, None, |r| {
                query.matches(r)
            })
            .await?;
        query.apply(candidates)
    }

    async fn versions(&self, ns: &Namespace, key: &Key) -> Result<Vec<RecordInfo>> {
        let names = self.all_names(ns, key).await?;
        if names.is_empty() {
            return Err(Error::not_found(ns, key, None));
        }
        let records: Vec<Option<RecordInfo>> = futures::stream::iter(names)
            .map(|listed| async move { self.fetch(ns, &listed).await })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(records.into_iter().flatten().collect())
    }

    async fn restore(
        &self,
        ns: &Namespace,
        key: &Key,
        version: Option<Version>,
    ) -> Result<RecordInfo> {
        let source = match version {
            Some(v) => {
                Self::live_or_not_found(ns, key, Some(self.version(ns, key, v).await?), Some(v))?
            }
            None => {
                let names = self.all_names(ns, key).await?;
                let mut found = None;
                for listed in names.iter().rev() {
                    if let Some(r) = self.fetch(ns, listed).await? {
                        if !r.is_deleted() {
                            found = Some(r);
                            break;
                        }
                    }
                }
                found.ok_or_else(|| Error::not_found(ns, key, None))?
            }
        };
        self.write_next(ns, key, None, |latest, next, now| {
            let content = (source.hash, source.size, source.metadata.clone());
            Ok(new_record(ns, key, latest, next, now, content, false))
        })
        .await
    }

    async fn purge(&self, ns: &Namespace, key: &Key) -> Result<u64> {
        let names = self.all_names(ns, key).await?;
        if names.is_empty() {
            return Err(Error::not_found(ns, key, None));
        }
        // The mark first, and for good: from the first delete on, the key may lack version 1
        // while newer versions remain (an interrupted purge, or a put claiming while this one
        // deletes), and a create must then list it rather than take it for new.
        let mark = self.layout.purged_path(ns, key.as_str());
        self.op.write(&mark, Vec::<u8>::new()).await.map_err(|e| {
            self.target
                .error(format_args!("writing purge mark {mark}"), e)
        })?;
        // Oldest first: an interrupted purge leaves the newest versions, never resurrects an
        // old one as the latest.
        for listed in &names {
            self.op.delete(&listed.name.path).await.map_err(|e| {
                self.target
                    .error(format_args!("deleting metadata {}", listed.name.path), e)
            })?;
        }
        self.cache
            .set_latest_hint(&self.layout.key_dir(ns, key.as_str()), None);
        Ok(names.len() as u64)
    }

    async fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let _no_put_in_flight = if self.gc_grace.is_zero() {
            Some(self.gc_gate.write().await)
        } else {
            None
        };
        // Mark and sweep races with writers: a put uploads its payload, then claims the
        // version, so a payload uploaded before the metadata listing but claimed after it
        // looks unreferenced. gc therefore deletes only payloads whose LastModified is older
        // than the server's clock before the listing minus the grace period: a put claims
        // within the grace period of its upload (or of its refresh of a payload found stored),
        // so its claim came before the listing and the listing saw it.
        let cutoff = if self.gc_grace.is_zero() {
            None
        } else {
            let margin = (self.gc_grace + LAST_MODIFIED_SLACK).as_micros() as i64;
            Some(self.server_now().await? - margin)
        };
        let (records, broken) = self.all_meta().await?;
        // An unreadable metadata object may reference a blob nothing else does: deleting
        // "unreferenced" blobs now could delete that version's payload.
        if let Some(first) = broken.first() {
            let unreadable = match broken.len() {
                1 => "1 metadata object cannot be read, so which payload it references".to_string(),
                n => {
                    format!("{n} metadata objects cannot be read, so which payloads they reference")
                }
            };
            return Err(Error::corrupt(
                PROVIDER,
                format!(
                    "gc removed nothing: {unreadable} is unknown (first: {}); run verify, then purge or fix those keys",
                    first.error
                ),
            ));
        }
        let referenced: HashSet<ContentHash> = records.into_iter().map(|r| r.hash).collect();
        let blobs = self.all_objects(BLOBS).await?;
        let staging = self.all_objects(STAGING).await?;
        progress.set_total((blobs.len() + staging.len()) as u64);
        let mut report = GcReport::default();
        for (path, size, modified) in blobs {
            let unreferenced = hash_of_blob_path(&path).is_some_and(|h| !referenced.contains(&h));
            let verdict = match cutoff {
                _ if !unreferenced => Verdict::Keep,
                None => Verdict::Delete,
                // Young in the listing: no need to look again.
                Some(cutoff) if modified.is_some_and(|m| m > cutoff) => Verdict::Keep,
                Some(cutoff) => self.recheck(&path, cutoff).await?,
            };
            match verdict {
                Verdict::Delete => match self.op.delete(&path).await {
                    Ok(()) => {
                        report.blobs_removed += 1;
                        report.bytes_freed += size;
                    }
                    Err(e) => {
                        return Err(self
                            .target
                            .error(format_args!("deleting payload {path}"), e))
                    }
                },
                Verdict::Keep => report.blobs_kept += 1,
                Verdict::Gone => {}
            }
            progress.inc(1);
        }
        // A staging object older than the grace period is a leftover of a crashed upload:
        // counted among the payloads removed, with its bytes (as the fs provider counts a
        // killed writer's temporary file).
        for (path, size, modified) in staging {
            let abandoned = match cutoff {
                None => true,
                Some(cutoff) => modified.is_some_and(|m| m <= cutoff),
            };
            if abandoned {
                self.op.delete(&path).await.map_err(|e| {
                    self.target
                        .error(format_args!("deleting leftover {path}"), e)
                })?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
            progress.inc(1);
        }
        Ok(report)
    }

    async fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let (records, broken) = self.all_meta().await?;
        let mut by_hash: HashMap<ContentHash, Vec<&RecordInfo>> = HashMap::new();
        for r in &records {
            by_hash.entry(r.hash).or_default().push(r);
        }
        progress.set_total(by_hash.len() as u64);
        let mut report = VerifyReport {
            records_checked: records.len() as u64,
            ..VerifyReport::default()
        };
        for b in broken {
            // A long key's name is its hash: the key itself is only inside the object.
            let key = hex::decode(&b.name.segment)
                .ok()
                .and_then(|k| String::from_utf8(k).ok());
            report.problems.push(VerifyProblem {
                namespace: Some(b.namespace.to_string()),
                key,
                version: Some(b.name.version),
                hash: None,
                problem: "metadata".to_string(),
                detail: match b.error {
                    Error::Corrupt { message, .. } => message,
                    other => other.to_string(),
                },
            });
        }
        let mut hashes: Vec<&ContentHash> = by_hash.keys().collect();
        hashes.sort();
        for hash in hashes {
            let path = super::layout::blob_path(hash);
            let users = &by_hash[hash];
            let found = self.blobs.rehash(&path).await?;
            let problem = match found {
                None => Some((
                    "missing",
                    format!("payload {path} is missing; {REPAIR_BY_REPUT}"),
                )),
                Some((got, size)) => {
                    report.blobs_checked += 1;
                    report.bytes_checked += size;
                    if got != *hash {
                        // A put sees a stored payload of the wrong size (its dedup check reads
                        // the size) but not one of the right size with other bytes.
                        let repair = if users.iter().any(|r| r.size != size) {
                            REPAIR_BY_REPUT.to_string()
                        } else {
                            format!("it has the right size, which a put cannot tell from a healthy copy: to repair it, delete the object {path} (under the store's root), then put the original bytes again under any key")
                        };
                        Some((
                            "corrupt",
                            format!("payload {path} hashes to {got}; {repair}"),
                        ))
                    } else {
                        users.iter().find(|r| r.size != size).map(|r| {
                            (
                                "size",
                                format!(
                                    "payload {path} has {size} bytes but version {} says {}",
                                    r.version, r.size
                                ),
                            )
                        })
                    }
                }
            };
            if let Some((word, detail)) = problem {
                for r in users {
                    report.problems.push(VerifyProblem {
                        namespace: Some(r.namespace.to_string()),
                        key: Some(r.key.to_string()),
                        version: Some(r.version),
                        hash: Some(*hash),
                        problem: word.to_string(),
                        detail: detail.clone(),
                    });
                }
            }
            progress.inc(1);
        }
        Ok(report)
    }

    async fn namespaces(&self) -> Result<Vec<Namespace>> {
        let entries = self
            .op
            .list(META)
            .await
            .map_err(|e| self.target.error(format_args!("listing {META}"), e))?;
        let mut out: Vec<Namespace> = entries
            .iter()
            .filter_map(|e| e.path().strip_prefix(META)?.strip_suffix('/'))
            .filter_map(|ns| Namespace::new(ns).ok())
            .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        Ok(out)
    }
}
