//! Copying records between two stores of any providers — the library call behind
//! `stowage copy`. Safe to interrupt: a re-run skips what the target already holds and resumes.
//!
//! With [`CopyVersions::All`] the target receives each key's history version by version, so
//! version `n` of the source becomes version `n` of the target (tombstones included); each write
//! is conditional on the version before it, so a copy never overwrites a concurrent writer. With
//! [`CopyVersions::Latest`] only each key's latest state is copied. Timestamps are the target's
//! own (providers assign them); payload, hash and metadata are preserved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::key::Namespace;
use crate::model::{DeleteOptions, GetOptions, ListOptions, PutMode, RecordInfo, Version};
use crate::stowage::{NamespaceHandle, Stowage};

/// Which versions `copy` transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyVersions {
    /// Only each key's latest state.
    Latest,
    /// Every version, in order (falls back to `Latest` when either store keeps no versions).
    #[default]
    All,
}

impl std::str::FromStr for CopyVersions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latest" => Ok(CopyVersions::Latest),
            "all" => Ok(CopyVersions::All),
            other => Err(Error::invalid_input(format!(
                "--versions must be `latest` or `all`, not {other:?}"
            ))),
        }
    }
}

/// What to copy.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Every namespace of the source (else only the source's default namespace).
    pub all_namespaces: bool,
    /// Which versions.
    pub versions: CopyVersions,
    /// Keys copied at once (default 4).
    pub concurrency: Option<usize>,
}

/// Told about the copy as it goes (the CLI draws a progress bar with it).
pub trait CopyObserver: Send + Sync {
    /// Keys found in a namespace (called once per namespace before its keys are copied).
    fn found(&self, namespace: &Namespace, keys: u64, bytes: u64);
    /// A version was written to the target.
    fn copied(&self, info: &RecordInfo);
    /// A version the target already held was skipped.
    fn skipped(&self, info: &RecordInfo);
}

/// A [`CopyObserver`] that ignores everything.
pub struct NoCopyObserver;

impl CopyObserver for NoCopyObserver {
    fn found(&self, _: &Namespace, _: u64, _: u64) {}
    fn copied(&self, _: &RecordInfo) {}
    fn skipped(&self, _: &RecordInfo) {}
}

/// A record whose final state differs between source and target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyMismatch {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// What differs.
    pub detail: String,
}

/// What `copy` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Namespaces copied.
    pub namespaces: u64,
    /// Keys examined.
    pub keys: u64,
    /// Versions written to the target.
    pub versions_copied: u64,
    /// Versions the target already held.
    pub versions_skipped: u64,
    /// Payload bytes written to the target.
    pub bytes_copied: u64,
    /// Records whose final state differs (empty after a good copy).
    pub mismatches: Vec<CopyMismatch>,
}

/// Copies records from `source` to `target` (see the module docs). Stops at the first write
/// the target refuses, with an error naming the record; the source is only read.
pub async fn copy(
    source: &Stowage,
    target: &Stowage,
    options: &CopyOptions,
    observer: &dyn CopyObserver,
) -> Result<CopyReport> {
    let namespaces = if options.all_namespaces {
        source.namespaces().await?
    } else {
        vec![source.default_namespace().namespace().clone()]
    };
    let versions = if source.capabilities().versions && target.capabilities().versions {
        options.versions
    } else {
        CopyVersions::Latest
    };
    let copied = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let counters = Counters {
        copied: &copied,
        skipped: &skipped,
        bytes: &bytes,
        observer,
    };
    let mut report = CopyReport::default();
    for ns in namespaces {
        let src = source.namespace(ns.as_str())?;
        let dst = target.namespace(ns.as_str())?;
        let scope = ListOptions {
            prefix: options.prefix.clone(),
            include_deleted: true,
            ..Default::default()
        };
        let listing = src.list_all(scope.clone()).await?;
        // One listing of the target says which keys it already holds and at which version, so
        // keys it lacks or holds complete cost no per-key look-up (on an object store, a
        // LIST request each).
        let held = latest_by_key(&dst, &scope).await?;
        observer.found(
            &ns,
            listing.len() as u64,
            listing.iter().map(|i| i.size).sum(),
        );
        report.namespaces += 1;
        report.keys += listing.len() as u64;
        let src = Arc::new(src);
        let dst = Arc::new(dst);
        stream::iter(listing.iter().map(Ok::<_, Error>))
            .try_for_each_concurrent(options.concurrency.unwrap_or(4).max(1), |latest| {
                let (src, dst, counters) = (src.clone(), dst.clone(), &counters);
                let held = held.get(latest.key.as_str());
                async move {
                    match versions {
                        CopyVersions::All => copy_history(&src, &dst, latest, held, counters).await,
                        CopyVersions::Latest => {
                            copy_latest(&src, &dst, latest, held, counters).await
                        }
                    }
                }
            })
            .await?;
        let after = latest_by_key(&dst, &scope).await?;
        for latest in &listing {
            if let Some(m) = compare_final(after.get(latest.key.as_str()), latest, versions) {
                report.mismatches.push(m);
            }
        }
    }
    report.versions_copied = copied.into_inner();
    report.versions_skipped = skipped.into_inner();
    report.bytes_copied = bytes.into_inner();
    Ok(report)
}

struct Counters<'a> {
    copied: &'a AtomicU64,
    skipped: &'a AtomicU64,
    bytes: &'a AtomicU64,
    observer: &'a dyn CopyObserver,
}

impl Counters<'_> {
    fn copied(&self, info: &RecordInfo) {
        self.copied.fetch_add(1, Ordering::Relaxed);
        if !info.is_deleted() {
            self.bytes.fetch_add(info.size, Ordering::Relaxed);
        }
        self.observer.copied(info);
    }
    fn skipped(&self, info: &RecordInfo) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.observer.skipped(info);
    }
}

/// Wraps a target-side failure so it names the record being copied.
fn naming(info: &RecordInfo, e: Error) -> Error {
    match e.kind() {
        ErrorKind::Conflict => Error::Conflict {
            namespace: info.namespace.to_string(),
            key: info.key.to_string(),
            expected: format!(
                "to copy version {} onto a target that changed meanwhile",
                info.version
            ),
            current: None,
        },
        _ => Error::Backend {
            provider: "copy".into(),
            message: format!(
                "copying {}/{} version {} failed: {e}",
                info.namespace, info.key, info.version
            ),
            source: Some(Box::new(e)),
        },
    }
}

/// The latest version (tombstones included) of every key in `scope` of `ns`, by key.
async fn latest_by_key(
    ns: &NamespaceHandle,
    scope: &ListOptions,
) -> Result<HashMap<String, RecordInfo>> {
    Ok(ns
        .list_all(scope.clone())
        .await?
        .into_iter()
        .map(|info| (info.key.to_string(), info))
        .collect())
}

/// Target versions of a key, oldest first (empty when the key is absent there).
async fn target_versions(dst: &NamespaceHandle, key: &str) -> Result<Vec<RecordInfo>> {
    match dst.versions(key).await {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn same_state(a: &RecordInfo, b: &RecordInfo) -> bool {
    a.hash == b.hash && a.is_deleted() == b.is_deleted() && a.metadata == b.metadata
}

async fn copy_history(
    src: &NamespaceHandle,
    dst: &NamespaceHandle,
    latest: &RecordInfo,
    held: Option<&RecordInfo>,
    counters: &Counters<'_>,
) -> Result<()> {
    let key = latest.key.as_str();
    let history = src.versions(key).await?;
    let existing = match held {
        // Absent from the target when the copy started: everything is to be written (a
        // writer that creates the key meanwhile makes the first, conditional write fail).
        None => Vec::new(),
        // The target's latest is the source's latest, same number and same state: a key an
        // earlier run finished (it wrote the history version by version, each write
        // conditional on the one before).
        Some(t) if t.version == latest.version && same_state(t, latest) => {
            for s in &history {
                counters.skipped(s);
            }
            return Ok(());
        }
        Some(_) => target_versions(dst, key).await?,
    };
    // The target's history must be a prefix of the source's; anything else was written by
    // someone else and is not overwritten.
    for (s, t) in history.iter().zip(existing.iter()) {
        if s.version != t.version || !same_state(s, t) {
            return Err(Error::Conflict {
                namespace: latest.namespace.to_string(),
                key: key.to_string(),
                expected: format!(
                    "the target's version {} to match the source's (hash {}), but it holds {}",
                    t.version, s.hash, t.hash
                ),
                current: existing.last().map(|v| v.version),
            });
        }
    }
    for s in history.iter().take(existing.len()) {
        counters.skipped(s);
    }
    let mut last: Option<Version> = existing.last().map(|v| v.version);
    for s in history.iter().skip(existing.len()) {
        write_version(
            src,
            dst,
            s,
            last,
            history
                .iter()
                .rev()
                .find(|v| !v.is_deleted() && v.version < s.version),
        )
        .await?;
        counters.copied(s);
        last = Some(s.version);
    }
    Ok(())
}

/// Writes one source version `s` onto the target whose latest version is `last`.
async fn write_version(
    src: &NamespaceHandle,
    dst: &NamespaceHandle,
    s: &RecordInfo,
    last: Option<Version>,
    live_before: Option<&RecordInfo>,
) -> Result<()> {
    let key = s.key.as_str();
    let mode = match last {
        Some(v) => PutMode::IfVersion(v),
        None => PutMode::Create,
    };
    if s.is_deleted() {
        if last.is_none() {
            // A tombstone with nothing before it in the target: write what it deleted first.
            let base = live_before.unwrap_or(s);
            put_from(src, dst, base, mode).await?;
            dst.delete(
                key,
                DeleteOptions {
                    if_version: Some(1),
                },
            )
            .await
            .map_err(|e| naming(s, e))?;
        } else {
            dst.delete(key, DeleteOptions { if_version: last })
                .await
                .map_err(|e| naming(s, e))?;
        }
        return Ok(());
    }
    put_from(src, dst, s, mode).await
}

async fn put_from(
    src: &NamespaceHandle,
    dst: &NamespaceHandle,
    s: &RecordInfo,
    mode: PutMode,
) -> Result<()> {
    let (_, body) = src
        .get_with(
            s.key.as_str(),
            GetOptions {
                version: Some(s.version),
                range: None,
            },
        )
        .await?;
    let written = dst
        .put_with(s.key.as_str(), body, s.metadata.clone(), mode)
        .await
        .map_err(|e| naming(s, e))?;
    if written.hash != s.hash {
        return Err(Error::corrupt(
            dst.store().provider(),
            format!(
                "copying {}/{} version {}: the target stored hash {} but the source has {}",
                s.namespace, s.key, s.version, written.hash, s.hash
            ),
        ));
    }
    Ok(())
}

async fn copy_latest(
    src: &NamespaceHandle,
    dst: &NamespaceHandle,
    latest: &RecordInfo,
    current: Option<&RecordInfo>,
    counters: &Counters<'_>,
) -> Result<()> {
    let key = latest.key.as_str();
    if current.is_some_and(|c| same_state(c, latest)) {
        counters.skipped(latest);
        return Ok(());
    }
    let last = current.map(|c| c.version);
    if latest.is_deleted() {
        match current {
            Some(c) if !c.is_deleted() => {
                dst.delete(key, DeleteOptions { if_version: last })
                    .await
                    .map_err(|e| naming(latest, e))?;
            }
            Some(_) => {}
            None => {
                // Read the deleted payload through the tombstone's predecessor.
                let history = src.versions(key).await?;
                let live = history.iter().rev().find(|v| !v.is_deleted());
                write_version(src, dst, latest, None, live).await?;
            }
        }
    } else {
        put_from(
            src,
            dst,
            latest,
            last.map_or(PutMode::Create, PutMode::IfVersion),
        )
        .await?;
    }
    counters.copied(latest);
    Ok(())
}

/// Compares a source key's latest version with the target's (`held`, from a listing made after
/// the copy).
fn compare_final(
    held: Option<&RecordInfo>,
    latest: &RecordInfo,
    versions: CopyVersions,
) -> Option<CopyMismatch> {
    let mismatch = |detail: String| {
        Some(CopyMismatch {
            namespace: latest.namespace.to_string(),
            key: latest.key.to_string(),
            detail,
        })
    };
    match held {
        None => mismatch("missing in the target".into()),
        Some(t) if !same_state(t, latest) => mismatch(format!(
            "target holds {} (deleted: {}), source {} (deleted: {})",
            t.hash,
            t.is_deleted(),
            latest.hash,
            latest.is_deleted()
        )),
        Some(t) if versions == CopyVersions::All && t.version != latest.version => {
            mismatch(format!(
                "target is at version {}, source at {}",
                t.version, latest.version
            ))
        }
        Some(_) => None,
    }
}
