//! Copying records between two stores of any providers — the library call behind
//! `stowage copy`. Safe to interrupt: a re-run skips what the target already holds and resumes.
//!
//! With [`CopyVersions::All`] the target receives each key's history version by version, so
//! version `n` of the source becomes version `n` of the target (tombstones included); each write
//! is conditional on the version before it, so a copy never overwrites a concurrent writer. With
//! [`CopyVersions::Latest`] only each key's latest state is copied, and a key the target holds
//! in a state the source never had is not overwritten either. Timestamps are the target's own
//! (providers assign them); payload, hash and metadata are preserved.
//!
//! A merging target (capability `merge`, e.g. automerge) keeps a JSON record as a document and
//! renders it back in its own canonical form (compact, keys sorted), so its hash differs from
//! the source's. For such a target and a JSON content type the two payloads are compared as
//! parsed JSON values instead of by hash; records that match that way are counted as
//! re-rendered by the target ([`CopyReport::rerendered`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures::stream::{self, StreamExt, TryStreamExt};
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

/// A record the target refused (its key or content is invalid there, e.g. JSON a merging
/// target cannot keep exactly, or a key a plugin provider does not take); the copy went on without
/// the rest of its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyRefusal {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// The version the target refused (the ones before it were copied).
    pub version: Version,
    /// The target's reason.
    pub reason: String,
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
    /// Records whose final state in the target is the source's JSON re-rendered by a merging
    /// target (same JSON value, another byte form and hash).
    pub rerendered: u64,
    /// Records whose final state differs (empty after a good copy).
    pub mismatches: Vec<CopyMismatch>,
    /// Records the target refused; each is left out of the final check (empty after a good
    /// copy).
    pub refused: Vec<CopyRefusal>,
}

/// Copies records from `source` to `target` (see the module docs); the source is only read.
///
/// A record the target refuses as invalid (an invalid key or input: a permanent "no" that a
/// re-run would meet again) is left out, with its remaining versions, and listed in
/// [`CopyReport::refused`]; the copy goes on with the other records. Any other failed write
/// (I/O, a backend error, …) stops the copy with that error, its kind kept and the record
/// named, and so does the first key whose state in the target the copy must not overwrite (a
/// [`Error::Conflict`] naming the record and what differs).
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
    let concurrency = options.concurrency.unwrap_or(4).max(1);
    let copied = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let counters = Counters {
        mine: None,
        skips_written_here: None,
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
        let pair = Pair {
            src,
            dst,
            rerenders: target.capabilities().merge,
            refused: Mutex::new(Vec::new()),
        };
        stream::iter(listing.iter().map(Ok::<_, Error>))
            .try_for_each_concurrent(concurrency, |latest| {
                let (pair, counters) = (&pair, &counters);
                let held = held.get(latest.key.as_str());
                async move {
                    let copy_key = |held, counters| async move {
                        match versions {
                            CopyVersions::All => copy_history(pair, latest, held, counters).await,
                            CopyVersions::Latest => copy_latest(pair, latest, held, counters).await,
                        }
                    };
                    // The versions of this key this run writes, counted apart too.
                    let mine = AtomicU64::new(0);
                    let first = Counters {
                        mine: Some(&mine),
                        ..*counters
                    };
                    let mut copied = copy_key(held, &first).await;
                    if matches!(&copied, Err(e) if e.kind() == ErrorKind::Conflict) {
                        // The key changed in the target while it was copied (a copy running
                        // beside this one, say): look at it again, once. A target that now
                        // holds the source's state, or a prefix of its history, is finished;
                        // a state the source never had still stops the copy. Of the versions
                        // found in the target this time, as many as this run wrote are counted
                        // already (as copied); the rest were written by the other writer and
                        // count as skipped, so copied + skipped stays the source's total.
                        let now = target_versions(&pair.dst, latest.key.as_str()).await?;
                        let again = Counters {
                            skips_written_here: Some(&mine),
                            ..*counters
                        };
                        copied = copy_key(now.last(), &again).await;
                    }
                    match copied {
                        Err(e) if is_refusal(&e) && pair.was_refused(latest) => Ok(()),
                        other => other,
                    }
                }
            })
            .await?;
        let refused = pair.refused.into_inner().unwrap_or_else(|e| e.into_inner());
        let pair = Pair {
            refused: Mutex::new(Vec::new()),
            ..pair
        };
        let refused_keys: HashSet<&str> = refused.iter().map(|r| r.key.as_str()).collect();
        let after = latest_by_key(&pair.dst, &scope).await?;
        let checked: Vec<&RecordInfo> = listing
            .iter()
            .filter(|latest| !refused_keys.contains(latest.key.as_str()))
            .collect();
        // By index: a closure over `&RecordInfo` items would make the future of `copy` lose
        // `Send` to a higher-ranked lifetime (it could not be spawned).
        let finals: Vec<FinalState> = stream::iter(0..checked.len())
            .map(|i| {
                let latest = checked[i];
                compare_final(&pair, after.get(latest.key.as_str()), latest, versions)
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        for state in finals {
            match state {
                FinalState::Same => {}
                FinalState::ReRendered => report.rerendered += 1,
                FinalState::Differs(m) => report.mismatches.push(m),
            }
        }
        let mut refused = refused;
        refused.sort_by(|a, b| a.key.cmp(&b.key));
        report.refused.extend(refused);
    }
    report.versions_copied = copied.into_inner();
    report.versions_skipped = skipped.into_inner();
    report.bytes_copied = bytes.into_inner();
    Ok(report)
}

/// One namespace of the source and the same namespace of the target.
struct Pair {
    src: NamespaceHandle,
    dst: NamespaceHandle,
    /// The target merges (capability `merge`): it may store a JSON payload re-rendered.
    rerenders: bool,
    /// Records the target refused so far.
    refused: Mutex<Vec<CopyRefusal>>,
}

impl Pair {
    /// Whether the target refused a version of `latest`'s key in this copy.
    fn was_refused(&self, latest: &RecordInfo) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.key == latest.key.as_str())
    }
}

/// Whether the target's error is a refusal of the record itself (its key or content is
/// invalid there), which a re-run would meet again, rather than a failure of the target.
fn is_refusal(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::InvalidKey)
}

#[derive(Clone, Copy)]
struct Counters<'a> {
    /// Also counts the versions copied, for one key's first attempt.
    mine: Option<&'a AtomicU64>,
    /// On a key's second attempt: how many of the versions found in the target were written
    /// by the first attempt (counted as copied); that many skips are not counted again.
    skips_written_here: Option<&'a AtomicU64>,
    copied: &'a AtomicU64,
    skipped: &'a AtomicU64,
    bytes: &'a AtomicU64,
    observer: &'a dyn CopyObserver,
}

impl Counters<'_> {
    fn copied(&self, info: &RecordInfo) {
        self.copied.fetch_add(1, Ordering::Relaxed);
        if let Some(mine) = self.mine {
            mine.fetch_add(1, Ordering::Relaxed);
        }
        if !info.is_deleted() {
            self.bytes.fetch_add(info.size, Ordering::Relaxed);
        }
        self.observer.copied(info);
    }
    fn skipped(&self, info: &RecordInfo) {
        let counted_already = self.skips_written_here.is_some_and(|left| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        });
        if counted_already {
            return;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.observer.skipped(info);
    }
}

/// Makes a target-side failure name the record being copied, keeping its kind; a refusal
/// (see [`is_refusal`]) is noted in `pair.refused` too.
fn naming(pair: &Pair, info: &RecordInfo, e: Error) -> Error {
    let record = format!(
        "copying {}/{} version {}",
        info.namespace, info.key, info.version
    );
    if is_refusal(&e) {
        let message = format!(
            "the target refused {}/{} version {}: {e}",
            info.namespace, info.key, info.version
        );
        pair.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CopyRefusal {
                namespace: info.namespace.to_string(),
                key: info.key.to_string(),
                version: info.version,
                reason: e.to_string(),
            });
        return Error::InvalidInput { message };
    }
    match e {
        Error::Conflict { .. } => Error::Conflict {
            namespace: info.namespace.to_string(),
            key: info.key.to_string(),
            expected: format!(
                "to copy version {} onto a target that changed meanwhile",
                info.version
            ),
            current: None,
        },
        Error::Io { context, source } => Error::Io {
            context: format!("{record}: {context}"),
            source,
        },
        Error::Backend {
            provider,
            message,
            source,
        } => Error::Backend {
            provider,
            message: format!("{record}: {message}"),
            source,
        },
        Error::Corrupt { provider, message } => Error::Corrupt {
            provider,
            message: format!("{record}: {message}"),
        },
        Error::Locked { path, message } => Error::Locked {
            path,
            message: format!("{record}: {message}"),
        },
        // The others name the record already, or are not about it.
        other => other,
    }
}

/// The conflict for a key whose state in the target the copy must not overwrite; `expected`
/// completes "expected …" and says what differs.
fn diverged(latest: &RecordInfo, expected: String, current: Option<Version>) -> Error {
    Error::Conflict {
        namespace: latest.namespace.to_string(),
        key: latest.key.to_string(),
        expected,
        current,
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

/// Source versions of a key, oldest first; only the latest where the source keeps no history.
async fn source_history(src: &NamespaceHandle, latest: &RecordInfo) -> Result<Vec<RecordInfo>> {
    match src.versions(latest.key.as_str()).await {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Ok(vec![latest.clone()]),
        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(vec![latest.clone()]),
        Err(e) => Err(e),
    }
}

/// How a target version compares with a source version.
enum Verdict {
    /// Same payload hash, tombstone state and metadata.
    Same,
    /// Same metadata and JSON value, the payload rendered in a merging target's own form.
    ReRendered,
    /// They differ in this.
    Differs(Difference),
}

/// What differs between a source version and a target version.
enum Difference {
    /// One is a tombstone, the other live.
    Liveness,
    /// The payloads (their hashes, or for a re-rendering target their JSON values).
    Payload,
    /// These metadata fields (e.g. "content type and tags").
    Metadata(String),
}

impl Verdict {
    fn matches(&self) -> bool {
        !matches!(self, Verdict::Differs(_))
    }
}

/// Says what differs between source version `s` and target version `t`, naming each side.
fn contrast(d: &Difference, s: &RecordInfo, t: &RecordInfo) -> String {
    match d {
        Difference::Liveness if t.is_deleted() => {
            format!(
                "the source's is live with {}, the target's is deleted",
                s.hash
            )
        }
        Difference::Liveness => {
            format!(
                "the source's is deleted, the target's is live with {}",
                t.hash
            )
        }
        Difference::Payload if s.is_deleted() => format!(
            "both are deleted, but the source's deleted {} and the target's {}",
            s.hash, t.hash
        ),
        Difference::Payload => format!("the source's holds {}, the target's {}", s.hash, t.hash),
        Difference::Metadata(fields) => format!("their {fields} differ"),
    }
}

/// The metadata fields that differ, as words, or `None`.
fn metadata_difference(s: &RecordInfo, t: &RecordInfo) -> Option<String> {
    let (a, b) = (&s.metadata, &t.metadata);
    let fields: Vec<&str> = [
        (a.content_type != b.content_type, "content type"),
        (a.tags != b.tags, "tags"),
        (a.attributes != b.attributes, "attributes"),
    ]
    .into_iter()
    .filter_map(|(differs, name)| differs.then_some(name))
    .collect();
    (!fields.is_empty()).then(|| fields.join(" and "))
}

/// Compares source version `s` with target version `t` (their numbers aside).
async fn compare(pair: &Pair, s: &RecordInfo, t: &RecordInfo) -> Result<Verdict> {
    if s.is_deleted() != t.is_deleted() {
        return Ok(Verdict::Differs(Difference::Liveness));
    }
    if let Some(fields) = metadata_difference(s, t) {
        return Ok(Verdict::Differs(Difference::Metadata(fields)));
    }
    compare_payload(pair, s, t).await
}

/// Compares the payloads of source version `s` and target version `t`, both live or both
/// tombstones (their metadata aside).
async fn compare_payload(pair: &Pair, s: &RecordInfo, t: &RecordInfo) -> Result<Verdict> {
    if s.hash == t.hash {
        return Ok(Verdict::Same);
    }
    if pair.rerenders && s.metadata.is_json() {
        // A tombstone's payload cannot be read back; the live version before it was compared
        // when it was copied.
        if s.is_deleted() || same_json(pair, s, t).await? {
            return Ok(Verdict::ReRendered);
        }
    }
    Ok(Verdict::Differs(Difference::Payload))
}

/// Whether source version `s` and target version `t` hold the same JSON value.
async fn same_json(pair: &Pair, s: &RecordInfo, t: &RecordInfo) -> Result<bool> {
    let read = |ns: &NamespaceHandle, info: &RecordInfo| {
        let (ns, key, version) = (ns.clone(), info.key.to_string(), info.version);
        async move {
            let options = GetOptions {
                version: Some(version),
                range: None,
            };
            let (_, body) = ns.get_with(&key, options).await?;
            body.into_bytes().await
        }
    };
    let (a, b) = (read(&pair.src, s).await?, read(&pair.dst, t).await?);
    Ok(
        match (
            serde_json::from_slice::<serde_json::Value>(&a),
            serde_json::from_slice::<serde_json::Value>(&b),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    )
}

async fn copy_history(
    pair: &Pair,
    latest: &RecordInfo,
    held: Option<&RecordInfo>,
    counters: &Counters<'_>,
) -> Result<()> {
    let key = latest.key.as_str();
    let history = pair.src.versions(key).await?;
    let existing = match held {
        // Absent from the target when the copy started: everything is to be written (a
        // writer that creates the key meanwhile makes the first, conditional write fail).
        None => Vec::new(),
        // The target's latest is the source's latest, same number and same state: a key an
        // earlier run finished (it wrote the history version by version, each write
        // conditional on the one before).
        Some(t) if t.version == latest.version && compare(pair, latest, t).await?.matches() => {
            for s in &history {
                counters.skipped(s);
            }
            return Ok(());
        }
        Some(_) => target_versions(&pair.dst, key).await?,
    };
    let current = existing.last().map(|v| v.version);
    // The target's history must be a prefix of the source's; anything else was written by
    // someone else and is not overwritten.
    for (s, t) in history.iter().zip(existing.iter()) {
        if s.version != t.version {
            return Err(diverged(
                latest,
                format!(
                    "the target's history to match the source's (the source's has version {} where the target's has version {})",
                    s.version, t.version
                ),
                current,
            ));
        }
        if let Verdict::Differs(d) = compare(pair, s, t).await? {
            return Err(diverged(
                latest,
                format!(
                    "version {} of the target to be the source's ({})",
                    s.version,
                    contrast(&d, s, t)
                ),
                current,
            ));
        }
    }
    if existing.len() > history.len() {
        return Err(diverged(
            latest,
            format!(
                "the target to end at version {} as the source does (it has {} later version{})",
                latest.version,
                existing.len() - history.len(),
                if existing.len() - history.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ),
            current,
        ));
    }
    for s in history.iter().take(existing.len()) {
        counters.skipped(s);
    }
    let mut last = current;
    for s in history.iter().skip(existing.len()) {
        write_version(
            pair,
            s,
            last,
            history
                .iter()
                .rev()
                .find(|v| !v.is_deleted() && v.version < s.version),
            counters,
        )
        .await?;
        last = Some(s.version);
    }
    Ok(())
}

/// Writes one source version `s` onto the target whose latest version is `last`, counting each
/// version written (a tombstone onto nothing takes two: what it deleted, then itself).
async fn write_version(
    pair: &Pair,
    s: &RecordInfo,
    last: Option<Version>,
    live_before: Option<&RecordInfo>,
    counters: &Counters<'_>,
) -> Result<()> {
    let key = s.key.as_str();
    // `IfVersion(0)`: no version at all. `Create` would also take a key whose latest version
    // is a tombstone — one a concurrent copy just wrote — and write this version after it.
    let mode = PutMode::IfVersion(last.unwrap_or(0));
    if s.is_deleted() {
        let last = match last {
            Some(v) => v,
            // A tombstone with nothing before it in the target: write what it deleted first.
            None => {
                let deleted = live_before.unwrap_or(s);
                let written = put_from(pair, deleted, mode).await?;
                counters.copied(deleted);
                written.version
            }
        };
        pair.dst
            .delete(
                key,
                DeleteOptions {
                    if_version: Some(last),
                },
            )
            .await
            .map_err(|e| naming(pair, s, e))?;
        counters.copied(s);
        return Ok(());
    }
    put_from(pair, s, mode).await?;
    counters.copied(s);
    Ok(())
}

/// Streams version `s` of the source into the target with `mode`; checks that the target
/// holds what was sent (by hash, or as JSON for a re-rendering target).
async fn put_from(pair: &Pair, s: &RecordInfo, mode: PutMode) -> Result<RecordInfo> {
    let (_, body) = pair
        .src
        .get_with(
            s.key.as_str(),
            GetOptions {
                version: Some(s.version),
                range: None,
            },
        )
        .await?;
    let written = pair
        .dst
        .put_with(s.key.as_str(), body, s.metadata.clone(), mode)
        .await
        .map_err(|e| naming(pair, s, e))?;
    if written.hash != s.hash
        && !(pair.rerenders && s.metadata.is_json() && same_json(pair, s, &written).await?)
    {
        return Err(Error::corrupt(
            pair.dst.store().provider(),
            format!(
                "copying {}/{} version {}: the target stored hash {} but the source has {}",
                s.namespace, s.key, s.version, written.hash, s.hash
            ),
        ));
    }
    Ok(written)
}

async fn copy_latest(
    pair: &Pair,
    latest: &RecordInfo,
    current: Option<&RecordInfo>,
    counters: &Counters<'_>,
) -> Result<()> {
    let Some(c) = current else {
        // Absent from the target when the copy started.
        if latest.is_deleted() {
            // Read the deleted payload through the tombstone's predecessor.
            let history = source_history(&pair.src, latest).await?;
            let live = history.iter().rev().find(|v| !v.is_deleted());
            write_version(pair, latest, None, live, counters).await?;
        } else {
            put_from(pair, latest, PutMode::IfVersion(0)).await?;
            counters.copied(latest);
        }
        return Ok(());
    };
    if compare(pair, latest, c).await?.matches() {
        counters.skipped(latest);
        return Ok(());
    }
    // The target holds another state. It is replaced only when it is one the source held (the
    // target is behind, e.g. an earlier copy); a state the source never had was written by
    // someone else.
    let history = source_history(&pair.src, latest).await?;
    let mut held_by_source = false;
    for s in history.iter().rev() {
        if compare(pair, s, c).await?.matches() {
            held_by_source = true;
            break;
        }
    }
    if !held_by_source {
        return Err(diverged(
            latest,
            format!(
                "the target's version {} to be a state the source held ({})",
                c.version,
                unheld_state(pair, &history, c).await?
            ),
            Some(c.version),
        ));
    }
    let mut last = c.version;
    if latest.is_deleted() && c.is_deleted() {
        // Another tombstone: bring back what the source's tombstone deleted, then delete it.
        if let Some(live) = history.iter().rev().find(|v| !v.is_deleted()) {
            last = put_from(pair, live, PutMode::IfVersion(last))
                .await?
                .version;
            counters.copied(live);
        }
    }
    if latest.is_deleted() {
        pair.dst
            .delete(
                latest.key.as_str(),
                DeleteOptions {
                    if_version: Some(last),
                },
            )
            .await
            .map_err(|e| naming(pair, latest, e))?;
    } else {
        put_from(pair, latest, PutMode::IfVersion(last)).await?;
    }
    counters.copied(latest);
    Ok(())
}

/// Says how the target's state `c`, which matches no version in the source's `history`,
/// differs from the nearest of them: a version with the same payload and tombstone state is
/// contrasted in the words `--versions all` uses (e.g. "their tags differ"); only when there
/// is none is the payload itself unknown to the source.
async fn unheld_state(pair: &Pair, history: &[RecordInfo], c: &RecordInfo) -> Result<String> {
    for s in history.iter().rev() {
        if s.is_deleted() == c.is_deleted() && compare_payload(pair, s, c).await?.matches() {
            if let Verdict::Differs(d) = compare(pair, s, c).await? {
                return Ok(format!(
                    "it is the source's version {} but for its metadata: {}",
                    s.version,
                    contrast(&d, s, c)
                ));
            }
        }
    }
    Ok(if c.is_deleted() {
        format!(
            "it is a tombstone of {}, which no version of the source has",
            c.hash
        )
    } else {
        format!("it holds {}, which no version of the source has", c.hash)
    })
}

/// How a key's latest state in the target compares with the source's after the copy.
enum FinalState {
    Same,
    ReRendered,
    Differs(CopyMismatch),
}

/// Compares a source key's latest version with the target's (`held`, from a listing made after
/// the copy).
async fn compare_final(
    pair: &Pair,
    held: Option<&RecordInfo>,
    latest: &RecordInfo,
    versions: CopyVersions,
) -> Result<FinalState> {
    let state = compare_final_with(pair, held, latest, versions).await?;
    if !matches!(state, FinalState::Differs(_)) {
        return Ok(state);
    }
    // The source may have been written since it was listed: compare with what it holds now,
    // so a target another writer (or copy) brought up to date is not called different, and a
    // real difference says the source moved.
    let mut state = state;
    let moved = match pair.src.versions(latest.key.as_str()).await {
        Ok(history) => match history.last() {
            Some(now) if now.version != latest.version || now.hash != latest.hash => {
                // Against what the source holds now: the difference worth naming.
                state = compare_final_with(pair, held, now, versions).await?;
                if !matches!(state, FinalState::Differs(_)) {
                    return Ok(state);
                }
                format!(
                    "; the source was written meanwhile (v{} when the copy listed it, v{} now): \
                     a re-run copies what changed",
                    latest.version, now.version
                )
            }
            None => "; the source's record was purged meanwhile".to_string(),
            Some(_) => String::new(),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            "; the source's record was purged meanwhile".to_string()
        }
        Err(_) => String::new(),
    };
    Ok(match state {
        FinalState::Differs(mut m) => {
            m.detail.push_str(&moved);
            FinalState::Differs(m)
        }
        other => other,
    })
}

/// The final check of one key against the source's `latest`.
async fn compare_final_with(
    pair: &Pair,
    held: Option<&RecordInfo>,
    latest: &RecordInfo,
    versions: CopyVersions,
) -> Result<FinalState> {
    let mismatch = |detail: String| {
        FinalState::Differs(CopyMismatch {
            namespace: latest.namespace.to_string(),
            key: latest.key.to_string(),
            detail,
        })
    };
    let Some(t) = held else {
        return Ok(mismatch("missing in the target".into()));
    };
    let verdict = compare(pair, latest, t).await?;
    Ok(match verdict {
        Verdict::Differs(d) => mismatch(format!(
            "latest versions differ (source v{}, target v{}): {}",
            latest.version,
            t.version,
            contrast(&d, latest, t)
        )),
        _ if versions == CopyVersions::All && t.version != latest.version => mismatch(format!(
            "target is at version {}, source at {}",
            t.version, latest.version
        )),
        Verdict::ReRendered => FinalState::ReRendered,
        Verdict::Same => FinalState::Same,
    })
}
